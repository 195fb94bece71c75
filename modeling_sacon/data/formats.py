"""Relation-corpus file formats beyond FewRel JSON, detected from the file and streamed into Arrow.

Three layouts hold the same instances (``tokens`` + head ``h`` + tail ``t`` + a relation id):

* ``fewrel``: ``{relation: [{"tokens", "h": [name, id, mentions], "t": [...]}, ...]}`` (FewRel, the embedded corpus);
* ``cp``: the authors' layout (CP's ``cpdata.json``, SaCon's 773k-sentence corpus), one JSON list of
  ``{"tokens", "h": {"name", "id", "pos": [[...]]}, "t": {...}, "r": "P..."}``, the authors' rows with their
  relation's text as ``"rname"`` (name) and ``"rstate"`` (description);
* ``jsonl``: JSON Lines, one instance per line, in CP form or FewRel-instance form, with the relation under
  ``"r"`` or ``"relation"``.

A paper-scale corpus does not fit twice in memory as Python objects, so ``cp`` and ``jsonl`` files are never read
whole: :func:`iter_json_array` decodes a JSON list element by element over chunks of the file, the rows are
validated by the FewRel loader's own rules (one rule, one place: :mod:`.corpus`) and written, ten thousand at a
time, to an Arrow file with the canonical features. That file is memory-mapped, and cached under a key made of each
file's path, size and modification time, so a second run starts in seconds and a changed file is read again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import datasets
from datasets.arrow_writer import ArrowWriter

from .corpus import (
    INSTANCE_FEATURES,
    DataFormatError,
    PathLike,
    _as_path_list,
    _parse_instance,
    _reject_duplicate_keys,
    _rows_to_table,
    load_fewrel_json,
)

__all__ = [
    "CORPUS_FORMATS",
    "detect_corpus_format",
    "iter_json_array",
    "iter_corpus_rows",
    "load_relation_corpus",
    "relation_corpus_label_table",
]

FEWREL, CP, JSONL = "fewrel", "cp", "jsonl"
CORPUS_FORMATS = (FEWREL, CP, JSONL)

#: Keys of one instance; a top-level object whose first key is one of them is a JSON Lines row, not a FewRel file.
_INSTANCE_KEYS = frozenset({"tokens", "h", "t", "r", "relation", "rname", "rstate"})
_RELATION_KEYS = ("r", "relation")
_CACHE_SUBDIR = "sacon_relation_corpus"
_CHUNK_CHARS = 1 << 20
_SNIFF_CHARS = 1 << 16
# Bump when the rows a file yields change (validation, schema): old caches are then never reused.
_READER_VERSION = "1"
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicate_keys)


# --------------------------------------------------------------------------- detection


def detect_corpus_format(path: PathLike) -> str:
    """``"fewrel"``, ``"cp"`` or ``"jsonl"``, from the first characters of the file (its name plays no part).

    A list is ``cp``; an object whose first key is an instance field (``tokens``, ``h``, ``t``, ``r``,
    ``relation``, ``rname``, ``rstate``) is the first line of ``jsonl``; any other object is ``fewrel`` (its keys
    are relation ids).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(_SNIFF_CHARS)
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text ({err})") from err
    start = _WHITESPACE.match(head).end()
    if start == len(head):
        raise DataFormatError(f"{path}: empty file, expected a relation corpus")
    if head[start] == "[":
        return CP
    if head[start] != "{":
        raise DataFormatError(
            f"{path}: not a relation corpus: expected a JSON object (FewRel), a JSON list (CP) or JSON Lines, "
            f"found {head[start]!r} at character {start}"
        )
    key_start = _WHITESPACE.match(head, start + 1).end()
    try:
        key, _ = _DECODER.raw_decode(head, key_start)
    except json.JSONDecodeError:
        return FEWREL  # an empty object or a malformed file: the FewRel reader names the problem
    return JSONL if key in _INSTANCE_KEYS else FEWREL


# --------------------------------------------------------------------------- streaming JSON list


