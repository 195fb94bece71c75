"""Export both towers of a SaCon checkpoint to ONNX, pooling included, for onnxruntime and other ONNX runtimes.

    python examples/export_onnx.py --model_name_or_path outputs/sacon-minilm --output_dir outputs/sacon-minilm-onnx
    python examples/export_onnx.py --output_dir outputs/sacon-onnx    # the offline default backbone, untrained

Writes `sentence_encoder.onnx` (sentence -> `[h ; t]` at the entity-start markers), `label_encoder.onnx` (relation
text -> `[CLS ; masked mean]`), each with its raw features and their L2-normalised form, and the processor
(tokenizer with the entity markers, marker and length options) beside them. Batch and sequence length are dynamic.
The inputs of each graph are the keys the processor returns, so `session.run(None, dict(encoding))` just works.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). The TorchScript exporter
(`dynamo=False`, deprecated) traces one example: transformers' attention-mask code branches on the mask's values,
so a graph traced on an unpadded batch silently drops the mask and gives wrong features on padded batches.
torch.export keeps those branches symbolic or refuses to export; it does not bake in the example.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn
from torch.export import Dim
from transformers import BatchEncoding, HfArgumentParser

from modeling_sacon import SaconDualEncoderModel, SaconProcessor
from modeling_sacon.utils.loading import load_sacon_model

logger = logging.getLogger("export_onnx")

SENTENCE_FILE, LABEL_FILE = "sentence_encoder.onnx", "label_encoder.onnx"
# export examples (two rows of different lengths, so the graph sees padding) and a check batch of another shape
EXAMPLE_SENTENCES = [
    {"tokens": "Paris is the capital of France .".split(), "h": ["Paris", "", [[0]]], "t": ["France", "", [[5]]]},
    {"tokens": "Apple was founded by Steve Jobs in a garage in Los Altos in 1976 .".split(),
     "h": ["Apple", "", [[0]]], "t": ["Steve Jobs", "", [[4, 5]]]},
]
CHECK_SENTENCES = [
    {"tokens": "Lyon lies in the south of France .".split(), "h": ["Lyon", "", [[0]]], "t": ["France", "", [[6]]]},
    {"tokens": "The Danube flows through Vienna , Bratislava , Budapest and Belgrade before it reaches the Black Sea ."
     .split(), "h": ["Danube", "", [[1]]], "t": ["Black Sea", "", [[15, 16]]]},
    {"tokens": "Ada Lovelace was born in London .".split(), "h": ["Ada Lovelace", "", [[0, 1]]], "t": ["London", "", [[5]]]},
]
EXAMPLE_LABELS = [("capital of", "country, state or region of which this is the capital"), ("founded by", "founder")]
CHECK_LABELS = [
    ("country", "sovereign state of this item"),
    ("place of birth", "most specific known birth location of a person, animal or fictional character"),
    ("mouth of the watercourse", "the body of water to which the watercourse drains"),
]


class SentenceTower(nn.Module):
    """`get_sentence_features` and its L2-normalised form, as one graph."""

    def __init__(self, model: SaconDualEncoderModel):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, entity_positions: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.get_sentence_features(input_ids, attention_mask, entity_positions, token_type_ids)
        return features, nn.functional.normalize(features, dim=-1)


class LabelTower(nn.Module):
    """`get_label_features` and its L2-normalised form, as one graph (export with label packing off)."""

    def __init__(self, model: SaconDualEncoderModel):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.get_label_features(input_ids, attention_mask, token_type_ids)
        return features, nn.functional.normalize(features, dim=-1)


def _export_tower(tower: nn.Module, encoding: BatchEncoding, outputs: list[str], path: Path, opset_version: int | None):
    """Export `tower` on `encoding`, every input dynamic in batch (and, if 2-D, sequence length)."""
    batch, length = Dim("batch"), Dim("sequence")
    dynamic_shapes = {name: {0: batch, 1: length} if name != "entity_positions" else {0: batch} for name in encoding}
    with warnings.catch_warnings():  # inputs sharing the "batch" axis is what we asked for, not a problem
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis")
        program = torch.onnx.export(
            tower.eval(), (), kwargs=dict(encoding), dynamo=True, dynamic_shapes=dynamic_shapes, output_names=outputs,
            opset_version=opset_version, verbose=False,
        )
    program.save(str(path), external_data=False)  # one self-contained file: towers up to BERT-large fit in 2 GB


def export_onnx(
    model: SaconDualEncoderModel, processor: SaconProcessor, output_dir: str | Path, opset_version: int | None = None
) -> dict[str, Path]:
    """Write both towers and the processor to `output_dir`; returns {"sentence": path, "label": path}.

    Both towers are exported on the plain padded path: `pack_sentences` / `pack_label_texts` re-pack rows by their
    lengths (a data-dependent step a static graph cannot hold) and give the same features up to float rounding anyway.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    paths = {"sentence": output_dir / SENTENCE_FILE, "label": output_dir / LABEL_FILE}
    packing = (model.config.pack_sentences, model.config.pack_label_texts)
    model.config.pack_sentences = model.config.pack_label_texts = False
    try:
        with torch.no_grad():
            _export_tower(SentenceTower(model), processor.encode_instances(EXAMPLE_SENTENCES),
                          ["sentence_features", "sentence_embeds"], paths["sentence"], opset_version)
            _export_tower(LabelTower(model), processor.encode_labels(EXAMPLE_LABELS),
                          ["label_features", "label_embeds"], paths["label"], opset_version)
    finally:
        model.config.pack_sentences, model.config.pack_label_texts = packing
    processor.save_pretrained(output_dir)
    return paths


