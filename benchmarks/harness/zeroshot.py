"""The zero-shot block: RE-Matching's FewRel splits (m = 5, 10, 15; `ori`, 40-43), each scored by the package's
zero-shot evaluator (`modeling_sacon.fewshot.zeroshot_protocol`, what `examples/evaluate_zeroshot.py` runs) on a
checkpoint pre-trained without the split's test and eval relations.

Pre-training runs at the ablations' recipe (`examples/pretrain.py`'s steps and options) at the block's batch size
(`Budget.zeroshot_pretrain_batch_size`; the CPU budget's: 64, the README's 25-minute recipe), seed
`budget.ablation_seed`. The `ori` splits take their test relations from val_wiki, which the embedded corpus does not
hold: they are scored on an unfiltered run, the one of row (c) or the ablations whose argv is the same (at batch 64 row
(c)'s seed-1 run, at 32 the ablations' `full`, the main command's run), else a run of their own. The seeded splits
(`budget.zeroshot_pretraining`):

* ``per_seed`` (default): one run per seed (40-43) on the corpus without the test and eval relations of that seed's
  three files, scored on all three. RE-Matching's files nest (a seed's m = 5 and m = 10 test and eval relations are
  among its m = 15 ones), so each run excludes exactly the 20 relations of the seed's m = 15 split (13-18 of them are
  in the embedded corpus): strict for every m, and for m = 5 and 10 stricter than the protocol by 10 and 5 relations.
  Five runs make the block.
* ``shared``: one run on the corpus without the test and eval relations of *every* seeded split (37 FewRel training
  relations of the corpus, 38% of its rows), scored on all of them: strict, but each checkpoint also misses the other
  seeds' relations (the kinship relations, for one); docs/results.md compares the two.
* ``per_split``: one run per (m, split), with `--exclude_relations_from` that split's file: what the protocol asks at
  the least, thirteen runs (about 2.6 hours on 2 idle cores).

`zeroshot_fewrel_training` (`--set zeroshot_fewrel_training=true`) adds FewRel's own sentences (val_wiki and the train
sample) to every run's data, less the held-out relations: the FewRel training relations of a split, on which the
published methods train, beside the corpus. The `ori` run then holds out the `ori` files' relations like a seeded run.

Each checkpoint's evaluation is a unit; the evaluator refuses a checkpoint whose recorded `pretraining_relations.json`
holds a test relation, and a checkpoint without that file is refused here.
"""

from __future__ import annotations

import time
from pathlib import Path

from .budgets import Budget, seeded_runs
from .common import UnitStore, log
from .quality import (
    ablation_training_units,
    backbone_path,
    pretrain_argv,
    pretrain_unit,
    quality_training_units,
    run_training_units,
    same_run,
    stored_only,
)

SENTENCE_FILES = ("fewrel/val_wiki.json", "fewrel_train_sample/train_wiki_sample.json")  # in the data dir
LABEL_FILE = "fewrel/pid2name.json"
TOP_CONFUSIONS = 3  # most confused (gold, predicted) pairs kept per split in the summary
SPLIT_SUMMARY_FIELDS = ("precision", "recall", "f1", "per_relation_f1_mean", "accuracy", "num_sentences",
                        "num_predicted_relations")

# As listed in ../shared/data/zeroshot/SOURCE.md (FewRel, mean over 5 splits, %); None: not listed there.
PUBLISHED = [
    {"method": "ZS-BERT", "citation": "Chen and Li, NAACL 2021", "backbone": "BERT-large",
     "f1": {"5": 77.90, "10": 57.25, "15": 36.82}, "precision": None,
     "splits": "its own random splits (not published)"},
    {"method": "RelationPrompt", "citation": "Chia et al., Findings of ACL 2022", "backbone": "GPT-2 + BART",
     "f1": {"5": 89.30, "10": 79.96, "15": 73.40}, "precision": None,
     "splits": "its own splits (seeds 0-4), averaged differently"},
    {"method": "RE-Matching", "citation": "Zhao et al., ACL 2023", "backbone": "BERT-base",
     "f1": {"5": 92.58, "10": 82.92, "15": 73.66}, "precision": {"5": 92.82, "10": 83.21, "15": 73.80},
     "splits": "these splits (trained on FewRel's 80 - m - 5 train relations)"},
]


