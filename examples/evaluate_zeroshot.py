"""Zero-shot relation extraction on FewRel with RE-Matching's 15 splits (m = 5, 10, 15; ori, 40-43).

    python examples/evaluate_zeroshot.py --model_name_or_path outputs/sacon-minilm
    python examples/evaluate_zeroshot.py --model_name_or_path outputs/sacon-minilm \\
        --splits '../shared/data/zeroshot/fewrel_rel2id_*_ori.json' --output_json zs.json --plot zs.png
    python examples/evaluate_zeroshot.py --model_name_or_path outputs/sacon-minilm \
        --dataset_name thunlp/few_rel --dataset_revision refs/convert/parquet     # sentences and labels from the Hub

Every sentence of a split's m test relations is classified among those m by its nearest label text (cosine); macro
P/R/F1 as ZS-BERT's compute_macro_PRF. A checkpoint whose `pretraining_relations.json` holds a test relation is
refused. Prints, per m, the mean P/R/F1 (± sample std over the splits) and each split's F1.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from modeling_sacon.data import development_data_dir, load_fewrel_json, load_hub_few_rel, load_label_table, resolve_data_path
from modeling_sacon.fewshot.zeroshot_protocol import (
    ZeroShotEvaluator, find_split_files, load_pretraining_relations, load_zeroshot_split, plot_confusions, results_to_json,
    summarize,
)
from modeling_sacon.utils.loading import load_sacon_model

logger = logging.getLogger("evaluate_zeroshot")
DEFAULT_SPLITS = "zeroshot/fewrel_rel2id_*.json"
DEFAULT_FEWREL_FILES = ("fewrel/val_wiki.json", "fewrel_train_sample/train_wiki_sample.json")
DEFAULT_LABEL_FILES = ("fewrel/pid2name.json",)
DATA_DIR = development_data_dir(__file__)  # unless --data_dir says otherwise


@dataclass
class ZeroShotArguments:
    model_name_or_path: str = field(metadata={"help": "SaCon checkpoint (directory or Hub id)"})
    splits: list[str] = field(
        default_factory=list, metadata={"help": f"split files or globs; default: {DEFAULT_SPLITS} in --data_dir"}
    )
    fewrel_files: list[str] = field(
        default_factory=list, metadata={"help": f"FewRel JSON files with the test sentences; default: {DEFAULT_FEWREL_FILES}"}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset in the thunlp/few_rel layout"})
    dataset_config_name: str | None = field(default=None)
    dataset_revision: str | None = field(default=None, metadata={"help": "thunlp/few_rel: refs/convert/parquet"})
    dataset_splits: list[str] = field(default_factory=lambda: ["train_wiki", "val_wiki"])
    data_dir: str = field(default=DATA_DIR, metadata={"help": "directory of the default files (SACON_DATA_DIR)"})
    label_files: list[str] = field(
        default_factory=list, metadata={"help": f"relation -> [name, description]; default: {DEFAULT_LABEL_FILES}"}
    )
    output_json: str | None = field(default=None)
    plot: str | None = field(default=None, metadata={"help": "PNG of the confusion matrices"})
    batch_size: int = field(default=128)
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ...; default: cuda when available"})
    no_progress: bool = field(default=False)


def expand_splits(patterns: list[str], data_dir: str) -> list[str]:
    """The split files of `patterns` (default: every split file in `data_dir`), found as `find_split_files` finds them."""
    return find_split_files(patterns or [DEFAULT_SPLITS], data_dir)


def load_sentences_and_labels(args: ZeroShotArguments):
    """(list of FewRel-row datasets, label table, description of the source) from files or the Hub layout."""
    if args.dataset_name:
        sentences, table = [], {}
        for split in args.dataset_splits:
            rows, split_table = load_hub_few_rel(
                args.dataset_name, split, config=args.dataset_config_name, revision=args.dataset_revision
            )
            sentences.append(rows)
            table.update(split_table)
        if args.label_files:
            table.update(load_label_table(args.label_files))
        return sentences, table, f"{args.dataset_name}[{','.join(args.dataset_splits)}]"
    # relative names (given or default) are taken from --data_dir, as the split files are
    files = [str(resolve_data_path(f, args.data_dir)) for f in args.fewrel_files or DEFAULT_FEWREL_FILES]
    label_files = [str(resolve_data_path(f, args.data_dir)) for f in args.label_files or DEFAULT_LABEL_FILES]
    return [load_fewrel_json(files)], load_label_table(label_files), ", ".join(Path(f).name for f in files)


def print_table(results) -> None:
    summary = summarize(results)
    print("| m | P (%) | R (%) | F1 (%) | F1 per split |")
    print("|---|---:|---:|---:|---|")
    for m, entry in summary.items():
        several = len(entry["splits"]) > 1  # a spread over one split means nothing: no "± 0.00"
        cells = [f"{100 * entry[k]['mean']:.2f}" + (f" ± {100 * entry[k]['std']:.2f}" if several else "")
                 for k in ("precision", "recall", "f1")]
        per_split = ", ".join(f"{r.split.split('/')[1]} {100 * r.f1:.2f}" for r in results if r.m == m)
        print(f"| {m} | {' | '.join(cells)} | {per_split} |")


@torch.no_grad()
def main(argv: list[str] | None = None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = HfArgumentParser(ZeroShotArguments).parse_args_into_dataclasses(args=argv)
    # 1. Splits, sentences and labels, validated before the model is loaded.
    splits = sorted((load_zeroshot_split(path) for path in expand_splits(args.splits, args.data_dir)), key=lambda s: (s.m, s.name))
    sentences, label_table, source = load_sentences_and_labels(args)
    # 2. Model, and the relations it was pre-trained on (refused per split if they hold a test relation).
    model, processor = load_sacon_model(args.model_name_or_path)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    evaluator = ZeroShotEvaluator(
        model.to(device), processor, sentences, label_table,
        pretraining_relations=load_pretraining_relations(args.model_name_or_path),
        checkpoint=args.model_name_or_path, batch_size=args.batch_size, show_progress=not args.no_progress,
        source=source,
    )
    # 3. Score every split (each relation's sentences are encoded once), then report.
    results = evaluator.evaluate(splits)
    print_table(results)
    document = results_to_json(results, model=args.model_name_or_path, sentences=source)
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(document, indent=1) + "\n")
    if args.plot:
        logger.info("confusion matrices written to %s", plot_confusions(results, args.plot))
    return document


if __name__ == "__main__":
    main(sys.argv[1:])
