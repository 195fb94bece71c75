"""Benchmark budgets: how big every unit of `run_all.py` is, per machine class, and the CPU time arithmetic.

Three budgets:

* ``smoke``: a tiny random BERT (2 layers, hidden 32) on the packaged tokenizer, a few optimizer steps, 20 episodes
  on 10 sentences per relation, one thread. It checks that every code path of the harness runs and that the result
  files have their shape (`tests/test_benchmarks.py`, ~1 min); its numbers mean nothing.
* ``cpu``: the packaged all-MiniLM-L6-v2 on 2 CPU cores; every number of the README's Results section.
* ``gpu``: bert-base-uncased, bf16, batch 64, 20x longer pre-training, on one GPU.

CPU budget arithmetic
---------------------
Planning constants for 2 *idle* cores (`CPU_PLANNING` below), from the units of the 2026-11-28 run (commit eec9ee0,
2 torch threads, nothing else running; per-unit wall times are in `benchmarks/results/cpu.json`):

    measured, 2 threads, idle machine                                      -> planning constant
    pre-training step, MiniLM x 2 towers, batch 32 (shuffled, ~26         1.32 s (500 steps in 679 s with start-up,
      distinct relations; v2 corpus, no MLM: the backbone has no MLM head),  seed 1, 2026-11-28; relation-balanced
      fwd + bwd + AdamW                                                    16 x 2: 1.06-1.20 s) -> 1.35 s/step
    episodic fine-tuning step, 2 episodes 5-way 1-shot                     0.45-0.57 s -> 0.6 s/step
    encoding (no grad, length-sorted batches of 128) incl. tokenisation    247 sent/s (val_wiki, speed) -> 200
      (val_pubmed sentences are longer: x1.3 per sentence)
    scoring one setting, 10,000 cached episodes                            -> 1.5 s
    one full-split evaluation (11,200 + 1,000 sentences, 9-16 settings)     77-88 s
    re-encoding one 5-way 1-shot episode (10 sentences)                    -> 0.085 s
    subprocess start (imports) + corpus load + model build + save          ~20 s

`estimate(CPU)` turns them into the time per part (`run_all.py` prints it at start): 3 pre-training runs of 500 steps
(the main job's length) at batch 64 (the README's 25-minute recipe, rows (c)-(e)), 3 fine-tuning runs, 2 baseline
and 6 trained full-split evaluations, 12 ablation and data-scaling variants of 500 steps at `examples/pretrain.py`'s
recipe (batch 32; `full` is its own run, since the main table's batch differs, and `batch_64`, which trains the main
table's recipe, is row (c)'s seed-1 run: 10.5 batch-32 runs in all, batch 16 costs 0.5x a batch-32 step), and the speed
section: about 3.6 h, within 4 hours on 2 cores
(`tests/test_benchmarks.py` checks the arithmetic). That is more than one 3-hour working session: the
units resume, so a run spans sessions where the output directory persists. Measured at the new default
(2026-11-28, commits e827f74-1cead20): the quality section 47.9 min, the ablation runs 10.7-12.6 min each. The run
before (relation-balanced default, 250-step ablations) took 111.9 min end to end against 120 min estimated.
If the cores turn out slower or faster than planned, resize with `--set pretrain_steps=N` or
`--set ablation_steps=N`; units the change does not affect are kept.

The zero-shot block (`run_all.py --only zeroshot`, `estimate_zeroshot`) is not part of the default sections. Its 15
splits (m = 5, 10, 15 x ori, 40-43) need five pre-training runs of the README's 25-minute recipe (`examples/pretrain.py`
at `zeroshot_batch_size` 64: 500 x 2.7 s + 20 s = 22.8 min each): the three `ori` splits share row (c)'s seed-1 run
(free when the main table has run), and each seed's three splits share one run on the corpus without their test and
eval relations. Evaluation encodes the 10,500 val_wiki sentences of the `ori` test relations once and about 236
sentences per seeded test relation (120 seeded test relations: 28,300 sentences), about 4 min in all: about two hours.
`--set zeroshot_pretraining=shared` pre-trains the 12 seeded splits on one run without all their relations (2 runs,
about 49 min); `per_split`, each on its own filtered corpus (13 runs, about 5 h); `--set zeroshot_batch_size=32`, the
main command's recipe (its `ori` run: the ablations' `full`), halves each run.

Ablations run at the main runs' length with one seed and are scored on 2,000 episodes drawn from the first 100
sentences of each val_wiki relation (1,600 sentences), not on all 700 per relation: they rank the variants against
each other; the main table is the quality claim. On the speed side the two val_wiki encoding arms run once each
(minutes each, where timer noise is negligible); pre-training steps and cached scoring are medians of repeats.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MAIN_SETTINGS = "5-1,5-5,10-1,10-5,zs-5,zs-10,nota-5-1-0.5"
PUBMED_SETTINGS = "5-1,5-5"
ABLATION_SETTINGS = "5-1,zs-5"


# The main command's recipe on top of the package's defaults: `examples/pretrain.py`'s `CPU_BUDGET` sets the same
# options (tests/test_benchmarks.py checks that they agree; docs/method.md has the measurements). Every run of the
# CPU budget trains it, and `gpu_check.py`'s MiniLM run. The README's 25-minute recipe (rows (c)-(e)) is this recipe
# at `TUNED_BATCH_SIZE`; `recipe_sweep.py`'s `b64_lr1e-4_blank0.3` is the measured record of that one.
CPU_RECIPE = {"learning_rate": "1e-4", "blank_probability": "0.3"}
TUNED_BATCH_SIZE = 64


def as_argv(options: dict[str, str]) -> tuple[str, ...]:
    """`{"learning_rate": "1e-4"}` -> `("--learning_rate", "1e-4")`."""
    return tuple(token for key, value in options.items() for token in (f"--{key}", value))


@dataclass(frozen=True)
class Budget:
    name: str
    # "tiny": a random 2-layer BERT saved with the packaged tokenizer; "minilm": the packaged all-MiniLM-L6-v2;
    # anything else: a model name or path for `--sentence_model_name_or_path`.
    backbone: str
    backbone_label: str
    seeds: tuple[int, ...]
    device: str = "cpu"  # where the harness's own evaluations and speed measurements run ("cuda" on a GPU)
    # torch/OpenMP threads of the harness and its subprocesses; None: torch's default (all cores). The smoke budget
    # uses 1: a tiny model gains nothing from a second thread, and on a loaded machine OpenMP threads waiting for a
    # descheduled sibling make each of its small ops ~50x slower (measured: 2.2 s vs 0.045 s per tiny step)
    threads: int | None = None

    # pre-training (examples/pretrain.py)
    pretrain_steps: int = 300
    pretrain_batch_size: int = 32
    pretrain_save_steps: int = 100  # checkpoints, so an interrupted run resumes (deleted once the run is done)
    pretrain_extra_args: tuple[str, ...] = ()
    # rows (c)-(e) only, on top of the recipe above (None: pretrain_batch_size): the main table may run a longer
    # recipe than `examples/pretrain.py`'s defaults, which the ablations, the data-scaling block and the speed section
    # keep (the CPU budget: the README's 25-minute recipe, `CPU_RECIPE` at `TUNED_BATCH_SIZE`)
    quality_batch_size: int | None = None
    quality_extra_args: tuple[str, ...] = ()

    # episodic fine-tuning (examples/finetune_fewrel.py)
    finetune_steps: int = 100
    finetune_batch_size: int = 2  # episodes per step
    finetune_extra_args: tuple[str, ...] = ()

    # evaluation of the main table (examples/evaluate_fewrel.py's code path)
    eval_settings: str = MAIN_SETTINGS
    pubmed_settings: str = PUBMED_SETTINGS
    eval_episodes: int = 10_000
    eval_seed: int = 0
    eval_pool_per_relation: int | None = None  # None: every sentence of the split (smoke: a few per relation)
    eval_batch_size: int = 128

    # ablations (one seed)
    ablation_seed: int = 1
    ablation_steps: int = 40
    ablation_batch_sizes: tuple[int, ...] = (16, 32, 64)
    ablation_settings: str = ABLATION_SETTINGS
    ablation_episodes: int = 2_000
    ablation_pool_per_relation: int | None = 100

    # the zero-shot block (`run_all.py --only zeroshot`; harness/zeroshot.py): RE-Matching's FewRel splits, pre-trained at
    # the ablations' recipe at `zeroshot_batch_size` (None: pretrain_batch_size), seed ablation_seed; the `ori` splits
    # share a run of the same argv (row (c)'s or the ablations' `full`) where there is one; the seeded splits:
    # "per_seed" (one run per seed without its three splits' test and eval relations), "shared" (one run without every
    # seeded split's) or "per_split" (one run each)
    zeroshot_batch_size: int | None = None
    zeroshot_ms: tuple[int, ...] = (5, 10, 15)
    zeroshot_splits: tuple[str, ...] = ("ori", "40", "41", "42", "43")
    zeroshot_pool_per_relation: int | None = None  # test sentences per relation (None: all; smoke: a few)
    zeroshot_pretraining: str = "per_seed"
    # True: every run of the block also trains on FewRel's sentences (val_wiki, the train sample) of the relations its
    # splits leave for training, the published methods' training data, beside the corpus; the `ori` run then holds out
    # the `ori` splits' test and eval relations like a seeded one and shares no run
    zeroshot_fewrel_training: bool = False
    # True: every run of the block trains in bf16 autocast (`--bf16 True`, with `--use_cpu True` on the CPU, where
    # transformers asks for it): on a CPU with AVX512-BF16 a step of the MiniLM recipe takes 0.65x the fp32 time, so a
    # larger batch fits the same minutes; units and runs are named with `-bf16`
    zeroshot_bf16: bool = False
    # True: every run of the block keeps the label encoder at its pretrained weights (`--freeze_label_encoder True`:
    # only the sentence encoder learns); units and runs are named with `-locked`
    zeroshot_locked_labels: bool = False
    # below 1: every checkpoint of the block is scored with its label encoder interpolated with its backbone at this
    # weight (WiSE-FT, `modeling_sacon.training.interpolation`; what `--label_encoder_interpolation` does at the end of
    # a run). The runs are the block's as trained (shared with the plain block); only the evaluations differ
    zeroshot_label_interpolation: float = 1.0

    # speed and memory
    speed_step_warmup: int = 2
    speed_step_repeats: int = 10
    speed_reencode_episodes: int = 1_000
    speed_pool_per_relation: int | None = None  # sentences of val_wiki encoded by the encoding benchmarks
    speed_encode_repeats: int = 1  # each arm over all of val_wiki is minutes on a CPU: timer noise is negligible
    speed_scoring_repeats: int = 3

    # training runs per subprocess: "one" (isolated runs, per-run peak RSS) or "section" (one process per section:
    # smoke only, where process start-up would dominate)
    processes: str = "one"

    @property
    def main_table_batch_size(self) -> int:
        return self.quality_batch_size or self.pretrain_batch_size

    @property
    def zeroshot_pretrain_batch_size(self) -> int:
        return self.zeroshot_batch_size or self.pretrain_batch_size

    @property
    def main_table_is_default_recipe(self) -> bool:
        """Whether rows (c)-(e) pre-train with the ablations' recipe (then `full` can be row (c)'s run)."""
        return self.main_table_batch_size == self.pretrain_batch_size and not self.quality_extra_args

    def with_overrides(self, overrides: dict[str, str]) -> "Budget":
        """`--set key=value` overrides, converted to the field's type."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        values = {}
        for key, raw in overrides.items():
            if key not in fields or key == "name":
                raise ValueError(f"unknown budget field {key!r}; fields: {', '.join(sorted(set(fields) - {'name'}))}")
            current = getattr(self, key)
            values[key] = _convert(raw, current, key)
        return dataclasses.replace(self, **values)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _convert(raw: str, current, key: str):
    if isinstance(current, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(current, tuple):
        items = [item for item in raw.split(",") if item]
        kind = type(current[0]) if current else str
        return tuple(kind(item) for item in items)
    if current is None or isinstance(current, int):
        if raw.lower() in ("none", ""):
            return None
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    return raw


SMOKE = Budget(
    name="smoke",
    backbone="tiny",
    backbone_label="tiny random BERT",
    seeds=(1,),
    pretrain_steps=3,
    pretrain_batch_size=8,
    pretrain_save_steps=1000,
    finetune_steps=2,
    finetune_batch_size=1,
    eval_episodes=20,
    eval_pool_per_relation=10,
    eval_batch_size=64,
    ablation_steps=2,
    ablation_batch_sizes=(4, 8, 16),
    ablation_episodes=20,
    ablation_pool_per_relation=10,
    speed_step_warmup=1,
    speed_step_repeats=2,
    speed_reencode_episodes=10,
    speed_pool_per_relation=10,
    speed_encode_repeats=1,
    speed_scoring_repeats=1,
    zeroshot_ms=(5, 10),  # the shared `ori` run scores two splits; the seeded splits m5/40 and m10/40 share seed 40's run
    zeroshot_splits=("ori", "40"),
    zeroshot_pool_per_relation=5,
    threads=1,
    processes="section",
)

CPU = Budget(
    name="cpu",
    backbone="minilm",
    backbone_label="MiniLM",
    seeds=(1, 2, 3),
    pretrain_steps=500,  # examples/pretrain.py's default
    pretrain_batch_size=32,
    pretrain_save_steps=100,
    pretrain_extra_args=as_argv(CPU_RECIPE),
    # rows (c)-(e): the README's 25-minute recipe (about 20 min a run on idle cores)
    quality_batch_size=TUNED_BATCH_SIZE,
    finetune_steps=100,
    finetune_batch_size=2,
    eval_episodes=10_000,
    # the main runs' length (issue 9): the whole run takes ~3 h on 2 idle cores, within the 4-hour budget; its units
    # resume, so it can span working sessions (`--set ablation_steps=250`: half length, ~2 h)
    ablation_steps=500,
    ablation_batch_sizes=(16, 32, 64),
    ablation_episodes=2_000,
    ablation_pool_per_relation=100,
    speed_step_warmup=2,
    speed_step_repeats=10,
    # the zero-shot block at the 25-minute recipe, the longest acceptance allows (one run of at most 25 CPU-minutes per
    # split): its `ori` run is row (c)'s seed-1 run; docs/results.md has the batch-32 block beside it
    zeroshot_batch_size=TUNED_BATCH_SIZE,
)

GPU = Budget(
    name="gpu",
    backbone="bert-base-uncased",
    backbone_label="BERT-base",
    seeds=(1, 2, 3),
    device="cuda",
    pretrain_steps=6_000,
    pretrain_batch_size=64,
    pretrain_save_steps=1_000,
    pretrain_extra_args=("--bf16", "True", "--dataloader_num_workers", "4", "--learning_rate", "3e-5"),
    finetune_steps=2_000,
    finetune_batch_size=4,
    finetune_extra_args=("--bf16", "True", "--dataloader_num_workers", "4"),
    eval_episodes=10_000,
    eval_batch_size=256,
    ablation_steps=2_000,
    ablation_batch_sizes=(32, 64, 128),
    ablation_episodes=10_000,
    ablation_pool_per_relation=None,
    speed_step_warmup=5,
    speed_step_repeats=20,
    speed_encode_repeats=3,
    speed_scoring_repeats=3,
)

BUDGETS = {budget.name: budget for budget in (SMOKE, CPU, GPU)}


# ----------------------------------------------------------------------------------------------------------------
# Time estimate (see the module docstring)


@dataclass(frozen=True)
class Planning:
    """Per-unit costs on the budget's machine (CPU_PLANNING: MiniLM on 2 idle cores)."""

    pretrain_step_s: float = 1.35  # at batch 32, shuffled batches; scales linearly with the batch
    bf16_step_factor: float = 0.65  # a step in bf16 autocast against fp32 (MiniLM, batch 64: 24.2 s vs 37.6 s / 20 steps)
    finetune_step_s: float = 0.6  # at 2 episodes per step
    encode_sentences_per_s: float = 200.0
    pubmed_sentence_cost: float = 1.3
    scoring_s_per_setting: float = 1.5  # at 10,000 episodes; linear in episodes
    reencode_s_per_episode: float = 0.085  # 5-way 1-shot
    naive_encode_factor: float = 1.72
    model_load_s: float = 3.0
    process_s: float = 20.0
    val_wiki_sentences: int = 11_200
    val_wiki_relations: int = 16
    pubmed_sentences: int = 1_000
    pubmed_relations: int = 10
    # zero-shot test sentences: a val_wiki relation has 700, a FewRel train relation 113-124 (the train_wiki sample);
    # the seeded splits draw their test relations from all 80, 16 of which are val_wiki's
    train_sample_sentences_per_relation: int = 120
    fewrel_relations: int = 80


CPU_PLANNING = Planning()


def estimate(budget: Budget, plan: Planning = CPU_PLANNING) -> dict[str, float]:
    """Seconds per part of `run_all.py` under `plan` (meaningful for the budget the constants were measured for)."""

    def sentences(pool: int | None, total: int, relations: int) -> int:
        return total if not pool else min(total, pool * relations)

    def encode(pool: int | None, pubmed: bool) -> float:
        n = sentences(pool, plan.val_wiki_sentences, plan.val_wiki_relations)
        if pubmed:
            n += plan.pubmed_sentence_cost * sentences(pool, plan.pubmed_sentences, plan.pubmed_relations)
        return n / plan.encode_sentences_per_s

    def score(settings: int, episodes: int) -> float:
        return settings * plan.scoring_s_per_setting * episodes / 10_000

    main_settings = len(budget.eval_settings.split(",")) + len(budget.pubmed_settings.split(","))
    few_shot = main_settings - sum(s.strip().startswith("zs-") for s in budget.eval_settings.split(","))
    per_baseline = encode(budget.eval_pool_per_relation, True) + score(main_settings, budget.eval_episodes) + plan.model_load_s
    per_trained = per_baseline + score(few_shot, budget.eval_episodes)
    step = plan.pretrain_step_s * budget.pretrain_batch_size / 32
    main_step = plan.pretrain_step_s * budget.main_table_batch_size / 32
    seeds = len(budget.seeds)
    # the ablation runs the harness starts: a variant that is one of row (c)'s runs (`quality.same_run`) costs nothing
    from pathlib import Path

    from .quality import ablation_training_units, quality_training_units, run_options  # here: quality imports budgets

    main_runs = {unit["name"] for unit in quality_training_units(budget, budget.backbone, Path("."))}
    ablation_units = ablation_training_units(budget, budget.backbone, Path("."))
    ablation_runs = {unit["name"]: run_options(unit["argv"]) for unit in ablation_units if unit["name"] not in main_runs}
    evaluated = len(ablation_units)
    ablation_eval = (encode(budget.ablation_pool_per_relation, False)
                     + score(len(budget.ablation_settings.split(",")), budget.ablation_episodes) + plan.model_load_s)
    sorted_encode = encode(budget.speed_pool_per_relation, False)
    parts = {
        "baselines (a), (b)": 2 * per_baseline,
        "pre-training (c)": seeds * (budget.pretrain_steps * main_step + plan.process_s),
        "fine-tuning (d)": seeds * (budget.finetune_steps * plan.finetune_step_s * budget.finetune_batch_size / 2 + plan.process_s),
        "evaluations (c), (d), (e)": 2 * seeds * per_trained,
        "ablation pre-training": sum(
            int(run["--max_steps"][0]) * plan.pretrain_step_s * int(run["--per_device_train_batch_size"][0]) / 32
            + plan.process_s for run in ablation_runs.values()),
        "ablation evaluations": evaluated * ablation_eval,
        "speed": (
            (budget.speed_step_warmup + budget.speed_step_repeats) * step * (1 + 0.75 + 1.45)  # full, comparator, no dedup
            + budget.speed_encode_repeats * sorted_encode * (1 + plan.naive_encode_factor)
            + budget.speed_reencode_episodes * plan.reencode_s_per_episode + 4 * plan.model_load_s
        ),
    }
    parts["total"] = sum(parts.values())
    return parts


ZEROSHOT_PRETRAINING_MODES = ("per_seed", "shared", "per_split")


def seeded_runs(budget: Budget) -> dict[str, list[tuple[int, str]]]:
    """The zero-shot block's seeded (m, split) pairs grouped by the pre-training run that serves them (one per seed,
    one in all, or one per split: `budget.zeroshot_pretraining`), keyed by the run's name."""
    mode = budget.zeroshot_pretraining
    if mode not in ZEROSHOT_PRETRAINING_MODES:
        raise ValueError(f"zeroshot_pretraining must be one of {ZEROSHOT_PRETRAINING_MODES}, got {mode!r}")
    seeded = [(m, name) for m in budget.zeroshot_ms for name in budget.zeroshot_splits if name != "ori"]
    if mode == "shared":
        return {"heldout": seeded} if seeded else {}
    if mode == "per_seed":
        names = dict.fromkeys(name for _, name in seeded)
        return {f"split{name}": [(m, n) for m, n in seeded if n == name] for name in names}
    return {f"m{m}-{name}": [(m, name)] for m, name in seeded}


def estimate_zeroshot(budget: Budget, plan: Planning = CPU_PLANNING) -> dict[str, float]:
    """Seconds per part of the zero-shot block: pre-training runs at the block's batch size (the `ori` run is free
    where row (c) or the ablations have run it; the seeded splits: `seeded_runs`), then one evaluation per checkpoint
    (the `ori` splits' union of test relations is encoded once)."""
    step = plan.pretrain_step_s * (plan.bf16_step_factor if budget.zeroshot_bf16 else 1.0)
    run = budget.pretrain_steps * step * budget.zeroshot_pretrain_batch_size / 32 + plan.process_s
    groups = seeded_runs(budget)
    seeded = [m for members in groups.values() for m, _ in members]
    per_val = plan.val_wiki_sentences / plan.val_wiki_relations
    if budget.zeroshot_pool_per_relation:
        per_val = min(per_val, budget.zeroshot_pool_per_relation)
    per_train = min(plan.train_sample_sentences_per_relation, budget.zeroshot_pool_per_relation or 10**9)
    val_share = plan.val_wiki_relations / plan.fewrel_relations
    per_seeded = val_share * per_val + (1 - val_share) * per_train  # expected sentences per seeded test relation
    ori = "ori" in budget.zeroshot_splits
    ori_sentences = min(max(budget.zeroshot_ms), plan.val_wiki_relations) * per_val if ori else 0
    parts = {
        "pre-training, ori (shared with row (c) or the ablations where their argv agrees)": run if ori else 0.0,
        "pre-training, seeded splits": len(groups) * run,
        "evaluations": (ori_sentences + sum(seeded) * per_seeded) / plan.encode_sentences_per_s
        + (ori + len(groups)) * plan.model_load_s,
    }
    parts["total"] = sum(parts.values())
    return parts
