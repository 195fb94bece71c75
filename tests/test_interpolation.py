"""WiSE-FT of the label encoder (modeling_sacon.training.interpolation) and its example script: hand-checked values,
the marker rows, refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from modeling_sacon import SaconDualEncoderModel
from modeling_sacon.training.interpolation import interpolate_label_encoder, interpolate_weights, load_reference_weights

from conftest import save_tiny_backbone

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import interpolate_label_encoder as script  # noqa: E402


class Small(nn.Module):
    def __init__(self, rows: int = 3):
        super().__init__()
        self.embeddings = nn.Embedding(rows, 2)
        self.dense = nn.Linear(2, 1)


def filled(module: nn.Module, value: float) -> nn.Module:
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.fill_(value)
    return module


def test_interpolate_weights_by_hand():
    """backbone 1, trained 5, weight 0.25: 1 + 0.25 x 4 = 2 everywhere the backbone has a value; the fourth
    embedding row (a token added after loading the backbone) keeps its trained 5."""
    module = filled(Small(rows=4), 5.0)
    reference = filled(Small(rows=3), 1.0).state_dict()
    reference["pooler.weight"] = torch.zeros(1)  # a tensor the module lacks: ignored
    interpolate_weights(module, reference, 0.25)
    assert module.embeddings.weight.tolist() == [[2.0, 2.0]] * 3 + [[5.0, 5.0]]
    assert module.dense.weight.tolist() == [[2.0, 2.0]] and module.dense.bias.tolist() == [2.0]


def test_interpolate_weights_ends():
    trained = Small()
    reference = Small().state_dict()
    kept = {k: v.clone() for k, v in trained.state_dict().items()}
    interpolate_weights(trained, reference, 1.0)
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in kept.items())
    interpolate_weights(trained, reference, 0.0)
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in reference.items())


@pytest.mark.parametrize("reference, weight, message", [
    ({"embeddings.weight": torch.zeros(3, 2)}, 0.5, r"the reference weights lack 2 tensor\(s\) of the module, e\.g\. 'dense\.weight'"),
    ({"embeddings.weight": torch.zeros(3, 2), "dense.weight": torch.zeros(2, 2), "dense.bias": torch.zeros(1)}, 0.5,
     r"module tensor 'dense\.weight' has shape \(1, 2\), the reference's \(2, 2\)"),
    (Small().state_dict(), 1.5, r"interpolation weight must be in \[0, 1\]"),
])
def test_interpolate_weights_refuses_a_foreign_reference(reference, weight, message):
    with pytest.raises(ValueError, match=message):
        interpolate_weights(Small(), reference, weight)


def test_only_the_label_encoder_moves_and_the_weight_is_recorded(tiny_model):
    reference = {k: torch.zeros_like(v) for k, v in tiny_model.label_encoder.state_dict().items()}
    label = {k: v.clone() for k, v in tiny_model.label_encoder.state_dict().items()}
    sentence = {k: v.clone() for k, v in tiny_model.sentence_encoder.state_dict().items()}
    interpolate_label_encoder(tiny_model, reference, 0.5)
    interpolate_label_encoder(tiny_model, reference, 0.5)
    for name, tensor in tiny_model.label_encoder.state_dict().items():
        torch.testing.assert_close(tensor, 0.25 * label[name])
    assert all(torch.equal(tiny_model.sentence_encoder.state_dict()[k], v) for k, v in sentence.items())
    assert tiny_model.config.label_encoder_interpolation == 0.25


def test_a_shared_encoder_is_refused(tiny_model):
    tiny_model.config.share_encoders = True
    with pytest.raises(ValueError, match=r"no label encoder of its own \(share_encoders\)"):
        interpolate_label_encoder(tiny_model, {}, 0.5)


def trained_checkpoint(tmp_path: Path, processor) -> tuple[Path, str]:
    """A SaCon composed from a saved tiny backbone, its label encoder then moved (as training would), saved with a
    card and its pre-training relations."""
    backbone = save_tiny_backbone(tmp_path / "backbone")
    model = SaconDualEncoderModel.from_encoders_pretrained(backbone, vocab_size=len(processor.tokenizer))
    torch.manual_seed(1)
    with torch.no_grad():
        for tensor in model.label_encoder.state_dict().values():
            tensor.add_(torch.randn_like(tensor))
    model.save_pretrained(tmp_path / "run")
    processor.save_pretrained(tmp_path / "run")
    (tmp_path / "run" / "README.md").write_text("# card\n")
    (tmp_path / "run" / "pretraining_relations.json").write_text(json.dumps(["P17"]))
    return tmp_path / "run", backbone


def test_script_writes_the_interpolated_checkpoint(tmp_path, processor):
    run, backbone = trained_checkpoint(tmp_path, processor)
    script.main(["--model_name_or_path", str(run), "--weight", "0.5", "--output_dir", str(tmp_path / "wise")])
    trained = SaconDualEncoderModel.from_pretrained(run)
    out = SaconDualEncoderModel.from_pretrained(tmp_path / "wise")
    start = load_reference_weights(backbone)
    vocab = start["embeddings.word_embeddings.weight"].shape[0]
    for name, end in trained.label_encoder.state_dict().items():
        got, reference = out.label_encoder.state_dict()[name], start[name]
        if "word_embeddings" in name:
            torch.testing.assert_close(got[vocab:], end[vocab:])
            got, end = got[:vocab], end[:vocab]
        torch.testing.assert_close(got, reference + 0.5 * (end - reference))
    for name, tensor in trained.sentence_encoder.state_dict().items():
        assert torch.equal(out.sentence_encoder.state_dict()[name], tensor)
    assert out.config.label_encoder_interpolation == 0.5
    assert json.loads((tmp_path / "wise" / "pretraining_relations.json").read_text()) == ["P17"]
    assert "interpolated with its backbone (WiSE-FT), weight 0.5" in (tmp_path / "wise" / "README.md").read_text()


def test_script_asks_for_the_backbone_when_its_recorded_path_is_gone(tmp_path, processor):
    run, backbone = trained_checkpoint(tmp_path, processor)
    config = json.loads((run / "config.json").read_text())
    config["label_config"]["_name_or_path"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"not-here is not a directory \(download a Hub model first"):
        script.main(["--model_name_or_path", "org/not-here", "--weight", "0.5", "--output_dir", str(tmp_path / "wise")])
    with pytest.raises(SystemExit, match=r"initialised from '.*gone', which is not a directory here: give --reference_model"):
        script.main(["--model_name_or_path", str(run), "--weight", "0.5", "--output_dir", str(tmp_path / "wise")])
    script.main(["--model_name_or_path", str(run), "--weight", "0.5", "--output_dir", str(tmp_path / "wise"),
                 "--reference_model", backbone])
    assert SaconDualEncoderModel.from_pretrained(tmp_path / "wise").config.label_encoder_interpolation == 0.5
