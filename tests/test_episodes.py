"""Tests for FewRel episodes, settings, leaderboard I/O and the local accuracy metric."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from modeling_sacon.data.episodes import (
    Episode,
    EpisodeSampler,
    EvalSetting,
    load_test_episodes,
    mean_and_ci95,
    nota_query_count,
    parse_setting,
    parse_settings,
    prediction_filename,
    row_relations,
    write_predictions,
)
from modeling_sacon.metrics import FEWREL_ACCURACY_PATH

REPO_ROOT = Path(__file__).resolve().parents[1]

# 8 relations x 20 rows, interleaved so a relation's rows are not contiguous.
SYNTH = [f"P{row % 8}" for row in range(160)]


def _as_json(episodes: list[Episode]) -> list[dict]:
    """Episodes as the JSON a subprocess would print (tuples become lists)."""
    return json.loads(json.dumps([dataclasses.asdict(e) for e in episodes]))


def _check_episode(episode: Episode, relations: list[str], n: int, k: int, q: int, n_nota: int) -> None:
    """Shape, disjointness, label range and relation membership of one episode."""
    assert len(episode.relations) == len(set(episode.relations)) == n
    assert len(episode.support) == n and all(len(s) == k for s in episode.support)
    assert len(episode.query) == len(episode.query_labels) == n * q + n_nota
    positives = [row for shots in episode.support for row in shots]
    positives += [row for row, label in zip(episode.query, episode.query_labels) if label < n]
    assert len(positives) == len(set(positives)), "support and query overlap"
    for label, shots in enumerate(episode.support):
        assert all(relations[row] == episode.relations[label] for row in shots)
    assert Counter(episode.query_labels) == Counter({**{j: q for j in range(n)}, **({n: n_nota} if n_nota else {})})
    for row, label in zip(episode.query, episode.query_labels):
        assert 0 <= label <= n
        if label < n:
            assert relations[row] == episode.relations[label]
        else:
            assert relations[row] not in episode.relations, "NOTA query from a drawn relation"


# ----------------------------------------------------------------------------- fresh processes

_PROBE = r"""
import dataclasses, json, random, socket, sys, time

