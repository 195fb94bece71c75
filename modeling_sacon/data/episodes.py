"""FewRel N-way K-shot episodes, evaluation settings and leaderboard I/O.

Episodes hold *row indices* into a flat dataset (one row per instance) rather than
instances, so a caller can encode every sentence once and reuse the cached embeddings
across thousands of episodes.

Sampling follows the FewRel toolkit (thunlp/FewRel, ``fewshot_re_kit/data_loader.py``):

* N relations are drawn without replacement from all relations of the dataset;
* for each, K + Q instances are drawn without replacement: the first K are the support
  set, the remaining Q the queries (so support and query never overlap);
* none-of-the-above (NOTA): ``Q_na`` extra queries, labelled ``N``; each picks a relation
  uniformly among those *not* drawn for the episode, then an instance of it uniformly.
  Queries are ordered by label (relation 0's Q queries, ..., then the NOTA ones), as in
  the toolkit.

Two ways to ask for NOTA queries, never both:

* ``na_rate`` (toolkit style, a non-negative integer): ``Q_na = na_rate * Q``. The
  toolkit's README maps ``na_rate`` 1, 2, 5 to "15%, 30%, 50% NOTA" in the 5-way setting
  (the exact shares are 1/6, 2/7 and 5/10 of the queries).
* ``nota_fraction`` p in [0, 1): the share of an episode's queries that are NOTA,
  ``Q_na = round_half_up(p / (1 - p) * N * Q)``, so ``Q_na / (N * Q + Q_na)`` is p (as
  close as whole queries allow). With N=5, Q=1 the fractions 0.15, 0.3 and 0.5 give
  ``Q_na`` 1, 2 and 5: the same episodes as the toolkit's ``na_rate`` 1, 2 and 5. The
  setting string ``nota-5-1-0.5`` means ``nota_fraction=0.5``.

Each episode is a pure function of ``(seed, index)``: it draws from
``numpy.random.default_rng([seed, index])`` and never from the ``random``, ``numpy`` or
``torch`` global generators, so any process, worker or iteration order gets the same
episodes.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Episode",
    "EpisodeSampler",
    "EvalSetting",
    "parse_setting",
    "parse_settings",
    "nota_query_count",
    "row_relations",
    "load_test_episodes",
    "write_predictions",
    "prediction_filename",
    "mean_and_ci95",
]


# --------------------------------------------------------------------------- episodes


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot episode as row indices into the flat dataset.

    ``relations[j]`` is the relation of label ``j``; ``support[j]`` its K support rows;
    ``query_labels[i]`` the label of row ``query[i]``: ``0..N-1``, or ``N`` for
    none-of-the-above.
    """

    relations: tuple[str, ...]
    support: tuple[tuple[int, ...], ...]
    query: tuple[int, ...]
    query_labels: tuple[int, ...]

    @property
    def n_way(self) -> int:
        """Number of candidate relations (NOTA excluded)."""
        return len(self.relations)

    @property
    def nota_label(self) -> int:
        """The label of none-of-the-above queries (``N``, as in the FewRel toolkit)."""
        return len(self.relations)


def nota_query_count(n_way: int, q_query: int, na_rate: int = 0, nota_fraction: float = 0.0) -> int:
    """NOTA queries per episode for a toolkit ``na_rate`` or a ``nota_fraction``.

    ``na_rate``: ``na_rate * q_query`` (FewRel toolkit). ``nota_fraction`` p in [0, 1):
    ``round_half_up(p / (1 - p) * n_way * q_query)``, so that NOTA queries are p of all
    queries. Raises ValueError when both are set, or when a positive fraction rounds to
    zero NOTA queries (the setting could not be honoured).
    """
    _check_na_rate(na_rate)
    _check_fraction(nota_fraction)
    if na_rate and nota_fraction:
        raise ValueError(
            f"give either na_rate (toolkit style, got {na_rate}) or nota_fraction "
            f"(got {nota_fraction}), not both"
        )
    if na_rate:
        return int(na_rate) * q_query
    if not nota_fraction:
        return 0
    count = math.floor(nota_fraction / (1.0 - nota_fraction) * n_way * q_query + 0.5)
    if count == 0:
        raise ValueError(
            f"nota_fraction={nota_fraction} gives 0 NOTA queries for n_way={n_way}, "
            f"q_query={q_query}; raise q_query or the fraction"
        )
    return count


