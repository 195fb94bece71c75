#!/usr/bin/env python
"""Tune the pre-training recipe on val_wiki: one pre-training run per named recipe, then prototypes (5-1), zero-shot
(5-way) and label-augmented (5-1) scoring on the same seeded episodes, in a table.

    python benchmarks/recipe_sweep.py                                   # the recipes below, seed 1
    python benchmarks/recipe_sweep.py --only b64,b32_neg32              # a subset
    python benchmarks/recipe_sweep.py --recipe "mine=--max_steps 200 --learning_rate 1e-4"

Every run is the package command's `main(argv)` (`modeling_sacon.commands.pretrain`, without `examples/pretrain.py`'s
`CPU_BUDGET`) in its own subprocess (peak RSS from `os.wait4`), on top of its defaults, and every evaluation goes through `evaluate_fewrel.py`'s code path (`quality.evaluate_model`):
exactly what the benchmark table measures, on val_wiki only (tuning never looks at the hidden test relations, and
val_pubmed is left for the final table). Units are cached under `--output_dir/units/`: rerunning resumes.
Writes `sweep.json` and `sweep.md` there.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.harness`

from benchmarks.harness.common import UnitStore, fingerprint, log, run_worker, write_json
from benchmarks.harness.quality import evaluate_model
from benchmarks.harness.train_worker import script_defaults

# name -> (extra pretrain.py arguments, what it tests), on top of the package command's defaults (v2 corpus, plain
# shuffled batches of 32, learning rate 5e-5, blanking 0.7: not examples/pretrain.py's CPU_BUDGET; the length is the
# sweep's --steps, default 300). The `*_balanced*` recipes are the
# relation-balanced scheme, the default until the 500-step comparison in the README (`b32` against `b32_balanced`).
RECIPES: dict[str, tuple[str, str]] = {
    "b32": ("", "defaults: v2 corpus (912 relations), shuffled batches of 32, no MLM without a pretrained head"),
    "b32_dense": ("--corpus v2_dense", "the 105 dense relations only"),
    "b32_neg32": ("--label_negatives 32", "+32 label-side negatives per batch"),
    "b64": ("--per_device_train_batch_size 64", "batch 64"),
    "b64_neg64": ("--per_device_train_batch_size 64 --label_negatives 64",
                  "batch 64, +64 label-side negatives per batch"),
    "b32_lr1e-4": ("--learning_rate 1e-4", "batch 32, learning rate 1e-4"),
    "b64_lr1e-4": ("--per_device_train_batch_size 64 --learning_rate 1e-4", "batch 64, learning rate 1e-4"),
    "b64_lr2e-4": ("--per_device_train_batch_size 64 --learning_rate 2e-4", "batch 64, learning rate 2e-4"),
    "b64_lr1e-4_shared": ("--per_device_train_batch_size 64 --learning_rate 1e-4 --share_encoders True",
                          "batch 64, learning rate 1e-4, one encoder for sentences and labels"),
    "b64_lr1e-4_law0.5": ("--per_device_train_batch_size 64 --learning_rate 1e-4 --label_anchored_weight 0.5",
                          "batch 64, learning rate 1e-4, label-anchored InfoNCE at half weight"),
    "b32_blank0.3": ("--blank_probability 0.3",
                     "batch 32 (the main job's), entity mentions blanked with probability 0.3 (default 0.7)"),
    "b64_lr1e-4_blank0.3": ("--per_device_train_batch_size 64 --learning_rate 1e-4 --blank_probability 0.3",
                            "batch 64, learning rate 1e-4, entity mentions blanked with probability 0.3 (default 0.7)"),
    "b128_lr2e-4": ("--per_device_train_batch_size 128 --learning_rate 2e-4",
                    "batch 128, learning rate 2e-4 (with --steps 250: the computation of 500 steps of batch 64)"),
    "b32_balanced": ("--balanced_batches True", "relation-balanced: 16 relations x 2, long-tail share 0.125"),
    "b32_balanced_uniform": ("--balanced_batches True --dense_min_instances 0",
                             "relation-balanced, all 912 relations drawn alike"),
    "b32_balanced_dense": ("--balanced_batches True --corpus v2_dense", "relation-balanced, the 105 dense relations only"),
    "b64_balanced_dense": ("--balanced_batches True --per_device_train_batch_size 64 --corpus v2_dense",
                           "relation-balanced batch 64 (32 relations x 2), the 105 dense relations only"),
}
SETTINGS = "5-1,zs-5"
COLUMNS = (("prototype", "5-1", "5-1 prototypes"), ("prototype", "zs-5", "zero-shot 5-way"),
           ("label_augmented", "5-1", "5-1 label-augmented"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="benchmarks/results/sweep", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--pool_per_relation", type=int, default=None, help="episodes from the first N sentences per relation")
    parser.add_argument("--only", default="", help="comma-separated recipe names")
    parser.add_argument("--recipe", action="append", default=[], help="NAME=ARGS: an extra recipe")
    return parser.parse_args(argv)


def recipes_from(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    recipes = dict(RECIPES)
    for item in args.recipe:
        name, sep, extra = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--recipe {item!r}: expected NAME=ARGS")
        recipes[name] = (extra, f"custom: {extra}")
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in recipes]
        if unknown:
            raise SystemExit(f"unknown recipe(s) {unknown}; known: {sorted(recipes)}")
        recipes = {name: recipes[name] for name in wanted}
    return recipes


def run_recipe(name: str, extra: str, args: argparse.Namespace, store: UnitStore) -> dict | None:
    run_dir = args.output_dir / "runs" / name
    argv = ["--output_dir", str(run_dir), "--overwrite_output_dir", "True", "--seed", str(args.seed),
            "--max_steps", str(args.steps), "--save_strategy", "no", "--eval_fewrel", "none", "--report_to", "none",
            "--disable_tqdm", "True", "--logging_steps", "25", *shlex.split(extra)]
    spec = {"script": "pretrain", "argv": argv, "defaults": fingerprint(script_defaults("pretrain"))}

    def train() -> dict:
        result_path = args.output_dir / "units" / f"{name}.train-result.json"
        info = run_worker([{"name": name, "script": "pretrain", "argv": argv, "result_path": str(result_path)}],
                          args.output_dir / "logs" / f"{name}.log", args.output_dir / "specs" / f"{name}.json")
        return info

    trained = store.run(f"train-{name}", spec, train)
    if trained is None:
        return None
    eval_spec = {"model": name, "trained": trained["finished"], "settings": SETTINGS, "episodes": args.episodes,
                 "pool_per_relation": args.pool_per_relation}
    scored = store.run(f"eval-{name}", eval_spec, lambda: evaluate_model(
        "sacon", str(run_dir), settings=SETTINGS, pubmed_settings=None, methods=["prototype", "label_augmented"],
        episodes=args.episodes, seed=0, batch_size=128, pool_per_relation=args.pool_per_relation, device="cpu"))
    if scored is None:
        return None
    methods = scored["result"]["methods"]
    cells = {title: methods[method].get(setting) for method, setting, title in COLUMNS}
    return {"args": extra, "pretrain_wall_s": trained["result"]["process_wall_s"],
            "peak_rss_mb": trained["result"]["process_peak_rss_mb"],
            "columns": {title: None if c is None else {"accuracy": c["accuracy"], "ci95": c["ci95"]} for title, c in cells.items()}}


def render(rows: dict, args: argparse.Namespace, recipes: dict) -> str:
    titles = [title for _, _, title in COLUMNS]
    lines = [f"Recipe sweep: `python benchmarks/recipe_sweep.py` ({args.steps} steps, seed {args.seed}; val_wiki, "
             f"{args.episodes:,} episodes, episode seed 0; ± 95% CI over episodes)", "",
             "| recipe | arguments | " + " | ".join(titles) + " | pre-training |", "|---|---|" + "---:|" * (len(titles) + 1)]
    for name, row in rows.items():
        cells = [("—" if row["columns"][t] is None else f"{100 * row['columns'][t]['accuracy']:.2f} ± {100 * row['columns'][t]['ci95']:.2f}")
                 for t in titles]
        lines.append(f"| `{name}`: {recipes[name][1]} | `{row['args'] or '(defaults)'}` | " + " | ".join(cells)
                     + f" | {row['pretrain_wall_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    recipes = recipes_from(args)
    store = UnitStore(args.output_dir)
    rows = {}
    for name, (extra, _) in recipes.items():
        row = run_recipe(name, extra, args, store)
        if row is not None:
            rows[name] = row
            log(f"{name}: " + ", ".join(f"{t} {100 * c['accuracy']:.2f}" for t, c in row["columns"].items() if c))
    write_json(args.output_dir / "sweep.json", {"steps": args.steps, "seed": args.seed, "rows": rows})
    (args.output_dir / "sweep.md").write_text(render(rows, args, recipes))
    if store.failed:
        sys.exit(f"failed: {sorted(store.failed)}")
    return rows


if __name__ == "__main__":
    main()