attempts = []
def _blocked(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network disabled by test")
socket.socket.connect = _blocked
socket.create_connection = _blocked
socket.getaddrinfo = _blocked

global_seed, reverse, out = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
import numpy as np, torch
random.seed(global_seed); np.random.seed(global_seed); torch.manual_seed(global_seed)
random.random(); np.random.rand(); torch.rand(1)

from modeling_sacon.data.episodes import EpisodeSampler
sampler = EpisodeSampler([f"P{r % 8}" for r in range(160)], 5, 2, 3, na_rate=1, seed=11, num_episodes=40)
order = range(39, -1, -1) if reverse else range(40)
drawn = {i: dataclasses.asdict(sampler.episode(i)) for i in order}

from modeling_sacon.metrics import load_fewrel_accuracy
start = time.monotonic()
metric = load_fewrel_accuracy()
load_s = time.monotonic() - start
results = {
    "pooled": metric.compute(predictions=[0, 1, 2, 3, 1, 1, 1, 1, 5, 0, 5, 2],
                             references=[0, 1, 2, 0, 1, 1, 1, 1, 5, 1, 5, 3]),
    "episodes": metric.compute(predictions=[0, 1, 2, 3, 1, 1, 1, 1, 5, 0, 5, 2],
                               references=[0, 1, 2, 0, 1, 1, 1, 1, 5, 1, 5, 3],
                               episode_ids=[0] * 4 + [1] * 4 + [2] * 4),
    "unequal": metric.compute(predictions=[1, 0, 0, 0], references=[1, 0, 1, 1],
                              episode_ids=["a", "b", "b", "b"]),
}
with open(out, "w") as f:
    json.dump({"episodes": [drawn[i] for i in range(40)], "load_s": load_s,
               "attempts": attempts, "results": results}, f)
"""

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE")


def _probe_env(tmp: Path, offline: bool, hash_seed: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OFFLINE_VARS}
    if offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    pythonpath = [str(REPO_ROOT), env.get("PYTHONPATH", "")]
    env.update(HF_HOME=str(tmp / "hf"), PYTHONHASHSEED=hash_seed, PYTHONPATH=os.pathsep.join(filter(None, pythonpath)))
    return env


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Run two fresh interpreters at once: offline vars set / unset, other global seeds.

    Both sample episodes (different global seeds, hash seeds and iteration order) and load
    the metric by path with sockets disabled. They run concurrently because importing
    `evaluate` alone takes seconds.
    """
    tmp = tmp_path_factory.mktemp("probes")
    runs = {"offline": ("1", "0", True, "0"), "online": ("2", "1", False, "12345")}
    procs = {}
    for name, (seed, reverse, offline, hash_seed) in runs.items():
        out = tmp / f"{name}.json"
        cmd = [sys.executable, "-c", _PROBE, seed, reverse, str(out)]
        procs[name] = (subprocess.Popen(cmd, cwd=tmp, env=_probe_env(tmp, offline, hash_seed),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out)
    results = {}
    for name, (proc, out) in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name} probe failed:\n{stderr[-3000:]}"
        results[name] = json.loads(out.read_text())
    return results


def test_same_seed_same_episodes_across_processes(probes: dict[str, dict]) -> None:
    here = EpisodeSampler(SYNTH, 5, 2, 3, na_rate=1, seed=11, num_episodes=40)
    expected = _as_json(list(here))
    assert probes["offline"]["episodes"] == expected
    assert probes["online"]["episodes"] == expected


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_metric_loads_by_path_without_network(probes: dict[str, dict], mode: str) -> None:
    assert probes[mode]["attempts"] == [], "evaluate.load tried to reach the network"


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_metric_hand_checked(probes: dict[str, dict], mode: str) -> None:
    results = probes[mode]["results"]
    # Episodes: 3/4, 4/4, 2/4 correct -> mean 0.75, sample std 0.25.
    assert results["pooled"] == {"accuracy": 0.75}
    assert results["episodes"]["accuracy"] == pytest.approx(0.75)
    assert results["episodes"]["ci95"] == pytest.approx(1.96 * 0.25 / math.sqrt(3))
    assert results["episodes"]["episodes"] == 3
    assert (results["episodes"]["accuracy"], results["episodes"]["ci95"]) == pytest.approx(
        mean_and_ci95([0.75, 1.0, 0.5])
    )
    # Unequal episodes: per-episode mean (1 + 1/3) / 2, not the pooled 2/4.
    assert results["unequal"]["accuracy"] == pytest.approx(2 / 3)
    assert results["unequal"]["ci95"] == pytest.approx(1.96 / 3)
    assert results["unequal"]["episodes"] == 2


def test_metric_files_ship_with_package() -> None:
    assert (FEWREL_ACCURACY_PATH / "fewrel_accuracy.py").is_file()
    assert (FEWREL_ACCURACY_PATH / "README.md").is_file()


# ----------------------------------------------------------------------------- determinism


def test_global_rng_state_neither_matters_nor_changes() -> None:
    torch = pytest.importorskip("torch")
    sampler = EpisodeSampler(SYNTH, 5, 2, 3, na_rate=1, seed=11, num_episodes=20)
    runs = []
    for global_seed in (1, 2):
        random.seed(global_seed)
        np.random.seed(global_seed)
        torch.manual_seed(global_seed)
        before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
        runs.append(list(sampler))
        assert random.getstate() == before[0]
        assert np.array_equal(np.random.get_state()[1], before[1])
        assert torch.equal(torch.get_rng_state(), before[2])
    assert runs[0] == runs[1]


def test_episode_is_pure_function_of_seed_and_index() -> None:
    a = EpisodeSampler(SYNTH, 5, 1, 2, seed=3, num_episodes=30)
    b = EpisodeSampler(SYNTH, 5, 1, 2, seed=3, num_episodes=100)
    assert [a.episode(i) for i in reversed(range(30))][::-1] == list(a) == list(b)[:30]
    assert a[-1] == a.episode(29) and len(a) == 30
    assert list(EpisodeSampler(SYNTH, 5, 1, 2, seed=4, num_episodes=30)) != list(a)
    assert len({e.relations for e in a}) > 1, "episodes should differ from each other"
    with pytest.raises(IndexError):
        a.episode(30)


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    ("n", "k", "q", "na_rate", "fraction", "n_nota"),
    [(5, 1, 1, 0, 0.0, 0), (7, 5, 3, 0, 0.0, 0), (5, 2, 3, 2, 0.0, 6), (5, 1, 1, 0, 0.5, 5), (3, 2, 2, 0, 0.3, 3)],
)
def test_episode_structure(n: int, k: int, q: int, na_rate: int, fraction: float, n_nota: int) -> None:
    sampler = EpisodeSampler(SYNTH, n, k, q, na_rate, nota_fraction=fraction, seed=5, num_episodes=50)
    assert sampler.nota_queries == n_nota
    assert sampler.queries_per_episode == n * q + n_nota
    for episode in sampler:
        _check_episode(episode, SYNTH, n, k, q, n_nota)
        assert episode.nota_label == n