def split_file(m: int, name: str) -> str:
    """A split file, relative to the data dir (so a unit's spec does not depend on where the data lives)."""
    return f"zeroshot/fewrel_rel2id_{m}_{name}.json"


def fewrel_training_args() -> tuple[str, ...]:
    """`examples/pretrain.py` options that train on the embedded corpus plus FewRel's sentences (val_wiki, the train
    sample; `--exclude_relations_from` then removes a split's test and eval relations): the corpus files and their label
    tables, pid2name for the FewRel relations the corpus lacks (the corpus' own texts win), and the permission the
    val_wiki relations need (the evaluator still refuses a checkpoint that saw a test relation)."""
    from modeling_sacon.data.corpus import PRETRAIN_CORPORA

    from .train_worker import script_defaults

    corpus_files, label_files = PRETRAIN_CORPORA[script_defaults("pretrain")["corpus"]]
    return ("--train_files", *corpus_files, *SENTENCE_FILES, "--label_files", LABEL_FILE, *label_files,
            "--allow_eval_relations", "True")


def zeroshot_training_units(budget: Budget, backbone: str, output_dir: Path) -> list[dict]:
    """The `ori` run (row (c)'s or the ablations' run of the same argv where there is one: shared, not run twice) and
    the seeded splits' runs (one per seed, one in all, or one per split: `budget.zeroshot_pretraining`); each unit's
    `splits` lists the split files its checkpoint is scored on, and its training data misses the test and eval
    relations of every one of them. With `zeroshot_fewrel_training` every run also trains on FewRel's sentences
    (`fewrel_training_args`), the `ori` run holds out the `ori` splits' relations too, and units and runs are named
    with `-fewrel` (they can share an output directory with the plain block's); with `zeroshot_bf16` every run trains
    in bf16 autocast, named with `-bf16`; with `zeroshot_locked_labels` every run locks the label encoder, named with
    `-locked`."""
    groups = seeded_runs(budget)  # first: an unknown mode is refused before anything is built
    batch_size = budget.zeroshot_pretrain_batch_size
    fewrel = budget.zeroshot_fewrel_training
    data, suffix = (fewrel_training_args(), "-fewrel") if fewrel else ((), "")
    if budget.zeroshot_bf16:
        data += ("--bf16", "True", *(("--use_cpu", "True") if budget.device == "cpu" else ()))
        suffix += "-bf16"
    if budget.zeroshot_locked_labels:
        data += ("--freeze_label_encoder", "True")
        suffix += "-locked"
    if "ori" in budget.zeroshot_splits:
        groups = {"ori": [(m, "ori") for m in budget.zeroshot_ms], **groups}
    units = []
    for key, members in groups.items():
        files = [split_file(m, name) for m, name in members]
        run_dir = output_dir / "runs" / f"zeroshot-{key}{suffix}"
        held_out = ("--exclude_relations_from", *files) if key != "ori" or fewrel else ()  # the corpus has no val_wiki
        argv = pretrain_argv(budget, backbone, run_dir, budget.ablation_seed, budget.pretrain_steps, (*data, *held_out),
                             batch_size=batch_size)
        unit = pretrain_unit(f"zeroshot/pretrain-{key}{suffix}", budget, argv, run_dir)
        if key == "ori":
            others = quality_training_units(budget, backbone, output_dir) + ablation_training_units(budget, backbone, output_dir)
            unit = same_run(others, argv) or unit
        units.append({**unit, "zeroshot_key": f"{key}{suffix}", "splits": files})
    return units


_SENTENCES: dict[int | None, object] = {}


def _test_sentences(pool_per_relation: int | None):
    """val_wiki + the train_wiki sample (FewRel rows), the first `pool_per_relation` of each relation; parsed once."""
    if pool_per_relation not in _SENTENCES:
        from modeling_sacon.data import first_per_relation, load_fewrel_json

        _SENTENCES[pool_per_relation] = first_per_relation(load_fewrel_json(list(SENTENCE_FILES)), pool_per_relation)
    return _SENTENCES[pool_per_relation]


