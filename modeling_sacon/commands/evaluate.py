"""Evaluation of a SaCon checkpoint (or an off-the-shelf encoder) on FewRel episodes, as a command.

`examples/evaluate_fewrel.py` is the script over it (its docstring shows the usage, and it sets the run's budget); other
programs call :func:`main` with an argv.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from modeling_sacon.commands import parse_arguments
from modeling_sacon.data import load_fewrel_source
from modeling_sacon.utils.defaults import default_backbone_path
from modeling_sacon.utils.loading import load_sacon_model
from modeling_sacon.data.episodes import parse_settings
from modeling_sacon.fewshot.evaluation import FewShotEvaluator, MeanPoolingEncoder
from modeling_sacon.scoring import FEWSHOT_METHODS, check_method

logger = logging.getLogger("evaluate_fewrel")
ENCODERS = ("sacon", "marker", "mean_pooling")


@dataclass
class EvalArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "SaCon checkpoint (encoder=sacon) or plain encoder; default: packaged MiniLM"}
    )
    encoder: str = field(
        default="sacon",
        metadata={"help": "sacon: a SaCon checkpoint; marker: compose SaCon from a plain encoder, untrained; "
                  "mean_pooling: the plain encoder's mean-pooled sentence embedding"},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset in the few_rel layout (thunlp/few_rel); replaces the files below"}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "its configuration"})
    dataset_revision: str | None = field(
        default=None, metadata={"help": "its revision (thunlp/few_rel: refs/convert/parquet, its Parquet conversion)"}
    )
    dataset_split: str = field(default="val_wiki", metadata={"help": "split evaluated with --dataset_name"})
    pubmed_split: str = field(default="val_pubmed", metadata={"help": "FewRel 2.0 split with --dataset_name; '' skips"})
    data_dir: str | None = field(default=None, metadata={"help": "directory of the relative files (default: SACON_DATA_DIR)"})
    data_file: str = field(default="fewrel/val_wiki.json", metadata={"help": "FewRel JSON, relative to --data_dir"})
    label_file: str = field(
        default="fewrel/pid2name.json",
        metadata={"help": "relation -> [name, description] of the JSON files (a Hub dataset's rows carry their own)"},
    )
    settings: str = field(default="5-1,5-5,10-1,10-5,zs-5,zs-10,nota-5-1-0.5", metadata={"help": "comma-separated"})
    pubmed_file: str = field(default="fewrel/val_pubmed.json", metadata={"help": "FewRel 2.0 domain adaptation; '' skips"})
    pubmed_settings: str = field(default="5-1,5-5")
    episodes: int = field(default=10_000, metadata={"help": "episodes per setting"})
    seed: int = field(default=0)
    method: str = field(
        default="prototype", metadata={"help": f"one of {FEWSHOT_METHODS} (zero-shot settings use zero_shot)"}
    )
    similarity: str = field(default="cosine", metadata={"help": "cosine or euclidean"})
    batch_size: int = field(default=128)
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ...; default: cuda when available"})
    output_json: str | None = field(default=None)
    update_card: str | None = field(default=None, metadata={"help": "checkpoint dir whose README.md gets the results"})
    no_progress: bool = field(default=False)


def build_evaluator_factory(args: EvalArguments):
    """Loads the model once; returns a function making an evaluator for a (dataset, label table) pair."""
    if args.encoder not in ENCODERS:
        raise ValueError(f"--encoder {args.encoder!r} is unknown; choose one of {ENCODERS}")
    check_method(args.method)
    path = args.model_name_or_path or default_backbone_path()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.encoder == "mean_pooling":
        model, tokenizer = AutoModel.from_pretrained(path).to(device).eval(), AutoTokenizer.from_pretrained(path)
        encoder, processor = MeanPoolingEncoder(model, tokenizer), None
    elif args.encoder == "marker":
        encoder, processor = load_sacon_model(path, compose=True)
    else:
        if args.model_name_or_path is None:
            raise ValueError("--encoder sacon needs --model_name_or_path (a SaCon checkpoint); try --encoder marker")
        encoder, processor = load_sacon_model(path)
    if args.encoder != "mean_pooling":
        encoder = encoder.to(device)

    def make(dataset, label_table, label_fallback: bool, source: str) -> FewShotEvaluator:
        return FewShotEvaluator(
            encoder, processor, dataset, label_table, batch_size=args.batch_size, show_progress=not args.no_progress,
            label_fallback=label_fallback, source=source,
        )

    return make


@torch.no_grad()  # inference only; a decorator, not a global switch, so callers keep autograd
def run(args: EvalArguments) -> dict[str, dict]:
    # 1. Validate the settings before loading anything heavy.
    main_settings = parse_settings(args.settings)
    pubmed = args.pubmed_split if args.dataset_name else args.pubmed_file
    pubmed_settings = parse_settings(args.pubmed_settings) if pubmed else []
    # 2. Model (or baseline encoder), data, labels.
    make = build_evaluator_factory(args)
    label_files = [] if args.dataset_name else [args.label_file]  # a Hub dataset's rows carry their names
    jobs = [(args.dataset_split, args.data_file, main_settings, "", False)]
    if pubmed_settings:  # PubMed relations: names, no descriptions
        jobs.append((args.pubmed_split, args.pubmed_file, pubmed_settings, "pubmed/", True))
    # 3. Encode each split once, then score every setting on the cache.
    results: dict[str, dict] = {}
    for split, data_file, settings, prefix, fallback in jobs:
        dataset, label_table, source = load_fewrel_source(
            data_file, label_files, dataset_name=args.dataset_name, split=split, config=args.dataset_config_name,
            revision=args.dataset_revision, data_dir=args.data_dir,
        )
        evaluator = make(dataset, label_table, fallback, source)
        start = time.perf_counter()
        scored = evaluator.evaluate(settings, args.episodes, args.seed, args.method, args.similarity)
        logger.info("%s: %d settings in %.1fs", source, len(settings), time.perf_counter() - start)
        results.update({prefix + name: value for name, value in scored.items()})
    return results


def markdown_table(results: dict[str, dict]) -> str:
    lines = ["| setting | accuracy (%) | 95% CI | episodes |", "|---|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['accuracy']:.2f} | ±{100 * r['ci95']:.2f} | {r['episodes']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, defaults: Mapping[str, Any] | None = None) -> dict[str, dict]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = parse_arguments((EvalArguments,), argv, defaults)
    results = run(args)
    print(markdown_table(results))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(results, indent=2) + "\n")
    if args.update_card:
        from modeling_sacon.training.model_card import update_model_card_results

        update_model_card_results(
            args.update_card, results, method=args.method, seed=args.seed,
            splits={"": args.dataset_split, "pubmed/": args.pubmed_split} if args.dataset_name else None,
            command="python examples/evaluate_fewrel.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        )
        logger.info("results written into the model card %s/README.md", args.update_card)
    return results