def test_nota_queries_cover_outside_relations() -> None:
    sampler = EpisodeSampler(SYNTH, 5, 1, 1, na_rate=5, seed=0, num_episodes=200)
    nota_relations = Counter(
        SYNTH[row] for e in sampler for row, label in zip(e.query, e.query_labels) if label == e.nota_label
    )
    assert set(nota_relations) == set(SYNTH), "every relation should serve as NOTA sometime"


@pytest.mark.parametrize(
    ("n", "q", "na_rate", "fraction", "expected"),
    [
        (5, 1, 1, 0.0, 1),
        (5, 1, 2, 0.0, 2),
        (5, 1, 5, 0.0, 5),
        (5, 3, 2, 0.0, 6),
        (5, 1, 0, 0.15, 1),  # same as the toolkit's na_rate=1 ("15%")
        (5, 1, 0, 0.3, 2),  # na_rate=2 ("30%")
        (5, 1, 0, 0.5, 5),  # na_rate=5 ("50%"), our nota-5-1-0.5
        (10, 2, 0, 0.5, 20),
        (5, 1, 0, 0.0, 0),
    ],
)
def test_nota_query_count(n: int, q: int, na_rate: int, fraction: float, expected: int) -> None:
    assert nota_query_count(n, q, na_rate, fraction) == expected


def test_nota_fraction_is_share_of_queries() -> None:
    sampler = EpisodeSampler.from_setting(SYNTH, "nota-5-1-0.5", q_query=2, seed=1, num_episodes=10)
    for episode in sampler:
        labels = episode.query_labels
        assert labels.count(5) / len(labels) == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"na_rate": 1, "nota_fraction": 0.5}, "either na_rate"),
        ({"na_rate": 1.5}, "non-negative integer"),
        ({"na_rate": -1}, "non-negative integer"),
        ({"nota_fraction": 1.0}, r"\[0, 1\)"),
        ({"nota_fraction": 0.01}, "gives 0 NOTA queries"),
    ],
)
def test_bad_nota_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EpisodeSampler(SYNTH, 5, 1, 1, **kwargs)


def test_zero_shot_episodes() -> None:
    sampler = EpisodeSampler.from_setting(SYNTH, "zs-5", q_query=2, seed=0, num_episodes=10)
    for episode in sampler:
        assert episode.support == ((),) * 5
        _check_episode(episode, SYNTH, 5, 0, 2, 0)


# ----------------------------------------------------------------------------- errors


def test_n_way_larger_than_relations() -> None:
    with pytest.raises(ValueError, match="n_way=9 but the dataset has only 8 relations"):
        EpisodeSampler(SYNTH, 9, 1)


