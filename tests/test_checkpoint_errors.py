"""A damaged checkpoint fails to load with an error naming the file and the problem, from the model class, the Auto
classes and the pipeline alike: a truncated model.safetensors, an invalid value in config.json, a tokenizer without
the entity markers the model was trained with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoModel, AutoProcessor, pipeline

from modeling_sacon import SaconDualEncoderModel, SaconProcessor
from modeling_sacon.utils.defaults import default_backbone_path


@pytest.fixture
def checkpoint(tmp_path, tiny_model, processor) -> Path:
    tiny_model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def load_model(path: Path):
    return SaconDualEncoderModel.from_pretrained(path)


def load_auto_model(path: Path):
    return AutoModel.from_pretrained(path)


def load_pipeline(path: Path):
    return pipeline("relation-classification", model=str(path), trust_remote_code=True, device="cpu")


def raises(load, error: type[Exception], pattern: str):
    """`pytest.raises` of `error` whose message starts with `pattern`; the pipeline wraps a model class's error in a
    ValueError that quotes it."""
    if load is load_pipeline:
        return pytest.raises((error, ValueError), match=pattern)
    return pytest.raises(error, match="^" + pattern)


def edit_config(path: Path, **values) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **values}))


def test_an_intact_checkpoint_loads_every_way(checkpoint):
    classify = load_pipeline(checkpoint)
    assert classify("[E1] Paris [/E1] is the capital of [E2] France [/E2] .", relations=[("capital of", ""), ("born in", "")])
    assert load_auto_model(checkpoint).config.label_pooling == "cls_mean"
    assert SaconProcessor.from_pretrained(checkpoint).marker_ids == AutoProcessor.from_pretrained(checkpoint).marker_ids


@pytest.mark.parametrize("load", [load_model, load_auto_model, load_pipeline])
def test_truncated_weights_name_the_file(checkpoint, load):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with raises(load, OSError, rf"{weights}: the model weights cannot be read \(Error while deserializing header: "
                                r"incomplete metadata, file not fully covered\); the file is truncated or corrupt"):
        load(checkpoint)


@pytest.mark.parametrize("load", [load_model, load_auto_model, load_pipeline])
@pytest.mark.parametrize("values, problem", [
    ({"label_pooling": "foo"}, r"label_pooling='foo' is unknown; choose one of \('cls_mean', 'cls', 'mean'\)"),
    ({"label_anchored_weight": -0.5}, r"label_anchored_weight must be a non-negative number, got -0.5"),
])
def test_an_invalid_config_value_names_the_file_and_the_option(checkpoint, load, values, problem):
    edit_config(checkpoint, **values)
    with raises(load, ValueError, rf"{checkpoint / 'config.json'}: {problem}"):
        load(checkpoint)


@pytest.mark.parametrize("load", [SaconProcessor.from_pretrained, AutoProcessor.from_pretrained, load_pipeline])
def test_a_tokenizer_without_the_markers_names_the_file_and_the_markers(checkpoint, load):
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the backbone's own tokenizer: no markers, no blank
        shutil.copy(Path(default_backbone_path()) / name, checkpoint / name)
    with raises(load, ValueError, rf"{checkpoint / 'tokenizer.json'}, {checkpoint / 'tokenizer_config.json'}: the "
                r"tokenizer of this SaCon checkpoint lacks the marker tokens \['\[E1\]', '\[/E1\]', '\[E2\]', '\[/E2\]', "
                r"'\[BLANK\]'\] that its model was trained with"):
        load(checkpoint)
    assert SaconProcessor.from_pretrained(default_backbone_path()).marker_ids  # a plain encoder's tokenizer gets them


def test_truncated_weights_of_a_hub_repository_name_the_cached_file(checkpoint, tmp_path):
    """A Hub id: the error names the file in the local cache (here a cache laid out by hand, loaded offline)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "cache" / "models--org--sacon" / "snapshots" / commit
    shutil.copytree(checkpoint, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(commit)
    assert load_model_from_cache(tmp_path / "cache").config.model_type == "sacon"
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(OSError, match=rf"^{weights}: the model weights cannot be read \(Error while deserializing header"):
        load_model_from_cache(tmp_path / "cache")


def load_model_from_cache(cache: Path):
    return SaconDualEncoderModel.from_pretrained("org/sacon", cache_dir=str(cache), local_files_only=True)