class _ChunkedText:
    """A text file read in chunks, with a cursor; keeps only the unconsumed tail of the last chunks."""

    def __init__(self, handle: TextIO, chunk_chars: int) -> None:
        self.handle = handle
        self.chunk_chars = chunk_chars
        self.buffer = ""
        self.pos = 0
        self.consumed = 0  # characters of the file before buffer[0]
        self.eof = False

    def fill(self) -> bool:
        """Append the next chunk (dropping what was consumed); False at the end of the file."""
        chunk = self.handle.read(self.chunk_chars)
        if not chunk:
            self.eof = True
            return False
        self.consumed += self.pos
        self.buffer = self.buffer[self.pos :] + chunk
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-whitespace character, or "" at the end of the file."""
        while True:
            self.pos = _WHITESPACE.match(self.buffer, self.pos).end()
            if self.pos < len(self.buffer) or not self.fill():
                return self.buffer[self.pos : self.pos + 1]

    def offset(self, pos: int | None = None) -> int:
        return self.consumed + (self.pos if pos is None else pos)

    def decode(self) -> Any:
        """Decode the JSON value at the cursor, reading more chunks while it is cut off by the buffer's end."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as err:
                # Cut off by the chunk boundary (incl. a string or escape split across chunks): read on. Any other
                # error is in the text itself and is reported without reading the rest of the file.
                cut_off = err.pos >= len(self.buffer) - 6 or err.msg.startswith("Unterminated string")
                if cut_off and self.fill():
                    continue
                raise DataFormatError(f"malformed JSON at character {self.offset(err.pos)}: {err.msg}") from None
            if end == len(self.buffer) and self.fill():
                continue  # a number or literal could go on in the next chunk
            self.pos = end
            return value


def iter_json_array(handle: TextIO, source: str, chunk_chars: int = _CHUNK_CHARS) -> Iterator[Any]:
    """Yield the elements of the JSON list in ``handle`` one by one, holding about one chunk of text at a time.

    Errors are :class:`DataFormatError` naming ``source``, the element index and the character offset.
    """
    reader = _ChunkedText(handle, chunk_chars)
    first = reader.peek()
    if first != "[":
        raise DataFormatError(f"{source}: top level must be a JSON list, found {first or 'end of file'!r}")
    reader.pos += 1
    if reader.peek() == "]":
        reader.pos += 1
    else:
        index = 0
        while True:
            try:
                yield reader.decode()
            except DataFormatError as err:
                raise DataFormatError(f"{source}: instance {index}: {err}") from None
            index += 1
            separator = reader.peek()
            reader.pos += 1
            if separator == "]":
                break
            if separator != ",":
                found = repr(separator) if separator else "end of file"
                raise DataFormatError(
                    f"{source}: after instance {index - 1}: expected ',' or ']' at character "
                    f"{reader.offset() - 1}, found {found}"
                )
    trailing = reader.peek()
    if trailing:
        raise DataFormatError(f"{source}: extra data after the list at character {reader.offset()}: {trailing!r}")


# --------------------------------------------------------------------------- rows


def _cp_entity_as_fewrel(raw: Any, where: str, field: str) -> Any:
    """CP ``{name, id, pos}`` -> FewRel ``[name, id, mentions]``; a FewRel-form entity passes through unchanged."""
    if not isinstance(raw, Mapping):
        return raw  # a list is FewRel form; anything else is rejected by _parse_entity, naming the field
    for key in ("name", "pos"):
        if key not in raw:
            raise DataFormatError(f"{where}, field '{field}.{key}': missing")
    entity_id = raw.get("id")
    return [raw["name"], "" if entity_id is None else entity_id, raw["pos"]]


def _label_text(raw: dict[str, Any], where: str) -> tuple[str, str] | None:
    """The authors' rows carry their relation's text: ``rname`` (name) and ``rstate`` (description)."""
    if "rname" not in raw:
        if "rstate" in raw:
            raise DataFormatError(f"{where}, field 'rname': missing ('rstate' is given)")
        return None
    name, description = raw["rname"], raw.get("rstate", "")
    for field, value in (("rname", name), ("rstate", description)):
        if not isinstance(value, str):
            raise DataFormatError(f"{where}, field {field!r}: must be a string, got {value!r}")
    return name, description