def test_k_plus_q_larger_than_relation() -> None:
    relations = SYNTH + ["small"] * 3
    with pytest.raises(ValueError, match=r"k_shot \+ q_query = 4 .*'small' has 3"):
        EpisodeSampler(relations, 5, 2, 2)


def test_nota_needs_outside_relation() -> None:
    with pytest.raises(ValueError, match="outside the 8 drawn.*only 8 relations"):
        EpisodeSampler(SYNTH, 8, 1, na_rate=1)
    EpisodeSampler(SYNTH, 8, 1)  # fine without NOTA


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0, 1), {}, "n_way must be a positive"),
        ((-2, 1), {}, "n_way must be a positive"),
        ((5, 0), {}, "k_shot must be a positive"),
        ((5, -1), {}, "k_shot must be a positive"),
        ((5, 1, 0), {}, "q_query must be a positive"),
        ((5, 1), {"zero_shot": True}, "k_shot must be 0"),
        ((5, 1), {"seed": -1}, "seed must be"),
        ((5, 1), {"num_episodes": 0}, "num_episodes must be"),
    ],
)
def test_bad_sizes(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EpisodeSampler(SYNTH, *args, **kwargs)


def test_empty_dataset() -> None:
    with pytest.raises(ValueError, match="empty"):
        EpisodeSampler([], 5, 1)


def test_unlabelled_rows_rejected() -> None:
    with pytest.raises(ValueError, match="row 160 has no relation"):
        EpisodeSampler(SYNTH + [""], 5, 1)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5-1", EvalSetting("5-1", 5, 1)),
        ("10-5", EvalSetting("10-5", 10, 5)),
        ("zs-5", EvalSetting("zs-5", 5, 0, zero_shot=True)),
        ("nota-5-1-0.5", EvalSetting("nota-5-1-0.5", 5, 1, nota_fraction=0.5)),
        (" nota-5-5-0.15 ", EvalSetting("nota-5-5-0.15", 5, 5, nota_fraction=0.15)),
    ],
)
def test_parse_setting(text: str, expected: EvalSetting) -> None:
    assert parse_setting(text) == expected


def test_parse_settings() -> None:
    assert [s.name for s in parse_settings("5-1, 5-5,zs-5")] == ["5-1", "5-5", "zs-5"]


@pytest.mark.parametrize("text", ["", "5", "5-1-1", "five-one", "zs-0", "0-1", "5-0", "nota-5-1-1", "nota-5-1", "5-1,"])
def test_bad_setting_strings(text: str) -> None:
    parse = parse_settings if "," in text else parse_setting
    with pytest.raises(ValueError, match="accepted forms: N-K .* zs-N .* nota-N-K-P"):
        parse(text)


def test_sampler_from_setting_matches_toolkit_na_rate() -> None:
    by_fraction = EpisodeSampler.from_setting(SYNTH, "nota-5-1-0.5", seed=9, num_episodes=20)
    by_rate = EpisodeSampler(SYNTH, 5, 1, 1, na_rate=5, seed=9, num_episodes=20)
    assert list(by_fraction) == list(by_rate)


# ----------------------------------------------------------------------------- real data


# `data_dir` (conftest.py): SACON_DATA_DIR or ../shared/data; skipped when missing, failed under CI=true.


@pytest.fixture(scope="module")
def wiki_rows(val_wiki: dict[str, list[dict]]) -> list[str]:
    """Relation of each row of val_wiki.json, flattened in file order."""
    return row_relations(val_wiki)


@pytest.mark.parametrize(
    ("setting", "q", "n_nota"), [("5-1", 1, 0), ("10-5", 2, 0), ("nota-5-1-0.5", 1, 5), ("zs-5", 3, 0)]
)
def test_real_val_wiki(wiki_rows: list[str], setting: str, q: int, n_nota: int) -> None:
    assert len(wiki_rows) == 16 * 700
    parsed = parse_setting(setting)
    sampler = EpisodeSampler.from_setting(wiki_rows, parsed, q_query=q, seed=0, num_episodes=200)
    for episode in sampler:
        _check_episode(episode, wiki_rows, parsed.n_way, parsed.k_shot, q, n_nota)