def _check_na_rate(na_rate: Any) -> None:
    """The toolkit's na_rate is a whole multiple of Q; fractions go to nota_fraction."""
    if isinstance(na_rate, bool) or not isinstance(na_rate, numbers.Integral) or na_rate < 0:
        raise ValueError(
            f"na_rate must be a non-negative integer (NOTA queries = na_rate * q_query), "
            f"got {na_rate!r}; use nota_fraction for a share of the queries"
        )


def _check_fraction(nota_fraction: Any) -> None:
    """A NOTA share of 1 or more would need infinitely many NOTA queries."""
    if isinstance(nota_fraction, bool) or not isinstance(nota_fraction, numbers.Real):
        raise ValueError(f"nota_fraction must be a number in [0, 1), got {nota_fraction!r}")
    if not 0.0 <= float(nota_fraction) < 1.0:
        raise ValueError(f"nota_fraction must be in [0, 1), got {nota_fraction}")


def _check_count(name: str, value: Any, minimum: int) -> None:
    """Reject non-integers and values below ``minimum`` with a message naming the field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be a {kind} integer, got {value!r}")


class EpisodeSampler:
    """Deterministic FewRel episodes over a flat dataset, indexable and iterable.

    ``relations[r]`` is the relation of dataset row ``r``. Relations are ordered by first
    appearance, so a dataset built by walking a FewRel JSON file keeps the file's order.
    """

    def __init__(
        self,
        relations: Sequence[Hashable],
        n_way: int,
        k_shot: int,
        q_query: int = 1,
        na_rate: int = 0,
        *,
        nota_fraction: float = 0.0,
        zero_shot: bool = False,
        seed: int = 0,
        num_episodes: int = 1000,
    ) -> None:
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.na_rate, self.nota_fraction, self.zero_shot = na_rate, nota_fraction, zero_shot
        self.seed, self.num_episodes = seed, num_episodes
        self._check_sizes()
        self.relation_names, self._rows = _group_rows(relations)
        self.nota_queries = nota_query_count(n_way, q_query, na_rate, nota_fraction)
        self._check_against_data()
        self._counts = np.array([len(rows) for rows in self._rows], dtype=np.int64)

    @classmethod
    def from_setting(
        cls,
        relations: Sequence[Hashable],
        setting: EvalSetting | str,
        q_query: int = 1,
        *,
        seed: int = 0,
        num_episodes: int = 1000,
    ) -> EpisodeSampler:
        """Sampler for an evaluation setting such as ``5-1``, ``zs-5`` or ``nota-5-1-0.5``."""
        if isinstance(setting, str):
            setting = parse_setting(setting)
        return cls(
            relations,
            setting.n_way,
            setting.k_shot,
            q_query,
            nota_fraction=setting.nota_fraction,
            zero_shot=setting.zero_shot,
            seed=seed,
            num_episodes=num_episodes,
        )

    def _check_sizes(self) -> None:
        """Validate N, K, Q and the run length before touching the data."""
        _check_count("n_way", self.n_way, 1)
        _check_count("q_query", self.q_query, 1)
        _check_count("num_episodes", self.num_episodes, 1)
        _check_count("seed", self.seed, 0)
        if self.zero_shot:
            if self.k_shot != 0:
                raise ValueError(f"zero-shot episodes have no support set: k_shot must be 0, got {self.k_shot!r}")
        else:
            _check_count("k_shot", self.k_shot, 1)

    def _check_against_data(self) -> None:
        """Fail early, naming the shortfall, instead of deep inside numpy's sampler."""
        available = len(self.relation_names)
        if self.n_way > available:
            raise ValueError(f"n_way={self.n_way} but the dataset has only {available} relations")
        if self.nota_queries and self.n_way >= available:
            raise ValueError(
                f"NOTA queries need a relation outside the {self.n_way} drawn, but the dataset "
                f"has only {available} relations"
            )
        need = self.k_shot + self.q_query
        short = [(name, len(rows)) for name, rows in zip(self.relation_names, self._rows) if len(rows) < need]
        if short:
            listed = ", ".join(f"{name!r} has {count}" for name, count in short[:5])
            more = f" (and {len(short) - 5} more)" if len(short) > 5 else ""
            raise ValueError(
                f"k_shot + q_query = {need} instances per relation are needed, but relation "
                f"{listed}{more} instances"
            )

    @property
    def queries_per_episode(self) -> int:
        """``N * Q`` positive queries plus the NOTA ones."""
        return self.n_way * self.q_query + self.nota_queries

    def episode(self, index: int) -> Episode:
        """The ``index``-th episode: a pure function of ``(seed, index)``."""
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, index])
        drawn = rng.choice(len(self.relation_names), size=self.n_way, replace=False)
        support, query, labels = [], [], []
        for label, rel in enumerate(drawn):
            picks = rng.choice(self._counts[rel], size=self.k_shot + self.q_query, replace=False)
            rows = self._rows[rel][picks]
            support.append(tuple(int(r) for r in rows[: self.k_shot]))
            query.extend(int(r) for r in rows[self.k_shot :])
            labels.extend([label] * self.q_query)
        nota = self._nota_rows(rng, drawn)
        query.extend(nota)
        labels.extend([self.n_way] * len(nota))
        return Episode(
            relations=tuple(self.relation_names[int(r)] for r in drawn),
            support=tuple(support),
            query=tuple(query),
            query_labels=tuple(labels),
        )

    def _nota_rows(self, rng: np.random.Generator, drawn: np.ndarray) -> list[int]:
        """Toolkit NOTA: per query, a uniform other relation, then a uniform instance of it."""
        if not self.nota_queries:
            return []
        others = np.setdiff1d(np.arange(len(self.relation_names)), drawn)
        rels = others[rng.integers(len(others), size=self.nota_queries)]
        picks = rng.integers(0, self._counts[rels])
        return [int(self._rows[rel][pick]) for rel, pick in zip(rels, picks)]

    def _check_index(self, index: int) -> int:
        """Sequence-style index check (negative indices count from the end)."""
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"episode index must be an integer, got {index!r}")
        index = int(index)
        if index < 0:
            index += self.num_episodes
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode index out of range for {self.num_episodes} episodes")
        return index

    __getitem__ = episode

    def __len__(self) -> int:
        return self.num_episodes

    def __iter__(self) -> Iterator[Episode]:
        return (self.episode(i) for i in range(self.num_episodes))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_way={self.n_way}, k_shot={self.k_shot}, "
            f"q_query={self.q_query}, nota_queries={self.nota_queries}, "
            f"zero_shot={self.zero_shot}, seed={self.seed}, num_episodes={self.num_episodes}, "
            f"relations={len(self.relation_names)})"
        )


