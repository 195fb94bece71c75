"""Tests for modeling_sacon.data on the real shared data files (never copied into the repo)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from modeling_sacon.data import (
    DATA_DIR_ENV,
    INSTANCE_FEATURES,
    DataFormatError,
    EvaluationLeakageError,
    RelationBalancedBatchSampler,
    UnknownRelationError,
    balanced_batch_shape,
    development_data_dir,
    get_data_dir,
    hf_few_rel_label_table,
    label_texts,
    load_fewrel_json,
    load_hf_few_rel,
    load_label_table,
    load_pretraining_corpus,
    resolve_data_path,
)
from modeling_sacon.data.protocol import FEWREL_EVAL_RELATIONS

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared_data() -> Path:
    """The shared data dir; missing data skips locally but fails under CI=true."""
    try:
        return get_data_dir()
    except FileNotFoundError as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data required in CI: {err}")
        pytest.skip(f"shared data not available: {err}")


@pytest.fixture(scope="module")
def val_wiki_ds(shared_data: Path) -> datasets.Dataset:
    return load_fewrel_json(shared_data / "fewrel/val_wiki.json")


@pytest.fixture(scope="module")
def corpus(shared_data: Path) -> tuple[datasets.Dataset, dict[str, tuple[str, str]]]:
    """The earlier embedded corpus, v1 (its composition is checked here; v2's in test_transfer.py). It holds P1056, a
    FewRel 2.0 NYT relation, so the strict check refuses it unless allowed."""
    with pytest.raises(EvaluationLeakageError, match=r"\['P1056'\] \(FewRel 2.0 val_nyt: P1056\)"):
        load_pretraining_corpus(shared_data, corpus="v1")
    return load_pretraining_corpus(shared_data, corpus="v1", allow_eval_relations=True)


def _raw(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _instance(tokens: list[str] | None = None, h=None, t=None) -> dict:
    tokens = tokens or ["Alice", "visited", "Paris", "."]
    return {
        "tokens": tokens,
        "h": h or ["alice", "Q1", [[0]]],
        "t": t or ["paris", "Q90", [[2]]],
    }


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- locations


def test_data_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert get_data_dir() == tmp_path.resolve()
    (tmp_path / "x.json").write_text("{}")
    assert resolve_data_path("x.json") == tmp_path.resolve() / "x.json"
    assert resolve_data_path(tmp_path / "absent.json") == tmp_path / "absent.json"
    with pytest.raises(FileNotFoundError, match="absent.json"):
        resolve_data_path("absent.json")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=DATA_DIR_ENV):
        get_data_dir()


def test_data_dir_is_explicit_and_its_absence_says_where_data_come_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ../shared/data guess in the library: an explicit directory wins over SACON_DATA_DIR, and without either the
    error names the Hub dataset and the push command."""
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    (tmp_path / "x.json").write_text("{}")
    assert get_data_dir(tmp_path) == tmp_path.resolve()
    assert resolve_data_path("x.json", tmp_path) == tmp_path.resolve() / "x.json"
    monkeypatch.delenv(DATA_DIR_ENV)
    for call in (get_data_dir, lambda: resolve_data_path("fewrel/pid2name.json")):
        with pytest.raises(FileNotFoundError, match="no data directory given") as err:
            call()
        assert "thunlp/few_rel" in str(err.value) and "examples/push_corpus.py" in str(err.value)
    with pytest.raises(FileNotFoundError, match="data_dir='nowhere' is not an existing directory"):
        get_data_dir("nowhere")


def test_examples_default_data_dir_is_the_env_or_the_folder_beside_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The examples' default: $SACON_DATA_DIR when set, else `shared/data` beside the checkout holding the script."""
    script = tmp_path / "checkout" / "examples" / "pretrain.py"
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert development_data_dir(script) == str(tmp_path.resolve() / "shared" / "data")
    monkeypatch.setenv(DATA_DIR_ENV, "/elsewhere")
    assert development_data_dir(script) == "/elsewhere"


# --------------------------------------------------------------------------- real files


def test_val_wiki_counts_and_schema(val_wiki_ds: datasets.Dataset) -> None:
    assert val_wiki_ds.features == INSTANCE_FEATURES
    counts = Counter(val_wiki_ds["relation"])
    assert len(counts) == 16
    assert set(counts.values()) == {700}
    assert len(val_wiki_ds) == 11_200


def test_mention_zero_indices_known_instances(val_wiki_ds: datasets.Dataset, shared_data: Path) -> None:
    first = val_wiki_ds[0]  # val_wiki.json P177 instance 0
    assert first["relation"] == "P177"
    assert first["head"] == {"name": "cape girardeau bridge", "id": "Q5034838", "indices": [26, 27, 28]}
    assert first["tail"] == {"name": "mississippi river", "id": "Q1497", "indices": [19, 20]}
    assert first["tokens"][26:29] == ["Cape", "Girardeau", "Bridge"]

    # docred P22 instance 41 has two mentions of each entity: only mention 0 is kept.
    docred = load_fewrel_json(shared_data / "pretrain/docred_sentences.json")
    p22 = docred.filter(lambda r: r == "P22", input_columns="relation")
    row = p22[41]
    assert _raw(shared_data / "pretrain/docred_sentences.json")["P22"][41]["h"][2] == [[15, 16], [62, 63]]
    assert row["head"]["indices"] == [15, 16]
    assert row["tail"]["indices"] == [22]
    assert [row["tokens"][i] for i in row["head"]["indices"]] == ["Li", "Mao"]


def test_pretraining_corpus_counts(corpus, shared_data: Path) -> None:
    dataset, labels = corpus
    docred = _raw(shared_data / "pretrain/docred_sentences.json")
    sample = _raw(shared_data / "fewrel_train_sample/train_wiki_sample.json")
    assert sum(map(len, docred.values())) == 8_475  # pretrain/SOURCE.md
    assert sum(map(len, sample.values())) == 7_854  # fewrel_train_sample/SOURCE.md
    assert len(dataset) == 8_475 + 7_854

    overlap = set(docred) & set(sample)
    expected_relations = len(docred) + len(sample) - len(overlap)
    assert (len(docred), len(sample)) == (53, 64)
    assert len(overlap) == 35  # "35 of the 53 relations are among FewRel 1.0's 64" (SOURCE.md)
    counts = Counter(dataset["relation"])
    assert len(counts) == expected_relations
    for relation in overlap:
        assert counts[relation] == len(docred[relation]) + len(sample[relation])
    assert counts["P131"] == len(docred["P131"]) + len(sample.get("P131", []))

    assert set(labels) == set(counts)
    assert labels["P569"][0] == "date of birth"  # one of the 7 only in labels.json
    assert all(name for name, _ in labels.values())
    assert not set(counts) & set(_raw(shared_data / "fewrel/val_wiki.json"))
    assert set(counts) & FEWREL_EVAL_RELATIONS.keys() == {"P1056"}


def test_merging_two_files(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", {"P1": [_instance()], "P2": [_instance(), _instance()]})
    b = _write(tmp_path / "b.json", {"P2": [_instance(["Bob", "in", "Rome"], ["bob", "", [[0]]], ["rome", "", [[2]]])],
                                     "P3": [_instance()]})
    merged = load_fewrel_json([a, b])
    assert merged["relation"] == ["P1", "P2", "P2", "P2", "P3"]
    assert merged[3]["tokens"] == ["Bob", "in", "Rome"]  # b's P2 instance follows a's
    assert len(load_fewrel_json(str(a))) == 3


# --------------------------------------------------------------------------- HF few_rel


def _hf_split(rows: list[dict]) -> datasets.Dataset:
    from modeling_sacon.data.hub import FEW_REL_FEATURES

    return datasets.Dataset.from_list(rows, features=FEW_REL_FEATURES, split="val_wiki")


def _hf_row(relation="P931", head_idx=((4,), (6,)), names=("place served by transport hub", "desc")) -> dict:
    return {
        "relation": relation,
        "tokens": ["Merpati", "flight", "106", "departed", "Jakarta", "(", "CGK", ")", "."],
        "head": {"text": "jakarta", "type": "Q3630", "indices": [list(m) for m in head_idx]},
        "tail": {"text": "cgk", "type": "Q1044", "indices": [[6]]},
        "names": list(names),
    }


def test_hf_few_rel_conversion() -> None:
    split = _hf_split([_hf_row(), _hf_row("ingredient_of", head_idx=((0, 1),), names=("ingredient_of",))])
    converted = load_hf_few_rel(split)
    assert converted.features == INSTANCE_FEATURES
    assert converted[0] == {
        "tokens": split[0]["tokens"],
        "head": {"name": "jakarta", "id": "Q3630", "indices": [4]},  # mention 0 only
        "tail": {"name": "cgk", "id": "Q1044", "indices": [6]},
        "relation": "P931",
    }
    assert converted[1]["head"]["indices"] == [0, 1]
    assert hf_few_rel_label_table(split) == {"P931": ("place served by transport hub", "desc")}


def test_hf_few_rel_matches_json_loader(tmp_path: Path) -> None:
    raw = {"P1": [_instance(h=["alice", "Q1", [[0], [3]]])]}
    from_json = load_fewrel_json(_write(tmp_path / "x.json", raw))
    inst = raw["P1"][0]
    hf = _hf_split([{
        "relation": "P1",
        "tokens": inst["tokens"],
        "head": {"text": inst["h"][0], "type": inst["h"][1], "indices": inst["h"][2]},
        "tail": {"text": inst["t"][0], "type": inst["t"][1], "indices": inst["t"][2]},
        "names": ["n", "d"],
    }])
    assert load_hf_few_rel(hf).to_list() == from_json.to_list()


def test_hf_few_rel_errors() -> None:
    with pytest.raises(DataFormatError, match=r"relation 'P931', instance 1, field 'head'.*index 99"):
        load_hf_few_rel(_hf_split([_hf_row(), _hf_row(head_idx=((99,),))]))
    with pytest.raises(DataFormatError, match=r"instance 0, field 'head'.*mention list is empty"):
        load_hf_few_rel(_hf_split([_hf_row(head_idx=())]))
    with pytest.raises(DataFormatError, match="missing column"):
        load_hf_few_rel(datasets.Dataset.from_dict({"relation": ["P1"]}))


# --------------------------------------------------------------------------- bad input


def test_malformed_json_names_file_and_position(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"P1": [\n  {"tokens": ["a",]\n]}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: malformed JSON at line 2, column \d+") as info:
        load_fewrel_json(bad)
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def test_top_level_must_be_object(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"list\.json: top level must be a JSON object"):
        load_fewrel_json(_write(tmp_path / "list.json", [_instance()]))


def test_duplicate_relation_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"P1": [], "P1": []}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"dup\.json: duplicate key 'P1'"):
        load_fewrel_json(path)


def test_missing_h_names_file_relation_index(tmp_path: Path) -> None:
    no_h = _instance()
    del no_h["h"]
    path = _write(tmp_path / "noh.json", {"P1": [_instance(), _instance()], "P2": [_instance(), no_h]})
    with pytest.raises(ValueError, match=r"noh\.json: relation 'P2', instance 1, field 'h': missing"):
        load_fewrel_json(path)


@pytest.mark.parametrize(
    ("instance", "message"),
    [
        (_instance(t=["paris", "Q90", [[2, 4]]]), r"field 't': mention 0 index 4 is outside the sentence of 4 tokens"),
        (_instance(h=["alice", "Q1", [[0], [-1]]]), r"field 'h': mention 1 index -1 is outside"),
        (_instance(h=["alice", "Q1", []]), r"field 'h': mention list is empty"),
        (_instance(h=["alice", "Q1", [[]]]), r"field 'h': mention 0 is empty"),
        ({"tokens": [], "h": ["a", "", [[0]]], "t": ["b", "", [[0]]]}, r"field 'tokens': empty"),
        ({"h": ["a", "", [[0]]], "t": ["b", "", [[0]]]}, r"field 'tokens': missing"),
        (_instance(h=["alice", 7, [[0]]]), r"field 'h': id must be a string"),
    ],
)
def test_bad_instances(tmp_path: Path, instance: dict, message: str) -> None:
    path = _write(tmp_path / "bad.json", {"P9": [_instance(), instance]})
    with pytest.raises(ValueError, match=r"bad\.json: relation 'P9', instance 1, " + message):
        load_fewrel_json(path)


def test_empty_relation_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"relation 'P9': has no instances"):
        load_fewrel_json(_write(tmp_path / "e.json", {"P9": []}))


