#!/usr/bin/env python
"""Move a trained SaCon checkpoint's label encoder back toward its backbone (WiSE-FT) and save the result.

    python examples/interpolate_label_encoder.py --model_name_or_path outputs/sacon-minilm --weight 0.5 \\
        --output_dir outputs/sacon-minilm-wise

The label encoder's weights become `backbone + weight * (trained - backbone)`; the sentence encoder (few-shot
prototypes) is untouched. `--label_encoder_interpolation` of `examples/pretrain.py` does the same at the end of
training; this script applies it to a checkpoint already trained. The backbone is the label encoder's recorded
`_name_or_path` when that directory exists here, else give `--reference_model` (a directory or Hub id). The output
keeps the checkpoint's other files (model card, `pretraining_relations.json` for the zero-shot evaluator's
strictness check, model code) and records the weight as `label_encoder_interpolation` in config.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from modeling_sacon.training.interpolation import interpolate_label_encoder, load_reference_weights, recorded_label_backbone
from modeling_sacon.utils.loading import load_sacon_model

WEIGHT_FILES = (".safetensors", ".bin")  # rewritten by save_pretrained, never copied
NOT_COPIED = ("benchmark_spec.json",)  # the benchmark harness's record of the run that made the trained weights


def reference_of(model, given: str | None) -> str:
    """The backbone to interpolate toward: `given`, else the label encoder's recorded source if it exists here."""
    path = given or recorded_label_backbone(model)
    if path:
        return path
    recorded = getattr(model.config.label_config, "_name_or_path", "")
    raise SystemExit(f"interpolate_label_encoder.py: the label encoder was initialised from {recorded or 'an unrecorded backbone'!r}, "
                     "which is not a directory here: give --reference_model (e.g. sentence-transformers/all-MiniLM-L6-v2)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True,
                        help="a trained SaCon checkpoint directory (a Hub model: download it first, e.g. with "
                             "`huggingface-cli download ORG/NAME --local-dir DIR`)")
    parser.add_argument("--weight", type=float, required=True, help="0: the backbone's weights, 1: as trained")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--reference_model", default=None, help="the label encoder's backbone (default: recorded)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if not Path(args.model_name_or_path).is_dir():  # its card and pretraining_relations.json must come along
        raise SystemExit(f"interpolate_label_encoder.py: {args.model_name_or_path} is not a directory (download a Hub "
                         "model first: its card and recorded pre-training relations are copied with it)")
    if Path(args.output_dir).resolve() == Path(args.model_name_or_path).resolve():
        raise SystemExit("interpolate_label_encoder.py: --output_dir must differ from --model_name_or_path")
    model, processor = load_sacon_model(args.model_name_or_path)
    interpolate_label_encoder(model, load_reference_weights(reference_of(model, args.reference_model)), args.weight)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in Path(args.model_name_or_path).iterdir():  # the card, pretraining_relations.json, model code
        if path.is_file() and not path.name.endswith(WEIGHT_FILES) and path.name not in NOT_COPIED:
            shutil.copy2(path, out / path.name)
    card = out / "README.md"
    if card.is_file():  # the copied card describes the trained weights: say what changed
        card.write_text(card.read_text().rstrip("\n") + f"\n\nThe label encoder of this checkpoint was then interpolated with "
                        f"its backbone (WiSE-FT), weight {args.weight:g}: `examples/interpolate_label_encoder.py`.\n")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    print(f"label encoder interpolated with weight {args.weight:g} (in all: {model.config.label_encoder_interpolation:g}); "
          f"written to {out}")
    return str(out)


if __name__ == "__main__":
    main(sys.argv[1:])
