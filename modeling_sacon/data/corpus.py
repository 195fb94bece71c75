"""Data loading for SaCon: FewRel-format files, the HF ``few_rel`` dataset, label tables,
the embedded pre-training corpus and a relation-balanced batch sampler.

Everything is converted to one canonical row schema (:data:`INSTANCE_FEATURES`) so that
pre-training, episode sampling and evaluation never need to know where a sentence came from.
Loaders validate eagerly and raise :class:`DataFormatError` (a ``ValueError``) naming the file,
relation, instance index and field: a silently dropped or mis-indexed instance would corrupt
entity markers without any visible error.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import datasets
import numpy as np
import pyarrow as pa
import torch.utils.data

__all__ = [
    "DATA_DIR_ENV",
    "DATA_SOURCES_HINT",
    "INSTANCE_FEATURES",
    "DataFormatError",
    "UnknownRelationError",
    "development_data_dir",
    "get_data_dir",
    "resolve_data_path",
    "load_fewrel_json",
    "load_hf_few_rel",
    "hf_few_rel_label_table",
    "load_label_table",
    "label_texts",
    "load_pretraining_corpus",
    "PRETRAIN_CORPORA",
    "first_per_relation",
    "RelationBalancedBatchSampler",
    "balanced_batch_shape",
    "check_relations_per_batch",
]

PathLike = Union[str, "os.PathLike[str]"]

DATA_DIR_ENV = "SACON_DATA_DIR"

_ENTITY_FEATURES = {
    "name": datasets.Value("string"),
    "id": datasets.Value("string"),
    "indices": datasets.List(datasets.Value("int64")),
}

#: Canonical row schema used across the package. ``indices`` are the token positions of the
#: entity's first mention (what FewRel loaders read); ``id`` is a Wikidata Q-id / UMLS CUI or "".
INSTANCE_FEATURES = datasets.Features(
    {
        "tokens": datasets.List(datasets.Value("string")),
        "head": _ENTITY_FEATURES,
        "tail": _ENTITY_FEATURES,
        "relation": datasets.Value("string"),
    }
)

# Relative locations inside the data directory (see the SOURCE.md files there).
PRETRAIN_CORPUS_FILES = ("pretrain/docred_sentences.json", "fewrel_train_sample/train_wiki_sample.json")
# pid2name first, then labels.json: the corpus-specific table wins on a conflict.
PRETRAIN_LABEL_FILES = ("fewrel/pid2name.json", "pretrain/labels.json")
#: The embedded pre-training corpora: name -> (corpus files, label files). ``v2`` (the default) is
#: ``pretrain_v2/``: 105 dense relations (>= 20 sentences each) + 807 long-tail ones (2 to 17 each),
#: 912 relations, none a FewRel evaluation relation; ``v2_dense`` leaves the long tail out; ``v1``
#: is the earlier 82-relation corpus (Re-DocRED + a FewRel train sample), kept for the data-scaling block.
PRETRAIN_CORPORA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "v2": (("pretrain_v2/sentences.json", "pretrain_v2/longtail.json"), ("pretrain_v2/labels.json",)),
    "v2_dense": (("pretrain_v2/sentences.json",), ("pretrain_v2/labels.json",)),
    "v1": (PRETRAIN_CORPUS_FILES, PRETRAIN_LABEL_FILES),
}
DEFAULT_PRETRAIN_CORPUS = "v2"
VAL_WIKI_FILE = "fewrel/val_wiki.json"
class DataFormatError(ValueError):
    """A data file or dataset does not have the expected structure."""


class UnknownRelationError(KeyError):
    """A relation has no label text; ``str()`` gives the plain message (not KeyError's repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- locations


#: Where the data come from, for the error when no data directory is given.
DATA_SOURCES_HINT = (
    "FewRel is on the Hub (--dataset_name thunlp/few_rel --dataset_revision refs/convert/parquet), the "
    "pre-training corpus is pushed there with `python examples/push_corpus.py --repo_id ORG/NAME` and read with "
    "--dataset_name ORG/NAME; for files, pass --data_dir or set " + DATA_DIR_ENV + " (docs/data.md)"
)


def development_data_dir(script: PathLike) -> str:
    """The examples' default data directory: ``$SACON_DATA_DIR``, else ``shared/data`` beside the checkout holding
    ``script`` (``<dir>/<checkout>/examples/x.py`` -> ``<dir>/shared/data``, the development layout). Not checked
    here: `get_data_dir` says what is missing when a file is asked for."""
    return os.environ.get(DATA_DIR_ENV) or str(Path(script).resolve().parents[2] / "shared" / "data")


def get_data_dir(data_dir: PathLike | None = None) -> Path:
    """The data directory: ``data_dir`` when given, else ``$SACON_DATA_DIR``.

    The library takes explicit locations only (the examples pass their development default); a missing
    directory is an error that says where the data come from.
    """
    where = "data_dir" if data_dir is not None else DATA_DIR_ENV
    value = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not value:
        raise FileNotFoundError(f"no data directory given; {DATA_SOURCES_HINT}")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{where}={str(value)!r} is not an existing directory; {DATA_SOURCES_HINT}")
    return path.resolve()


def resolve_data_path(path: PathLike, data_dir: PathLike | None = None) -> Path:
    """Absolute or existing paths are returned as-is; others are taken relative to :func:`get_data_dir`."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    try:
        candidate = get_data_dir(data_dir) / path
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path} not found in {Path.cwd()}, and {err}") from None
    if not candidate.exists():
        raise FileNotFoundError(f"{path} not found (neither relative to {Path.cwd()} nor to {candidate.parent})")
    return candidate


def _as_path_list(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """Accept one path or several, so callers can merge splits without a special case."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    resolved = [resolve_data_path(p) for p in paths]
    if not resolved:
        raise ValueError("no input path given")
    return resolved


# --------------------------------------------------------------------------- JSON reading


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` keeps the last of duplicate keys silently; a duplicated relation would lose data."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DataFormatError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _read_json_object(path: Path) -> dict[str, Any]:
    """Read a JSON file whose top level must be an object, with errors that name the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as err:
        raise DataFormatError(
            f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from err
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text ({err})") from err
    except DataFormatError as err:
        raise DataFormatError(f"{path}: {err}") from err
    if not isinstance(data, dict):
        raise DataFormatError(
            f"{path}: top level must be a JSON object (relation -> instances), got {type(data).__name__}"
        )
    return data


# --------------------------------------------------------------------------- instance validation


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entity(raw: Any, n_tokens: int, where: str, field: str) -> dict[str, Any]:
    """Validate a FewRel entity ``[name, id, [[idx, ...], ...]]`` and keep mention 0."""
    if not isinstance(raw, (list, tuple)) or len(raw) < 3:
        raise DataFormatError(f"{where}, field {field!r}: expected [name, id, mentions], got {raw!r}")
    name, entity_id, mentions = raw[0], raw[1], raw[2]
    if not isinstance(name, str):
        raise DataFormatError(f"{where}, field {field!r}: name must be a string, got {name!r}")
    if not isinstance(entity_id, str):
        raise DataFormatError(f"{where}, field {field!r}: id must be a string, got {entity_id!r}")
    if not isinstance(mentions, (list, tuple)) or not mentions:
        raise DataFormatError(f"{where}, field {field!r}: mention list is empty or not a list")
    for m, mention in enumerate(mentions):
        if not isinstance(mention, (list, tuple)) or not mention:
            raise DataFormatError(f"{where}, field {field!r}: mention {m} is empty or not a list")
        for idx in mention:
            if not _is_index(idx) or not 0 <= idx < n_tokens:
                raise DataFormatError(
                    f"{where}, field {field!r}: mention {m} index {idx!r} is outside "
                    f"the sentence of {n_tokens} tokens"
                )
    return {"name": name, "id": entity_id, "indices": list(mentions[0])}


def _parse_instance(
    raw: Any, relation: str, where: str, entity_fields: tuple[str, str] = ("h", "t")
) -> dict[str, Any]:
    """Validate one FewRel instance and convert it to the canonical row.

    ``entity_fields`` are the head/tail keys of ``raw``, so errors use the caller's field names.
    """
    if not isinstance(raw, dict):
        raise DataFormatError(f"{where}: instance must be an object, got {type(raw).__name__}")
    head_field, tail_field = entity_fields
    for field in ("tokens", head_field, tail_field):
        if field not in raw:
            raise DataFormatError(f"{where}, field {field!r}: missing")
    tokens = raw["tokens"]
    if not isinstance(tokens, (list, tuple)) or not tokens:
        raise DataFormatError(f"{where}, field 'tokens': empty or not a list")
    if not all(isinstance(tok, str) for tok in tokens):
        raise DataFormatError(f"{where}, field 'tokens': every token must be a string")
    return {
        "tokens": list(tokens),
        "head": _parse_entity(raw[head_field], len(tokens), where, head_field),
        "tail": _parse_entity(raw[tail_field], len(tokens), where, tail_field),
        "relation": relation,
    }


def _rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Validated canonical rows -> an Arrow table with the canonical schema.

    Goes through ``pyarrow`` directly: ``Dataset.from_dict`` (and ``Dataset.from_generator``) re-encode every
    nested row in Python and are ~10x slower. Rows are already validated.
    """
    columns: dict[str, list[Any]] = {name: [] for name in INSTANCE_FEATURES}
    for row in rows:
        for name in columns:
            columns[name].append(row[name])
    return pa.Table.from_pydict(columns, schema=INSTANCE_FEATURES.arrow_schema)


def _rows_to_dataset(rows: Iterable[Mapping[str, Any]]) -> datasets.Dataset:
    """Build an in-memory Dataset with the canonical features."""
    return datasets.Dataset(_rows_to_table(rows), info=datasets.DatasetInfo(features=INSTANCE_FEATURES.copy()))


# --------------------------------------------------------------------------- FewRel JSON


def _read_fewrel_file(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Parse one FewRel file into canonical rows grouped by relation."""
    data = _read_json_object(path)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for relation, instances in data.items():
        if not isinstance(instances, list):
            raise DataFormatError(
                f"{path}: relation {relation!r}: instances must be a list, got {type(instances).__name__}"
            )
        if not instances:
            raise DataFormatError(f"{path}: relation {relation!r}: has no instances")
        grouped[relation] = [
            _parse_instance(raw, relation, f"{path}: relation {relation!r}, instance {i}")
            for i, raw in enumerate(instances)
        ]
    return grouped


def load_fewrel_json(paths: PathLike | Sequence[PathLike]) -> datasets.Dataset:
    """Load one or several FewRel-format files into a canonical Dataset.

    Rows are grouped by relation in order of first appearance; a relation present in several
    files gets the instances of each file, in file order. Relative paths that do not exist
    are looked up in :func:`get_data_dir`.
    """
    merged: dict[str, list[dict[str, Any]]] = {}
    for path in _as_path_list(paths):
        for relation, rows in _read_fewrel_file(path).items():
            merged.setdefault(relation, []).extend(rows)
    return _rows_to_dataset(row for rows in merged.values() for row in rows)


# --------------------------------------------------------------------------- HF few_rel

_HF_COLUMNS = ("relation", "tokens", "head", "tail")


def _hf_source_name(dataset: datasets.Dataset) -> str:
    name = dataset.info.dataset_name or "dataset"
    return f"{name}[{dataset.split}]" if dataset.split is not None else name


def _hf_entity_as_fewrel(raw: Any, where: str, field: str) -> list[Any]:
    """HF ``{text, type, indices}`` -> FewRel ``[name, id, mentions]``.

    The HF loading script fills ``type`` from FewRel's second slot, i.e. the entity id
    (the card's own example shows ``'type': 'Q3056359'``), so it becomes ``id``.
    """
    if not isinstance(raw, Mapping):
        raise DataFormatError(f"{where}, field {field!r}: expected {{text, type, indices}}, got {raw!r}")
    for key in ("text", "indices"):
        if key not in raw:
            raise DataFormatError(f"{where}, field '{field}.{key}': missing")
    entity_id = raw.get("type")
    return [raw["text"], "" if entity_id is None else entity_id, raw["indices"]]


def load_hf_few_rel(dataset_or_split: datasets.Dataset, *, source: str | None = None) -> datasets.Dataset:
    """Convert a split of the Hub ``few_rel`` dataset to the canonical schema.

    Row order is kept. ``head.indices[0]`` becomes ``head.indices`` and ``head.text`` the name;
    ``head.type`` (which holds the entity id) becomes ``id``. Unlabelled rows (the
    ``pubmed_unsupervised`` split) keep their empty relation. Validation matches
    :func:`load_fewrel_json`; ``source`` names the data in errors (default: dataset name/split).
    """
    if not isinstance(dataset_or_split, datasets.Dataset):
        raise TypeError(
            f"expected a datasets.Dataset (one split), got {type(dataset_or_split).__name__}; "
            "index a DatasetDict by split name first"
        )
    source = source or _hf_source_name(dataset_or_split)
    missing = [c for c in _HF_COLUMNS if c not in dataset_or_split.column_names]
    if missing:
        raise DataFormatError(f"{source}: missing column(s) {missing}; expected the few_rel schema")
    columns = dataset_or_split.select_columns(list(_HF_COLUMNS)).with_format(None)[:]
    rows = []
    for i, (relation, tokens, head, tail) in enumerate(zip(*(columns[c] for c in _HF_COLUMNS))):
        where = f"{source}: relation {relation!r}, instance {i}"
        if not isinstance(relation, str):
            raise DataFormatError(f"{where}, field 'relation': must be a string")
        raw = {
            "tokens": tokens,
            "head": _hf_entity_as_fewrel(head, where, "head"),
            "tail": _hf_entity_as_fewrel(tail, where, "tail"),
        }
        rows.append(_parse_instance(raw, relation, where, ("head", "tail")))
    return _rows_to_dataset(rows)


def hf_few_rel_label_table(dataset_or_split: datasets.Dataset) -> dict[str, tuple[str, str]]:
    """Label table from a ``few_rel`` split's ``names`` column ([name, description] per row).

    PubMed/SemEval rows carry only ``[relation]`` and unlabelled rows ``[""]``: they are left
    out so :func:`label_texts` (with ``fallback=True``) decides how to name them.
    """
    if "names" not in dataset_or_split.column_names:
        raise DataFormatError(f"{_hf_source_name(dataset_or_split)}: no 'names' column")
    columns = dataset_or_split.select_columns(["relation", "names"]).with_format(None)[:]
    table: dict[str, tuple[str, str]] = {}
    for relation, names in zip(columns["relation"], columns["names"]):
        if not relation or names is None or len(names) != 2:
            continue
        entry = (names[0], names[1])
        if table.setdefault(relation, entry) != entry:
            raise DataFormatError(f"relation {relation!r}: conflicting names {table[relation]} vs {entry}")
    return table


# --------------------------------------------------------------------------- label tables


def _is_scope(value: Any) -> bool:
    """``[start, end)`` as in the authors' ``rel2scope.json``, which holds row ranges and no texts."""
    return isinstance(value, list) and len(value) == 2 and all(_is_index(v) for v in value)


def load_label_table(paths: PathLike | Sequence[PathLike]) -> dict[str, tuple[str, str]]:
    """Load pid2name-style files ``{relation: [name, description]}``, merged in order.

    Later files override earlier ones for a relation present in both, so list general tables
    (``pid2name.json``) first and corpus-specific ones last.
    """
    table: dict[str, tuple[str, str]] = {}
    for path in _as_path_list(paths):
        for key, value in _read_json_object(path).items():
            if _is_scope(value):
                raise DataFormatError(
                    f"{path}: key {key!r}: {value!r} is a rel2scope.json row range (relation -> [start, end) of "
                    "cpdata.json), not a label text; the relations' texts come from a [name, description] table "
                    "such as fewrel/pid2name.json or pretrain_v2/labels.json (Wikidata properties)"
                )
            if (
                not isinstance(value, (list, tuple))
                or len(value) != 2
                or not all(isinstance(part, str) for part in value)
            ):
                raise DataFormatError(f"{path}: key {key!r}: expected [name, description] strings, got {value!r}")
            table[key] = (value[0], value[1])
    return table


def _fallback_text(relation: str) -> tuple[str, str]:
    """FewRel 2.0 PubMed labels are names such as ``ingredient_of``: read ``_`` as a space."""
    return (" ".join(relation.replace("_", " ").split()), "")


def label_texts(
    relations: Iterable[str],
    table: Mapping[str, tuple[str, str]],
    *,
    fallback: bool = False,
    source: str = "",
) -> dict[str, tuple[str, str]]:
    """``(name, description)`` for each relation, in first-seen order.

    A relation missing from ``table`` raises :class:`UnknownRelationError` naming every missing
    relation (and ``source``), because an anchor built from a made-up label would silently
    change the task. With ``fallback=True`` it gets its own name, ``_`` read as a space, and an
    empty description (what FewRel 2.0 PubMed needs).
    """
    result: dict[str, tuple[str, str]] = {}
    missing: list[str] = []
    for relation in relations:
        if relation in result:
            continue
        if relation in table:
            name, description = table[relation]
            result[relation] = (name, description)
        elif fallback:
            result[relation] = _fallback_text(relation)
        else:
            missing.append(relation)
            result[relation] = ("", "")
    if missing:
        where = f" (from {source})" if source else ""
        raise UnknownRelationError(
            f"no label text for relation(s) {', '.join(map(repr, missing))}{where}; "
            "add them to a label table or pass fallback=True"
        )
    return result


# --------------------------------------------------------------------------- pre-training corpus


def _unique_relations(dataset: datasets.Dataset) -> list[str]:
    return list(dict.fromkeys(dataset["relation"][:]))  # [:]: the whole column at once, not row by row


def first_per_relation(dataset: datasets.Dataset, count: int | None) -> datasets.Dataset:
    """The first ``count`` rows of every relation, in dataset order: a fixed, cheap evaluation pool.

    ``count`` None or 0 keeps the whole dataset.
    """
    if not count:
        return dataset
    seen: dict[str, int] = {}
    keep = []
    for index, relation in enumerate(dataset["relation"][:]):
        seen[relation] = seen.get(relation, 0) + 1
        if seen[relation] <= count:
            keep.append(index)
    return dataset if len(keep) == len(dataset) else dataset.select(keep)


def load_pretraining_corpus(
    data_dir: PathLike | None = None, corpus: str = DEFAULT_PRETRAIN_CORPUS, *, allow_eval_relations: bool = False
) -> tuple[datasets.Dataset, dict[str, tuple[str, str]]]:
    """An embedded pre-training corpus (:data:`PRETRAIN_CORPORA`, default ``v2``) and its label texts.

    Every corpus relation must have a label text. Raises :class:`.protocol.EvaluationLeakageError` if a FewRel
    evaluation relation is in the corpus (``v1`` holds P1056, a FewRel 2.0 NYT relation), unless
    ``allow_eval_relations``: results on unseen relations would otherwise be inflated.
    """
    if corpus not in PRETRAIN_CORPORA:
        raise ValueError(f"unknown pre-training corpus {corpus!r}; choose one of {sorted(PRETRAIN_CORPORA)}")
    corpus_files, label_files = PRETRAIN_CORPORA[corpus]
    root = Path(data_dir) if data_dir is not None else get_data_dir()
    dataset = load_fewrel_json([root / name for name in corpus_files])
    relations = _unique_relations(dataset)
    from .protocol import check_relation_leakage  # here: this file also loads on its own (tests/test_data.py)

    check_relation_leakage(relations, source=f"pre-training corpus {corpus} in {root}", allow=allow_eval_relations,
                           hint="pass allow_eval_relations=True (--allow_eval_relations) to use it anyway")
    table = load_label_table([root / name for name in label_files])
    labels = label_texts(relations, table, source=", ".join(corpus_files))
    return dataset, labels


# --------------------------------------------------------------------------- batch sampling


def check_relations_per_batch(relations_per_batch: int, num_relations: int | None = None, name: str = "relations_per_batch") -> int:
    """The rule of a relation-balanced contrastive batch: at least two relations (one has no negatives), and no more
    than the data holds. ``name`` says where the number came from, for the error."""
    if relations_per_batch < 2:
        raise ValueError(f"{name} = {relations_per_batch}: a contrastive batch needs at least two relations")
    if num_relations is not None and relations_per_batch > num_relations:
        raise ValueError(
            f"{name} = {relations_per_batch} relations per batch, but the training data has only {num_relations} relations"
        )
    return relations_per_batch


def balanced_batch_shape(batch_size: int, instances_per_relation: int, num_relations: int | None = None) -> int:
    """Relations per batch ``M = batch_size // n`` for a relation-balanced batch of whole relation groups, checked
    (:func:`check_relations_per_batch`) against the ``num_relations`` of the data when given."""
    if instances_per_relation < 1:
        raise ValueError(f"instances_per_relation must be >= 1, got {instances_per_relation}")
    if batch_size % instances_per_relation:
        raise ValueError(
            f"per_device_train_batch_size ({batch_size}) must be divisible by "
            f"instances_per_relation ({instances_per_relation})"
        )
    name = f"per_device_train_batch_size ({batch_size}) / instances_per_relation ({instances_per_relation})"
    return check_relations_per_batch(batch_size // instances_per_relation, num_relations, name)


class RelationBalancedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of ``M`` distinct relations x ``n`` instances each, for a DataLoader's ``batch_sampler``.

    Relations are drawn uniformly (not by frequency), so a rare relation is seen as often as
    P131; instances are drawn without replacement within a batch. With ``longtail_share`` set,
    relations with fewer than ``dense_min_instances`` instances form a long tail that supplies
    ``round(M * longtail_share)`` of each batch's relations (the rest drawn uniformly from the
    dense ones; see :attr:`tail_relations_per_batch` when a group is too small). With ``longtail_share=None``, ``dense_min_instances=0``, or a corpus whose
    relations are all dense (or all long tail), every relation is drawn alike: a corpus of 105 dense
    and 807 long-tail relations would then fill most of every batch with the tail. A relation with
    fewer than ``n`` instances contributes all of them plus repeats drawn with replacement, so
    every batch keeps the fixed ``M * n`` shape the loss relies on. Rows are relation-major:
    ``batch[k*n:(k+1)*n]`` share a relation.

    Batches come from a private ``numpy`` generator seeded by ``(seed, epoch)``, so any process
    produces the same sequence whatever the global RNG state. With ``num_replicas > 1`` every
    rank draws the same global sequence and yields batches ``i`` with ``i % num_replicas == rank``.
    """

    def __init__(
        self,
        relations: Sequence[str],
        relations_per_batch: int,
        instances_per_relation: int,
        seed: int = 0,
        num_batches: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        longtail_share: float | None = None,
        dense_min_instances: int = 20,
    ) -> None:
        groups: dict[str, list[int]] = {}
        for index, relation in enumerate(relations):
            groups.setdefault(relation, []).append(index)
        self._pools = [np.asarray(rows, dtype=np.int64) for rows in groups.values()]
        self.relation_names = list(groups)
        self.relations_per_batch = relations_per_batch
        self.instances_per_relation = instances_per_relation
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.longtail_share = longtail_share
        self.dense_min_instances = dense_min_instances
        sizes = np.asarray([len(pool) for pool in self._pools])
        self._dense = np.flatnonzero(sizes >= dense_min_instances)
        self._tail = np.flatnonzero(sizes < dense_min_instances)
        self._check_options()
        self.num_batches = self._total_batches(num_batches, len(relations))

    def _check_options(self) -> None:
        check_relations_per_batch(self.relations_per_batch, len(self._pools))
        if self.instances_per_relation < 1:
            raise ValueError(f"instances_per_relation must be >= 1, got {self.instances_per_relation}")
        if self.longtail_share is not None:
            if not 0.0 <= self.longtail_share <= 1.0:
                raise ValueError(f"longtail_share must be in [0, 1] or None, got {self.longtail_share}")
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")

    def _total_batches(self, num_batches: int | None, n_rows: int) -> int:
        """Global batches per epoch; a multiple of ``num_replicas`` so DDP ranks step equally."""
        if num_batches is None:
            per_epoch = max(1, n_rows // (self.relations_per_batch * self.instances_per_relation))
            return math.ceil(per_epoch / self.num_replicas) * self.num_replicas
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        if num_batches % self.num_replicas:
            raise ValueError(
                f"num_batches ({num_batches}) must be divisible by num_replicas ({self.num_replicas}): "
                "ranks with different step counts deadlock distributed training"
            )
        return num_batches

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches :meth:`__iter__` yields (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches // self.num_replicas

    def _draw_group(self, rng: np.random.Generator, pool: np.ndarray) -> np.ndarray:
        n = self.instances_per_relation
        if len(pool) >= n:
            return rng.choice(pool, size=n, replace=False)
        repeats = rng.choice(pool, size=n - len(pool), replace=True)
        return np.concatenate([rng.permutation(pool), repeats])

    @property
    def _mixes(self) -> bool:
        return self.longtail_share is not None and len(self._tail) > 0 and len(self._dense) > 0

    @property
    def tail_relations_per_batch(self) -> int:
        """Long-tail relations in each batch: ``round(M * longtail_share)``, within what each group can supply.

        A tail of fewer relations gives all of them (the dense ones fill the batch), a dense group of fewer than
        ``M - tail`` relations gives all of its own (the tail fills the rest); 0 without ``longtail_share``.
        """
        if not self._mixes:
            return 0
        wanted = int(round(self.relations_per_batch * self.longtail_share))
        return max(min(wanted, len(self._tail)), self.relations_per_batch - len(self._dense))

    def _draw_batch(self, rng: np.random.Generator) -> list[int]:
        if not self._mixes:
            chosen = rng.choice(len(self._pools), size=self.relations_per_batch, replace=False)
        else:
            tail = self.tail_relations_per_batch
            chosen = np.concatenate([
                rng.choice(self._dense, size=self.relations_per_batch - tail, replace=False),
                rng.choice(self._tail, size=tail, replace=False),
            ])
        return np.concatenate([self._draw_group(rng, self._pools[r]) for r in chosen]).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        for i in range(self.num_batches):
            batch = self._draw_batch(rng)  # drawn on every rank to keep the streams aligned
            if i % self.num_replicas == self.rank:
                yield batch
