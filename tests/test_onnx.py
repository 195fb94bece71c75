"""examples/export_onnx.py: both towers in onnxruntime equal PyTorch's features, on batches of another shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from modeling_sacon import SaconConfig, SaconDualEncoderModel

from conftest import tiny_bert_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import export_onnx  # noqa: E402

EXPORTED_SENTENCES, EXPORTED_LABELS = export_onnx.EXAMPLE_SENTENCES, export_onnx.EXAMPLE_LABELS

SENTENCES = [  # 4 rows (the export used 2), one longer than every export example
    {"tokens": "Marie Curie was born in Warsaw .".split(), "h": ["Marie Curie", "", [[0, 1]]], "t": ["Warsaw", "", [[5]]]},
    {"tokens": "It rains .".split(), "h": ["It", "", [[0]]], "t": ["rains", "", [[1]]]},
    {"tokens": ("The river , which rises in the Black Forest and crosses ten countries on its long way east , "
                "finally drains into the Black Sea near the delta town of Sulina .").split(),
     "h": ["river", "", [[1]]], "t": ["Black Sea", "", [[23, 24]]]},
    {"tokens": "Oslo is the capital of Norway .".split(), "h": ["Oslo", "", [[0]]], "t": ["Norway", "", [[5]]]},
]
LABELS = [("headquarters location", "city where an organization's headquarters is or has been situated"),
          ("sibling", "subject has the object as their sibling"), ("member of", "organization or club"),
          ("located in or next to body of water", "sea, lake, river or stream")]


@pytest.fixture(scope="module")
def exported(processor, tmp_path_factory) -> tuple[SaconDualEncoderModel, Path, dict[str, float]]:
    """A tiny random SaCon checkpoint, exported by the script's main() (load, export, self-check)."""
    torch.manual_seed(0)
    bert = tiny_bert_config(len(processor.tokenizer))
    bert.num_hidden_layers = 1  # every op kind is in one layer; tracing time grows with the layer count
    config = SaconConfig(sentence_config=bert.to_dict())
    model = SaconDualEncoderModel(config).eval()
    checkpoint, output_dir = tmp_path_factory.mktemp("ckpt"), tmp_path_factory.mktemp("onnx")
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    deviations = export_onnx.main(["--model_name_or_path", str(checkpoint), "--output_dir", str(output_dir)])
    return model, output_dir, deviations


def open_session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(path: Path, encoding) -> list[np.ndarray]:
    return open_session(path).run(None, {name: tensor.numpy() for name, tensor in encoding.items()})


@pytest.mark.parametrize("tower", ["sentence", "label"])
def test_onnx_tower_equals_pytorch_on_another_shape(exported, processor, tower):
    """4 padded rows, longer than the export's 2: dynamic axes and the mask hold. Both towers run packed in PyTorch
    (`pack_sentences`, `pack_label_texts`) and padded in ONNX: same features."""
    model, output_dir, _ = exported
    assert model.config.pack_sentences and model.config.pack_label_texts  # the export switched packing off while tracing only
    if tower == "sentence":
        encoding, export_encoding = processor.encode_instances(SENTENCES), processor.encode_instances(EXPORTED_SENTENCES)
        get_features = model.get_sentence_features
    else:
        encoding, export_encoding = processor.encode_labels(LABELS), processor.encode_labels(EXPORTED_LABELS)
        get_features = model.get_label_features
    assert encoding["input_ids"].shape[0] != export_encoding["input_ids"].shape[0]
    assert encoding["input_ids"].shape[1] > export_encoding["input_ids"].shape[1]
    assert not bool(encoding["attention_mask"].all())  # padded rows: the mask must really be applied
    features, embeds = run(output_dir / f"{tower}_encoder.onnx", encoding)
    with torch.no_grad():
        expected = get_features(**encoding)
    assert features.shape == (4, 64)
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(embeds, torch.nn.functional.normalize(expected, dim=-1).numpy(), atol=1e-4, rtol=0)


def test_graph_inputs_are_the_processors_keys(exported):
    _, output_dir, deviations = exported
    for tower, inputs in (("sentence", ["input_ids", "attention_mask", "entity_positions"]),
                          ("label", ["input_ids", "attention_mask"])):
        graph_inputs = open_session(output_dir / f"{tower}_encoder.onnx").get_inputs()
        assert [i.name for i in graph_inputs] == inputs
        assert graph_inputs[0].shape == ["batch", "sequence"]
    assert set(deviations) == {"sentence_features", "sentence_embeds", "label_features", "label_embeds"}
    assert max(deviations.values()) < 1e-4


def readme_snippet() -> str:
    """The python block of docs/onnx.md ("Export to ONNX"), verbatim."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "onnx.md").read_text()
    section = readme[readme.index("# Export to ONNX"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]


# prints the snippet's inputs and embeddings, so the test can recompute them in PyTorch
REPORT_SNIPPET_VALUES = """
import json
values = {**sentences, **{f"label_{k}": v for k, v in labels.items()}, "s": s, "l": l}
print(json.dumps({k: v.tolist() for k, v in values.items()}))
"""


def test_readme_snippet_runs_without_the_package(exported, tmp_path):
    """The README's usage, on this export, in an interpreter where `modeling_sacon` cannot be imported."""
    model, output_dir, _ = exported
    snippet = readme_snippet().replace('"outputs/sacon-minilm-onnx"', repr(str(output_dir)))
    code = f"import sys\nsys.modules['modeling_sacon'] = None\n{snippet}{REPORT_SNIPPET_VALUES}"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = {k: torch.tensor(v) for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
    with torch.no_grad():
        sentence = model.get_sentence_features(out["input_ids"], out["attention_mask"], out["entity_positions"])
        label = model.get_label_features(out["label_input_ids"], out["label_attention_mask"])
    torch.testing.assert_close(out["s"], torch.nn.functional.normalize(sentence, dim=-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(out["l"], torch.nn.functional.normalize(label, dim=-1), atol=1e-4, rtol=0)
