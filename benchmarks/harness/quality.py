"""Quality benchmarks: the main few-shot table (rows (a)-(e)) and the pre-training ablations.

Every training run is the package's pre-training / fine-tuning command (`modeling_sacon.commands.pretrain` /
`.finetune`, what `examples/pretrain.py` / `examples/finetune_fewrel.py` run) `main(argv)` in a subprocess
(`train_worker.py`); every evaluation goes through the evaluation command's own functions (`modeling_sacon.commands.
evaluate`: `EvalArguments`, `build_evaluator_factory`) and `FewShotEvaluator.evaluate`, on the same seeded episodes for every
model. Each run and each evaluation is a unit (`common.UnitStore`): rerunning skips what is done.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .budgets import Budget
from .common import UnitStore, fingerprint, load_average, log, mean_ci95, run_worker, write_json
from .train_worker import script_defaults

# (result key, column title); result keys are evaluate_fewrel.py's ("pubmed/" prefix for val_pubmed)
MAIN_COLUMNS = [
    ("5-1", "val_wiki 5-1"),
    ("5-5", "val_wiki 5-5"),
    ("10-1", "val_wiki 10-1"),
    ("10-5", "val_wiki 10-5"),
    ("zs-5", "val_wiki zero-shot 5-way"),
    ("zs-10", "val_wiki zero-shot 10-way"),
    ("nota-5-1-0.5", "val_wiki NOTA 5-1 (50%)"),
    ("pubmed/5-1", "val_pubmed 5-1"),
    ("pubmed/5-5", "val_pubmed 5-5"),
]
ABLATION_COLUMNS = [("5-1", "val_wiki 5-1"), ("zs-5", "val_wiki zero-shot 5-way")]


@dataclass(frozen=True)
class Ablation:
    name: str
    description: str
    args: tuple[str, ...]
    group: str = "ablation"  # "ablation" or "data" (the data-scaling block: same recipe, another corpus)


# v1 holds P1056, a FewRel 2.0 NYT relation: the strict check refuses it unless told (its model card then says so)
STRICT_OVERRIDES = {"v1": ("--allow_eval_relations", "True")}
# the embedded corpora of the data-scaling block (examples/pretrain.py --corpus)
CORPORA = {
    "v1": "the earlier corpus: 82 relations, 16,329 sentences",
    "v2_dense": "v2 dense only: 105 relations, 36,354 sentences",
    "v2": "v2 dense + long tail: 912 relations, 39,083 sentences",
}


def ablations_for(budget: Budget) -> list[Ablation]:
    """One-seed variants of the default recipe (`full`: examples/pretrain.py's defaults), at `budget.ablation_steps`,
    and the data-scaling block (the same recipe on each other embedded corpus). The batch-scheme variant is whichever
    scheme the default is not, so the table always holds the authors' shuffled batches and ours."""
    defaults = script_defaults("pretrain")
    balanced, corpus = defaults["balanced_batches"], defaults["corpus"]
    n = defaults["instances_per_relation"]
    balanced_shape = f"{budget.pretrain_batch_size // n} relations x {n}, long-tail share {defaults['longtail_share']}"
    scheme = f"relation-balanced ({balanced_shape})" if balanced else "plain shuffled (the authors' scheme)"
    on_top = f" with {' '.join(budget.pretrain_extra_args)}" if budget.pretrain_extra_args else ""
    variants = [
        Ablation("full", f"the default recipe (examples/pretrain.py's defaults{on_top}: both anchored InfoNCE terms, sum "
                 f"reduction, learned temperature, batch {budget.pretrain_batch_size} {scheme}, corpus {corpus}, "
                 "MLM only with a pretrained head)", ()),
        Ablation("sentence_anchored_only", "sentence-anchored InfoNCE only (label_anchored_weight 0)",
                 ("--label_anchored_weight", "0")),
        Ablation("label_anchored_only", "label-anchored InfoNCE only (sentence_anchored_weight 0)",
                 ("--sentence_anchored_weight", "0")),
        Ablation("new_mlm_heads", "MLM on both towers through new heads (both MLM weights 1; the backbone has none)",
                 ("--sentence_mlm_weight", "1", "--label_mlm_weight", "1")),
        Ablation("mean_reduction", "label-anchored reduction mean (full: sum)", ("--label_anchored_reduction", "mean")),
        Ablation("fixed_temperature", "temperature fixed at 0.07 (full: learned from 0.07)", ("--learn_temperature", "False")),
        Ablation("hard_label_negatives", f"+{budget.pretrain_batch_size} label texts per batch as negatives of the "
                 "sentence-anchored softmax, the batch relations' nearest by label-text embedding (full: none)",
                 ("--label_negatives", str(budget.pretrain_batch_size), "--hard_label_negatives", "True")),
    ]
    for size in budget.ablation_batch_sizes:
        if size != budget.pretrain_batch_size:
            variants.append(Ablation(f"batch_{size}", f"batch size {size} (full: {budget.pretrain_batch_size})",
                                     ("--per_device_train_batch_size", str(size))))
    if balanced:
        variants.append(Ablation("authors_batches", "the authors' batches: plain shuffled (full: relation-balanced)",
                                 ("--balanced_batches", "False")))
    else:
        variants.append(Ablation(
            "balanced_batches", f"relation-balanced batches: {balanced_shape} (full: shuffled)",
            ("--balanced_batches", "True")))
    variants += [Ablation(f"corpus_{name}", text, ("--corpus", name, *STRICT_OVERRIDES.get(name, ())), "data")
                 for name, text in CORPORA.items() if name != corpus]
    if balanced and corpus == "v2":
        variants.append(Ablation("corpus_v2_uniform", "v2 dense + long tail, all 912 relations drawn alike (no long-tail share)",
                                 ("--dense_min_instances", "0"), "data"))
    # run order: `full`, the batch scheme, the zero-shot lever and the data-scaling block first, then the rest
    first = {"full", "authors_batches", "balanced_batches", "hard_label_negatives"}
    return sorted(variants, key=lambda v: 0 if v.name in first else 1 if v.group == "data" else 2)


# ----------------------------------------------------------------------------------------------------------------
# Backbone


def backbone_path(budget: Budget, output_dir: Path, store: UnitStore, compute: bool = True) -> str:
    """The sentence/label encoder checkpoint: packaged MiniLM, a Hub id, or (smoke) a tiny random BERT."""
    if budget.backbone == "minilm":
        from modeling_sacon.utils.defaults import default_backbone_path

        return default_backbone_path()
    if budget.backbone != "tiny":
        return budget.backbone
    path = output_dir / "backbone"
    spec = {"kind": "tiny-bert", "hidden": 32, "layers": 2, "heads": 2, "intermediate": 37, "seed": 0}

    def build() -> dict:
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        from modeling_sacon.utils.defaults import default_backbone_path

        tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
        torch.manual_seed(spec["seed"])
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37, max_position_embeddings=128)
        BertModel(config, add_pooling_layer=False).save_pretrained(path)
        tokenizer.save_pretrained(path)
        return {"path": str(path)}

    store.run("backbone", spec, build, compute)
    if compute and not (path / "config.json").is_file():  # a cached entry whose files were deleted: same seed, same model
        build()
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation through the package's evaluation command (`modeling_sacon.commands.evaluate`)