def evaluate_checkpoint(model_path: str, split_files: list[str], *, pool_per_relation: int | None, batch_size: int,
                        device: str, label_interpolation: float = 1.0, backbone: str | None = None) -> dict:
    """`examples/evaluate_zeroshot.py`'s evaluation of one checkpoint on `split_files`: every split's SplitResult (as a
    dict), and which eval relations of each split the checkpoint saw (allowed, reported). `label_interpolation` below 1:
    the label encoder is first interpolated with `backbone` (the block's) at that weight, in memory, as
    `examples/interpolate_label_encoder.py` would write it."""
    import torch

    from modeling_sacon.data import load_label_table, resolve_data_path
    from modeling_sacon.fewshot.zeroshot_protocol import (
        PRETRAINING_RELATIONS_FILE,
        ZeroShotEvaluator,
        load_pretraining_relations,
        load_zeroshot_split,
    )
    from modeling_sacon.utils.loading import load_sacon_model

    splits = [load_zeroshot_split(resolve_data_path(path)) for path in split_files]
    relations = load_pretraining_relations(model_path)
    if relations is None:
        raise ValueError(f"{model_path} has no {PRETRAINING_RELATIONS_FILE}: its zero-shot strictness cannot be checked")
    model, processor = load_sacon_model(model_path)
    if label_interpolation < 1.0:
        from modeling_sacon.training.interpolation import interpolate_label_encoder, load_reference_weights

        if backbone is None:
            raise ValueError(f"label_interpolation {label_interpolation:g} needs the backbone {model_path} started from")
        interpolate_label_encoder(model, load_reference_weights(backbone), label_interpolation)
    evaluator = ZeroShotEvaluator(
        model.to(device), processor, _test_sentences(pool_per_relation), load_label_table(resolve_data_path(LABEL_FILE)),
        pretraining_relations=relations, checkpoint=model_path, batch_size=batch_size, source=", ".join(SENTENCE_FILES),
    )
    start = time.perf_counter()
    with torch.no_grad():
        results = evaluator.evaluate(splits)  # raises, naming the relation, if a test relation was pre-trained on
    seen = set(relations)
    return {
        "splits": [result.as_dict() for result in results],
        "strictness": {
            "pretraining_relations": len(relations),
            "train_relations_seen": {split.key: len(seen & set(split.train)) for split in splits},  # FewRel's, of the split
            "test_relations_seen": {split.key: sorted(seen & set(split.test)) for split in splits},  # empty, or it raised
            "eval_relations_seen": {split.key: sorted(seen & set(split.eval)) for split in splits},
        },
        "timing": {"evaluate_s": round(time.perf_counter() - start, 3),
                   "sentences": sum(result.num_sentences for result in results)},
    }


def label_interpolation(budget: Budget) -> float:
    """The block's `zeroshot_label_interpolation`, checked: in [0, 1], and not with locked label encoders (which are
    their backbone: nothing to interpolate)."""
    weight = budget.zeroshot_label_interpolation
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"zeroshot_label_interpolation must be in [0, 1] (1: as trained), got {weight}")
    if weight < 1.0 and budget.zeroshot_locked_labels:
        raise ValueError(f"zeroshot_label_interpolation={weight:g} with zeroshot_locked_labels: a locked label encoder is "
                         "its backbone, there is nothing to interpolate")
    return weight


def run_zeroshot(budget: Budget, output_dir: Path, store: UnitStore, compute: bool, train: bool = True) -> dict:
    weight = label_interpolation(budget)  # first: a weight outside [0, 1] is refused before anything is built
    backbone = backbone_path(budget, output_dir, store, compute)
    units = zeroshot_training_units(budget, backbone, output_dir)
    by_name = {unit["name"]: unit for unit in units}
    eval_common = {"pool_per_relation": budget.zeroshot_pool_per_relation, "batch_size": budget.eval_batch_size,
                   "device": budget.device}
    interpolated = {"label_interpolation": weight} if weight < 1.0 else {}  # absent at 1: the plain block's units stay

    def evaluation(unit: dict, finished: str) -> tuple[str, dict]:
        spec = {"model": unit["name"], "trained": finished, "splits": unit["splits"], "sentences": list(SENTENCE_FILES),
                "labels": LABEL_FILE, **eval_common, **interpolated}
        return f"zeroshot/eval-{unit['zeroshot_key']}{f'-wise{weight:g}' if interpolated else ''}", spec

    def evaluation_stale(name: str, entry: dict) -> bool:
        return store.fresh(*evaluation(by_name[name], entry["finished"])) is None

    if compute:
        training = run_training_units(units, store, budget, output_dir, "zeroshot-training", evaluation_stale, train)
    elif not any(store.fresh(u["name"], u["spec"], computing=False) for u in units if u["name"].startswith("zeroshot/")):
        training = {}  # the block never ran here (not a default section): rendered "not run", its units not listed
    else:
        training = stored_only(units, store)
    evaluations = {}
    for unit in units:
        entry = training.get(unit["name"])
        if entry is None:
            continue
        evaluations[unit["name"]] = store.run(
            *evaluation(unit, entry["finished"]),
            lambda unit=unit: evaluate_checkpoint(unit["run_dir"], unit["splits"], **eval_common, **interpolated,
                                                  backbone=backbone),
            compute,
        )
    return assemble_zeroshot(budget, units, training, evaluations)