def _instance_record(raw: Any, where: str) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Validate one CP / JSON Lines instance (relation inside it): (canonical row, its label text or None)."""
    if not isinstance(raw, dict):
        raise DataFormatError(f"{where}: instance must be an object, got {type(raw).__name__}")
    present = [key for key in _RELATION_KEYS if key in raw]
    if not present:
        raise DataFormatError(f"{where}, field 'r': missing (the relation id, under 'r' or 'relation')")
    if len(present) > 1:
        raise DataFormatError(f"{where}, field 'r': both 'r' and 'relation' given")
    relation = raw[present[0]]
    if not isinstance(relation, str) or not relation:
        raise DataFormatError(f"{where}, field {present[0]!r}: must be a non-empty string, got {relation!r}")
    where = f"{where} (relation {relation!r})"
    converted = dict(raw)
    for field in ("h", "t"):
        if field in raw:
            converted[field] = _cp_entity_as_fewrel(raw[field], where, field)
    return _parse_instance(converted, relation, where), _label_text(raw, where)


_Record = tuple[dict[str, Any], "tuple[str, str] | None", str]  # row, label text, where (for errors)


def _iter_cp(path: Path) -> Iterator[_Record]:
    with open(path, encoding="utf-8") as handle:
        for index, raw in enumerate(iter_json_array(handle, str(path))):
            where = f"{path}: instance {index}"
            yield *_instance_record(raw, where), where


def _iter_jsonl(path: Path) -> Iterator[_Record]:
    with open(path, encoding="utf-8") as handle:
        index = 0
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}: line {line_number} (instance {index})"
            try:
                raw = _DECODER.decode(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{where}: malformed JSON at column {err.colno}: {err.msg}") from None
            except DataFormatError as err:
                raise DataFormatError(f"{where}: {err}") from None
            yield *_instance_record(raw, where), where
            index += 1


def _iter_records(path: Path, corpus_format: str) -> Iterator[_Record]:
    try:
        if corpus_format == CP:
            yield from _iter_cp(path)
        elif corpus_format == JSONL:
            yield from _iter_jsonl(path)
        elif corpus_format == FEWREL:
            for row in load_fewrel_json(path).to_list():
                yield row, None, str(path)
        else:
            raise ValueError(f"unknown corpus format {corpus_format!r}; expected one of {CORPUS_FORMATS}")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text ({err})") from err


def iter_corpus_rows(path: PathLike, corpus_format: str | None = None) -> Iterator[dict[str, Any]]:
    """Canonical rows (:data:`.corpus.INSTANCE_FEATURES`) of one file, validated, in file order.

    ``corpus_format`` defaults to :func:`detect_corpus_format`. FewRel files are read whole (they are one JSON
    object) and yield their rows grouped by relation, as :func:`.corpus.load_fewrel_json` does.
    """
    path = Path(path)
    for row, _, _ in _iter_records(path, corpus_format or detect_corpus_format(path)):
        yield row


# --------------------------------------------------------------------------- Arrow dataset


def _cache_fingerprint(files: Sequence[tuple[Path, str]]) -> str:
    """Cache key: reader version + each file's absolute path, format, size and modification time."""
    digest = hashlib.sha256(_READER_VERSION.encode())
    for path, corpus_format in files:
        stat = path.stat()
        digest.update(f"\0{path.resolve()}\0{corpus_format}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


class _LabelCollector:
    """Label texts carried by the rows (``rname`` / ``rstate``), one per relation; a relation given two differing
    texts is an error naming both places, since one of them would be silently dropped."""

    def __init__(self) -> None:
        self.table: dict[str, tuple[str, str]] = {}
        self.first_seen: dict[str, str] = {}

    def add(self, relation: str, text: tuple[str, str] | None, where: str) -> None:
        if text is None:
            return
        known = self.table.setdefault(relation, text)
        if known == text:
            self.first_seen.setdefault(relation, where)
        else:
            raise DataFormatError(
                f"{where}, fields 'rname'/'rstate': relation {relation!r} has text {text!r} here but {known!r} at "
                f"{self.first_seen[relation]}"
            )


def _write_cache(files: Sequence[tuple[Path, str]], target: Path, batch_rows: int) -> None:
    """Stream the files' rows into the Arrow file ``target``, ``batch_rows`` rows in memory at a time, and the label
    texts the rows carry into :func:`_labels_path` of it.

    Written to temporary names and renamed (labels first), so an interrupted or failed run never leaves a cache
    that looks whole.
    """
    labels = _LabelCollector()
    partial = target.with_name(f"{target.name}.{os.getpid()}.incomplete")
    partial_labels = partial.with_suffix(".labels")
    try:
        with ArrowWriter(features=INSTANCE_FEATURES, path=str(partial)) as writer:
            for path, corpus_format in files:
                records = _iter_records(path, corpus_format)
                while batch := list(itertools.islice(records, batch_rows)):
                    for row, text, where in batch:
                        labels.add(row["relation"], text, where)
                    writer.write_table(_rows_to_table(row for row, _, _ in batch))
            writer.finalize()
        partial_labels.write_text(json.dumps(labels.table, ensure_ascii=False), encoding="utf-8")
        os.replace(partial_labels, _labels_path(target))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
        partial_labels.unlink(missing_ok=True)


def _labels_path(arrow_path: Path) -> Path:
    return arrow_path.with_suffix(".labels.json")


def _cached_corpus(
    paths: PathLike | Sequence[PathLike], cache_dir: PathLike | None, batch_rows: int
) -> tuple[list[Path], Path | None]:
    """(resolved paths, the Arrow cache file built if missing), or no cache file when all inputs are FewRel."""
    resolved = _as_path_list(paths)
    files = [(path, detect_corpus_format(path)) for path in resolved]
    if all(corpus_format == FEWREL for _, corpus_format in files):
        return resolved, None
    root = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE) / _CACHE_SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"corpus-{_cache_fingerprint(files)}.arrow"
    if not target.is_file():
        _write_cache(files, target, batch_rows)
    return resolved, target


