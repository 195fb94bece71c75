"""Zero-shot relation extraction on FewRel with RE-Matching's splits (Zhao et al., ACL 2023).

A split file `fewrel_rel2id_{m}_{name}.json` holds `train` / `eval` / `test` relation ids. Every sentence of the m
test relations is classified among the m test relations by its nearest label text (cosine), and scored with
ZS-BERT's macro P/R/F1 (`macro_prf`). Results are reported per split and as mean / spread over the splits of each m.

Strictness: no test relation may have been seen in pre-training. `filter_corpus_for_split` removes a split's test and
eval relations from a pre-training corpus; a checkpoint records its relations in `PRETRAINING_RELATIONS_FILE`, and
`check_strictness` refuses a checkpoint that saw a test relation. Every location is explicit: nothing here knows
where the data lives.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers.utils import cached_file, logging

from ..data.corpus import DataFormatError, _read_json_object, get_data_dir, label_texts, resolve_data_path
from ..processing_sacon import SaconProcessor
from ..scoring import similarity_logits
from .evaluation import SaconEncoder, encode_length_sorted

logger = logging.get_logger(__name__)

PRETRAINING_RELATIONS_FILE = "pretraining_relations.json"
SPLIT_FIELDS = ("train", "eval", "test")
METRICS = ("precision", "recall", "f1", "per_relation_f1_mean", "accuracy")
_SPLIT_FILE_NAME = re.compile(r"rel2id_(\d+)_([^.]+)\.json$")  # fewrel_rel2id_5_ori.json -> m=5, name="ori"

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class ZeroShotSplit:
    """One split: `m` test relations, classified among themselves; `eval` and `train` are the other relations."""

    path: str
    m: int
    name: str
    train: tuple[str, ...]
    eval: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"m{self.m}/{self.name}"

    @property
    def held_out(self) -> frozenset[str]:
        """The relations a pre-training corpus must not hold for this split: test and eval."""
        return frozenset(self.test) | frozenset(self.eval)


def _relation_ids(value: Any, path: Path, field_name: str) -> tuple[str, ...]:
    """`{id: index}` (RE-Matching's form; duplicate keys are rejected while reading) or `[id, ...]`."""
    if isinstance(value, Mapping):
        ids = list(value)
    elif isinstance(value, list):
        ids = value
    else:
        raise DataFormatError(f"{path}: field {field_name!r}: expected {{relation: index}} or a list, got {value!r}")
    bad = [i for i in ids if not isinstance(i, str) or not i]
    if bad:
        raise DataFormatError(f"{path}: field {field_name!r}: relation ids must be non-empty strings, got {bad[:3]}")
    repeated = sorted(i for i, count in Counter(ids).items() if count > 1)
    if repeated:
        raise DataFormatError(f"{path}: field {field_name!r}: duplicate relation id(s) {repeated}")
    return tuple(ids)


def find_split_files(patterns: Sequence[str], data_dir: PathLike | None = None) -> list[str]:
    """The split files of `patterns` (files or globs), each taken as given or, when not found so, in `data_dir`
    (`resolve_data_path`'s rule, which `pretrain.py --exclude_relations_from` follows); one matching nothing raises
    a `FileNotFoundError` naming it."""
    files = []
    for pattern in patterns:
        try:  # a file: resolve_data_path's rule; a glob: the same rule, as given first, then in the data dir
            matches = ([str(resolve_data_path(pattern, data_dir))] if not glob.has_magic(pattern)
                       else sorted(glob.glob(pattern)) or sorted(glob.glob(str(get_data_dir(data_dir) / pattern))))
        except FileNotFoundError:
            matches = []
        if not matches or not Path(matches[0]).is_file():
            raise FileNotFoundError(f"{pattern!r}: no such split file (as given, nor in the data dir)")
        files.extend(matches)
    return files


def load_zeroshot_split(path: PathLike) -> ZeroShotSplit:
    """Read and validate a `{"train", "eval", "test"}` split file; errors name the file and the field.

    `m` and the split's name come from a `..._rel2id_{m}_{name}.json` file name, where the test set must hold m
    relations; any other file name gives m = the number of test relations and the file's stem as name.
    """
    path = Path(path)
    data = _read_json_object(path)
    fields = {}
    for field_name in SPLIT_FIELDS:
        if field_name not in data:
            raise DataFormatError(f"{path}: field {field_name!r}: missing (a split has {', '.join(SPLIT_FIELDS)})")
        fields[field_name] = _relation_ids(data[field_name], path, field_name)
    if not fields["test"]:
        raise DataFormatError(f"{path}: field 'test': no relation")
    for i, first in enumerate(SPLIT_FIELDS):
        for second in SPLIT_FIELDS[i + 1 :]:
            shared = sorted(set(fields[first]) & set(fields[second]))
            if shared:
                raise DataFormatError(f"{path}: fields {first!r} and {second!r} share relation(s) {shared}")
    parsed = _SPLIT_FILE_NAME.search(path.name)
    m, name = (int(parsed.group(1)), parsed.group(2)) if parsed else (len(fields["test"]), path.stem)
    if len(fields["test"]) != m:
        raise DataFormatError(f"{path}: field 'test': {len(fields['test'])} relations, but the file name says m = {m}")
    return ZeroShotSplit(str(path), m, name, **fields)


# --------------------------------------------------------------------------- test sentences and labels


def gather_test_sentences(
    sources: datasets.Dataset | Sequence[datasets.Dataset], relations: Sequence[str], *, source: str = ""
) -> datasets.Dataset:
    """Every row of `relations` in `sources` (FewRel rows, e.g. val_wiki + a train_wiki sample), grouped by relation
    in the order of `relations`.

    A relation with no row raises a `DataFormatError` naming it (and `source`): scoring without it would quietly
    change m.
    """
    if isinstance(sources, datasets.Dataset):
        sources = [sources]
    if not sources:
        raise ValueError("gather_test_sentences needs at least one dataset")
    merged = sources[0] if len(sources) == 1 else datasets.concatenate_datasets(list(sources))
    if "relation" not in merged.column_names:
        raise DataFormatError(f"{source or 'the test sentences'}: no 'relation' column")
    rows: dict[str, list[int]] = {relation: [] for relation in relations}
    for index, relation in enumerate(merged["relation"][:]):
        if relation in rows:
            rows[relation].append(index)
    missing = [relation for relation, indices in rows.items() if not indices]
    if missing:
        where = f" in {source}" if source else ""
        raise DataFormatError(f"no sentence for test relation(s) {', '.join(missing)}{where}")
    return merged.select([index for indices in rows.values() for index in indices])


# --------------------------------------------------------------------------- metric


@dataclass
class MacroPRF:
    precision: float
    recall: float
    f1: float
    per_relation_f1_mean: float
    accuracy: float
    per_relation: dict[Hashable, dict[str, float]]  # gold relation -> precision, recall, f1, gold, predicted, correct


def macro_prf(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> MacroPRF:
    """Macro P/R/F1 exactly as ZS-BERT's `compute_macro_PRF` (after Sorokin and Gurevych, 2017), which RE-Matching
    reports: github.com/dinobby/ZS-BERT, `model/evaluation.py` (commit 2e8778c8).

    For each gold relation r: precision = correct predictions of r / predictions of r (0 if r is never predicted),
    recall = correct / gold count of r. The precisions are summed over the gold relations and divided by the number
    of DISTINCT PREDICTED relations (so a relation predicted but absent from gold only enlarges the denominator); the
    recalls are divided by the number of gold relations; F1 is the harmonic mean of these two averages (0 when both
    are 0), not the mean of per-relation F1s, which is returned separately with the accuracy. Empty or unequal inputs
    raise (the original would divide by zero or silently truncate).
    """
    gold, pred = list(gold), list(pred)
    if len(gold) != len(pred):
        raise ValueError(f"macro_prf: {len(gold)} gold labels but {len(pred)} predictions")
    if not gold:
        raise ValueError("macro_prf: no labels to score")
    gold_counts, pred_counts = Counter(gold), Counter(pred)
    correct = Counter(g for g, p in zip(gold, pred) if g == p)
    per_relation = {}
    for relation in gold_counts:
        precision = correct[relation] / pred_counts[relation] if pred_counts[relation] else 0.0
        recall = correct[relation] / gold_counts[relation]
        per_relation[relation] = {
            "precision": precision, "recall": recall, "f1": _harmonic_mean(precision, recall),
            "gold": gold_counts[relation], "predicted": pred_counts[relation], "correct": correct[relation],
        }
    precision = sum(r["precision"] for r in per_relation.values()) / len(pred_counts)
    recall = sum(r["recall"] for r in per_relation.values()) / len(gold_counts)
    return MacroPRF(
        precision=precision,
        recall=recall,
        f1=_harmonic_mean(precision, recall),
        per_relation_f1_mean=sum(r["f1"] for r in per_relation.values()) / len(per_relation),
        accuracy=sum(correct.values()) / len(gold),
        per_relation=per_relation,
    )


def _harmonic_mean(a: float, b: float) -> float:
    return 2.0 * a * b / (a + b) if a + b > 0 else 0.0


# --------------------------------------------------------------------------- strictness


def filter_corpus_for_split(
    dataset: datasets.Dataset, split: ZeroShotSplit | PathLike
) -> tuple[datasets.Dataset, dict[str, int]]:
    """(`dataset` without the rows of the split's test and eval relations, {removed relation: rows removed}).

    Pre-training for a seeded split must not see its test relations (nor its eval ones, which RE-Matching drops too);
    everything else, row order included, is kept.
    """
    split = split if isinstance(split, ZeroShotSplit) else load_zeroshot_split(split)
    if "relation" not in dataset.column_names:
        raise DataFormatError(f"the pre-training corpus has no 'relation' column (columns: {dataset.column_names})")
    held_out = split.held_out
    keep, removed = [], Counter()
    for index, relation in enumerate(dataset["relation"][:]):
        if relation in held_out:
            removed[relation] += 1
        else:
            keep.append(index)
    removed = dict(sorted(removed.items()))
    logger.info(
        f"{split.path}: removed {sum(removed.values())} rows of {len(removed)} held-out relation(s) "
        f"{list(removed)} from the pre-training corpus; {len(keep)} rows left"
    )
    return (dataset if not removed else dataset.select(keep)), removed


def save_pretraining_relations(output_dir: PathLike, relations: Iterable[str]) -> Path:
    """Write `PRETRAINING_RELATIONS_FILE` (the relations a checkpoint was pre-trained on) into `output_dir`."""
    relations = list(dict.fromkeys(relations))
    path = Path(output_dir) / PRETRAINING_RELATIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"relations": relations}, indent=1) + "\n", encoding="utf-8")
    return path