def test_real_val_pubmed_too_few_instances(data_dir: Path) -> None:
    relations = row_relations(json.loads((data_dir / "fewrel" / "val_pubmed.json").read_text(encoding="utf-8")))
    with pytest.raises(ValueError, match=r"relation '\w+' has 100"):
        EpisodeSampler(relations, 5, 50, 51)
    with pytest.raises(ValueError, match="only 10 relations"):
        EpisodeSampler(relations, 11, 1)


# ----------------------------------------------------------------------------- statistics


def test_mean_and_ci95() -> None:
    mean, ci = mean_and_ci95([0.5, 1.0, 0.75])
    assert mean == pytest.approx(0.75)
    assert ci == pytest.approx(1.96 * 0.25 / math.sqrt(3))
    assert math.isnan(mean_and_ci95([0.8])[1])
    with pytest.raises(ValueError):
        mean_and_ci95([])


# ----------------------------------------------------------------------------- leaderboard


def _instance(words: str, head: int, tail: int) -> dict:
    tokens = words.split()
    return {"tokens": tokens, "h": [tokens[head], "Q1", [[head]]], "t": [tokens[tail], "Q2", [[tail]]]}


def _test_episode(n: int = 3, k: int = 2) -> dict:
    support = [[_instance(f"a{j} b c{s}", 0, 2) for s in range(k)] for j in range(n)]
    return {"meta_train": support, "meta_test": _instance("x y z", 0, 1), "relation": [f"P{j}" for j in range(n)]}


def test_leaderboard_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "test_wiki_input-3-2.json"
    source.write_text(json.dumps([_test_episode(), _test_episode()]), encoding="utf-8")
    episodes = load_test_episodes(source)
    assert len(episodes) == 2 and episodes[1]["relation"] == ["P0", "P1", "P2"]
    n, k = len(episodes[0]["meta_train"]), len(episodes[0]["meta_train"][0])
    out = write_predictions([np.int64(2), 0], tmp_path / prediction_filename(n, k), n_way=n)
    assert out.name == "pred-3-2.json"
    assert json.loads(out.read_text()) == [2, 0]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda e: e.pop("meta_test"), "episode 1: missing field 'meta_test'"),
        (lambda e: e.pop("relation"), "episode 1: missing field 'relation'"),
        (lambda e: e["relation"].pop(), "episode 1: field 'relation'"),
        (lambda e: e["meta_train"][1].pop(), r"episode 1: field 'meta_train'\[1\]"),
        (lambda e: e["meta_test"]["h"].__setitem__(2, [[7]]), "episode 1: field 'meta_test': 'h'"),
        (lambda e: e["meta_train"][0][1].pop("tokens"), r"episode 1: field 'meta_train'\[0\]\[1\]: 'tokens'"),
    ],
)
def test_leaderboard_validation(tmp_path: Path, mutate, match: str) -> None:
    bad = _test_episode()
    mutate(bad)
    source = tmp_path / "broken.json"
    source.write_text(json.dumps([_test_episode(), bad]), encoding="utf-8")
    with pytest.raises(ValueError, match=f"broken.json: {match}"):
        load_test_episodes(source)


def test_leaderboard_shape_mismatch(tmp_path: Path) -> None:
    source = tmp_path / "mixed.json"
    source.write_text(json.dumps([_test_episode(3, 2), _test_episode(3, 1)]), encoding="utf-8")
    with pytest.raises(ValueError, match="mixed.json: episode 1: field 'meta_train' is 3-way 1-shot"):
        load_test_episodes(source)


def test_write_predictions_rejects_bad_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prediction 1 is 6, outside 0..5"):
        write_predictions([5, 6], tmp_path / "pred-5-1.json", n_way=5)
    with pytest.raises(ValueError, match="prediction 0 must be a non-negative integer"):
        write_predictions([0.5], tmp_path / "pred-5-1.json")
    with pytest.raises(ValueError, match="no predictions"):
        write_predictions([], tmp_path / "pred-5-1.json")