# --------------------------------------------------------------------------- labels


def test_label_table_merge_and_validation(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", {"P1": ["one", "first"], "P2": ["two", "second"]})
    b = _write(tmp_path / "b.json", {"P2": ["TWO", "override"]})
    assert load_label_table([a, b]) == {"P1": ("one", "first"), "P2": ("TWO", "override")}
    bad = _write(tmp_path / "bad_labels.json", {"P1": ["one", "first"], "P3": ["only name"]})
    with pytest.raises(ValueError, match=r"bad_labels\.json: key 'P3'"):
        load_label_table(bad)


def test_unknown_relation_without_fallback(shared_data: Path) -> None:
    pubmed_path = shared_data / "fewrel/val_pubmed.json"
    pubmed = load_fewrel_json(pubmed_path)
    table = load_label_table(shared_data / "fewrel/pid2name.json")
    relations = pubmed.unique("relation")
    with pytest.raises(UnknownRelationError, match=r"'ingredient_of'.*val_pubmed\.json") as info:
        label_texts(relations, table, source=str(pubmed_path))
    assert isinstance(info.value, KeyError)

    texts = label_texts(relations, table, fallback=True, source=str(pubmed_path))
    assert texts["ingredient_of"] == ("ingredient of", "")
    assert texts["is_primary_anatomic_site_of_disease"] == ("is primary anatomic site of disease", "")
    assert label_texts(["P177"], table)["P177"][0] == "crosses"


def test_pretraining_corpus_rejects_val_wiki_relation(tmp_path: Path) -> None:
    for sub in ("pretrain", "fewrel_train_sample", "fewrel"):
        (tmp_path / sub).mkdir()
    _write(tmp_path / "pretrain/docred_sentences.json", {"P6": [_instance()], "P177": [_instance()]})
    _write(tmp_path / "fewrel_train_sample/train_wiki_sample.json", {"P6": [_instance()]})
    _write(tmp_path / "pretrain/labels.json", {"P6": ["head of government", "d"]})
    _write(tmp_path / "fewrel/pid2name.json", {"P177": ["crosses", "d"]})
    _write(tmp_path / "fewrel/val_wiki.json", {"P177": [_instance()]})
    with pytest.raises(ValueError, match=r"evaluation relation\(s\) \['P177'\]"):
        load_pretraining_corpus(tmp_path, corpus="v1")

    assert load_pretraining_corpus(tmp_path, corpus="v1", allow_eval_relations=True)[0]["relation"] == ["P6", "P6", "P177"]
    _write(tmp_path / "pretrain/docred_sentences.json", {"P6": [_instance()]})
    dataset, labels = load_pretraining_corpus(tmp_path, corpus="v1")
    assert dataset["relation"] == ["P6", "P6"]
    assert labels == {"P6": ("head of government", "d")}


# --------------------------------------------------------------------------- sampler


def _batches(sampler: RelationBalancedBatchSampler) -> list[list[int]]:
    return [list(batch) for batch in sampler]


def test_balanced_batches_on_corpus(corpus) -> None:
    dataset, _ = corpus
    relations = dataset["relation"]
    sampler = RelationBalancedBatchSampler(relations, relations_per_batch=8, instances_per_relation=4, seed=3)
    batches = _batches(sampler)
    assert len(batches) == len(sampler) == len(dataset) // 32
    for batch in batches:
        assert len(batch) == 32
        assert len(set(batch)) == 32  # no repeats: every corpus relation has >= 20 instances
        groups = [relations[i] for i in batch]
        assert len(set(groups)) == 8
        assert all(len(set(groups[k:k + 4])) == 1 for k in range(0, 32, 4))  # relation-major


def test_relations_are_drawn_uniformly(corpus) -> None:
    relations = corpus[0]["relation"]
    sampler = RelationBalancedBatchSampler(relations, 8, 2, num_batches=400)
    seen = Counter(relations[batch[k]] for batch in sampler for k in range(0, 16, 2))
    n_relations = len(set(relations))
    expected = 400 * 8 / n_relations  # ~39 each, whatever the relation's size
    assert len(seen) == n_relations
    assert seen["P131"] < 2 * expected
    assert min(seen.values()) > expected / 3


def test_sampler_deterministic_under_global_seeds() -> None:
    relations = [f"R{i % 7}" for i in range(300)]

    def draw(global_seed: int) -> list[list[int]]:
        random.seed(global_seed)
        np.random.seed(global_seed)
        torch.manual_seed(global_seed)
        return _batches(RelationBalancedBatchSampler(relations, 3, 4, seed=11, num_batches=20))

    first = draw(0)
    assert draw(12345) == first
    assert _batches(RelationBalancedBatchSampler(relations, 3, 4, seed=12, num_batches=20)) != first

    sampler = RelationBalancedBatchSampler(relations, 3, 4, seed=11, num_batches=20)
    sampler.set_epoch(1)
    epoch1 = _batches(sampler)
    assert epoch1 != first
    sampler.set_epoch(0)
    assert _batches(sampler) == first
    assert all(isinstance(i, int) for i in first[0])


def test_sampler_deterministic_across_processes() -> None:
    # Load data/corpus.py by path: the package __init__ pulls in transformers, which only costs time here.
    code = (
        "import importlib.util, json, random, sys; random.seed(99);"
        "spec = importlib.util.spec_from_file_location('sacon_data', sys.argv[1]);"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod);"
        "r = [f'R{i % 7}' for i in range(300)];"
        "print(json.dumps([list(b) for b in mod.RelationBalancedBatchSampler(r, 3, 4, seed=11, num_batches=20)]))"
    )
    module_path = REPO_ROOT / "modeling_sacon" / "data" / "corpus.py"
    env = dict(os.environ, PYTHONHASHSEED="4242")
    out = subprocess.run(
        [sys.executable, "-c", code, str(module_path)], env=env, capture_output=True, text=True, check=True
    )
    relations = [f"R{i % 7}" for i in range(300)]
    assert json.loads(out.stdout) == _batches(RelationBalancedBatchSampler(relations, 3, 4, seed=11, num_batches=20))


