"""Model cards tell what the run did: MLM per tower from the config, blanking and MLM probability from the collator,
counts from the training set, steps and batch from the arguments; and an installed wheel (no checkout) renders one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling_sacon import SaconConfig, SaconDualEncoderModel
from modeling_sacon.data.collator import SaconPretrainingCollator
from modeling_sacon.training.model_card import render_model_card, update_model_card_results
from modeling_sacon.training.trainer import SaconTrainer, SaconTrainingArguments

from conftest import tiny_bert_config
from test_collator import synthetic_dataset

REPO = Path(__file__).resolve().parent.parent
BOTH_MLM = "masked language modelling on both encoders"
NO_MLM = "No masked language modelling"


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(num_relations=6, per_relation=4)  # 24 rows of 6 relations


def card_of_run(processor, data, tmp_path, *, sentence_mlm: float, label_mlm: float, blank: float, mlm: float,
                fields=None, steps: int = 1) -> str:
    """Train a tiny model `steps` steps with these options and return the card `create_model_card` writes."""
    dataset, table = data
    torch.manual_seed(0)
    config = SaconConfig(sentence_config=tiny_bert_config(len(processor.tokenizer)).to_dict(),
                         sentence_mlm_weight=sentence_mlm, label_mlm_weight=label_mlm)
    args = SaconTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False,
        logging_steps=1,
    )
    collator = SaconPretrainingCollator(processor, table, blank_probability=blank, mlm_probability=mlm,
                                        sentence_mlm=sentence_mlm > 0, label_mlm=label_mlm > 0)
    trainer = SaconTrainer(model=SaconDualEncoderModel(config), args=args, train_dataset=dataset, data_collator=collator,
                           processing_class=processor, model_card_fields=fields)
    with torch.enable_grad():
        trainer.train()
    trainer.create_model_card()
    return (tmp_path / "run" / "README.md").read_text()


def flat(card) -> str:
    """The card's text with every run of whitespace one space (the template wraps its prose)."""
    return " ".join(str(card).split())


def protocol_row(card: str, option: str) -> str:
    (row,) = [line for line in card.splitlines() if line.startswith(f"| {option} |")]
    return row.split("|")[2].strip()


def test_card_without_mlm_and_blanking_from_the_collator(processor, data, tmp_path, one_thread):
    card = card_of_run(processor, data, tmp_path, sentence_mlm=0.0, label_mlm=0.0, blank=0.3, mlm=0.15, steps=2)
    assert protocol_row(card, "optimizer steps") == "2" and protocol_row(card, "batch size per process") == "4"
    assert protocol_row(card, "batches") == "shuffled" and protocol_row(card, "learning rate (encoders)") == "0.001"
    card = flat(card)
    assert NO_MLM in card and BOTH_MLM not in card and "probability 0.15" not in card
    assert "`[BLANK]` with probability 0.3," in card and "0.7" not in card
    assert "The corpus has 6 relations and 24 instances." in card
    assert "(two independent encoders: one for sentences, one for labels)" in card
    assert "The pre-training corpus was not recorded." in card  # nothing given: no embedded-corpus text claimed
    assert "None of the FewRel evaluation relations" not in card


def test_card_with_one_mlm_tower_and_explicit_fields(processor, data, tmp_path, one_thread):
    card = card_of_run(processor, data, tmp_path, sentence_mlm=1.0, label_mlm=0.0, blank=0.0, mlm=0.2,
                       fields={"mlm_probability": 0.25, "corpus_description": "Six synthetic relations.",
                               "excludes_fewrel_eval": True})
    card = flat(card)
    assert "masked language modelling on the sentence encoder only (weights 1 (sentences) and 0 (labels)" in card
    assert "tokens chosen with probability 0.25;" in card  # the explicit field wins over the collator's 0.2
    assert NO_MLM not in card and BOTH_MLM not in card
    assert "Entity mentions are never blanked." in card and "[BLANK]` with probability" not in card
    assert "Six synthetic relations." in card and "None of the FewRel evaluation relations" in card


def test_rendered_card_says_nothing_it_was_not_told():
    card = flat(render_model_card(model_name="bare"))
    assert "masked language modelling" not in card and "[BLANK]` with probability" not in card
    both = flat(render_model_card(model_name="mlm", sentence_mlm_weight=1.0, label_mlm_weight=0.5, mlm_probability=0.15,
                                 blank_probability=0.7, share_encoders=True))
    assert "masked language modelling on both encoders (weights 1 (sentences) and 0.5 (labels); tokens chosen with " \
           "probability 0.15;" in both
    assert "`[BLANK]` with probability 0.7," in both and "(one encoder shared by sentences and labels)" in both


def test_fresh_card_from_evaluation_reads_the_checkpoint_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"sentence_mlm_weight": 0.0, "label_mlm_weight": 0.0}))
    card = flat(update_model_card_results(tmp_path, {"5-1": {"accuracy": 0.5, "ci95": 0.01, "episodes": 10}}))
    assert NO_MLM in card and "| 5-1 | val_wiki | prototype | 50.00 | ± 1.00 | 10 |" in card


def test_installed_wheel_renders_a_card_outside_the_checkout(tmp_path):
    """The template is package data: a wheel installed into a bare target directory renders cards on its own."""
    source = tmp_path / "source"  # a copy, so building writes no build/ or egg-info into the checkout
    shutil.copytree(REPO / "modeling_sacon", source / "modeling_sacon", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("modeling_sacon-*.whl")
    target = tmp_path / "target"
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = (
        "import modeling_sacon, sys\n"
        "from modeling_sacon.training.model_card import default_template_path, render_model_card\n"
        "assert modeling_sacon.__file__.startswith(sys.argv[1]), modeling_sacon.__file__\n"
        "assert str(default_template_path()).startswith(sys.argv[1])\n"
        "print(render_model_card(model_name='wheel-card', sentence_mlm_weight=0.0, label_mlm_weight=0.0,"
        " blank_probability=0.3))\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "SACON_CARD_TEMPLATE")}
    env["PYTHONPATH"] = str(target)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-c", code, str(target)], cwd=elsewhere, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "# wheel-card" in result.stdout and NO_MLM in result.stdout and "probability 0.3," in result.stdout
