"""Shared fixtures: tiny random SaCon models on the packaged tokenizer, and the real FewRel data directory."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from modeling_sacon import SaconConfig, SaconDualEncoderModel, SaconProcessor
from modeling_sacon.data import DATA_DIR_ENV, get_data_dir
from modeling_sacon.utils.defaults import default_backbone_path

from hub_server import FakeHub

# Tests (and the commands they start) read the development layout, the data beside the checkout, unless
# SACON_DATA_DIR says otherwise; the library itself takes explicit locations only.
DEV_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
if DEV_DATA_DIR.is_dir():
    os.environ.setdefault(DATA_DIR_ENV, str(DEV_DATA_DIR))


def tiny_bert_config(vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=128,
    )


def save_tiny_backbone(path: Path) -> str:
    """A tiny random BERT saved with the packaged tokenizer at `path`: a stand-in "pretrained" backbone."""
    tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def processor() -> SaconProcessor:
    """The packaged MiniLM tokenizer with SaCon's markers (no network)."""
    return SaconProcessor.from_pretrained(default_backbone_path())


@pytest.fixture
def tiny_model(processor) -> SaconDualEncoderModel:
    torch.manual_seed(0)
    config = SaconConfig(sentence_config=tiny_bert_config(len(processor.tokenizer)).to_dict())
    return SaconDualEncoderModel(config).eval()


@pytest.fixture
def one_thread():
    """One intra-op thread: on 2 shared cores OpenMP barrier stalls made tiny-model steps up to 30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared FewRel data; its absence skips data tests locally but fails them in CI (CI=true has the data)."""
    try:
        path = get_data_dir()
        message = "" if (path / "fewrel" / "val_wiki.json").is_file() else f"no fewrel/val_wiki.json under {path}"
    except FileNotFoundError as err:
        message = str(err)
    if message:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def val_wiki(data_dir) -> dict[str, list[dict]]:
    return json.loads((data_dir / "fewrel" / "val_wiki.json").read_text())


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """A started in-memory fake Hub on 127.0.0.1, stopped after the test.

    Client code runs in a subprocess with `hub_env(fake_hub.endpoint, tmp_path)`: huggingface_hub reads
    HF_ENDPOINT at import time.
    """
    with FakeHub() as hub:
        yield hub