def _group_rows(relations: Sequence[Hashable]) -> tuple[tuple[Any, ...], list[np.ndarray]]:
    """Row indices per relation, relations in order of first appearance (hash-seed proof)."""
    groups: dict[Any, list[int]] = {}
    for row, relation in enumerate(relations):
        if relation is None or relation == "":
            raise ValueError(f"row {row} has no relation (unlabelled rows cannot be sampled; filter them out)")
        groups.setdefault(relation, []).append(row)
    if not groups:
        raise ValueError("the dataset is empty: no relations to sample episodes from")
    return tuple(groups), [np.asarray(rows, dtype=np.int64) for rows in groups.values()]


def row_relations(fewrel: Mapping[str, Sequence[Any]]) -> list[str]:
    """Relation of each row when a FewRel JSON object is flattened in file order.

    Row ``r`` is the ``r``-th instance met when walking relations, then their instances,
    in the file's order: the convention the sampler's row indices refer to.
    """
    return [relation for relation, instances in fewrel.items() for _ in instances]


# --------------------------------------------------------------------------- settings

_ACCEPTED = "N-K (e.g. 5-1, 10-5), zs-N (zero-shot, e.g. zs-5), nota-N-K-P with P in [0, 1) (e.g. nota-5-1-0.5)"
_FEW_SHOT = re.compile(r"(\d+)-(\d+)")
_ZERO_SHOT = re.compile(r"zs-(\d+)")
_NOTA = re.compile(r"nota-(\d+)-(\d+)-(\d*\.?\d+)")