def assemble_zeroshot(budget: Budget, units: list[dict], training: dict, evaluations: dict) -> dict:
    """Per-split numbers, the per-m summary (`zeroshot_protocol.summarize`: mean, sample std, min, max over the splits
    scored) and the published anchors; splits without a stored evaluation are listed as missing."""
    from modeling_sacon.fewshot.zeroshot_protocol import SplitResult, summarize

    scored: dict[str, SplitResult] = {}
    per_split = {}
    for unit in units:
        entry = evaluations.get(unit["name"])
        if entry is None:
            continue
        result = entry["result"]
        for split in result["splits"]:
            scored[split["split"]] = SplitResult(**split)
            per_split[split["split"]] = {
                **{key: split[key] for key in SPLIT_SUMMARY_FIELDS}, "checkpoint": unit["name"],
                "eval_relations_seen": result["strictness"]["eval_relations_seen"][split["split"]],
                "pretraining_relations": result["strictness"]["pretraining_relations"],
                "train_relations_seen": result["strictness"]["train_relations_seen"][split["split"]],
                "top_confusions": split["top_confusions"][:TOP_CONFUSIONS],
            }
    summary = {}
    for m, entry in summarize(list(scored.values())).items():
        summary[str(m)] = {**entry, "n_splits": len(entry["splits"])}
    for m in budget.zeroshot_ms:
        expected = [f"m{m}/{name}" for name in budget.zeroshot_splits]
        summary.setdefault(str(m), {"splits": [], "n_splits": 0})["missing"] = [k for k in expected if k not in scored]
    runs = {}
    for unit in units:
        entry = training.get(unit["name"])
        if entry is not None:
            runs[unit["name"]] = {"wall_s": entry["result"]["wall_s"], "argv": entry["spec"]["argv"],
                                  "splits": unit["splits"]}
    if scored:
        log("zero-shot: " + ", ".join(f"m={m} F1 {100 * e['f1']['mean']:.2f}" for m, e in summary.items() if e["n_splits"]))
    return {
        "ms": list(budget.zeroshot_ms),
        "split_names": list(budget.zeroshot_splits),
        "per_split": {key: per_split[key] for key in sorted(per_split, key=_split_order)},
        "summary": summary,
        "published": PUBLISHED,
        "training_runs": runs,
        "training_units": [unit["name"] for unit in units],  # shared ones included (see run_all.committed_summaries)
        "protocol": {
            "pretraining_seed": budget.ablation_seed, "pretrain_steps": budget.pretrain_steps,
            "pretrain_batch_size": budget.zeroshot_pretrain_batch_size,
            "pretrain_extra_args": list(budget.pretrain_extra_args), "ori_run": _ori_run(units),
            "seeded_pretraining": budget.zeroshot_pretraining, "fewrel_training": budget.zeroshot_fewrel_training,
            "bf16": budget.zeroshot_bf16, "locked_labels": budget.zeroshot_locked_labels,
            "label_interpolation": budget.zeroshot_label_interpolation,
            "pool_per_relation": budget.zeroshot_pool_per_relation, "sentences": list(SENTENCE_FILES),
            "labels": LABEL_FILE,
        },
    }


def _ori_run(units: list[dict]) -> str | None:
    """Which run the `ori` splits are scored on, by unit name (a run of row (c), of the ablations, or the block's)."""
    return next((unit["name"] for unit in units if unit["zeroshot_key"].split("-")[0] == "ori"), None)


def _split_order(key: str) -> tuple[int, str]:
    m, name = key.split("/")
    return int(m[1:]), "" if name == "ori" else name