def load_pretraining_relations(path: PathLike, **hub_kwargs) -> list[str] | None:
    """The relations recorded by `save_pretraining_relations`; None when the file is absent.

    `path` is the file itself, or a checkpoint directory / Hub repository holding it (`hub_kwargs`: revision, ...).
    """
    if os.path.isdir(path):
        path = Path(path) / PRETRAINING_RELATIONS_FILE
        if not path.is_file():
            return None
    elif not os.path.isfile(path):  # a Hub repository
        path = cached_file(
            str(path), PRETRAINING_RELATIONS_FILE, **hub_kwargs,
            _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False,
        )
        if path is None:
            return None
    relations = _read_json_object(Path(path)).get("relations")
    if not isinstance(relations, list) or not all(isinstance(r, str) and r for r in relations):
        raise DataFormatError(f"{path}: field 'relations': expected a list of relation ids, got {relations!r}")
    return relations


def check_strictness(
    splits: ZeroShotSplit | Sequence[ZeroShotSplit],
    pretraining_relations: Iterable[str] | None,
    label_table: Mapping[str, tuple[str, str]] | None = None,
    *,
    checkpoint: str = "the checkpoint",
) -> None:
    """Refuse (ValueError naming each relation and its split file) a checkpoint pre-trained on a test relation.

    `pretraining_relations` None (no `PRETRAINING_RELATIONS_FILE`) only warns, once: strictness cannot be checked.
    A seen eval relation is only warned about (the protocol leaves eval relations out of training, not out of scoring).
    """
    splits = [splits] if isinstance(splits, ZeroShotSplit) else list(splits)
    if pretraining_relations is None:
        logger.warning(
            f"{checkpoint} has no {PRETRAINING_RELATIONS_FILE}: cannot check that the test relations of "
            f"{', '.join(Path(s.path).name for s in splits)} were unseen in pre-training"
        )
        return
    seen = set(pretraining_relations)
    names = label_table or {}
    leaked = [
        f"{r} ({names.get(r, ('?',))[0]}) of {split.path}" for split in splits for r in split.test if r in seen
    ]
    if leaked:
        raise ValueError(
            f"{checkpoint} was pre-trained on test relation(s) {'; '.join(leaked)}: a zero-shot score would be "
            "meaningless; pre-train on a corpus filtered with filter_corpus_for_split"
        )
    for split in splits:
        eval_seen = [relation for relation in split.eval if relation in seen]
        if eval_seen:
            logger.warning(f"{checkpoint} was pre-trained on eval relation(s) {eval_seen} of {split.path}")


