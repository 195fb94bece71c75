"""Write a paper-scale synthetic relation corpus (default: 800,000 sentences, 700 relations) in the authors' format.

The paper pre-trains on 773,307 sentences of 698 relations (the authors' ``cpdata.json``); that corpus is not shipped
here, so its scale is measured on a stand-in built by resampling an embedded corpus with perturbations:

* relation ``k`` draws its sentences from source relation ``k mod S`` (the S source relations in a seeded order);
  its id is ``<source id>.<k // S>`` and its label text the source's, name suffixed ``#<k // S>``;
* relation sizes are long-tailed like the authors' (seeded, capped log-normal weights; at least 2 sentences each,
  summing to N exactly; see :func:`relation_sizes`);
* each sentence is a source sentence of its relation, its head and tail names each swapped (probability 1/2) with
  those of another sentence of the same relation, and its context tokens (all outside the two entity mentions)
  shuffled (probability 1/2); only the first mention of each entity is kept.

Deterministic given ``--seed``; written row by row (memory holds the source corpus, not the output). Beside the
corpus: ``<stem>.labels.json`` (``{relation: [name, description]}``, for ``--label_files``) and, for ``cp``,
``<stem>.rel2scope.json`` (relation -> ``[start, end)`` rows, as the authors ship it). CP rows carry ``rname`` /
``rstate`` like the authors' rows; JSON Lines rows are the same objects, one per line.

    python benchmarks/measure.py synthetic_corpus --output /tmp/sacon_synthetic/cpdata.json
    python benchmarks/measure.py synthetic_corpus --output /tmp/corpus.jsonl --format jsonl --num_sentences 10000
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modeling_sacon.data import label_texts, load_fewrel_json, load_label_table, load_pretraining_corpus

FORMATS = ("cp", "jsonl")


def relation_sizes(
    total: int, relations: int, rng: random.Random, sigma: float = 2.0, cap: float = 40.0
) -> list[int]:
    """Long-tailed sizes, each >= 2 (a relation needs a positive pair), summing to ``total``.

    Log-normal weights (``sigma``), capped at ``cap`` times the median weight: at 800k sentences and 700 relations
    the median relation has ~250 sentences, the largest ~10k and ~60 have fewer than 20 -- the shape of the
    authors' ``rel2scope.json`` (2 to ~9k sentences per relation).
    """
    if total < 2 * relations:
        raise ValueError(f"--num_sentences {total} is below 2 per relation ({relations} relations)")
    weights = [min(math.exp(rng.gauss(0.0, sigma)), cap) for _ in range(relations)]
    spare = total - 2 * relations
    scale = spare / sum(weights)
    sizes = [2 + int(w * scale) for w in weights]
    for k in sorted(range(relations), key=lambda k: -weights[k])[: total - sum(sizes)]:
        sizes[k] += 1  # the rounding remainder goes to the largest relations
    return sizes


def _span(indices: Sequence[int]) -> tuple[int, int] | None:
    """``[start, end)`` of a contiguous mention, else None (such a mention is never swapped)."""
    start, end = min(indices), max(indices) + 1
    return (start, end) if end - start == len(indices) else None


def perturb(row: dict[str, Any], donors: Sequence[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """One synthetic sentence from a canonical row: swapped entity names, shuffled context (see the module doc).

    Rows carry each entity's mention tokens under ``mention`` (see :func:`load_source`).
    """
    tokens, head, tail = row["tokens"], row["head"], row["tail"]
    h_span, t_span = _span(head["indices"]), _span(tail["indices"])
    if h_span is None or t_span is None or not (h_span[1] <= t_span[0] or t_span[1] <= h_span[0]):
        return _cp_row(tokens, head, head["indices"], tail, tail["indices"])  # split or overlapping: kept as is
    # The same draws in the same order for every row, so the stream of draws is a function of the seed alone.
    h_new = rng.choice(donors)["head"] if rng.random() < 0.5 else head
    t_new = rng.choice(donors)["tail"] if rng.random() < 0.5 else tail
    inside = set(range(*h_span)) | set(range(*t_span))
    context = [tok for i, tok in enumerate(tokens) if i not in inside]
    if rng.random() < 0.5:
        rng.shuffle(context)
    rest = iter(context)
    out: list[str] = []
    positions: dict[int, list[int]] = {}
    for i in range(len(tokens)):
        if i in (h_span[0], t_span[0]):
            mention = (h_new if i == h_span[0] else t_new)["mention"]
            positions[i] = list(range(len(out), len(out) + len(mention)))
            out.extend(mention)
        elif i not in inside:
            out.append(next(rest))
    return _cp_row(out, h_new, positions[h_span[0]], t_new, positions[t_span[0]])


def _cp_row(tokens: list[str], head: dict, h_pos: Sequence[int], tail: dict, t_pos: Sequence[int]) -> dict[str, Any]:
    """The authors' row layout; names lower-cased mention text, as FewRel's."""
    return {
        "tokens": list(tokens),
        "h": {"name": " ".join(head["mention"]).lower(), "id": head["id"], "pos": [list(h_pos)]},
        "t": {"name": " ".join(tail["mention"]).lower(), "id": tail["id"], "pos": [list(t_pos)]},
    }


def load_source(source: str, source_files: list[str] | None, label_files: list[str] | None):
    """(canonical rows grouped by relation, label table) of the corpus to resample."""
    if source_files:
        dataset = load_fewrel_json(source_files)
        relations = list(dict.fromkeys(dataset["relation"]))
        table = label_texts(relations, load_label_table(label_files) if label_files else {}, fallback=not label_files)
    else:
        dataset, table = load_pretraining_corpus(corpus=source)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in dataset.to_list():
        for field in ("head", "tail"):
            row[field]["mention"] = [row["tokens"][i] for i in row[field]["indices"]]
        grouped.setdefault(row["relation"], []).append(row)
    return grouped, table


def synthetic_rows(
    grouped: dict[str, list[dict[str, Any]]],
    table: dict[str, tuple[str, str]],
    num_sentences: int,
    num_relations: int,
    seed: int,
) -> Iterator[tuple[str, tuple[str, str], Iterator[dict[str, Any]]]]:
    """For each synthetic relation in order: (id, label text, a lazy iterator of its rows)."""
    rng = random.Random(seed)
    sources = sorted(grouped)
    rng.shuffle(sources)
    sizes = relation_sizes(num_sentences, num_relations, rng)

    def rows(pool: list[dict[str, Any]], size: int, relation: str, text: tuple[str, str]) -> Iterator[dict]:
        for _ in range(size):
            row = perturb(rng.choice(pool), pool, rng)
            yield {**row, "r": relation, "rname": text[0], "rstate": text[1]}

    for k, size in enumerate(sizes):
        source = sources[k % len(sources)]
        variant = k // len(sources)
        name, description = table[source]
        text = (f"{name} #{variant}", description)
        relation = f"{source}.{variant}"
        yield relation, text, rows(grouped[source], size, relation, text)


def write_corpus(args: argparse.Namespace) -> dict[str, Any]:
    """Write the corpus, its label table (and rel2scope for cp); returns what was written."""
    grouped, table = load_source(args.source, args.source_files, args.source_label_files)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    labels: dict[str, list[str]] = {}
    scopes: dict[str, list[int]] = {}
    count = 0
    with open(output, "w", encoding="utf-8") as handle:
        if args.format == "cp":
            handle.write("[")
        for relation, text, rows in synthetic_rows(grouped, table, args.num_sentences, args.num_relations, args.seed):
            labels[relation] = list(text)
            start = count
            for row in rows:
                line = json.dumps(row, ensure_ascii=False)
                if args.format == "cp":
                    handle.write(("\n" if count == 0 else ",\n") + line)
                else:
                    handle.write(line + "\n")
                count += 1
            scopes[relation] = [start, count]
        if args.format == "cp":
            handle.write("\n]\n")
    stem = output.with_suffix("")
    written = {"corpus": str(output), "labels": f"{stem}.labels.json", "sentences": count, "relations": len(labels)}
    Path(written["labels"]).write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    if args.format == "cp":
        written["rel2scope"] = f"{stem}.rel2scope.json"
        Path(written["rel2scope"]).write_text(json.dumps(scopes), encoding="utf-8")
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="Corpus file to write (never inside the repository).")
    parser.add_argument("--format", choices=FORMATS, default="cp", help="cp: one JSON list (the authors'); jsonl.")
    parser.add_argument("--num_sentences", type=int, default=800_000)
    parser.add_argument("--num_relations", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default="v2_dense", help="Embedded corpus to resample (load_pretraining_corpus).")
    parser.add_argument("--source_files", nargs="+", help="FewRel-format files to resample instead.")
    parser.add_argument("--source_label_files", nargs="+", help="Label tables of --source_files (default: own names).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    written = write_corpus(args)
    json.dump(written, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return written