_SPLITS: dict[str, object] = {}


def load_split(path) -> object:
    """`load_fewrel_json(path)`, parsed once per process (the harness evaluates many models on the same splits)."""
    from modeling_sacon.data import load_fewrel_json

    key = str(path)
    if key not in _SPLITS:
        _SPLITS[key] = load_fewrel_json(path)
    return _SPLITS[key]


def evaluate_model(
    encoder: str,
    model_path: str,
    *,
    settings: str,
    pubmed_settings: str | None,
    methods: Sequence[str],
    episodes: int,
    seed: int,
    batch_size: int,
    pool_per_relation: int | None,
    device: str,
) -> dict:
    """`evaluate_fewrel.py`'s evaluation of one model, for several scoring methods on one encoding of each split.

    With `methods=["prototype"]` and no pool this is exactly `evaluate_fewrel.run` (same factory, data, label
    tables, settings, episodes); each extra method re-scores the same cached embeddings. Zero-shot settings score
    label embeddings only, whatever the method, so they are scored with the first method alone.
    Returns {"methods": {method: {setting: {accuracy, ci95, episodes, ...}}}, "timing": {...}}.
    """
    import torch

    from modeling_sacon.data import first_per_relation, load_label_table, resolve_data_path
    from modeling_sacon.data.episodes import parse_settings

    from modeling_sacon.commands import evaluate as ev

    args = ev.EvalArguments(
        model_name_or_path=model_path, encoder=encoder, settings=settings, pubmed_settings=pubmed_settings or "",
        pubmed_file="fewrel/val_pubmed.json" if pubmed_settings else "", episodes=episodes, seed=seed,
        batch_size=batch_size, no_progress=True,
    )
    main_settings = parse_settings(args.settings)
    extra = parse_settings(args.pubmed_settings) if args.pubmed_file else []
    results: dict[str, dict] = {method: {} for method in methods}
    timing: dict[str, float] = {}
    with torch.no_grad():
        make = ev.build_evaluator_factory(args)
        label_table = load_label_table(resolve_data_path(args.label_file))
        jobs = [(args.data_file, main_settings, "", False)]
        if extra:
            jobs.append((args.pubmed_file, extra, "pubmed/", True))
        for data_file, split_settings, prefix, fallback in jobs:
            path = resolve_data_path(data_file)
            dataset = first_per_relation(load_split(path), pool_per_relation)
            evaluator = make(dataset, label_table, fallback, str(path))
            if device != "cpu":
                evaluator.encoder.model.to(device)
            start = time.perf_counter()
            evaluator.encode()
            timing[f"{prefix or 'val_wiki/'}encode_s"] = round(time.perf_counter() - start, 3)
            timing[f"{prefix or 'val_wiki/'}sentences"] = len(dataset)
            for i, method in enumerate(methods):
                chosen = [s for s in split_settings if i == 0 or not s.zero_shot]
                start = time.perf_counter()
                scored = evaluator.evaluate(chosen, args.episodes, args.seed, method, args.similarity)
                timing[f"{prefix or 'val_wiki/'}{method}_scoring_s"] = round(time.perf_counter() - start, 3)
                for name, value in scored.items():
                    results[method][prefix + name] = value
                if i > 0:  # zero-shot settings: identical under every method (labels only)
                    for s in split_settings:
                        if s.zero_shot:
                            results[method][prefix + s.name] = dict(results[methods[0]][prefix + s.name], same_as=methods[0])
            del evaluator
        del make
    gc.collect()
    return {"methods": results, "timing": timing}


