"""The objective pinned: loss terms and gradients of one fixed tiny batch, plain and cached (GradCache) paths.

`tests/data/objective_pin.json` holds the values this file computed before the objective was made one component
(`python tests/test_objective_pin.py --record` writes it; re-record only for an intended change of the objective).
The batch is built by hand (fixed sentences, fixed MLM positions) and the loss weights are all different from
their defaults, so a swapped weight or a dropped term moves a pinned value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from modeling_sacon import SaconConfig, SaconDualEncoderModel, SaconProcessor
from modeling_sacon.utils.defaults import default_backbone_path

from conftest import tiny_bert_config

PIN_FILE = Path(__file__).parent / "data" / "objective_pin.json"
TERMS = ("loss", "contrastive_loss", "sentence_anchored_loss", "label_anchored_loss", "sentence_mlm_loss", "label_mlm_loss")
WEIGHTS = dict(sentence_anchored_weight=0.7, label_anchored_weight=1.3, sentence_mlm_weight=0.5, label_mlm_weight=0.25)
SENTENCES = [  # (text with markers, relation index): 3 relations, one with 3 sentences, one with 1
    ("[E1] Paris [/E1] is the capital of [E2] France [/E2] .", 0),
    ("[E1] Rome [/E1] , capital city of [E2] Italy [/E2] , hosts the summit .", 0),
    ("[E2] Spain [/E2] moved its capital to [E1] Madrid [/E1] in 1561 .", 0),
    ("[E1] Marie Curie [/E1] was born in [E2] Warsaw [/E2] .", 1),
    ("the novelist [E1] Tolstoy [/E1] , born at [E2] Yasnaya Polyana [/E2] , wrote War and Peace .", 1),
    ("[E1] Apple [/E1] was founded by [E2] Steve Jobs [/E2] and Steve Wozniak .", 2),
]
LABELS = [
    ("capital", "seat of government of a country"),
    ("place of birth", "most specific known birth location of a person"),
    ("founded by", "founder or co-founder of this organization"),
]


def build_batch(processor: SaconProcessor) -> dict[str, torch.Tensor]:
    """Processor inputs plus MLM labels at fixed positions (every third real, maskable token), masked by hand."""
    batch = dict(processor([s for s, _ in SENTENCES], labels=LABELS))
    batch["labels"] = torch.tensor([r for _, r in SENTENCES])
    never = torch.tensor(sorted(processor.never_mask_ids))
    for ids_key, mask_key, labels_key in (("input_ids", "attention_mask", "mlm_labels"),
                                          ("label_input_ids", "label_attention_mask", "label_mlm_labels")):
        ids = batch[ids_key]
        maskable = ~torch.isin(ids, never) & batch[mask_key].bool()
        chosen = maskable & (maskable.cumsum(1) % 3 == 1)
        batch[labels_key] = torch.where(chosen, ids, torch.full_like(ids, -100))
        batch[ids_key] = ids.masked_fill(chosen, processor.tokenizer.mask_token_id)
    return batch


def build_model(processor: SaconProcessor) -> SaconDualEncoderModel:
    torch.manual_seed(0)
    bert = tiny_bert_config(len(processor.tokenizer))
    bert.hidden_dropout_prob = bert.attention_probs_dropout_prob = 0.0
    return SaconDualEncoderModel(SaconConfig(sentence_config=bert.to_dict(), **WEIGHTS)).train()


def fingerprint(model: SaconDualEncoderModel, output) -> dict:
    """Loss terms, and per parameter its gradient's sum, norm and first three entries."""
    grads = {}
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        g = param.grad.detach().double()
        grads[name] = [g.sum().item(), g.norm().item(), *g.flatten()[:3].tolist()]
    return {"terms": {t: float(getattr(output, t).detach()) for t in TERMS}, "grads": grads}


def run(path: str, processor: SaconProcessor) -> dict:
    model = build_model(processor)
    batch = build_batch(processor)
    if path == "plain":
        output = model(**batch, return_loss=True)
        output.loss.backward()
    else:
        from modeling_sacon.training.gradcache import cached_contrastive_step

        output = cached_contrastive_step(model, batch, mini_batch_size=2)
    return fingerprint(model, output)


def assert_close_grads(got: list[float], expected: list[float], name: str) -> None:
    """Within 1e-4 of the gradient's norm: a sum of many entries cancels, so a relative bound on it would be noise."""
    assert got == pytest.approx(expected, abs=1e-4 * expected[1] + 1e-9), name


@pytest.fixture(autouse=True)
def grad_enabled(one_thread):
    with torch.enable_grad():
        yield


@pytest.mark.parametrize("path", ["plain", "cached"])
def test_objective_matches_the_recorded_values(processor, path):
    expected = json.loads(PIN_FILE.read_text())[path]
    got = run(path, processor)
    for term, value in expected["terms"].items():
        assert got["terms"][term] == pytest.approx(value, rel=1e-5, abs=1e-6), term
    assert got["grads"].keys() == expected["grads"].keys()
    for name, values in expected["grads"].items():
        assert_close_grads(got["grads"][name], values, name)
    assert got["grads"]["logit_scale"][0] != 0.0  # the temperature gets a gradient: not a vacuous pin


def test_plain_and_cached_paths_agree(processor):
    plain, cached = run("plain", processor), run("cached", processor)
    for term in TERMS:
        assert cached["terms"][term] == pytest.approx(plain["terms"][term], rel=1e-5), term
    for name, values in plain["grads"].items():
        assert_close_grads(cached["grads"][name], values, name)


if __name__ == "__main__" and "--record" in sys.argv:
    torch.set_num_threads(1)
    proc = SaconProcessor.from_pretrained(default_backbone_path())
    with torch.enable_grad():
        PIN_FILE.write_text(json.dumps({p: run(p, proc) for p in ("plain", "cached")}, indent=1) + "\n")
    print(f"recorded {PIN_FILE}")
