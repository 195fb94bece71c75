"""The benchmark harness (`benchmarks/run_all.py`) on its smoke budget, so that it cannot rot.

A tiny random BERT, a few optimizer steps, 20 episodes: the numbers mean nothing, the shapes of `results.json` and
`results.md` do. No timing is asserted.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


from benchmarks.harness import budgets, common  # noqa: E402  (the repository root is on sys.path: setup.cfg)

MAIN_ROWS = {"a", "b", "c", "d", "e_c", "e_d"}
MAIN_COLUMNS = {
    "val_wiki 5-1", "val_wiki 5-5", "val_wiki 10-1", "val_wiki 10-5", "val_wiki zero-shot 5-way",
    "val_wiki zero-shot 10-way", "val_wiki NOTA 5-1 (50%)", "val_pubmed 5-1", "val_pubmed 5-5",
}
ABLATIONS = {
    "full", "sentence_anchored_only", "label_anchored_only", "new_mlm_heads", "mean_reduction", "fixed_temperature",
    "hard_label_negatives",  # the zero-shot lever: nearest label texts as extra negatives
    "batch_4", "batch_16",  # smoke batch sizes 4 / 8 / 16 (cpu: 16 / 32 / 64)
    "balanced_batches",  # the default is the authors' shuffled scheme; ours is the variant
    "corpus_v1", "corpus_v2_dense",  # the data-scaling block (full: v2, dense + long tail)
}


def _run(output_dir: Path, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SACON_DATA_DIR": str(data_dir)}
    command = [sys.executable, "benchmarks/run_all.py", "--budget", "smoke", "--output_dir", str(output_dir),
               "--only", "quality,ablations,speed,zeroshot"]  # every section (the zero-shot block is not a default)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"run_all failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def _accuracy(cell: dict) -> float:
    assert 0.0 <= cell["mean"] <= 1.0, cell
    return cell["mean"]


def test_smoke_budget_end_to_end_and_resume(tmp_path, data_dir):
    output_dir = tmp_path / "bench"
    _run(output_dir, data_dir)
    results = json.loads((output_dir / "results.json").read_text())
    for key in ("command", "date", "budget", "machine", "quality", "ablations", "speed", "zeroshot", "units", "timing"):
        assert key in results, key
    assert results["budget"]["name"] == "smoke"
    assert results["machine"]["nproc"] >= 1 and results["machine"]["torch"]
    assert not results["units"]["missing"] and not results["units"]["failed"]

    quality = results["quality"]
    assert set(quality["columns"]) == MAIN_COLUMNS
    assert set(quality["rows"]) == MAIN_ROWS
    for name, row in quality["rows"].items():
        assert row["complete"], name
        assert set(row["columns"]) == MAIN_COLUMNS, name
        for cell in row["columns"].values():
            _accuracy(cell)
            assert cell["episodes"] == 20
    assert quality["rows"]["e_c"]["method"] == "label_augmented"
    assert set(quality["rows"]["c"]["columns"]["val_wiki 5-1"]["per_seed"]) == {"1"}
    assert set(quality["targets"]) == {"val_wiki zero-shot 5-way", "val_wiki 5-1, prototypes (c)",
                                       "val_wiki 5-1, label-augmented (e) on (c)", "val_pubmed 5-1"}
    assert all(isinstance(t["met"], bool) for t in quality["targets"].values())
    for name in ("quality/pretrain-seed1", "quality/finetune-seed1"):
        run = quality["training_runs"][name]
        assert run["peak_rss_mb"] > 0 and run["wall_s"] > 0

    ablations = results["ablations"]
    assert set(ablations["variants"]) == ABLATIONS
    for name, variant in ablations["variants"].items():
        assert set(variant["columns"]) == {"val_wiki 5-1", "val_wiki zero-shot 5-way"}, name
        for cell in variant["columns"].values():
            _accuracy(cell)
    assert ablations["variants"]["full"]["delta_vs_full_points"]["val_wiki 5-1"] == 0.0

    speed = results["speed"]
    step = speed["pretrain_step"]
    assert set(step["timings"]) == {"sacon_full", "sentence_only_cp_mlm", "sacon_without_label_dedup", "sacon_padded_label_texts"}
    assert step["ratio_full_over_sentence_only"] > 0 and isinstance(step["met"], bool)
    evaluation = speed["evaluation"]
    assert evaluation["accuracy_equal"], evaluation  # cached and re-encoded episodes score the same
    assert evaluation["ratio_scoring_only"] > 0 and evaluation["ratio_including_encoding"] > 0
    encoding = speed["encoding"]
    assert encoding["ratio"] > 0 and encoding["min_cosine_between_arms"] > 0.999  # same embeddings either way
    assert speed["pretrain_memory"]["peak_rss_mb_max"] > 0

    zeroshot = _check_zeroshot(results["zeroshot"], output_dir)

    markdown = (output_dir / "results.md").read_text()
    assert markdown.startswith("## Results")
    assert "python benchmarks/run_all.py --budget smoke" in markdown
    for heading in ("### Few-shot relation classification", "### Ablations", "### Data scaling", "### Speed and memory",
                    "### Zero-shot relation extraction"):
        assert heading in markdown
    assert "| model | val_wiki 5-1 |" in markdown and "(e) label-augmented scoring on (d)" in markdown
    assert "92.38" in markdown  # the paper's number, with how it differs
    # the zero-shot table: this project's mean ± std per m beside the published rows; m=15 is not in the smoke budget
    m5 = zeroshot["summary"]["5"]
    ours = f"| SaCon (this project) | tiny random BERT | these | {100 * m5['f1']['mean']:.2f} ± {100 * m5['f1']['std']:.2f} |"
    assert ours in markdown and "| not run |" in markdown.split(ours)[1].splitlines()[0]
    assert "| RE-Matching (Zhao et al., ACL 2023) | BERT-base |" in markdown and "92.58" in markdown

    # a second invocation reuses every unit: nothing is recomputed, no unit file is rewritten
    units = {path: path.stat().st_mtime_ns for path in (output_dir / "units").rglob("*.json")}
    assert len(units) == len(results["units"]["computed"]) + len(results["units"]["cached"])
    _run(output_dir, data_dir)
    again = json.loads((output_dir / "results.json").read_text())
    assert again["units"]["computed"] == []
    assert sorted(again["units"]["cached"]) == sorted(results["units"]["computed"] + results["units"]["cached"])
    assert {path: path.stat().st_mtime_ns for path in (output_dir / "units").rglob("*.json")} == units
    assert again["quality"]["rows"] == quality["rows"]
    assert again["zeroshot"]["per_split"] == zeroshot["per_split"]
    _check_zeroshot_partial(output_dir)
    _check_zeroshot_interpolated(output_dir, data_dir, zeroshot)

    # the step-overhead diagnostic runs on the same inputs (the smoke budget's tiny backbone)
    command = [sys.executable, "benchmarks/measure.py", "step_breakdown", "--backbone", str(output_dir / "backbone"),
               "--repeats", "1", "--warmup", "0"]
    breakdown = subprocess.run(command, cwd=REPO, env={**os.environ, "SACON_DATA_DIR": str(data_dir)},
                               capture_output=True, text=True, timeout=300)
    assert breakdown.returncode == 0, breakdown.stderr[-4000:]
    lines = breakdown.stdout.strip().splitlines()
    # a header, then per clock (wall, cpu) a title and one line per arm, the comparator first at +0.0%
    assert len(lines) == 1 + 2 * 7 and lines[0].startswith("threads "), lines
    for title in (1, 8):
        assert lines[title].startswith(("wall time", "cpu time")), lines
        assert lines[title + 1].endswith("(comparator)") and "+0.0%" in lines[title + 1], lines

    # the sentence-packing diagnostic: both arms give the same features before they are timed
    command = [sys.executable, "benchmarks/measure.py", "sentence_packing", "--backbone", str(output_dir / "backbone"),
               "--batches", "2", "--repeats", "1"]
    packing = subprocess.run(command, cwd=REPO, env={**os.environ, "SACON_DATA_DIR": str(data_dir)},
                             capture_output=True, text=True, timeout=300)
    assert packing.returncode == 0, packing.stderr[-4000:]
    header, timing = packing.stdout.strip().splitlines()
    share, difference = re.search(r"tokens \((\d+)%\); max \|feature difference\| packed vs padded (\S+)", header).groups()
    assert 20 < int(share) < 100 and float(difference) < 1e-4, header
    assert re.fullmatch(r"step, median of 2: padded [\d.]+ s, packed [\d.]+ s \([+-][\d.]+%\)", timing), timing


def _macro_prf_from_confusion(confusion: list[list[int]]) -> tuple[float, float, float]:
    """ZS-BERT's macro P/R/F1 recomputed from a [gold][predicted] count matrix: precision summed over gold relations,
    divided by the number of distinct predicted relations; recall by the number of gold relations."""
    n = len(confusion)
    predicted = [sum(confusion[g][p] for g in range(n)) for p in range(n)]
    gold = [sum(row) for row in confusion]
    precision = sum(confusion[r][r] / predicted[r] for r in range(n) if predicted[r]) / sum(1 for c in predicted if c)
    recall = sum(confusion[r][r] / gold[r] for r in range(n)) / n
    return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)


def _check_zeroshot(zeroshot: dict, output_dir: Path) -> dict:
    """Per-split P/R/F1 of the zero-shot evaluator (checked against its own confusion counts), the `ori` splits on row
    (c)'s seed-1 run (the block's argv), the seeded splits of one seed on one run without all their test and eval relations, and
    strictness as recorded by each run."""
    from modeling_sacon.data import get_data_dir
    from modeling_sacon.fewshot.zeroshot_protocol import (
        load_pretraining_relations,
        load_zeroshot_split,
    )

    assert set(zeroshot["per_split"]) == {"m5/ori", "m5/40", "m10/ori", "m10/40"}
    units = {}
    for key, split in zeroshot["per_split"].items():
        m, name = key.split("/")
        unit = "zeroshot/eval-ori" if name == "ori" else "zeroshot/eval-split40"
        units[key] = stored = next(s for s in json.loads(common.UnitStore(output_dir).path(unit).read_text())["result"]["splits"]
                                   if s["split"] == key)
        assert split["num_sentences"] == 5 * int(m[1:])  # tiny splits: 5 sentences per test relation
        precision, recall, f1 = _macro_prf_from_confusion(stored["confusion"])
        assert (split["precision"], split["recall"], split["f1"]) == pytest.approx((precision, recall, f1))
        assert split["checkpoint"] == ("quality/pretrain-seed1" if name == "ori" else "zeroshot/pretrain-split40")
        assert split["top_confusions"] == stored["top_confusions"][:3]  # the summary's, each a cell of the matrix
        for pair in split["top_confusions"]:
            gold, predicted = stored["relations"].index(pair["gold"]), stored["relations"].index(pair["predicted"])
            assert gold != predicted and stored["confusion"][gold][predicted] == pair["count"] > 0
    for m in ("5", "10"):
        entry = zeroshot["summary"][m]
        assert entry["n_splits"] == 2 and entry["missing"] == []
        values = [zeroshot["per_split"][f"m{m}/{name}"]["f1"] for name in ("ori", "40")]
        assert entry["f1"]["mean"] == pytest.approx(sum(values) / 2)
        assert entry["f1"]["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)  # sample std of two values
    run = output_dir / "runs" / "zeroshot-split40"
    seen = set(load_pretraining_relations(run))
    for m in (5, 10):  # the seeded run saw none of either split's test and eval relations, and its card says so
        split = load_zeroshot_split(get_data_dir() / "zeroshot" / f"fewrel_rel2id_{m}_40.json")
        assert not seen & split.held_out and len(seen) == zeroshot["per_split"][f"m{m}/40"]["pretraining_relations"]
        assert f"`fewrel_rel2id_{m}_40.json`" in (run / "README.md").read_text()
    # the `ori` run (unfiltered) did see relations a seeded split holds out: why seeded splits need a run of their own
    assert set(load_pretraining_relations(output_dir / "runs" / "pretrain-seed1")) & split.held_out
    assert zeroshot["protocol"]["ori_run"] == "quality/pretrain-seed1"
    return zeroshot


def _check_zeroshot_interpolated(output_dir: Path, data_dir: Path, plain: dict) -> None:
    """`--set zeroshot_label_interpolation=0.5` scores the block's runs as trained (no run starts) with their label
    encoders interpolated, as `examples/interpolate_label_encoder.py` writes them: the same numbers split by split."""
    from benchmarks.harness import zeroshot

    env = {**os.environ, "SACON_DATA_DIR": str(data_dir)}
    command = [sys.executable, "benchmarks/run_all.py", "--budget", "smoke", "--output_dir", str(output_dir),
               "--only", "zeroshot", "--set", "zeroshot_label_interpolation=0.5"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((output_dir / "results.json").read_text())
    assert sorted(results["units"]["computed"]) == ["zeroshot/eval-ori-wise0.5", "zeroshot/eval-split40-wise0.5"]
    interpolated = results["zeroshot"]
    assert interpolated["protocol"]["label_interpolation"] == 0.5 and set(interpolated["per_split"]) == set(plain["per_split"])
    assert "label encoder interpolated at 0.5 (WiSE-FT)" in (output_dir / "results.md").read_text()
    for key, run in (("ori", "pretrain-seed1"), ("split40", "zeroshot-split40")):
        written = output_dir / f"wise-{key}"
        script = [sys.executable, "examples/interpolate_label_encoder.py", "--model_name_or_path",
                  str(output_dir / "runs" / run), "--weight", "0.5", "--output_dir", str(written)]
        done = subprocess.run(script, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        files = [f"zeroshot/fewrel_rel2id_{m}_{'ori' if key == 'ori' else '40'}.json" for m in (5, 10)]
        expected = zeroshot.evaluate_checkpoint(str(written), files, pool_per_relation=budgets.SMOKE.zeroshot_pool_per_relation,
                                                batch_size=budgets.SMOKE.eval_batch_size, device="cpu")
        for split in expected["splits"]:
            got = interpolated["per_split"][split["split"]]
            assert (got["precision"], got["recall"], got["f1"]) == (split["precision"], split["recall"], split["f1"])
    with pytest.raises(ValueError, match=r"zeroshot_label_interpolation must be in \[0, 1\] \(1: as trained\), got 1.5"):
        zeroshot.label_interpolation(budgets.SMOKE.with_overrides({"zeroshot_label_interpolation": "1.5"}))
    locked = budgets.SMOKE.with_overrides({"zeroshot_label_interpolation": "0.5", "zeroshot_locked_labels": "true"})
    with pytest.raises(ValueError, match="a locked label encoder is its backbone"):
        zeroshot.label_interpolation(locked)


def _check_zeroshot_partial(output_dir: Path) -> None:
    """A block with an evaluation missing reports the splits it has and renders the others as "not run"."""
    from benchmarks.harness import report, zeroshot

    budget, store = budgets.SMOKE, common.UnitStore(output_dir)
    units = zeroshot.zeroshot_training_units(budget, str(output_dir / "backbone"), output_dir)
    training = {u["name"]: store.load(u["name"]) for u in units if u["name"] != "zeroshot/pretrain-split40"}
    evaluations = {u["name"]: store.load(f"zeroshot/eval-{u['zeroshot_key']}") for u in units if u["name"] in training}
    partial = zeroshot.assemble_zeroshot(budget, units, training, evaluations)
    assert partial["summary"]["5"]["missing"] == ["m5/40"] and partial["summary"]["10"]["missing"] == ["m10/40"]
    lines = report._zeroshot(partial, budget)
    assert any(line.startswith("| 5 | 1 of 2 |") and "40 not run" in line for line in lines), lines
    assert any("(1 of 2 splits)" in line for line in lines if line.startswith("| SaCon"))
    empty = report._zeroshot(zeroshot.assemble_zeroshot(budget, units, {}, {}), budget)
    assert any(line.startswith("| 10 | 0 of 2 | not run |") for line in empty), empty
    # the report says what the runs trained on: the corpus alone, or the corpus and FewRel's training relations
    assert not any("FewRel's sentences" in line for line in lines)
    fewrel = budget.with_overrides({"zeroshot_fewrel_training": "true"})
    text = "\n".join(report._zeroshot(zeroshot.assemble_zeroshot(fewrel, units, training, evaluations), fewrel))
    assert "plus FewRel's sentences" in text and "FewRel training relations alone" in text
    assert "| SaCon (this project), corpus + the split's FewRel training relations |" in text
    assert "no FewRel-specific training step" not in text and "(which the corpus does not hold)" not in text


def test_budgets():
    cpu = budgets.CPU
    assert set(budgets.BUDGETS) == {"smoke", "cpu", "gpu"}
    assert cpu.eval_episodes == 10_000 and len(cpu.seeds) == 3
    assert 2 * cpu.ablation_steps >= cpu.pretrain_steps and cpu.ablation_episodes < cpu.eval_episodes  # >= half length
    # the CPU budget's own arithmetic (planning constants in budgets.py) stays within 4 hours
    assert budgets.estimate(cpu)["total"] <= 4 * 3600
    # the ablation runs the harness starts: 10 at batch 32 and batch_16; batch_64 is row (c)'s seed-1 run (no cost)
    plan = budgets.CPU_PLANNING
    batch32 = cpu.ablation_steps * plan.pretrain_step_s + plan.process_s
    batch16 = cpu.ablation_steps * plan.pretrain_step_s / 2 + plan.process_s
    assert budgets.estimate(cpu)["ablation pre-training"] == pytest.approx(10 * batch32 + batch16)
    # the zero-shot block: runs of the 25-minute recipe (batch 64: ori; then one per seed for the 12 seeded splits, one
    # for all of them, or 12, one per split) and their evaluations, within 6 hours in every mode
    assert cpu.zeroshot_pretrain_batch_size == budgets.TUNED_BATCH_SIZE == 2 * cpu.pretrain_batch_size
    run = cpu.pretrain_steps * budgets.CPU_PLANNING.pretrain_step_s * 2 + budgets.CPU_PLANNING.process_s
    assert run <= 25 * 60  # one run of at most 25 CPU-minutes per split (issue 21's budget), at the planning constant
    per_seed = budgets.estimate_zeroshot(cpu)
    shared = budgets.estimate_zeroshot(cpu.with_overrides({"zeroshot_pretraining": "shared"}))
    per_split = budgets.estimate_zeroshot(cpu.with_overrides({"zeroshot_pretraining": "per_split"}))
    assert per_seed["pre-training, seeded splits"] == pytest.approx(4 * run) and per_seed["total"] <= 2 * 3600
    assert shared["pre-training, seeded splits"] == pytest.approx(run) and shared["total"] <= 3600
    assert per_split["pre-training, seeded splits"] == pytest.approx(12 * run) and per_split["total"] <= 6 * 3600
    halved = budgets.estimate_zeroshot(cpu.with_overrides({"zeroshot_batch_size": "32"}))
    assert halved["pre-training, seeded splits"] == pytest.approx(4 * (run - budgets.CPU_PLANNING.process_s) / 2 + 4 * budgets.CPU_PLANNING.process_s)
    # bf16 autocast: the same runs at the planning's bf16 step cost; batch 128 in bf16 fits the 25 minutes
    bf16 = budgets.estimate_zeroshot(cpu.with_overrides({"zeroshot_bf16": "true", "zeroshot_batch_size": "128"}))
    bf16_run = cpu.pretrain_steps * plan.pretrain_step_s * plan.bf16_step_factor * 4 + plan.process_s
    assert bf16["pre-training, seeded splits"] == pytest.approx(4 * bf16_run) and 0.5 < plan.bf16_step_factor < 1
    assert bf16_run <= 30 * 60  # the planning constant is conservative: measured ~2.3 s a step, 20 min a run
    resized = cpu.with_overrides({"pretrain_steps": "200", "seeds": "1,2", "ablation_pool_per_relation": "none"})
    assert (resized.pretrain_steps, resized.seeds, resized.ablation_pool_per_relation) == (200, (1, 2), None)
    with pytest.raises(ValueError, match="unknown budget field"):
        cpu.with_overrides({"pretrain_step": "1"})


@pytest.fixture
def harness():
    """The harness modules that run_all.py uses."""
    from benchmarks.harness import quality, train_worker

    return quality, train_worker, budgets


def test_training_unit_specs_follow_script_defaults(harness, monkeypatch):
    """A recipe changed in examples/pretrain.py's defaults (not on the command line) must not reuse runs stored under
    the old one; and the batch-scheme ablation is whichever scheme the default is not."""
    quality, worker, plain_budgets = harness
    argv = ["--max_steps", "5"]
    spec = quality._train_spec("pretrain", argv)
    assert quality._train_spec("pretrain", argv) == spec
    names = {a.name for a in quality.ablations_for(plain_budgets.CPU)}
    field = worker.load_script("pretrain").SaconTrainingArguments.__dataclass_fields__["balanced_batches"]
    monkeypatch.setattr(field, "default", not field.default)
    assert quality._train_spec("pretrain", argv)["defaults"] != spec["defaults"]
    flipped = {a.name for a in quality.ablations_for(plain_budgets.CPU)}
    assert {"balanced_batches", "authors_batches"} & names and {"balanced_batches", "authors_batches"} & flipped
    assert ("authors_batches" in names) != ("authors_batches" in flipped)
    assert ("balanced_batches" in names) != ("balanced_batches" in flipped)


def test_full_ablation_at_the_main_length_is_the_main_run(harness, tmp_path):
    """`full` at the main length, a main seed and the main table at the default recipe shares row (c)'s run (same
    spec, same directory): one run, not two. A main table on a longer recipe (the CPU budget's) keeps its own runs."""
    quality, _, plain_budgets = harness
    cpu = plain_budgets.CPU
    assert cpu.ablation_steps == cpu.pretrain_steps and not cpu.main_table_is_default_recipe
    main = {u["name"]: u for u in quality.quality_training_units(cpu, "minilm", tmp_path)}
    full = {u["variant"]: u for u in quality.ablation_training_units(cpu, "minilm", tmp_path)}["full"]
    seed1 = main[f"quality/pretrain-seed{cpu.ablation_seed}"]["argv"]
    batch = seed1.index("--per_device_train_batch_size") + 1
    assert full["name"] == "ablations/pretrain-full" and seed1[batch] == str(cpu.quality_batch_size)
    # the same recipe but for the batch size (and the output directory)
    assert seed1[2:batch] + seed1[batch + 1:] == full["argv"][2:batch] + full["argv"][batch + 1:]
    budget = cpu.with_overrides({"quality_batch_size": "none", "quality_extra_args": ""})
    main = {u["name"]: u for u in quality.quality_training_units(budget, "minilm", tmp_path)}
    ablations = {u["variant"]: u for u in quality.ablation_training_units(budget, "minilm", tmp_path)}
    full = ablations["full"]
    assert full["name"] == f"quality/pretrain-seed{budget.ablation_seed}" and full["spec"] == main[full["name"]]["spec"]
    assert all(u["name"].startswith("ablations/") for v, u in ablations.items() if v != "full")
    half = plain_budgets.CPU.with_overrides({"ablation_steps": "250"})
    assert {u["variant"]: u for u in quality.ablation_training_units(half, "minilm", tmp_path)}["full"]["name"] == "ablations/pretrain-full"


def test_a_variant_training_a_main_run_is_that_run(harness, tmp_path):
    """`batch_64` on the CPU budget trains row (c)'s recipe (batch 64 given twice, the last value read): it is row
    (c)'s seed-1 run. Options are compared as the parser reads them, bar --output_dir; any other difference is a run."""
    quality, _, plain_budgets = harness
    cpu = plain_budgets.CPU
    main = {u["name"]: u for u in quality.quality_training_units(cpu, "minilm", tmp_path)}
    ablations = {u["variant"]: u for u in quality.ablation_training_units(cpu, "minilm", tmp_path)}
    seed1 = main[f"quality/pretrain-seed{cpu.ablation_seed}"]
    assert ablations["batch_64"]["name"] == seed1["name"] and ablations["batch_64"]["spec"] == seed1["spec"]
    assert ablations["batch_64"]["argv"].count("--per_device_train_batch_size") == 1  # row (c)'s own argv
    assert quality.run_options(["--a", "1", "--b", "x", "y", "--a", "2"]) == {"--a": ("2",), "--b": ("x", "y")}
    argv = ["--output_dir", "elsewhere", *seed1["argv"][2:]]
    assert quality.same_run([seed1], argv) is seed1
    assert quality.same_run([seed1], [*argv, "--seed", "2"]) is None
    assert quality.same_run([{**seed1, "script": "finetune_fewrel"}], argv) is None
    with pytest.raises(ValueError, match="main table"):
        quality.pretrain_argv(cpu, "minilm", tmp_path, 1, 10, main_table=True, batch_size=16)


def test_zeroshot_units_share_the_main_run_and_hold_out_every_seeded_split(tmp_path):
    """The block's `ori` unit is the run of row (c) or the ablations with its argv (one run, not two: at batch 64 row
    (c)'s seed-1 run, at 32 the ablations' `full`), else its own; a seed's splits share one run whose argv is the `ori`
    run's plus that seed's split files, or all seeded splits share one holding out all, or each split has its own run;
    nothing else is accepted."""
    from benchmarks.harness import quality, zeroshot

    cpu = budgets.CPU
    main = {u["name"]: u for u in quality.quality_training_units(cpu, "minilm", tmp_path)}[f"quality/pretrain-seed{cpu.ablation_seed}"]
    units = zeroshot.zeroshot_training_units(cpu, "minilm", tmp_path)
    assert [u["name"] for u in units] == [main["name"], *(f"zeroshot/pretrain-split{n}" for n in ("40", "41", "42", "43"))]
    assert units[0]["spec"] == main["spec"] and units[0]["splits"] == [f"zeroshot/fewrel_rel2id_{m}_ori.json" for m in (5, 10, 15)]
    assert "64" == main["argv"][main["argv"].index("--per_device_train_batch_size") + 1]
    for unit, name in zip(units[1:], ("40", "41", "42", "43")):
        files = [f"zeroshot/fewrel_rel2id_{m}_{name}.json" for m in (5, 10, 15)]
        assert unit["splits"] == files and unit["argv"] == [
            "--output_dir", str(tmp_path / "runs" / f"zeroshot-split{name}"), *main["argv"][2:], "--exclude_relations_from", *files]
    seeded = [f"zeroshot/fewrel_rel2id_{m}_{name}.json" for m in (5, 10, 15) for name in ("40", "41", "42", "43")]
    units = zeroshot.zeroshot_training_units(cpu.with_overrides({"zeroshot_pretraining": "shared"}), "minilm", tmp_path)
    assert [u["name"] for u in units] == [main["name"], "zeroshot/pretrain-heldout"]
    argv = units[1]["argv"]
    assert units[1]["splits"] == seeded
    assert argv == ["--output_dir", str(tmp_path / "runs" / "zeroshot-heldout"), *main["argv"][2:], "--exclude_relations_from", *seeded]
    per_split = zeroshot.zeroshot_training_units(cpu.with_overrides({"zeroshot_pretraining": "per_split"}), "minilm", tmp_path)
    assert [u["splits"] for u in per_split[1:]] == [[f] for f in seeded]
    assert all(u["argv"][-2:] == ["--exclude_relations_from", f] for u, f in zip(per_split[1:], seeded))
    # the main command's recipe (batch 32): `ori` is the ablations' `full`, the seeded runs its argv plus the files
    full = {u["variant"]: u for u in quality.ablation_training_units(cpu, "minilm", tmp_path)}["full"]
    units = zeroshot.zeroshot_training_units(cpu.with_overrides({"zeroshot_batch_size": "none"}), "minilm", tmp_path)
    assert units[0]["name"] == full["name"] == "ablations/pretrain-full" and units[0]["spec"] == full["spec"]
    assert units[1]["argv"][2:-4] == full["argv"][2:]
    # a batch no other run trains: the `ori` splits get a run of their own, on the whole corpus
    units = zeroshot.zeroshot_training_units(cpu.with_overrides({"zeroshot_batch_size": "48"}), "minilm", tmp_path)
    assert units[0]["name"] == "zeroshot/pretrain-ori" and units[0]["argv"][2:] == units[1]["argv"][2:-4]
    assert "--exclude_relations_from" not in units[0]["argv"] and "48" in units[0]["argv"]
    with pytest.raises(ValueError, match="zeroshot_pretraining"):
        zeroshot.zeroshot_training_units(cpu.with_overrides({"zeroshot_pretraining": "each"}), "minilm", tmp_path)



def test_zeroshot_fewrel_training_adds_fewrel_and_holds_out_every_split(tmp_path, data_dir):
    """With `zeroshot_fewrel_training` each run trains on the corpus files plus FewRel's sentences (the relations its
    splits leave for training), holds out its splits' test and eval relations (the `ori` run too: val_wiki is now in
    its data), shares no run with the main table, and is named apart from the plain block's units; the data loads."""
    from benchmarks.harness import quality, zeroshot
    from modeling_sacon.commands.pretrain import load_training_data, parse_args

    cpu = budgets.CPU
    plain = zeroshot.zeroshot_training_units(cpu, "minilm", tmp_path)
    units = zeroshot.zeroshot_training_units(cpu.with_overrides({"zeroshot_fewrel_training": "true"}), "minilm", tmp_path)
    assert [u["name"] for u in units] == ["zeroshot/pretrain-ori-fewrel",
                                          *(f"zeroshot/pretrain-split{n}-fewrel" for n in ("40", "41", "42", "43"))]
    assert {u["zeroshot_key"] for u in units}.isdisjoint(u["zeroshot_key"] for u in plain)
    main = {u["name"]: u for u in quality.quality_training_units(cpu, "minilm", tmp_path)}[f"quality/pretrain-seed{cpu.ablation_seed}"]
    data = list(zeroshot.fewrel_training_args())
    for unit, before in zip(units, plain):
        files = unit["splits"]
        assert unit["argv"][2:] == [*main["argv"][2:], *data, "--exclude_relations_from", *files]
        assert unit["run_dir"] != before["run_dir"] and unit["splits"] == before["splits"]
    assert data[data.index("--train_files") + 1:data.index("--label_files")] == [
        "pretrain_v2/sentences.json", "pretrain_v2/longtail.json", *zeroshot.SENTENCE_FILES]
    # what examples/pretrain.py loads for split 41: the corpus and FewRel without the split's 20 relations, val_wiki's
    # other relations (mother, spouse: training relations of the split) in
    _, data_args, _ = parse_args(["--output_dir", str(tmp_path / "x"), "--data_dir", str(data_dir), *units[2]["argv"][2:]])
    dataset, labels, _ = load_training_data(data_args)
    split = json.loads((data_dir / "zeroshot/fewrel_rel2id_15_41.json").read_text())
    relations = set(dataset.unique("relation"))
    assert relations.isdisjoint(set(split["test"]) | set(split["eval"])) and {"P25", "P26"} <= relations
    assert set(labels) == relations


def test_zeroshot_bf16_trains_every_run_in_bf16_under_its_own_names(tmp_path):
    """With `zeroshot_bf16` every run of the block (the `ori` one too: no other section trains in bf16) adds
    `--bf16 True --use_cpu True` on the CPU budget (transformers asks for `use_cpu` to autocast on a CPU), and units and
    runs are named apart from the fp32 block's, so both can share an output directory; the arguments parse."""
    from benchmarks.harness import zeroshot
    from modeling_sacon.commands.pretrain import parse_args

    cpu = budgets.CPU
    plain = zeroshot.zeroshot_training_units(cpu.with_overrides({"zeroshot_batch_size": "128"}), "minilm", tmp_path)
    units = zeroshot.zeroshot_training_units(cpu.with_overrides({"zeroshot_bf16": "true", "zeroshot_batch_size": "128"}),
                                             "minilm", tmp_path)
    assert [u["name"] for u in units] == ["zeroshot/pretrain-ori-bf16",
                                          *(f"zeroshot/pretrain-split{n}-bf16" for n in ("40", "41", "42", "43"))]
    for unit, before in zip(units, plain):  # the fp32 run's argv with the two options before the held-out files
        cut = before["argv"].index("--exclude_relations_from") if before["zeroshot_key"] != "ori" else len(before["argv"])
        expected = [*before["argv"][:cut], "--bf16", "True", "--use_cpu", "True", *before["argv"][cut:]]
        assert unit["argv"][2:] == expected[2:] and unit["splits"] == before["splits"]
        assert unit["run_dir"] != before["run_dir"] and unit["zeroshot_key"] == before["zeroshot_key"] + "-bf16"
    _, _, training_args = parse_args(["--output_dir", str(tmp_path / "x"), *units[1]["argv"][2:]])
    assert training_args.bf16 and training_args.use_cpu and training_args.per_device_train_batch_size == 128
    gpu = budgets.GPU.with_overrides({"zeroshot_bf16": "true"})  # a GPU budget autocasts on the GPU: no use_cpu
    assert "--use_cpu" not in zeroshot.zeroshot_training_units(gpu, "bert-base-uncased", tmp_path)[0]["argv"]


def test_zeroshot_locked_labels_lock_every_run_under_its_own_names(tmp_path):
    """With `zeroshot_locked_labels` every run of the block adds `--freeze_label_encoder True` (before the held-out
    files) and is named apart from the plain block's; the `ori` run shares no other section's run; the arguments parse."""
    from benchmarks.harness import zeroshot
    from modeling_sacon.commands.pretrain import parse_args

    cpu = budgets.CPU
    plain = zeroshot.zeroshot_training_units(cpu, "minilm", tmp_path)
    units = zeroshot.zeroshot_training_units(cpu.with_overrides({"zeroshot_locked_labels": "true"}), "minilm", tmp_path)
    assert [u["name"] for u in units] == ["zeroshot/pretrain-ori-locked",
                                          *(f"zeroshot/pretrain-split{n}-locked" for n in ("40", "41", "42", "43"))]
    for unit, before in zip(units, plain):
        cut = before["argv"].index("--exclude_relations_from") if "--exclude_relations_from" in before["argv"] else None
        cut = len(before["argv"]) if cut is None else cut
        argv = [a if a != str(before["run_dir"]) else str(unit["run_dir"]) for a in before["argv"]]
        assert unit["argv"] == [*argv[:cut], "--freeze_label_encoder", "True", *argv[cut:]]
        assert unit["splits"] == before["splits"] and unit["zeroshot_key"] == before["zeroshot_key"] + "-locked"
    model_args, _, _ = parse_args(["--output_dir", str(tmp_path / "x"), *units[1]["argv"][2:]])
    assert model_args.freeze_label_encoder


def test_summary_command_omits_the_default_output_dir(tmp_path):
    """A summary records the command a user types: an `--output_dir` that resolves to the default one (through a link)
    is left out, any other is kept."""
    run_all = importlib.import_module("benchmarks.run_all")
    default = (run_all.REPO_ROOT / "benchmarks" / "results" / "cpu").resolve()
    argv = ["--budget", "cpu", "--only", "zeroshot", "--output_dir", "/somewhere/else", "--no_training"]
    assert run_all._as_typed(argv, default, budgets.CPU) == ["--budget", "cpu", "--only", "zeroshot", "--no_training"]
    assert run_all._as_typed(["--output_dir=/x", "--budget", "cpu"], default, budgets.CPU) == ["--budget", "cpu"]
    assert run_all._as_typed(argv, tmp_path, budgets.CPU) == argv


def test_a_block_run_alone_leaves_the_other_summaries_alone():
    """`--only zeroshot` writes `<budget>_zeroshot` only, `--only ablations` `<budget>_ablations` only (the other blocks'
    summaries may rest on units this output directory does not hold); each summary holds its own sections and lists
    only the missing units its sections read."""
    run_all = importlib.import_module("benchmarks.run_all")
    results = {"units": {"missing": []}, "quality": {"x": 1}, "ablations": {"a": 3}, "speed": {"s": 4}, "zeroshot": {"y": 2}}
    missing = ["quality/pretrain-seed1", "ablations/pretrain-full", "zeroshot/pretrain-heldout"]
    only = run_all.committed_summaries("cpu", ["zeroshot"], results, missing)
    assert list(only) == ["cpu_zeroshot"] and only["cpu_zeroshot"]["quality"] is None
    assert only["cpu_zeroshot"]["zeroshot"] == {"y": 2} and only["cpu_zeroshot"]["ablations"] is None
    assert only["cpu_zeroshot"]["units"]["missing"] == ["zeroshot/pretrain-heldout"]
    assert only["cpu_zeroshot"]["summary_file"] == "benchmarks/results/cpu_zeroshot.json"
    both = run_all.committed_summaries("cpu", ["quality", "zeroshot"], results, missing)
    assert list(both) == ["cpu", "cpu_zeroshot"] and both["cpu"]["quality"] == {"x": 1} and both["cpu"]["zeroshot"] is None
    assert both["cpu"]["speed"] == {"s": 4} and both["cpu"]["units"]["missing"] == ["quality/pretrain-seed1"]
    assert list(run_all.committed_summaries("cpu", ["speed"], results, missing)) == ["cpu"]
    ablations = run_all.committed_summaries("cpu", ["ablations"], results, missing)
    assert list(ablations) == ["cpu_ablations"] and ablations["cpu_ablations"]["ablations"] == {"a": 3}
    assert ablations["cpu_ablations"]["quality"] is None and ablations["cpu_ablations"]["speed"] is None
    assert ablations["cpu_ablations"]["units"]["missing"] == ["ablations/pretrain-full"]
    # a run the ablations share with the main table (batch_64 = row (c)'s seed 1) is missing from their summary too
    reading = {**results, "ablations": {"a": 3, "training_units": ["ablations/pretrain-full", "quality/pretrain-seed1"]}}
    ablations = run_all.committed_summaries("cpu", ["ablations"], reading, missing)
    assert ablations["cpu_ablations"]["units"]["missing"] == ["quality/pretrain-seed1", "ablations/pretrain-full"]
    default = run_all.committed_summaries("cpu", list(run_all.DEFAULT_SECTIONS), results, missing)
    assert list(default) == ["cpu", "cpu_ablations"] and default["cpu"]["ablations"] is None
    shared = run_all.committed_summaries("cpu", ["zeroshot"], results, missing, "_shared")  # a non-default mode: its own
    assert list(shared) == ["cpu_zeroshot_shared"] and shared["cpu_zeroshot_shared"]["summary_file"].endswith("_shared.json")
    # the suffix: another seeded mode, another batch size than the budget's block, or both; none at the default
    cpu = budgets.CPU
    assert run_all.zeroshot_variant(cpu) == "" == run_all.zeroshot_variant(cpu.with_overrides({"zeroshot_batch_size": "64"}))
    assert run_all.zeroshot_variant(cpu.with_overrides({"zeroshot_pretraining": "shared"})) == "_shared"
    assert run_all.zeroshot_variant(cpu.with_overrides({"zeroshot_batch_size": "32"})) == "_batch32"
    both = cpu.with_overrides({"zeroshot_pretraining": "shared", "zeroshot_batch_size": "none"})
    assert run_all.zeroshot_variant(both) == "_shared_batch32"
    assert run_all.zeroshot_variant(budgets.SMOKE) == ""
    assert run_all.zeroshot_variant(cpu.with_overrides({"zeroshot_fewrel_training": "true"})) == "_fewrel"
    bf16 = cpu.with_overrides({"zeroshot_bf16": "true", "zeroshot_batch_size": "128"})
    assert run_all.zeroshot_variant(bf16) == "_batch128_bf16"
    assert run_all.zeroshot_variant(cpu.with_overrides({"zeroshot_locked_labels": "true"})) == "_locked"
    assert run_all.zeroshot_variant(bf16.with_overrides({"zeroshot_label_interpolation": "0.5"})) == "_batch128_bf16_wise0.5"


def test_sweep_recipes_are_valid_pretrain_arguments(harness):
    """Every named recipe of `benchmarks/recipe_sweep.py` parses as `examples/pretrain.py` arguments and sets what its
    arguments say: a misspelt option fails here, not after a 20-minute sweep run starts."""
    _, worker, _ = harness
    recipe_sweep = importlib.import_module("benchmarks.recipe_sweep")
    pretrain = worker.load_script("pretrain")
    for name, (extra, _) in recipe_sweep.RECIPES.items():
        argv = shlex.split(extra)
        _, _, training_args = pretrain.parse_args(["--max_steps", "1", *argv])
        if "--learning_rate" in argv:
            assert training_args.learning_rate == float(argv[argv.index("--learning_rate") + 1]), name
    with pytest.raises(ValueError, match="lerning_rate"):  # what a misspelt recipe meets
        pretrain.parse_args(["--max_steps", "1", "--lerning_rate", "1e-4"])


def test_tuned_recipe_is_its_measured_sweep_recipe(harness):
    """The recipe rows (c)-(e) and the GPU check train (`budgets.TUNED_RECIPE`) is the sweep recipe whose runs the
    README reports for it: changing one without the other would let the table describe a recipe nobody measured."""
    recipe_sweep = importlib.import_module("benchmarks.recipe_sweep")

    _, _, plain_budgets = harness
    tuned = ["--per_device_train_batch_size", str(plain_budgets.TUNED_BATCH_SIZE),
             *plain_budgets.as_argv(plain_budgets.CPU_RECIPE)]
    assert shlex.split(recipe_sweep.RECIPES["b64_lr1e-4_blank0.3"][0]) == tuned
    cpu = plain_budgets.CPU
    assert ["--per_device_train_batch_size", str(cpu.quality_batch_size), *cpu.pretrain_extra_args, *cpu.quality_extra_args] == tuned


def test_cpu_budget_trains_the_main_command_recipe(harness):
    """The CPU budget's runs train what `python examples/pretrain.py` trains: its `CPU_BUDGET` recipe options are
    `budgets.CPU_RECIPE`, so the ablations' `full` run (and the zero-shot block's `ori` run) is the main command's."""
    _, _, plain_budgets = harness
    spec = importlib.util.spec_from_file_location("pretrain_example", REPO / "examples" / "pretrain.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    recipe = {key: example.CPU_BUDGET[key] for key in plain_budgets.CPU_RECIPE}
    assert recipe == {key: float(value) for key, value in plain_budgets.CPU_RECIPE.items()}
    assert example.CPU_BUDGET["max_steps"] == plain_budgets.CPU.pretrain_steps
    assert plain_budgets.CPU.pretrain_extra_args == plain_budgets.as_argv(plain_budgets.CPU_RECIPE)


def test_no_training_starts_no_run(harness, tmp_path):
    """`run_all.py --no_training`: a stored run is returned, a missing one is reported missing and not started."""
    quality, _, plain_budgets = harness
    store = common.UnitStore(tmp_path)
    units = [{"name": f"ablations/pretrain-{name}", "spec": {"argv": [name]}, "script": "pretrain", "argv": [name],
              "run_dir": str(tmp_path / name)} for name in ("stored", "missing")]
    store.save(units[0]["name"], units[0]["spec"], {"wall_s": 1.0}, 1.0)
    store.computed.clear()
    entries = quality.run_training_units(units, store, plain_budgets.SMOKE, tmp_path, "ablation-training", train=False)
    assert list(entries) == ["ablations/pretrain-stored"] and entries["ablations/pretrain-stored"]["result"] == {"wall_s": 1.0}
    assert store.missing == ["ablations/pretrain-missing"] and not (tmp_path / "missing").exists()
    # a run shared by two sections (the zero-shot block's `ori` run is row (c)'s): missing for the section left out,
    # then computed by the other, it is not reported missing
    store.save(units[1]["name"], units[1]["spec"], {"wall_s": 1.0}, 1.0)
    assert store.missing == [] and store.computed == ["ablations/pretrain-missing"]


def test_mean_ci95():
    mean, ci = common.mean_ci95([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and ci == pytest.approx(4.303 * 0.1 / 3**0.5)
    assert common.mean_ci95([0.4]) == (0.4, None)


def test_gpu_check_plumbing_on_cpu(tmp_path, data_dir):
    """`benchmarks/gpu_check.py` runs rarely (on a lent GPU), so its code paths run here on tiny models: the
    bert-base stand-in carries its MLM heads over (weights resolved to 1, both heads logged), the backbone without a
    head gets none, tokens are counted, and every evaluation setting is scored."""
    from transformers import AutoTokenizer, BertModel

    from conftest import tiny_bert_config
    from modeling_sacon.utils.defaults import default_backbone_path

    tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
    backbone = tmp_path / "tiny-backbone"
    BertModel(tiny_bert_config(tokenizer.vocab_size)).save_pretrained(backbone)  # no MLM head, as MiniLM
    tokenizer.save_pretrained(backbone)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    command = [sys.executable, "benchmarks/gpu_check.py", "--allow_cpu", "True", "--backbone", str(backbone),
               "--output_dir", str(tmp_path / "check"), "--minilm_steps", "3", "--minilm_batch_size", "8",
               "--bert_steps", "2", "--bert_batch_size", "4", "--bert_config", json.dumps(small), "--episodes", "20",
               "--dataloader_num_workers", "0"]
    env = {**os.environ, "SACON_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    report = json.loads((tmp_path / "check" / "gpu_check.json").read_text())

    bert = report["bert_base_random"]
    assert bert["steps"] == 2 and bert["all_losses_finite"]
    assert bert["mlm_weights"] == {"sentence": 1.0, "label": 1.0}
    carried = [line for line in bert["head_log"] if "carried over" in line]
    assert [("sentence tower" in line, "label tower" in line) for line in carried] == [(True, False), (False, True)]
    assert not any("no pretrained MLM head" in line or "new" in line for line in bert["head_log"])
    assert all(bert["last_logged"][term] is not None for term in ("contrastive_loss", "sentence_mlm_loss", "label_mlm_loss"))

    minilm = report["minilm"]
    options = json.loads((tmp_path / "check" / "minilm.args.json").read_text())
    assert (options["learning_rate"], options["blank_probability"]) == (1e-4, 0.3)  # the tuned recipe
    assert minilm["steps"] == 3 and minilm["mlm_weights"] == {"sentence": 0.0, "label": 0.0}
    assert sum("no pretrained MLM head" in line for line in minilm["head_log"]) == 2
    assert not any("carried over" in line for line in minilm["head_log"])
    assert minilm["sentence_tokens_seen"] > 3 * 8 * 5 and minilm["sentence_tokens_per_s"] > 0  # >= 5 tokens a sentence
    assert set(minilm["evaluation"]) == {"5-1", "zs-5", "pubmed/5-1", "5-1 (label_augmented)"}
    assert all(0 <= cell["accuracy"] <= 100 for cell in minilm["evaluation"].values())
    assert "eval_fewrel_5_1_accuracy" in minilm["final_eval"]