def test_sharded_batches_are_disjoint_and_complete() -> None:
    relations = [f"R{i % 9}" for i in range(500)]
    single = _batches(RelationBalancedBatchSampler(relations, 4, 3, seed=5, num_batches=12))
    shards = [
        _batches(RelationBalancedBatchSampler(relations, 4, 3, seed=5, num_batches=12, num_replicas=3, rank=r))
        for r in range(3)
    ]
    assert [len(s) for s in shards] == [4, 4, 4]
    for rank, shard in enumerate(shards):
        assert shard == single[rank::3]
    positions = [set(range(rank, 12, 3)) for rank in range(3)]
    assert set.union(*positions) == set(range(12)) and sum(map(len, positions)) == 12
    assert sorted(map(tuple, (b for s in shards for b in s))) == sorted(map(tuple, single))
    with pytest.raises(ValueError, match="num_batches"):
        RelationBalancedBatchSampler(relations, 4, 3, num_batches=10, num_replicas=3)
    # the default length is rounded up so every rank steps the same number of times
    default = RelationBalancedBatchSampler(relations, 4, 3, num_replicas=3, rank=2)
    assert default.num_batches % 3 == 0 and len(default) == default.num_batches // 3


def test_small_relation_is_filled_with_replacement() -> None:
    relations = ["big"] * 50 + ["tiny"] + ["mid"] * 2
    sampler = RelationBalancedBatchSampler(relations, 3, 4, seed=0, num_batches=5)
    for batch in sampler:
        groups = Counter(relations[i] for i in batch)
        assert groups == {"big": 4, "tiny": 4, "mid": 4}
        assert batch.count(50) == 4  # the only "tiny" row, repeated
        assert {51, 52} <= set(batch)  # both "mid" rows present before repeats
        assert len({i for i in batch if relations[i] == "big"}) == 4