# ----------------------------------------------------------------------------------------------------------------
# Training units


def _train_spec(script: str, argv: list[str], depends: dict | None = None) -> dict:
    """A training unit's specification: its argv and the script defaults under it (`train_worker.script_defaults`)."""
    return {"script": script, "argv": argv, "defaults": fingerprint(script_defaults(script)), "depends": depends or {}}


def pretrain_unit(name: str, budget: Budget, argv: list[str], run_dir: Path, **fields) -> dict:
    """A pre-training unit of `examples/pretrain.py` (`fields`: the section's own keys, e.g. its row or variant)."""
    spec = _train_spec("pretrain", argv, {"backbone": budget.backbone})
    return {"name": name, "spec": spec, "script": "pretrain", "argv": argv, "run_dir": str(run_dir), **fields}


def run_options(argv: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """A command line's options as the script's parser reads them: a repeated option's last values win."""
    options: dict[str, tuple[str, ...]] = {}
    flag = None
    for token in argv:
        if token.startswith("--"):
            flag = token
            options[flag] = ()
        elif flag is not None:
            options[flag] += (token,)
    return options


def same_run(candidates: Sequence[dict], argv: Sequence[str]) -> dict | None:
    """The pre-training unit among `candidates` that trains what `argv` trains (the same options bar `--output_dir`):
    one run, shared between sections rather than run twice."""
    wanted = {k: v for k, v in run_options(argv).items() if k != "--output_dir"}
    return next((unit for unit in candidates if unit["script"] == "pretrain"
                 and {k: v for k, v in run_options(unit["argv"]).items() if k != "--output_dir"} == wanted), None)


def _prepare_output_dir(run_dir: Path, spec: dict, store: UnitStore, name: str) -> bool:
    """True when the run must start afresh (its directory holds a run of another spec, or --force)."""
    marker = run_dir / "benchmark_spec.json"
    stale = store.force or (marker.is_file() and json.loads(marker.read_text()).get("fingerprint") != fingerprint(spec))
    stale = stale or store.path(name).is_file()  # a finished unit of another spec
    if stale and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"fingerprint": fingerprint(spec), "spec": spec})
    return stale