def load_relation_corpus(
    paths: PathLike | Sequence[PathLike], *, cache_dir: PathLike | None = None, batch_rows: int = 10_000
) -> datasets.Dataset:
    """Load one or several relation-corpus files, each in any of :data:`CORPUS_FORMATS` (detected per file).

    FewRel files only: exactly :func:`.corpus.load_fewrel_json` (in memory, a relation in several files merged).
    Otherwise the files' rows, in file order, are validated and streamed ``batch_rows`` at a time into an Arrow
    file, which the returned Dataset memory-maps. The file is cached in ``cache_dir`` (default:
    ``$HF_DATASETS_CACHE/sacon_relation_corpus``) under a key of each input's path, size and mtime, so the next
    run reads no JSON at all. (``Dataset.from_generator`` would encode each nested row in Python, about 0.3 ms a
    row: minutes at 800k rows.) Errors are :class:`.corpus.DataFormatError` naming the file, the instance (and
    line) and the field.
    """
    resolved, target = _cached_corpus(paths, cache_dir, batch_rows)
    if target is None:
        return load_fewrel_json(resolved)
    info = datasets.DatasetInfo(features=INSTANCE_FEATURES.copy(), description=", ".join(map(str, resolved)))
    return datasets.Dataset.from_file(str(target), info=info)


def relation_corpus_label_table(
    paths: PathLike | Sequence[PathLike], *, cache_dir: PathLike | None = None, batch_rows: int = 10_000
) -> dict[str, tuple[str, str]]:
    """``{relation: (name, description)}`` from the rows' own ``rname`` / ``rstate`` fields (the authors'
    ``cpdata.json`` carries them), read from the cache that :func:`load_relation_corpus` builds; ``{}`` when no row
    has them (FewRel files never do)."""
    _, target = _cached_corpus(paths, cache_dir, batch_rows)
    if target is None:
        return {}
    table = json.loads(_labels_path(target).read_text(encoding="utf-8"))
    return {relation: (name, description) for relation, (name, description) in table.items()}