# --------------------------------------------------------------------------- evaluation


@dataclass
class SplitResult:
    """Scores of one split, its predictions' confusions and counts (the `as_dict` form is what JSON holds)."""

    split: str
    path: str
    m: int
    precision: float
    recall: float
    f1: float
    per_relation_f1_mean: float
    accuracy: float
    num_sentences: int
    num_predicted_relations: int
    relations: list[str]
    confusion: list[list[int]]  # [gold][predicted], in the order of `relations`
    top_confusions: list[dict[str, Any]]
    per_relation: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _confusion(
    gold: Sequence[int], pred: Sequence[int], relations: Sequence[str], names: Mapping[str, str], top: int
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    matrix = np.zeros((len(relations), len(relations)), dtype=np.int64)
    np.add.at(matrix, (np.asarray(gold), np.asarray(pred)), 1)
    pairs = [(int(matrix[g, p]), g, p) for g in range(len(relations)) for p in range(len(relations)) if g != p]
    pairs = sorted((pair for pair in pairs if pair[0] > 0), key=lambda pair: (-pair[0], pair[1], pair[2]))[:top]
    confused = [
        {"gold": relations[g], "predicted": relations[p], "count": count,
         "gold_name": names[relations[g]], "predicted_name": names[relations[p]]}
        for count, g, p in pairs
    ]
    return matrix.tolist(), confused


class ZeroShotEvaluator:
    """Scores splits on one pool of FewRel rows, encoding each relation's sentences and label text once.

    `model` is a SaCon model (with `processor`) or any encoder with `encode_sentences` / `encode_labels`.
    `pretraining_relations` (from `load_pretraining_relations`) are checked against every split's test relations.
    """

    def __init__(
        self,
        model,
        processor: SaconProcessor | None,
        sentences: datasets.Dataset | Sequence[datasets.Dataset],
        label_table: Mapping[str, tuple[str, str]],
        *,
        pretraining_relations: Sequence[str] | None = None,
        checkpoint: str = "the checkpoint",
        batch_size: int = 64,
        show_progress: bool = False,
        source: str = "",
        top_confusions: int = 5,
    ):
        self.encoder = SaconEncoder(model, processor) if processor is not None else model
        self.sentences, self.label_table, self.source = sentences, label_table, source
        self.pretraining_relations, self.checkpoint = pretraining_relations, checkpoint
        self.batch_size, self.show_progress, self.top_confusions = batch_size, show_progress, top_confusions
        self._sentence_cache: dict[str, torch.Tensor] = {}
        self._label_cache: dict[str, torch.Tensor] = {}

    def _encode(self, relations: Sequence[str], where: str) -> None:
        """Fill the caches for `relations` (sentences and label texts), all new ones in one length-sorted pass."""
        texts = label_texts(relations, self.label_table, source=where)  # names every relation without a text
        new = [r for r in relations if r not in self._sentence_cache]
        if new:
            rows = gather_test_sentences(self.sentences, new, source=where)
            vectors = encode_length_sorted(self.encoder, list(rows), self.batch_size, self.show_progress)
            counts = Counter(rows["relation"][:])
            self._sentence_cache.update(zip(new, torch.split(vectors, [counts[r] for r in new])))
        unlabelled = [r for r in relations if r not in self._label_cache]
        if unlabelled:
            with torch.no_grad():
                vectors = torch.cat([
                    self.encoder.encode_labels([texts[r] for r in unlabelled[i : i + self.batch_size]])
                    for i in range(0, len(unlabelled), self.batch_size)
                ])
            self._label_cache.update(zip(unlabelled, vectors))

    def check(self, splits: ZeroShotSplit | Sequence[ZeroShotSplit]) -> None:
        check_strictness(splits, self.pretraining_relations, self.label_table, checkpoint=self.checkpoint)

    def predict(self, split: ZeroShotSplit, *, checked: bool = False) -> tuple[list[int], list[int]]:
        """(gold, predicted) indices into `split.test` for every test sentence: the nearest label text by cosine.

        The checkpoint's strictness is checked first, unless `checked` (`evaluate` checks all splits up front).
        """
        if not checked:
            self.check(split)
        self._encode(split.test, f"{self.source} for {split.path}" if self.source else split.path)
        sentences = torch.cat([self._sentence_cache[r] for r in split.test])
        labels = torch.stack([self._label_cache[r] for r in split.test])
        gold = [i for i, r in enumerate(split.test) for _ in range(len(self._sentence_cache[r]))]
        return gold, similarity_logits(sentences, labels, "cosine").argmax(-1).tolist()

    def evaluate_split(self, split: ZeroShotSplit, *, checked: bool = False) -> SplitResult:
        gold, pred = self.predict(split, checked=checked)
        scores = macro_prf(gold, pred)
        names = {r: self.label_table[r][0] for r in split.test}
        matrix, confused = _confusion(gold, pred, split.test, names, self.top_confusions)
        per_relation = {split.test[i]: values for i, values in scores.per_relation.items()}
        return SplitResult(
            split=split.key, path=split.path, m=split.m, precision=scores.precision, recall=scores.recall,
            f1=scores.f1, per_relation_f1_mean=scores.per_relation_f1_mean, accuracy=scores.accuracy,
            num_sentences=len(gold), num_predicted_relations=len(set(pred)), relations=list(split.test),
            confusion=matrix, top_confusions=confused, per_relation=per_relation,
        )

    def evaluate(self, splits: Sequence[ZeroShotSplit]) -> list[SplitResult]:
        """Every split's result; a checkpoint that saw a test relation of any split is refused before encoding."""
        self.check(splits)
        return [self.evaluate_split(split, checked=True) for split in splits]


# --------------------------------------------------------------------------- aggregation and output


def summarize(results: Sequence[SplitResult]) -> dict[int, dict[str, Any]]:
    """{m: {metric: {mean, std, min, max}, "splits": [...]}} over the splits of each m.

    std is the sample standard deviation (ddof=1) over the splits, 0 for a single split.
    """
    by_m: dict[int, list[SplitResult]] = {}
    for result in results:
        by_m.setdefault(result.m, []).append(result)
    summary = {}
    for m in sorted(by_m):
        group = by_m[m]
        entry: dict[str, Any] = {"splits": [r.split for r in group]}
        for metric in METRICS:
            values = np.array([getattr(r, metric) for r in group], dtype=np.float64)
            entry[metric] = {
                "mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "min": float(values.min()), "max": float(values.max()),
            }
        summary[m] = entry
    return summary


def results_to_json(results: Sequence[SplitResult], **metadata) -> dict[str, Any]:
    """The JSON document: `metadata` (model, data, ...), the per-m summary and every split's result."""
    return {
        **metadata,
        "metric": "macro P/R/F1 of ZS-BERT's compute_macro_PRF (precision over distinct predicted relations)",
        "summary": {str(m): entry for m, entry in summarize(results).items()},
        "splits": [r.as_dict() for r in results],
    }


def plot_confusions(results: Sequence[SplitResult], path: PathLike) -> Path:
    """One PNG: a row of row-normalised confusion matrices (gold x predicted, counts written in) per m."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = sorted({r.m for r in results})
    columns = max(sum(r.m == m for r in results) for m in rows)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(3.6 * columns, 3.6 * len(rows)), squeeze=False, constrained_layout=True
    )
    for ax in axes.flat:
        ax.axis("off")
    for row, m in enumerate(rows):
        for column, result in enumerate(r for r in results if r.m == m):
            ax = axes[row, column]
            ax.axis("on")
            counts = np.asarray(result.confusion, dtype=np.float64)
            ax.imshow(counts / counts.sum(1, keepdims=True).clip(min=1), cmap="Blues", vmin=0, vmax=1)
            ticks = range(len(result.relations))
            ax.set_xticks(ticks, result.relations, rotation=90, fontsize=5)
            ax.set_yticks(ticks, result.relations, fontsize=5)
            if m <= 10:
                for (g, p), count in np.ndenumerate(counts):
                    if count:
                        ax.text(p, g, int(count), ha="center", va="center", fontsize=4)
            ax.set_title(f"{result.split}  F1 {100 * result.f1:.1f}", fontsize=8)
            ax.set_xlabel("predicted", fontsize=6)
            ax.set_ylabel("gold", fontsize=6)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


__all__ = [
    "METRICS",
    "PRETRAINING_RELATIONS_FILE",
    "MacroPRF",
    "SplitResult",
    "ZeroShotEvaluator",
    "ZeroShotSplit",
    "check_strictness",
    "filter_corpus_for_split",
    "gather_test_sentences",
    "load_pretraining_relations",
    "load_zeroshot_split",
    "macro_prf",
    "plot_confusions",
    "results_to_json",
    "save_pretraining_relations",
    "summarize",
]
