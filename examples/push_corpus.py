#!/usr/bin/env python
"""Publish the embedded pre-training corpus as a Hub dataset: Parquet rows in the `thunlp/few_rel` layout, `labels.json`
(relation -> [name, description]) and a dataset card with its sources, licences and strict-protocol exclusions
(`hub_cards/pretraining_corpus.md`).

    python examples/push_corpus.py --output_dir outputs/corpus                  # write the repository folder only
    python examples/push_corpus.py --repo_id org/sacon-pretraining-corpus --private

Then `python examples/pretrain.py --dataset_name org/sacon-pretraining-corpus` pre-trains on it.
"""

from __future__ import annotations

import argparse
import string
import tempfile
from pathlib import Path

from huggingface_hub import HfApi

from modeling_sacon.data import (
    development_data_dir,
    get_data_dir,
    load_pretraining_corpus,
)
from modeling_sacon.data.hub import write_corpus_repo
from modeling_sacon.training.hub_pushes import retry_with_backoff

DATA_DIR = development_data_dir(__file__)  # unless --data_dir says otherwise
CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "hub_cards" / "pretraining_corpus.md"
# The card's claims (no FewRel evaluation relation at all) hold for these; v1 has a FewRel 2.0 NYT relation.
PUBLISHABLE_CORPORA = ("v2", "v2_dense")


def size_category(rows: int) -> str:
    """The Hub's `size_categories` tag."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < bound:
            return name
    return "n>1M"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo_id", help="Hub dataset to create or update (ORG/NAME); without it nothing is pushed")
    parser.add_argument("--private", action="store_true", help="create the dataset private")
    parser.add_argument("--output_dir", help="write the repository folder here (default: a temporary folder)")
    parser.add_argument("--corpus", default="v2", choices=PUBLISHABLE_CORPORA)
    parser.add_argument("--data_dir", default=DATA_DIR, help="the data directory holding pretrain_v2/")
    parser.add_argument("--commit_message", default="Upload the SaCon pre-training corpus")
    parser.add_argument("--push_retries", type=int, default=5, help="retries of a push after a transient Hub error")
    parser.add_argument("--push_backoff", type=float, default=2.0, help="seconds before the first retry; doubled after")
    args = parser.parse_args(argv)
    if not args.repo_id and not args.output_dir:
        parser.error("give --repo_id (push) or --output_dir (write locally), or both")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    # 1. The corpus, checked as for pre-training (labels for every relation, no FewRel evaluation relation).
    dataset, labels = load_pretraining_corpus(get_data_dir(args.data_dir), corpus=args.corpus)
    card = string.Template(CARD_TEMPLATE.read_text(encoding="utf-8")).substitute(
        corpus=args.corpus, repo_id=args.repo_id or "ORG/NAME", num_instances=f"{len(dataset):,}",
        num_relations=f"{len(labels):,}", size_category=size_category(len(dataset)),
    )
    # 2. The repository folder, then one commit to the Hub.
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_corpus_repo(dataset, labels, args.output_dir or scratch, card)
        print(f"{len(dataset)} rows, {len(labels)} relations written to {folder}")
        if args.repo_id:
            api, retry = HfApi(), {"retries": args.push_retries, "backoff": args.push_backoff}
            url = retry_with_backoff(
                lambda: api.create_repo(args.repo_id, repo_type="dataset", private=args.private, exist_ok=True),
                f"creating the Hub dataset {args.repo_id}", **retry,
            )
            # one commit of the whole folder: the dataset never holds part of it; a retry after a commit whose answer
            # was lost finds the files there and uploads nothing new
            retry_with_backoff(
                lambda: api.upload_folder(folder_path=folder, repo_id=args.repo_id, repo_type="dataset",
                                          commit_message=args.commit_message),
                f"push of the corpus to {args.repo_id}", **retry,
            )
            print(f"pushed to {url}")


if __name__ == "__main__":
    main()