def run_training_units(
    units: list[dict], store: UnitStore, budget: Budget, output_dir: Path, group: str, evaluation_stale=None,
    train: bool = True,
) -> dict[str, dict]:
    """Run the training units that are not stored yet (one subprocess each, or one per group on the smoke budget);
    with `train=False` (`run_all.py --no_training`) start none: they are reported missing, the stored ones returned.

    units: [{name, spec, script, argv, run_dir, requires}] in dependency order (`requires`: units whose model the
    run starts from). A stored run is run again when a run it requires runs again, or when its model files are gone
    but needed: by a dependent run that has to run, or by one of its evaluations that is not stored
    (`evaluation_stale(name, entry)`). Returns {name: stored entry}.
    """
    stored = {unit["name"]: store.fresh(unit["name"], unit["spec"]) for unit in units}
    needed: set[str] = set()
    candidate: dict[str, bool] = {}
    for unit in reversed(units):
        name, entry = unit["name"], stored[unit["name"]]
        if entry is not None and evaluation_stale is not None and evaluation_stale(name, entry):
            needed.add(name)
        missing = entry is not None and name in needed and not (Path(unit["run_dir"]) / "config.json").is_file()
        if missing:
            log(f"{name}: stored, but its model files are gone and needed: running it again")
        candidate[name] = entry is None or missing
        if candidate[name]:
            needed.update(unit.get("requires", ()))
    entries: dict[str, dict] = {}
    pending: list[dict] = []
    for unit in units:
        name = unit["name"]
        if name in store.failed:  # failed earlier in this invocation: not retried until the next one
            continue
        if candidate[name] or any(p["name"] in unit.get("requires", ()) for p in pending):
            pending.append(unit)
            continue
        entries[name] = stored[name]
        if name not in store.cached and name not in store.computed:
            store.cached.append(name)
            log(f"{name}: cached")
    if not pending:
        return entries
    if not train:
        store.missing.extend(unit["name"] for unit in pending if unit["name"] not in store.missing)
        log(f"{group}: --no_training: {len(pending)} run(s) not stored, not started: {', '.join(u['name'] for u in pending)}")
        return entries
    batches = [pending] if budget.processes == "section" else [[unit] for unit in pending]
    for batch in batches:
        blocked = [u for u in batch if any(r in store.failed for r in u.get("requires", ()))]
        for unit in blocked:
            store.fail(unit["name"], "a run it starts from failed")
        batch = [u for u in batch if u not in blocked]
        if not batch:
            continue
        work = []
        resumed = {}
        for unit in batch:
            _prepare_output_dir(Path(unit["run_dir"]), unit["spec"], store, unit["name"])
            checkpoints = sorted(Path(unit["run_dir"]).glob("checkpoint-*"))
            resumed[unit["name"]] = checkpoints[-1].name if checkpoints else None
            result_path = output_dir / "runs" / "worker-results" / f"{unit['name'].replace('/', '__')}.json"
            result_path.unlink(missing_ok=True)
            work.append({"name": unit["name"], "script": unit["script"], "argv": unit["argv"], "result_path": str(result_path)})
        log_path = _log_path(output_dir, batch, group)
        label = batch[0]["name"] if len(batch) == 1 else f"{group} ({len(batch)} runs in one process)"
        log(f"{label}: running in a subprocess (log: {log_path})")
        before = load_average()
        failure, process = None, None
        try:
            process = run_worker(work, log_path, output_dir / "runs" / "worker-specs" / f"{group}.json")
        except RuntimeError as err:
            failure = str(err)
        for unit, item in zip(batch, work):
            path = Path(item["result_path"])
            if not path.is_file():
                store.fail(unit["name"], failure or "no result written")
                continue
            result = json.loads(path.read_text())
            if process is not None and len(batch) == 1:
                result["process"] = process  # exact per-run peak RSS (os.wait4 of this child alone)
            result["run_dir"] = unit["run_dir"]
            # wall time and memory are those of this process: a run resumed from a checkpoint did only the rest
            result["resumed_from"] = resumed[unit["name"]]
            for checkpoint in Path(unit["run_dir"]).glob("checkpoint-*"):
                shutil.rmtree(checkpoint, ignore_errors=True)  # only needed to resume an interrupted run
            entries[unit["name"]] = store.save(unit["name"], unit["spec"], result, result["wall_s"], before)
            peak = result.get("process", {}).get("process_peak_rss_mb", result["peak_rss_mb"])
            log(f"{unit['name']}: done in {result['wall_s']:.1f}s, peak RSS {peak} MB")
    return entries


