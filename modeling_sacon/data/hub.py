"""Relation data on the Hugging Face Hub: FewRel in the ``thunlp/few_rel`` layout and the pre-training corpus as a
dataset repository in that same layout.

A ``few_rel`` row is ``{relation, tokens, head: {text, type, indices}, tail: ..., names: [name, description]}`` where
``type`` holds the entity id and ``indices`` the mentions. ``thunlp/few_rel`` itself is a loading script, which
``datasets`` no longer runs: its Parquet conversion, revision :data:`PARQUET_EXPORT_REVISION`, holds
``{config}/{split}/NNNN.parquet`` and no card, so a split is named by its files there. A corpus written by
:func:`write_corpus_repo` has a card whose ``configs`` name its split and a ``labels.json`` label table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

from modeling_sacon.data.corpus import (
    hf_few_rel_label_table,
    label_texts,
    load_fewrel_json,
    load_hf_few_rel,
    load_label_table,
    resolve_data_path,
)

__all__ = [
    "FEW_REL_DATASET",
    "FEW_REL_FEATURES",
    "PARQUET_EXPORT_REVISION",
    "CORPUS_DATA_FILE",
    "CORPUS_LABELS_FILE",
    "load_hub_split",
    "hub_label_table",
    "load_hub_few_rel",
    "load_fewrel_source",
    "few_rel_layout",
    "write_corpus_repo",
]

PathLike = Union[str, "os.PathLike[str]"]

FEW_REL_DATASET = "thunlp/few_rel"
PARQUET_EXPORT_REVISION = "refs/convert/parquet"
CORPUS_DATA_FILE = "data/train-00000-of-00001.parquet"
CORPUS_LABELS_FILE = "labels.json"

_FEW_REL_ENTITY = {
    "text": datasets.Value("string"),
    "type": datasets.Value("string"),
    "indices": datasets.List(datasets.List(datasets.Value("int64"))),
}
#: The columns of ``thunlp/few_rel`` (its ``default`` config).
FEW_REL_FEATURES = datasets.Features(
    {
        "relation": datasets.Value("string"),
        "tokens": datasets.List(datasets.Value("string")),
        "head": _FEW_REL_ENTITY,
        "tail": _FEW_REL_ENTITY,
        "names": datasets.List(datasets.Value("string")),
    }
)


def load_hub_split(
    name: str, split: str, *, config: str | None = None, revision: str | None = None
) -> datasets.Dataset:
    """One split of a Hub dataset (or a local dataset folder) with ``datasets.load_dataset``."""
    if revision == PARQUET_EXPORT_REVISION:
        data_files = {split: f"{config or 'default'}/{split}/*.parquet"}
        return datasets.load_dataset(name, revision=revision, data_files=data_files, split=split)
    return datasets.load_dataset(name, config, revision=revision, split=split)


def hub_label_table(name: str, revision: str | None = None) -> dict[str, tuple[str, str]]:
    """The repository's ``labels.json`` (``{relation: [name, description]}``), or ``{}`` when it has none."""
    if Path(name).is_dir():
        path = Path(name) / CORPUS_LABELS_FILE
        return load_label_table(path) if path.is_file() else {}
    try:
        path = hf_hub_download(name, CORPUS_LABELS_FILE, repo_type="dataset", revision=revision)
    except EntryNotFoundError:
        return {}
    return load_label_table(path)


def load_hub_few_rel(
    name: str, split: str, *, config: str | None = None, revision: str | None = None
) -> tuple[datasets.Dataset, dict[str, tuple[str, str]]]:
    """(canonical rows, label table) of a split in the ``few_rel`` layout.

    Label texts: the rows' ``names``, overridden by the repository's ``labels.json`` where it has one.
    """
    raw = load_hub_split(name, split, config=config, revision=revision)
    dataset = load_hf_few_rel(raw, source=f"{name}[{split}]")
    table = hf_few_rel_label_table(raw) if "names" in raw.column_names else {}
    table.update(hub_label_table(name, revision))
    return dataset, table


def load_fewrel_source(
    data_file: str | None = None,
    label_files: list[str] | None = None,
    *,
    dataset_name: str | None = None,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    data_dir: PathLike | None = None,
) -> tuple[datasets.Dataset, dict[str, tuple[str, str]] | None, str]:
    """FewRel evaluation rows from a Hub dataset (``dataset_name``, ``split``) or a FewRel JSON file, as
    (rows, label table, source name). Relative files are taken in ``data_dir`` (default ``$SACON_DATA_DIR``);
    ``label_files`` override the Hub rows' own texts, or give the file's."""
    if dataset_name:
        if not split:
            raise ValueError(f"{dataset_name}: give the split to evaluate (e.g. val_wiki)")
        dataset, table = load_hub_few_rel(dataset_name, split, config=config, revision=revision)
        source = f"{dataset_name}[{split}]"
    elif data_file:
        path = resolve_data_path(data_file, data_dir)
        dataset, table, source = load_fewrel_json(path), {}, str(path)
    else:
        raise ValueError("give a FewRel JSON file or a Hub dataset name")
    if label_files:
        table.update(load_label_table([resolve_data_path(p, data_dir) for p in label_files]))
    return dataset, table or None, source


def _few_rel_entity(entity: Mapping) -> dict:
    return {"text": entity["name"], "type": entity["id"], "indices": [list(entity["indices"])]}


def few_rel_layout(dataset: datasets.Dataset, labels: Mapping[str, tuple[str, str]]) -> pa.Table:
    """Canonical rows -> an Arrow table in the ``few_rel`` layout, ``names`` from ``labels`` (every relation needs
    one); the table carries the ``datasets`` features, so ``load_dataset`` restores them."""
    columns = dataset.with_format(None)[:]
    texts = label_texts(columns["relation"], labels, source="the corpus")
    table = {
        "relation": columns["relation"],
        "tokens": columns["tokens"],
        "head": [_few_rel_entity(e) for e in columns["head"]],
        "tail": [_few_rel_entity(e) for e in columns["tail"]],
        "names": [list(texts[r]) for r in columns["relation"]],
    }
    return pa.Table.from_pydict(table, schema=FEW_REL_FEATURES.arrow_schema)


def write_corpus_repo(
    dataset: datasets.Dataset, labels: Mapping[str, tuple[str, str]], output_dir: PathLike, card: str
) -> Path:
    """A dataset repository folder: the rows as Parquet (one ``train`` split), ``labels.json`` and the card."""
    root = Path(output_dir)
    (root / CORPUS_DATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(few_rel_layout(dataset, labels), root / CORPUS_DATA_FILE)
    relations = dict.fromkeys(dataset["relation"][:])
    table = {relation: list(labels[relation]) for relation in relations}
    (root / CORPUS_LABELS_FILE).write_text(json.dumps(table, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (root / "README.md").write_text(card, encoding="utf-8")
    return root
