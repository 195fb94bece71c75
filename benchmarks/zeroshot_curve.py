#!/usr/bin/env python
"""A training curve on RE-Matching's zero-shot splits: every checkpoint of one pre-training run, scored with the
protocol (`examples/evaluate_zeroshot.py`'s scoring and macro F1), so the table shows whether more steps would move
the zero-shot figures at all.

    python examples/pretrain.py --output_dir runs/long --max_steps 1500 --save_steps 250 --save_total_limit 10 \\
        --per_device_train_batch_size 64                                   # keep every checkpoint of a longer run
    python benchmarks/zeroshot_curve.py --run_dir runs/long --output_json curve.json        # the ori splits
    python benchmarks/zeroshot_curve.py --run_dir runs/long42 --splits 'zeroshot/fewrel_rel2id_*_42.json'

Each checkpoint's recorded pre-training relations are checked against the splits' test relations (a checkpoint that
saw one is refused, naming it), as the evaluator does. The sentences of each point are `step x train_batch_size` from
the checkpoint's trainer state (one process's share under several processes). A curve of one run with a learning-rate
schedule over all its steps is not a set of shorter runs: its middle points were taken at a higher learning rate than
a run of that length ends with.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import datasets
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.harness`
import benchmarks.harness  # noqa: E402,F401  (the development data directory, unless SACON_DATA_DIR is set)
from modeling_sacon.data import load_fewrel_json, load_label_table, resolve_data_path
from modeling_sacon.fewshot.zeroshot_protocol import (
    ZeroShotEvaluator, find_split_files, load_pretraining_relations, load_zeroshot_split, summarize,
)
from modeling_sacon.utils.loading import load_sacon_model

from benchmarks.harness.zeroshot import LABEL_FILE, SENTENCE_FILES as FEWREL_FILES  # noqa: E402  (the block's test data)

DEFAULT_SPLITS = "zeroshot/fewrel_rel2id_*_ori.json"
TRAINER_STATE = "trainer_state.json"


def curve_points(run_dir: str | Path) -> list[tuple[Path, dict]]:
    """(directory, trainer state) of every `checkpoint-N` of `run_dir` by step, then `run_dir` itself when it holds a
    saved model of a later step (a run whose last step was not a multiple of --save_steps)."""
    run_dir = Path(run_dir)
    points = []
    for directory in [*run_dir.glob("checkpoint-*"), run_dir]:
        if directory != run_dir and not re.fullmatch(r"checkpoint-\d+", directory.name):
            continue
        state_file = directory / TRAINER_STATE
        if not (state_file.is_file() and (directory / "config.json").is_file()):
            continue  # an unfinished checkpoint (killed while saving), or a run that has not ended
        try:
            state = json.loads(state_file.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{state_file}: not a JSON Trainer state ({error})") from None
        if not isinstance(state, dict) or "global_step" not in state:
            raise ValueError(f"{state_file}: field 'global_step' missing: not a Trainer state")
        points.append((directory, state))
    points.sort(key=lambda point: (point[1]["global_step"], point[0] == run_dir))
    unique = [p for i, p in enumerate(points) if i == 0 or p[1]["global_step"] != points[i - 1][1]["global_step"]]
    if not unique:
        raise FileNotFoundError(f"{run_dir}: no checkpoint-N directory with a model and {TRAINER_STATE}")
    return unique


@torch.no_grad()
def score_point(directory: Path, splits, sources, label_table, batch_size: int) -> dict:
    """One checkpoint's F1 per split (%) and mean F1 per m, refusing it if it was pre-trained on a test relation."""
    model, processor = load_sacon_model(str(directory))
    evaluator = ZeroShotEvaluator(
        model.eval(), processor, sources, label_table, pretraining_relations=load_pretraining_relations(directory),
        checkpoint=str(directory), batch_size=batch_size,
    )
    results = evaluator.evaluate(splits)
    return {
        "per_split": {r.split: round(100 * r.f1, 2) for r in results},
        "mean_f1": {str(m): round(100 * entry["f1"]["mean"], 2) for m, entry in summarize(results).items()},
    }


def markdown(result: dict) -> str:
    ms = list(result["points"][0]["mean_f1"]) if result["points"] else []
    lines = ["| step | sentences | " + " | ".join(f"m={m} F1 (%)" for m in ms) + " |", "|---:|---:|" + "---:|" * len(ms)]
    for point in result["points"]:
        lines.append(f"| {point['step']} | {point['sentences']} | " + " | ".join(f"{point['mean_f1'][m]:.2f}" for m in ms) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", required=True, help="an examples/pretrain.py --output_dir with its checkpoints")
    parser.add_argument("--splits", nargs="+", default=[DEFAULT_SPLITS], help="split files or globs (in --data_dir)")
    parser.add_argument("--data_dir", default=None, help="default: SACON_DATA_DIR (the data beside the checkout)")
    parser.add_argument("--fewrel_files", nargs="+", default=list(FEWREL_FILES),
                        help="FewRel JSON files of the test sentences (in --data_dir unless found as given)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--output_json", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    points = curve_points(args.run_dir)  # before any data is read: a wrong --run_dir fails at once
    splits = sorted((load_zeroshot_split(f) for f in find_split_files(args.splits, args.data_dir)), key=lambda s: (s.m, s.name))
    label_table = load_label_table([resolve_data_path(LABEL_FILE, args.data_dir)])
    sources = [load_fewrel_json([resolve_data_path(f, args.data_dir) for f in args.fewrel_files])]
    result = {"run_dir": str(args.run_dir), "splits": [s.key for s in splits], "points": []}
    for directory, state in points:
        step = state["global_step"]
        point = {"checkpoint": directory.name, "step": step, "sentences": step * state.get("train_batch_size", 0),
                 **score_point(directory, splits, sources, label_table, args.batch_size)}
        result["points"].append(point)
        print(f"{directory.name}: step {step}, mean F1 " + ", ".join(f"m={m} {v:.2f}" for m, v in point["mean_f1"].items()),
              flush=True)
    print(markdown(result))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