def max_onnx_deviation(model: SaconDualEncoderModel, processor: SaconProcessor, paths: dict[str, Path]) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| per output on the check batches (another batch size and length than export's)."""
    deviations = {}
    for kind, encoding in (("sentence", processor.encode_instances(CHECK_SENTENCES)),
                           ("label", processor.encode_labels(CHECK_LABELS))):
        session = onnxruntime.InferenceSession(str(paths[kind]), providers=["CPUExecutionProvider"])
        got = session.run(None, {name: tensor.numpy() for name, tensor in encoding.items()})
        with torch.no_grad():
            tower = SentenceTower(model) if kind == "sentence" else LabelTower(model)
            expected = tower(**encoding)
        for output, value, reference in zip(session.get_outputs(), got, expected):
            deviations[output.name] = float(np.abs(value - reference.numpy()).max())
    return deviations


@dataclass
class ExportArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "a SaCon checkpoint; default: compose the offline default backbone (untrained)"}
    )
    output_dir: str = field(default="outputs/sacon-onnx", metadata={"help": "where the .onnx files and processor go"})
    opset_version: int | None = field(default=None, metadata={"help": "ONNX opset; default: the exporter's"})
    atol: float = field(default=1e-4, metadata={"help": "fail if onnxruntime and PyTorch differ by more than this"})


def main(argv: list[str] | None = None) -> dict[str, float]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    (args,) = HfArgumentParser(ExportArguments).parse_args_into_dataclasses(args=argv)

    # 1. Model and processor: a SaCon checkpoint (in float32, however it was saved), or two copies of the offline
    #    backbone composed on the spot.
    model, processor = load_sacon_model(args.model_name_or_path, dtype=torch.float32)

    # 2. Export both towers with their pooling, and the processor beside them.
    paths = export_onnx(model, processor, args.output_dir, args.opset_version)
    logger.info("wrote %s, %s and the processor", paths["sentence"], paths["label"])

    # 3. Check: onnxruntime against PyTorch on batches of another size and length than the export examples.
    deviations = max_onnx_deviation(model, processor, paths)
    logger.info("max |onnxruntime - PyTorch|: %s", ", ".join(f"{k} {v:.2e}" for k, v in deviations.items()))
    worst = max(deviations, key=deviations.get)
    if deviations[worst] > args.atol:
        raise SystemExit(f"{worst}: onnxruntime differs from PyTorch by {deviations[worst]:.2e} > atol {args.atol}")
    return deviations


if __name__ == "__main__":
    main(sys.argv[1:])
