#!/usr/bin/env python
"""Regenerates every number of the README's Results section.

    python benchmarks/run_all.py --budget cpu                  # MiniLM on 2 CPU cores (~3.6 h on idle cores; resumes)
    python benchmarks/run_all.py --budget gpu                  # bert-base-uncased, bf16, longer runs, one GPU
    python benchmarks/run_all.py --budget smoke --output_dir /tmp/bench   # tiny model: checks the harness (~1 min)
    python benchmarks/run_all.py --budget cpu --only speed     # one section (others are reused if stored)
    python benchmarks/run_all.py --budget cpu --only zeroshot  # the zero-shot block (~2 h on idle cores; not a default)
    python benchmarks/run_all.py --budget cpu --no_training    # evaluate and report the stored runs, start none
    python benchmarks/run_all.py --budget cpu --set pretrain_steps=150 --set seeds=1,2,3   # resize a budget

Writes `results.json` and `results.md` (the Results section) to `--output_dir` (default
`benchmarks/results/<budget>`). Every unit (a pre-training run, a fine-tuning run, an evaluation, a speed
measurement) stores its result under `<output_dir>/units/` and is skipped when stored with the same
specification, so an interrupted run continues where it stopped (a pre-training run also resumes from its last
checkpoint); `--force` recomputes everything. Budgets and their time arithmetic: `benchmarks/budgets.py`.
The zero-shot block (RE-Matching's FewRel splits, five pre-training runs) has its own budget and runs only when
`--only` names it; once stored, every later invocation reports it. With the default output directory, each block's
summary goes beside it: the main table and speed to `benchmarks/results/<budget>.{json,md}`, the ablations to
`<budget>_ablations.{json,md}`, the zero-shot block to `<budget>_zeroshot.{json,md}` (`zeroshot_variant`: another
seeded mode, batch size, training data or precision than the budget's has its own file); a block run alone rewrites only its own.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.harness`

from benchmarks.harness.budgets import BUDGETS, CPU_PLANNING, Budget, estimate, estimate_zeroshot  # noqa: E402
from benchmarks.harness.common import REPO_ROOT, UnitStore, git_commit, log, machine_info, now_iso, write_json  # noqa: E402

SECTIONS = ("quality", "ablations", "speed", "zeroshot")
DEFAULT_SECTIONS = ("quality", "ablations", "speed")  # the zero-shot block has its own budget: named to run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--output_dir", type=Path, default=None, help="default: benchmarks/results/<budget>")
    parser.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma-separated sections to compute ({', '.join(SECTIONS)}; default "
                             f"{','.join(DEFAULT_SECTIONS)}); stored units of the others are still reported")
    parser.add_argument("--force", action="store_true", help="recompute every unit of the selected sections")
    parser.add_argument("--no_training", action="store_true",
                        help="start no training run: evaluate the stored runs and report (a run cut short, e.g. by the "
                             "end of a working session; rerun without it to continue)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a budget field (see benchmarks/budgets.py), e.g. pretrain_steps=150")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    overrides = {}
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    try:
        args.budget_obj = BUDGETS[args.budget].with_overrides(overrides)
    except ValueError as err:
        parser.error(str(err))
    if args.output_dir is None:
        args.output_dir = default_output_dir(args.budget)
    return args


def zeroshot_variant(budget: Budget) -> str:
    """The zero-shot summary's file-name suffix: "" at the budget's own block, else `_<mode>` for another seeded
    pre-training mode, `_batch<N>` for another batch size, `_fewrel` (or `_corpus`) for FewRel's training relations
    added to the corpus (or not), `_bf16` (or `_fp32`) for bf16 autocast, `_locked` (or `_unlocked`) for a locked
    label encoder where the budget does the other, and `_wise<W>` for label encoders interpolated at W before scoring,
    so that each variant measured can be committed."""
    default = BUDGETS[budget.name]
    suffix = "" if budget.zeroshot_pretraining == default.zeroshot_pretraining else f"_{budget.zeroshot_pretraining}"
    batch = budget.zeroshot_pretrain_batch_size
    suffix += "" if batch == default.zeroshot_pretrain_batch_size else f"_batch{batch}"
    if budget.zeroshot_fewrel_training != default.zeroshot_fewrel_training:
        suffix += "_fewrel" if budget.zeroshot_fewrel_training else "_corpus"
    if budget.zeroshot_bf16 != default.zeroshot_bf16:
        suffix += "_bf16" if budget.zeroshot_bf16 else "_fp32"
    if budget.zeroshot_locked_labels != default.zeroshot_locked_labels:
        suffix += "_locked" if budget.zeroshot_locked_labels else "_unlocked"
    if budget.zeroshot_label_interpolation != default.zeroshot_label_interpolation:
        suffix += f"_wise{budget.zeroshot_label_interpolation:g}"
    return suffix


def committed_summaries(budget: str, sections: list[str], results: dict, missing: list[str],
                        zeroshot_suffix: str = "") -> dict[str, dict]:
    """The summaries an invocation writes beside `benchmarks/results/<budget>/`, by file stem, one per block: `<budget>`
    (the main table and speed), `<budget>_ablations` (ablations and data scaling) and `<budget>_zeroshot<zeroshot_suffix>`
    (`zeroshot_variant`). Each holds only its own sections and missing units (its own, and the runs it shares with
    another block, e.g. the ablations' `batch_64` = row (c)'s seed-1 run), and is written only when one of its
    sections is computed here: a block run alone (each takes hours) must not overwrite another block's summary with
    units this output directory may not hold."""

    def missing_of(own: tuple[str, ...]) -> list[str]:
        shared = {name for section in own for name in (results.get(section) or {}).get("training_units", [])}
        return [unit for unit in missing if unit.split("/")[0] in own or unit in shared]

    blocks = {budget: ("quality", "speed"), f"{budget}_ablations": ("ablations",),
              f"{budget}_zeroshot{zeroshot_suffix}": ("zeroshot",)}
    return {
        name: {**results, **{section: None for section in SECTIONS if section not in own},
               "units": {**results["units"], "missing": missing_of(own)},
               "summary_file": f"benchmarks/results/{name}.json"}
        for name, own in blocks.items() if set(own) & set(sections)
    }


def default_output_dir(budget: str) -> Path:
    """`benchmarks/results/<budget>`: the output directory whose summaries are committed beside it."""
    return REPO_ROOT / "benchmarks" / "results" / budget


def _as_typed(raw_argv: list[str], output_dir: Path, budget: Budget) -> list[str]:
    """The command line without an `--output_dir` that is the default one (reached through a link, say): the summary
    records the command a user types for it."""
    if output_dir != default_output_dir(budget.name).resolve():
        return raw_argv
    kept, skip = [], False
    for token in raw_argv:
        if skip:
            skip = False
        elif token == "--output_dir":
            skip = True
        elif not token.startswith("--output_dir="):
            kept.append(token)
    return kept


def main(argv: list[str] | None = None) -> dict:
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(raw_argv)
    budget = args.budget_obj
    if budget.threads:  # before torch is imported, here and in every subprocess (they inherit the environment)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(budget.threads)
    output_dir = args.output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    import transformers  # noqa: E402  (after the thread settings)

    transformers.utils.logging.set_verbosity_error()  # the harness logs its units; runs log to <output_dir>/logs/
    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    started = now_iso()
    machine = machine_info()
    log(f"budget {budget.name}, output {output_dir}, sections {args.sections}, load average {machine['load_average']}")
    if budget.device.startswith("cuda") and not machine["cuda"]:
        raise SystemExit(f"budget {budget.name} needs a GPU (device {budget.device}); none is visible")

    plan = estimate(budget)
    plan_zeroshot = estimate_zeroshot(budget)
    if budget.name == "cpu":  # the planning constants are the CPU budget's (benchmarks/budgets.py)
        log("estimated on 2 idle cores: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in plan.items()))
        if "zeroshot" in args.sections:
            log("zero-shot block, estimated on 2 idle cores: "
                + ", ".join(f"{k} {v / 60:.1f} min" for k, v in plan_zeroshot.items()))
    store = UnitStore(output_dir, force=args.force)
    from benchmarks.harness.quality import run_ablations, run_quality  # noqa: E402  (imports torch lazily)
    from benchmarks.harness.speed import run_speed  # noqa: E402
    from benchmarks.harness.zeroshot import run_zeroshot, zeroshot_training_units  # noqa: E402

    results: dict = {
        "command": "python benchmarks/run_all.py " + " ".join(shlex.quote(a) for a in _as_typed(raw_argv, output_dir, budget)),
        "date": started,
        "commit": git_commit(),
        "budget": budget.as_dict(),
        "machine": machine,
        "sections_computed": args.sections,
        "estimate_s": {k: round(v) for k, v in plan.items()} if budget.name == "cpu" else None,
        "estimate_zeroshot_s": {k: round(v) for k, v in plan_zeroshot.items()} if budget.name == "cpu" else None,
        "planning_constants": CPU_PLANNING.__dict__ if budget.name == "cpu" else None,
    }
    if budget.processes == "section" and not args.no_training:
        # smoke: every training run of the computed sections in one process (start-up would dominate), up front
        from benchmarks.harness.quality import ablation_training_units, backbone_path, quality_training_units, run_training_units

        backbone = backbone_path(budget, output_dir, store)
        units = quality_training_units(budget, backbone, output_dir) if "quality" in args.sections else []
        units += ablation_training_units(budget, backbone, output_dir) if "ablations" in args.sections else []
        units += zeroshot_training_units(budget, backbone, output_dir) if "zeroshot" in args.sections else []
        units = list({unit["name"]: unit for unit in units}.values())  # `full` may be a main run (one run, not two)
        if units:
            run_training_units(units, store, budget, output_dir, "training")
    train = not args.no_training
    results["quality"] = run_quality(budget, output_dir, store, "quality" in args.sections, train)
    results["ablations"] = run_ablations(budget, output_dir, store, "ablations" in args.sections, train)
    results["speed"] = run_speed(budget, output_dir, store, "speed" in args.sections, results["quality"])
    results["zeroshot"] = run_zeroshot(budget, output_dir, store, "zeroshot" in args.sections, train)
    results["units"] = {"computed": store.computed, "cached": store.cached, "missing": store.missing, "failed": store.failed}
    stored = [store.load(name) for name in store.computed + store.cached]
    results["timing"] = {
        "total_wall_s": round(time.perf_counter() - start, 2),  # this invocation
        "units_wall_s": round(sum(entry["wall_s"] for entry in stored if entry), 2),  # every unit, whenever computed
        "finished": now_iso(),
        "load_average_at_end": machine_info()["load_average"],
    }

    from benchmarks.harness.report import render  # noqa: E402

    write_json(output_dir / "results.json", results)
    (output_dir / "results.md").write_text(render(results))
    default_dir = default_output_dir(budget.name).resolve()
    if output_dir == default_dir and budget.name != "smoke":
        # benchmarks/results/<budget>/ is git-ignored (models, logs); the summaries beside it are what gets committed
        for name, summary in committed_summaries(budget.name, args.sections, results, store.missing,
                                                  zeroshot_variant(budget)).items():
            write_json(default_dir.parent / f"{name}.json", summary)
            (default_dir.parent / f"{name}.md").write_text(render(summary))
    log(f"wrote {output_dir / 'results.json'} and {output_dir / 'results.md'} "
        f"({len(store.computed)} units computed, {len(store.cached)} reused, {results['timing']['total_wall_s']:.0f}s)")
    if store.failed:
        log(f"{len(store.failed)} unit(s) failed: {', '.join(store.failed)} (logs under {output_dir / 'logs'}); "
            "rerun the same command to retry them (finished units are kept)")
    return results


if __name__ == "__main__":
    sys.exit(1 if main()["units"]["failed"] else 0)