@dataclass(frozen=True)
class EvalSetting:
    """A named evaluation setting: N-way, K-shot, NOTA share of queries, zero-shot flag."""

    name: str
    n_way: int
    k_shot: int
    nota_fraction: float = 0.0
    zero_shot: bool = False

    def __str__(self) -> str:
        return self.name


def parse_setting(s: str) -> EvalSetting:
    """Parse ``5-1``, ``10-5``, ``zs-5`` or ``nota-5-1-0.5`` into an :class:`EvalSetting`."""
    name = s.strip() if isinstance(s, str) else s
    if not isinstance(name, str):
        raise ValueError(f"setting must be a string, got {s!r}; accepted forms: {_ACCEPTED}")
    setting = _match_setting(name)
    if setting is None:
        raise ValueError(f"unknown evaluation setting {s!r}; accepted forms: {_ACCEPTED}")
    if setting.n_way < 1:
        raise ValueError(f"setting {s!r}: N must be >= 1; accepted forms: {_ACCEPTED}")
    if setting.k_shot < 1 and not setting.zero_shot:
        raise ValueError(f"setting {s!r}: K must be >= 1 (zero-shot is zs-N); accepted forms: {_ACCEPTED}")
    if not 0.0 <= setting.nota_fraction < 1.0:
        raise ValueError(f"setting {s!r}: the NOTA fraction must be in [0, 1); accepted forms: {_ACCEPTED}")
    return setting


def _match_setting(name: str) -> EvalSetting | None:
    """The setting a string spells, unvalidated, or None when it has no known form."""
    if m := _FEW_SHOT.fullmatch(name):
        return EvalSetting(name, int(m[1]), int(m[2]))
    if m := _ZERO_SHOT.fullmatch(name):
        return EvalSetting(name, int(m[1]), 0, zero_shot=True)
    if m := _NOTA.fullmatch(name):
        return EvalSetting(name, int(m[1]), int(m[2]), nota_fraction=float(m[3]))
    return None


def parse_settings(s: str) -> list[EvalSetting]:
    """Parse a comma-separated list such as ``"5-1,5-5,zs-5"``."""
    items = [item.strip() for item in s.split(",")]
    if any(not item for item in items):
        raise ValueError(f"empty item in setting list {s!r}; accepted forms: {_ACCEPTED}")
    return [parse_setting(item) for item in items]


# --------------------------------------------------------------------------- leaderboard