def test_sampler_option_errors() -> None:
    relations = ["a", "b", "c"] * 5
    with pytest.raises(ValueError, match="relations_per_batch = 1: a contrastive batch needs at least two relations"):
        RelationBalancedBatchSampler(relations, 1, 4)
    too_many = "relations_per_batch = 4 relations per batch, but the training data has only 3 relations"
    with pytest.raises(ValueError, match=too_many):
        RelationBalancedBatchSampler(relations, 4, 2)
    with pytest.raises(ValueError, match="instances_per_relation"):
        RelationBalancedBatchSampler(relations, 2, 0)
    with pytest.raises(ValueError, match="rank"):
        RelationBalancedBatchSampler(relations, 2, 2, num_replicas=2, rank=2)


def test_balanced_batch_shape() -> None:
    assert balanced_batch_shape(32, 4) == 8
    assert balanced_batch_shape(4, 2) == 2
    one_relation = r"per_device_train_batch_size \(4\).*instances_per_relation \(4\).*two relations"
    with pytest.raises(ValueError, match=one_relation):
        balanced_batch_shape(4, 4)
    not_divisible = r"per_device_train_batch_size \(10\) must be divisible by instances_per_relation \(4\)"
    with pytest.raises(ValueError, match=not_divisible):
        balanced_batch_shape(10, 4)
    with pytest.raises(ValueError, match="instances_per_relation"):
        balanced_batch_shape(8, 0)
    assert balanced_batch_shape(8, 2, num_relations=4) == 4
    with pytest.raises(ValueError, match=r"\(2\) = 4 relations per batch, but the training data has only 3 relations"):
        balanced_batch_shape(8, 2, num_relations=3)


def test_sampler_drives_a_dataloader(corpus) -> None:
    dataset, _ = corpus
    sampler = RelationBalancedBatchSampler(dataset["relation"], 4, 2, num_batches=3)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=list)
    batches = list(loader)
    assert len(batches) == 3
    assert all(len(b) == 8 and len({row["relation"] for row in b}) == 4 for b in batches)