def stored_only(units: list[dict], store: UnitStore) -> dict[str, dict | None]:
    """The stored entries of training units, computing nothing (a section left out by `--only`)."""
    return {unit["name"]: store.run(unit["name"], unit["spec"], lambda: {}, allowed=False) for unit in units}


def _log_path(output_dir: Path, batch: list[dict], group: str) -> Path:
    name = batch[0]["name"].replace("/", "__") if len(batch) == 1 else group
    return output_dir / "logs" / f"{name}.log"


def pretrain_argv(
    budget: Budget, backbone: str, run_dir: Path, seed: int, steps: int, extra: Sequence[str] = (), main_table: bool = False,
    batch_size: int | None = None,
) -> list[str]:
    """`examples/pretrain.py`'s argv; `main_table`: rows (c)-(e)'s recipe (`Budget.quality_*`), else the ablations' (at
    `batch_size` where given)."""
    if main_table and batch_size is not None:
        raise ValueError("pretrain_argv: the main table's batch size is the budget's (main_table_batch_size)")
    batch_size = budget.main_table_batch_size if main_table else batch_size or budget.pretrain_batch_size
    argv = [
        "--output_dir", str(run_dir),
        "--seed", str(seed),
        "--max_steps", str(steps),
        "--per_device_train_batch_size", str(batch_size),
        "--save_steps", str(budget.pretrain_save_steps),
        "--save_total_limit", "1",
        "--logging_steps", str(max(1, min(10, steps // 5))),
        "--eval_fewrel", "none",  # the harness evaluates on the full splits, after training
        "--report_to", "none",
        "--disable_tqdm", "True",
    ]
    if budget.backbone != "minilm":
        argv += ["--sentence_model_name_or_path", backbone]
    return argv + list(budget.pretrain_extra_args) + list(budget.quality_extra_args if main_table else ()) + list(extra)


def finetune_argv(budget: Budget, pretrained: Path, run_dir: Path, seed: int) -> list[str]:
    return [
        "--model_name_or_path", str(pretrained),
        "--output_dir", str(run_dir),
        "--seed", str(seed),
        "--max_steps", str(budget.finetune_steps),
        "--per_device_train_batch_size", str(budget.finetune_batch_size),
        "--warmup_steps", str(max(0, budget.finetune_steps // 10)),
        # strict protocol: no model selection on val_wiki (the evaluation split); the last step is kept
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--load_best_model_at_end", "False",
        "--eval_episodes", "1",
        "--logging_steps", str(max(1, min(10, budget.finetune_steps // 5))),
        "--report_to", "none",
        "--disable_tqdm", "True",
        *budget.finetune_extra_args,
    ]


# ----------------------------------------------------------------------------------------------------------------
# Main table


def row_labels(budget: Budget) -> dict[str, str]:
    b = budget.backbone_label
    return {
        "a": f"(a) {b} off-the-shelf, mean pooling",
        "b": f"(b) {b}, [h;t] marker pooling, untrained",
        "c": "(c) SaCon pre-trained from (b) on the embedded corpus",
        "d": "(d) (c) + episodic fine-tuning on fewrel_train_sample",
        "e_c": "(e) label-augmented scoring on (c)",
        "e_d": "(e) label-augmented scoring on (d)",
    }


def quality_training_units(budget: Budget, backbone: str, output_dir: Path) -> list[dict]:
    """Pre-training (c) and fine-tuning (d) runs, one pair per seed, in dependency order."""
    runs = output_dir / "runs"
    units = []
    for seed in budget.seeds:
        pt_dir = runs / f"pretrain-seed{seed}"
        argv = pretrain_argv(budget, backbone, pt_dir, seed, budget.pretrain_steps, main_table=True)
        pretraining = pretrain_unit(f"quality/pretrain-seed{seed}", budget, argv, pt_dir, row="c", seed=seed)
        pt_spec = pretraining["spec"]
        units.append(pretraining)
        ft_dir = runs / f"finetune-seed{seed}"
        argv = finetune_argv(budget, pt_dir, ft_dir, seed)
        units.append({"name": f"quality/finetune-seed{seed}", "spec": _train_spec("finetune_fewrel", argv, {"pretrain": fingerprint(pt_spec)}),
                      "script": "finetune_fewrel", "argv": argv, "run_dir": str(ft_dir), "row": "d", "seed": seed,
                      "requires": [f"quality/pretrain-seed{seed}"]})
    return units


def run_quality(budget: Budget, output_dir: Path, store: UnitStore, compute: bool, train: bool = True) -> dict:
    backbone = backbone_path(budget, output_dir, store, compute)
    eval_common = {
        "settings": budget.eval_settings, "pubmed_settings": budget.pubmed_settings, "episodes": budget.eval_episodes,
        "seed": budget.eval_seed, "batch_size": budget.eval_batch_size, "pool_per_relation": budget.eval_pool_per_relation,
        "device": budget.device,
    }
    methods = ["prototype", "label_augmented"]
    evaluations: dict[str, dict | None] = {}
    # (a), (b): untrained, one evaluation each
    for row, encoder in (("a", "mean_pooling"), ("b", "marker")):
        spec = {"encoder": encoder, "model": budget.backbone, "methods": ["prototype"], **eval_common}
        evaluations[row] = store.run(
            f"quality/eval-{row}", spec,
            lambda encoder=encoder: evaluate_model(encoder, backbone, methods=["prototype"], **eval_common), compute,
        )
    # (c) pre-training and (d) fine-tuning per seed, then their evaluations (with (e) on the same embeddings)
    units = quality_training_units(budget, backbone, output_dir)
    by_name = {unit["name"]: unit for unit in units}

    def evaluation(unit: dict) -> tuple[str, dict]:
        name = f"quality/eval-{unit['row']}-seed{unit['seed']}"
        return name, {"encoder": "sacon", "model": unit["name"], "trained": unit.get("finished"), "methods": methods, **eval_common}

    def evaluation_stale(name: str, entry: dict) -> bool:
        eval_name, spec = evaluation({**by_name[name], "finished": entry["finished"]})
        return store.fresh(eval_name, spec) is None

    if compute:
        training = run_training_units(units, store, budget, output_dir, "quality-training", evaluation_stale, train)
    else:
        training = stored_only(units, store)
    for unit in units:
        entry = training.get(unit["name"])
        key = f"{unit['row']}-seed{unit['seed']}"
        if entry is None:
            evaluations[key] = None
            continue
        unit["finished"] = entry["finished"]  # a run recomputed in this invocation invalidates its evaluations
        eval_name, spec = evaluation(unit)
        evaluations[key] = store.run(
            eval_name, spec, lambda path=unit["run_dir"]: evaluate_model("sacon", path, methods=methods, **eval_common), compute,
        )
    return assemble_quality(budget, evaluations, training)


def _cell(values: dict[int | str, dict]) -> dict:
    """{seed: evaluator result} -> mean over seeds, CI across seeds (or across episodes with one value)."""
    accuracies = {str(seed): r["accuracy"] for seed, r in values.items()}
    mean, ci = mean_ci95(list(accuracies.values()))
    cell = {"mean": mean, "per_seed": accuracies, "n_seeds": len(accuracies)}
    if ci is None:
        only = next(iter(values.values()))
        cell.update(ci95=only["ci95"], ci_over="episodes", episodes=only["episodes"])
    else:
        cell.update(ci95=ci, ci_over="seeds", episodes=next(iter(values.values()))["episodes"])
    return cell


def assemble_quality(budget: Budget, evaluations: dict, training: dict) -> dict:
    labels = row_labels(budget)
    rows: dict[str, dict] = {}

    def add(row: str, per_seed: dict[str, dict | None], method: str) -> None:
        done = {seed: e for seed, e in per_seed.items() if e is not None}
        columns = {}
        for key, title in MAIN_COLUMNS:
            values = {seed: e["result"]["methods"][method][key] for seed, e in done.items() if key in e["result"]["methods"][method]}
            if values:
                columns[title] = _cell(values)
        note = None
        if method == "label_augmented":
            note = "zero-shot columns score label embeddings only: identical to the prototype row of the same model"
        rows[row] = {"label": labels[row], "method": method, "seeds": sorted(done), "complete": len(done) == len(per_seed),
                     "columns": columns, **({"note": note} if note else {})}

    add("a", {"-": evaluations.get("a")}, "prototype")
    add("b", {"-": evaluations.get("b")}, "prototype")
    for row, source, method in (("c", "c", "prototype"), ("d", "d", "prototype"), ("e_c", "c", "label_augmented"),
                                ("e_d", "d", "label_augmented")):
        add(row, {seed: evaluations.get(f"{source}-seed{seed}") for seed in budget.seeds}, method)

    runs = {}
    for name, entry in training.items():
        if entry is None:
            continue
        result = entry["result"]
        runs[name] = {
            "wall_s": result["wall_s"], "cpu_s": result.get("cpu_s"),
            "peak_rss_mb": result.get("process", {}).get("process_peak_rss_mb", result.get("peak_rss_mb")),
            "argv": entry["spec"]["argv"], "metrics": _small_metrics(result.get("metrics", {})),
        }
    return {
        "columns": [title for _, title in MAIN_COLUMNS],
        "rows": rows,
        "targets": quality_targets(rows),
        "training_runs": runs,
        "evaluation_timing": {name: e["result"]["timing"] for name, e in evaluations.items() if e is not None},
        "protocol": {
            "episodes_per_setting": budget.eval_episodes,
            "episode_seed": budget.eval_seed,
            "pretraining_seeds": list(budget.seeds),
            "pool_per_relation": budget.eval_pool_per_relation,
            "pretrain_steps": budget.pretrain_steps,
            "pretrain_batch_size": budget.main_table_batch_size,
            "pretrain_extra_args": [*budget.pretrain_extra_args, *budget.quality_extra_args],
            "finetune_steps": budget.finetune_steps,
            "finetune_batch_size": budget.finetune_batch_size,
        },
    }


def _small_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# (target name, column, eligible rows, target, stretch goal): the transfer targets of issue 9 (strict protocol, mean of
# the pre-training seeds); zero-shot columns of the (e) rows repeat (c)/(d), so (e) is not eligible there.
QUALITY_TARGETS = (
    ("val_wiki zero-shot 5-way", "val_wiki zero-shot 5-way", ("c", "d"), 86.0, 88.5),
    ("val_wiki 5-1, prototypes (c)", "val_wiki 5-1", ("c",), 78.0, 80.0),
    ("val_wiki 5-1, label-augmented (e) on (c)", "val_wiki 5-1", ("e_c",), 85.0, 88.0),
    ("val_pubmed 5-1", "val_pubmed 5-1", ("c", "d", "e_c", "e_d"), 63.0, 65.0),
)


def quality_targets(rows: dict) -> dict:
    """Each target's best eligible SaCon row against its absolute target (and stretch goal), with row (a) beside it."""
    base = rows.get("a", {}).get("columns", {})
    targets = {}
    for name, title, eligible, target, stretch in QUALITY_TARGETS:
        candidates = [(rows[r]["columns"][title]["mean"], r) for r in eligible if title in rows.get(r, {}).get("columns", {})]
        if not candidates:
            targets[name] = {"met": None}
            continue
        best, row = max(candidates)
        targets[name] = {
            "baseline_a": base.get(title, {}).get("mean"), "best": best, "best_row": row,
            "gain_points": None if title not in base else 100 * (best - base[title]["mean"]),
            "target": target, "stretch": stretch, "met": 100 * best >= target, "stretch_met": 100 * best >= stretch,
        }
    return targets


# ----------------------------------------------------------------------------------------------------------------
# Ablations


def ablation_training_units(budget: Budget, backbone: str, output_dir: Path) -> list[dict]:
    """One pre-training run per variant. A variant that trains what one of row (c)'s runs trains (`same_run`: the main
    length and seed, and e.g. `full` when the main table is at the default recipe, or `batch_64` when the main table is
    the default recipe at batch 64) is that run: the unit is shared, not run twice."""
    main_runs = [unit for unit in quality_training_units(budget, backbone, output_dir) if unit["row"] == "c"]
    units = []
    for variant in ablations_for(budget):
        run_dir = output_dir / "runs" / f"ablation-{variant.name}"
        argv = pretrain_argv(budget, backbone, run_dir, budget.ablation_seed, budget.ablation_steps, variant.args)
        main = same_run(main_runs, argv)
        units.append({**(main or pretrain_unit(f"ablations/pretrain-{variant.name}", budget, argv, run_dir)),
                      "variant": variant.name})
    return units


def run_ablations(budget: Budget, output_dir: Path, store: UnitStore, compute: bool, train: bool = True) -> dict:
    backbone = backbone_path(budget, output_dir, store, compute)
    variants = ablations_for(budget)
    units = ablation_training_units(budget, backbone, output_dir)
    by_name = {unit["name"]: unit for unit in units}
    eval_common = {
        "settings": budget.ablation_settings, "pubmed_settings": None, "episodes": budget.ablation_episodes,
        "seed": budget.eval_seed, "batch_size": budget.eval_batch_size, "pool_per_relation": budget.ablation_pool_per_relation,
        "device": budget.device,
    }

    def evaluation(unit: dict, finished: str) -> tuple[str, dict]:
        spec = {"encoder": "sacon", "model": unit["name"], "trained": finished, "methods": ["prototype"], **eval_common}
        return f"ablations/eval-{unit['variant']}", spec

    def evaluation_stale(name: str, entry: dict) -> bool:
        return store.fresh(*evaluation(by_name[name], entry["finished"])) is None

    if compute:
        training = run_training_units(units, store, budget, output_dir, "ablation-training", evaluation_stale, train)
    else:
        training = stored_only(units, store)
    results = {}
    for variant, unit in zip(variants, units):
        entry = training.get(unit["name"])
        scored = None
        if entry is not None:
            scored = store.run(
                *evaluation(unit, entry["finished"]),
                lambda path=unit["run_dir"]: evaluate_model("sacon", path, methods=["prototype"], **eval_common), compute,
            )
        row = {"description": variant.description, "args": list(variant.args), "group": variant.group, "columns": {}}
        if entry is not None:
            row["pretrain_wall_s"] = entry["result"]["wall_s"]
            row["final_metrics"] = _small_metrics(entry["result"].get("metrics", {}))
        if scored is not None:
            scored = scored["result"]["methods"]["prototype"]
            for key, title in ABLATION_COLUMNS:
                if key in scored:
                    row["columns"][title] = {"mean": scored[key]["accuracy"], "ci95": scored[key]["ci95"],
                                             "ci_over": "episodes", "episodes": scored[key]["episodes"]}
        results[variant.name] = row
    full = results.get("full", {}).get("columns", {})
    for row in results.values():
        row["delta_vs_full_points"] = {
            title: 100 * (cell["mean"] - full[title]["mean"]) for title, cell in row["columns"].items() if title in full
        }
    return {
        "columns": [title for _, title in ABLATION_COLUMNS],
        "variants": results,
        "training_units": [unit["name"] for unit in units],  # shared ones included (see run_all.committed_summaries)
        "protocol": {
            "seed": budget.ablation_seed, "pretrain_steps": budget.ablation_steps, "episodes": budget.ablation_episodes,
            "episode_seed": budget.eval_seed, "pool_per_relation": budget.ablation_pool_per_relation,
        },
    }
