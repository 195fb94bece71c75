"""The strict protocol: no FewRel evaluation relation and no evaluation sentence in pre-training.

Pre-training on an evaluation relation (or sentence) inflates few-shot results on "unseen" relations without any
visible sign, so every pre-training corpus is checked against every FewRel evaluation relation the package knows,
whatever the evaluation options of the run, and against the sentences of the evaluation file when one is given.
The relation lists are constants here, so the check needs no data file at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import datasets
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "EvaluationLeakageError",
    "FEWREL_EVAL_RELATIONS",
    "FEWREL_NYT_RELATIONS",
    "FEWREL_PUBMED_RELATIONS",
    "FEWREL_TEST_RELATIONS",
    "FEWREL_VAL_WIKI_RELATIONS",
    "check_relation_leakage",
    "check_sentence_overlap",
    "normalised_sentences",
]

#: FewRel 1.0 validation: the keys of `data/val_wiki.json` in thunlp/FewRel (commit 278a231; the data directory's fewrel/).
FEWREL_VAL_WIKI_RELATIONS = frozenset(
    "P177 P364 P2094 P361 P641 P59 P413 P206 P412 P155 P26 P410 P25 P463 P40 P921".split()
)
#: FewRel 1.0 hidden test set (private, scored on the leaderboard): its 20 Wikidata ids, as listed in
#: the data directory's pretrain/SOURCE.md and pretrain_v2/SOURCE.md.
FEWREL_TEST_RELATIONS = frozenset(
    "P50 P53 P54 P69 P81 P108 P119 P161 P166 P170 P171 P172 P179 P272 P488 P607 P749 P1269 P1441 P2416".split()
)
#: FewRel 2.0 domain adaptation, NYT (`data/val_nyt.json` of thunlp/FewRel): the relations it has beyond the two lists
#: above, as the data directory's pretrain_v2/SOURCE.md lists them (the file itself is not part of it).
FEWREL_NYT_RELATIONS = frozenset("P1056 P162 P186 P344 P414 P452 P509".split())
#: FewRel 2.0 domain adaptation, PubMed: the keys of `data/val_pubmed.json` in thunlp/FewRel (UMLS relation names).
FEWREL_PUBMED_RELATIONS = frozenset(
    "biological_process_involves_gene_product inheritance_type_of is_normal_tissue_origin_of_disease ingredient_of "
    "is_primary_anatomic_site_of_disease gene_found_in_organism occurs_in causative_agent_of classified_as "
    "gene_plays_role_in_process".split()
)
#: Every evaluation relation the package knows -> the split it comes from (named in errors and model cards).
FEWREL_EVAL_RELATIONS: Mapping[str, str] = {
    **{relation: "FewRel 2.0 val_pubmed" for relation in FEWREL_PUBMED_RELATIONS},
    **{relation: "FewRel 2.0 val_nyt" for relation in FEWREL_NYT_RELATIONS},
    **{relation: "FewRel 1.0 hidden test" for relation in FEWREL_TEST_RELATIONS},
    **{relation: "FewRel 1.0 val_wiki" for relation in FEWREL_VAL_WIKI_RELATIONS},
}


class EvaluationLeakageError(ValueError):
    """Pre-training data contains FewRel evaluation relations or sentences (the strict protocol is broken)."""


def check_relation_leakage(
    train_relations: Iterable[str], eval_relations: Iterable[str] = (), *, source: str, allow: bool = False,
    hint: str = "remove them",
) -> list[str]:
    """The evaluation relations (:data:`FEWREL_EVAL_RELATIONS`, plus ``eval_relations``) among ``train_relations``.

    Raises :class:`EvaluationLeakageError` naming ``source``, each relation with its split, and ``hint`` (the fix),
    unless ``allow``; returns the sorted leaked relations either way.
    """
    known = {**{relation: "the evaluation file" for relation in eval_relations}, **FEWREL_EVAL_RELATIONS}
    leaked = sorted(set(train_relations) & known.keys())
    if leaked and not allow:
        by_split: dict[str, list[str]] = {}
        for relation in leaked:
            by_split.setdefault(known[relation], []).append(relation)
        splits = "; ".join(f"{split}: {', '.join(relations)}" for split, relations in by_split.items())
        raise EvaluationLeakageError(
            f"{source} contains FewRel evaluation relation(s) {leaked} ({splits}): few-shot results would be "
            f"inflated; {hint}"
        )
    return leaked


def normalised_sentences(tokens: pa.Array | pa.ChunkedArray | Sequence[Sequence[str]]) -> pa.Array:
    """Each sentence's tokens joined by spaces, lower-cased, whitespace runs made one space and trimmed.

    Works on Arrow (a memory-mapped corpus of 800k rows is never turned into Python lists).
    """
    if not isinstance(tokens, (pa.Array, pa.ChunkedArray)):
        tokens = pa.array(tokens, type=pa.list_(pa.string()))
    text = pc.utf8_lower(pc.binary_join(tokens, " "))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r"\s+", " "))


def check_sentence_overlap(
    train: datasets.Dataset, evaluation: datasets.Dataset, *, source: str, allow: bool = False, hint: str = "remove them",
    examples: int = 3, batch_rows: int = 100_000,
) -> int:
    """How many ``train`` rows are, as normalised text (:func:`normalised_sentences`), a sentence of ``evaluation``.

    Raises :class:`EvaluationLeakageError` with the count and a few examples unless ``allow``. Reads ``train``'s
    ``tokens`` column ``batch_rows`` at a time, as Arrow.
    """
    held_out = pc.unique(normalised_sentences(evaluation.with_format("arrow")[:].column("tokens")))
    count, found = 0, []
    table = train.with_format("arrow")
    for start in range(0, len(train), batch_rows):
        text = normalised_sentences(table[start:start + batch_rows].column("tokens"))
        hits = pc.is_in(text, value_set=held_out)
        count += pc.sum(hits).as_py() or 0
        if len(found) < examples:
            rows = pc.indices_nonzero(hits).to_pylist()[: examples - len(found)]
            found += [(start + row, text[row].as_py()) for row in rows]
    if count and not allow:
        shown = "; ".join(f"row {row}: {sentence[:120]!r}" for row, sentence in found)
        raise EvaluationLeakageError(
            f"{source} contains {count} sentence(s) of the evaluation file (lower-cased, whitespace-normalised token "
            f"text), e.g. {shown}; few-shot results would be inflated; {hint}"
        )
    return count