def load_test_episodes(path: str | os.PathLike[str]) -> list[dict]:
    """Read and validate a FewRel leaderboard test file (e.g. ``test_wiki_input-5-1.json``).

    The file is a JSON list of episodes ``{"meta_train": [[instance] * K] * N,
    "meta_test": instance, "relation": [N relation ids]}``; the answer for an episode is
    the index into ``meta_train`` / ``relation`` (or N for none-of-the-above in the NOTA
    files). All episodes must share N and K. Errors name the file, episode and field.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        episodes = json.load(f)
    if not isinstance(episodes, list) or not episodes:
        raise ValueError(f"{path}: expected a non-empty JSON list of episodes, got {type(episodes).__name__}")
    shape = None
    for i, episode in enumerate(episodes):
        episode_shape = _check_test_episode(episode, f"{path}: episode {i}")
        if shape is not None and episode_shape != shape:
            raise ValueError(
                f"{path}: episode {i}: field 'meta_train' is {episode_shape[0]}-way "
                f"{episode_shape[1]}-shot but episode 0 is {shape[0]}-way {shape[1]}-shot"
            )
        shape = episode_shape
    return episodes


def _check_test_episode(episode: Any, where: str) -> tuple[int, int]:
    """Validate one leaderboard episode; return its (N, K)."""
    if not isinstance(episode, dict):
        raise ValueError(f"{where}: expected an object, got {type(episode).__name__}")
    for field in ("meta_train", "meta_test", "relation"):
        if field not in episode:
            raise ValueError(f"{where}: missing field '{field}'")
    support = episode["meta_train"]
    if not isinstance(support, list) or not support:
        raise ValueError(f"{where}: field 'meta_train' must be a non-empty list of N lists of K instances")
    k_shot = None
    for j, shots in enumerate(support):
        if not isinstance(shots, list) or not shots or (k_shot is not None and len(shots) != k_shot):
            raise ValueError(f"{where}: field 'meta_train'[{j}] must be a list of K={k_shot or '>=1'} instances")
        k_shot = len(shots)
        for k, instance in enumerate(shots):
            _check_instance(instance, f"{where}: field 'meta_train'[{j}][{k}]")
    _check_instance(episode["meta_test"], f"{where}: field 'meta_test'")
    relation = episode["relation"]
    if not isinstance(relation, list) or len(relation) != len(support):
        raise ValueError(f"{where}: field 'relation' must list {len(support)} relation ids, one per 'meta_train' entry")
    if not all(isinstance(r, str) for r in relation):
        raise ValueError(f"{where}: field 'relation' must hold relation id strings")
    return len(support), k_shot


def _check_instance(instance: Any, where: str) -> None:
    """An instance has tokens and head/tail entities whose first mention indexes the tokens."""
    if not isinstance(instance, dict):
        raise ValueError(f"{where}: expected an instance object, got {type(instance).__name__}")
    tokens = instance.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{where}: 'tokens' must be a non-empty list of strings")
    for key in ("h", "t"):
        entity = instance.get(key)
        mentions = entity[2] if isinstance(entity, list) and len(entity) >= 3 else None
        first = mentions[0] if isinstance(mentions, list) and mentions else None
        if not isinstance(first, list) or not first or not all(_is_token_index(p, len(tokens)) for p in first):
            raise ValueError(
                f"{where}: '{key}' must be [name, id, [[token indices]]] with indices into the "
                f"{len(tokens)} tokens"
            )


def _is_token_index(position: Any, n_tokens: int) -> bool:
    return isinstance(position, int) and not isinstance(position, bool) and 0 <= position < n_tokens


def prediction_filename(n_way: int, k_shot: int) -> str:
    """The leaderboard's prediction file name, e.g. ``pred-5-1.json``."""
    return f"pred-{n_way}-{k_shot}.json"


def write_predictions(predictions: Sequence[int], path: str | os.PathLike[str], *, n_way: int | None = None) -> Path:
    """Write leaderboard predictions: a JSON list with one label index per test episode.

    Name the file ``prediction_filename(N, K)`` (``pred-5-1.json``) for submission. With
    ``n_way`` set, labels must lie in ``0..n_way`` (``n_way`` meaning none-of-the-above).
    """
    labels = [_as_label(p, i, n_way) for i, p in enumerate(predictions)]
    if not labels:
        raise ValueError("no predictions to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(labels), encoding="utf-8")
    return path


def _as_label(value: Any, index: int, n_way: int | None) -> int:
    """Plain int label (numpy/torch integers accepted), range-checked when N is known."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"prediction {index} must be a non-negative integer label, got {value!r}")
    if n_way is not None and value > n_way:
        raise ValueError(f"prediction {index} is {value}, outside 0..{n_way} (N={n_way}, N meaning NOTA)")
    return int(value)


# --------------------------------------------------------------------------- statistics


def mean_and_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width ``1.96 * std / sqrt(n)`` (sample std, ddof=1).

    The FewRel literature reports per-episode accuracy as mean +- this half-width. With a
    single value the spread is unknown and the half-width is NaN.
    """
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError("mean_and_ci95 needs at least one value")
    mean = float(array.mean())
    if array.size == 1:
        return mean, float("nan")
    return mean, float(1.96 * array.std(ddof=1) / math.sqrt(array.size))
