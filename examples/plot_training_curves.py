"""Plot a Trainer run's training curves: every numeric key of `log_history` against the step.

    python examples/plot_training_curves.py outputs/sacon-minilm                   # latest state of a run
    python examples/plot_training_curves.py outputs/sacon-minilm/checkpoint-100 --output curves.png

The argument is a `trainer_state.json`, or an output / checkpoint directory holding one (else the state of its latest
`checkpoint-*`). One panel per key: losses, SaCon's loss terms, temperature, learning rate, eval metrics, ...
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger("plot_training_curves")

TRAINER_STATE_NAME = "trainer_state.json"
# log_history keys that are bookkeeping rather than curves (the x axis, throughput, totals)
CURVE_SKIP_KEYS = frozenset({"step", "epoch", "total_flos"})
CURVE_SKIP_SUFFIXES = ("_runtime", "_per_second")
SUMMARY_KEY = "train_runtime"  # marks the Trainer's final summary entry of log_history


# --------------------------------------------------------------------------- training curves


def find_trainer_state(path: str | Path) -> Path:
    """`trainer_state.json` itself, the one in a directory, or else the one of its latest `checkpoint-*`."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / TRAINER_STATE_NAME).is_file():
            return path / TRAINER_STATE_NAME
        checkpoints = [
            (int(m.group(1)), c) for c in path.glob("checkpoint-*")
            if (m := re.fullmatch(r"checkpoint-(\d+)", c.name)) and (c / TRAINER_STATE_NAME).is_file()
        ]
        if checkpoints:
            return max(checkpoints)[1] / TRAINER_STATE_NAME
    raise FileNotFoundError(f"no {TRAINER_STATE_NAME} at {path} (nor in a checkpoint-* directory under it)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def curve_series(log_history: Sequence[Mapping]) -> dict[str, tuple[list[float], list[float]]]:
    """{key: (steps, values)} for every numeric, finite value of `log_history`, keys in first-seen order.

    Skipped: the x axis (`step`) and `epoch`, throughput / runtime / FLOP bookkeeping, and the final summary entry.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, entry in enumerate(log_history):
        if SUMMARY_KEY in entry:  # the Trainer's end-of-training summary (train_loss = the run's mean): no curve
            continue
        step = entry.get("step", i)
        if not _is_number(step):
            step = i
        for key, value in entry.items():
            if key in CURVE_SKIP_KEYS or key.endswith(CURVE_SKIP_SUFFIXES) or not _is_number(value):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(step)
            values.append(float(value))
    return series


def plot_training_curves(log_history: Sequence[Mapping], path: str | Path, title: str = "training curves") -> list[str]:
    """One panel per numeric `log_history` key (loss terms, temperature, learning rate, eval metrics...) vs step.

    Returns the plotted keys; an empty history still writes a figure saying so.
    """
    series = curve_series(log_history)
    keys = list(series)
    ncols = min(3, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows + 0.4), dpi=100, squeeze=False,
                             layout="constrained")
    all_steps = [step for steps, _ in series.values() for step in steps]
    for ax, key in zip(axes.flat, keys):
        steps, values = series[key]
        ax.plot(steps, values, marker="o" if len(values) <= 30 else None, markersize=3, linewidth=1.4,
                color="tab:orange" if key.startswith("eval") else "tab:blue")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if min(all_steps) < max(all_steps):  # one step range for every panel: train and eval curves line up
            pad = 0.02 * (max(all_steps) - min(all_steps))
            ax.set_xlim(min(all_steps) - pad, max(all_steps) + pad)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if not keys:
        axes.flat[0].text(0.5, 0.5, "no numeric entries in log_history", ha="center", va="center")
    fig.suptitle(title, fontsize=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return keys


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trainer_state", help="trainer_state.json, or an output / checkpoint directory holding one")
    parser.add_argument("--output", default="training_curves.png", help="the plot (PNG)")
    parser.add_argument("--title", default=None, help="plot title (default: names the run's directory)")
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    """Returns the path of the PNG written."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = build_parser().parse_args(argv)
    state_path = find_trainer_state(args.trainer_state)
    history = json.loads(state_path.read_text()).get("log_history", [])
    keys = plot_training_curves(history, args.output, title=args.title or f"training curves: {state_path.parent.name}")
    logger.info("wrote %s (%d curves: %s)", args.output, len(keys), ", ".join(keys))
    return str(args.output)


if __name__ == "__main__":
    main(sys.argv[1:])
