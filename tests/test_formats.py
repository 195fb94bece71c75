"""The authors' (CP) corpus format and JSON Lines: detection, streaming, validation, Arrow cache."""

from __future__ import annotations

import importlib
import io
import json
import os
from pathlib import Path

import datasets
import pytest

from modeling_sacon.data import (
    DataFormatError,
    detect_corpus_format,
    load_fewrel_json,
    load_label_table,
    load_relation_corpus,
    relation_corpus_label_table,
)
from modeling_sacon.data.formats import iter_json_array

# FewRel layout; entities with several mentions, a multi-token head, non-ASCII text and an empty id.
FEWREL = {
    "P17": [
        {"tokens": ["Lyon", "is", "in", "France", "."], "h": ["lyon", "Q456", [[0]]], "t": ["france", "Q142", [[3]]]},
        {"tokens": ["Zürich", "lies", "in", "Switzerland", ",", "Switzerland", "."],
         "h": ["zürich", "", [[0]]], "t": ["switzerland", "Q39", [[3], [5]]]},
    ],
    "P112": [
        {"tokens": ["Apple", "was", "founded", "by", "Steve", "Jobs", "."],
         "h": ["apple", "Q312", [[0]]], "t": ["steve jobs", "Q19837", [[4, 5]]]},
        {"tokens": ["Jobs", "founded", "NeXT", "."], "h": ["next", "Q7", [[2]]], "t": ["jobs", "Q19837", [[0]]]},
        {"tokens": ["\"", "Microsoft", "\"", "by", "Gates"], "h": ["microsoft", "Q2283", [[1]]],
         "t": ["gates", "Q5284", [[4]]]},
    ],
}
LABELS = {"P17": ("country", "sovereign state of this item"), "P112": ("founded by", "founder of this organization")}


def cp_entity(entity: list) -> dict:
    return {"name": entity[0], "id": entity[1], "pos": entity[2]}


def cp_rows() -> list[dict]:
    """The FEWREL instances in the authors' layout, with their relation texts (rname / rstate) as in cpdata.json."""
    return [
        {"tokens": x["tokens"], "h": cp_entity(x["h"]), "t": cp_entity(x["t"]), "r": relation,
         "rname": LABELS[relation][0], "rstate": LABELS[relation][1]}
        for relation, instances in FEWREL.items() for x in instances
    ]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """The same content as FewRel JSON, CP JSON (indented: a multi-line list) and JSON Lines (both row forms)."""
    jsonl_lines = []
    for i, row in enumerate(cp_rows()):
        if i % 2:  # FewRel-instance form with a "relation" field
            fewrel_form = {"tokens": row["tokens"], "relation": row["r"],
                           "h": [row["h"]["name"], row["h"]["id"], row["h"]["pos"]],
                           "t": [row["t"]["name"], row["t"]["id"], row["t"]["pos"]]}
            jsonl_lines.append(json.dumps(fewrel_form, ensure_ascii=False))
        else:
            jsonl_lines.append(json.dumps(row))
    return {
        "fewrel": write(tmp_path / "fewrel.json", json.dumps(FEWREL)),
        "cp": write(tmp_path / "cpdata.json", json.dumps(cp_rows(), indent=1, ensure_ascii=False)),
        "jsonl": write(tmp_path / "corpus.jsonl", "\n".join(jsonl_lines[:2] + [""] + jsonl_lines[2:]) + "\n"),
    }


def test_formats_are_detected_from_content(files, tmp_path):
    assert {name: detect_corpus_format(path) for name, path in files.items()} == {
        "fewrel": "fewrel", "cp": "cp", "jsonl": "jsonl"}
    renamed = write(tmp_path / "cp.jsonl", files["cp"].read_text(encoding="utf-8"))  # the name plays no part
    assert detect_corpus_format(renamed) == "cp"
    rows = [{"rname": "country", **row} for row in cp_rows()[:2]]  # first key: an instance field, not a relation
    assert detect_corpus_format(write(tmp_path / "rows", "\n".join(map(json.dumps, rows)))) == "jsonl"
    assert detect_corpus_format(write(tmp_path / "empty_fewrel.json", "{}")) == "fewrel"
    with pytest.raises(DataFormatError, match=r"not_corpus\.json: not a relation corpus.*found '\"'"):
        detect_corpus_format(write(tmp_path / "not_corpus.json", '"text"'))
    with pytest.raises(DataFormatError, match=r"empty\.json: empty file"):
        detect_corpus_format(write(tmp_path / "empty.json", "  \n"))


@pytest.mark.parametrize("name", ["cp", "jsonl"])
def test_same_content_loads_to_the_fewrel_dataset_row_for_row(files, tmp_path, name):
    expected = load_fewrel_json(files["fewrel"])
    loaded = load_relation_corpus(files[name], cache_dir=tmp_path / "cache")
    assert loaded.features == expected.features
    assert len(loaded) == len(expected) == 5
    for i, (got, want) in enumerate(zip(loaded, expected)):
        assert got == want, f"row {i}"
    assert loaded[1]["tail"] == {"name": "switzerland", "id": "Q39", "indices": [3]}  # mention 0, as FewRel loads
    assert loaded[1]["head"]["id"] == ""


def test_label_texts_carried_by_the_rows(files, tmp_path):
    assert relation_corpus_label_table(files["cp"], cache_dir=tmp_path / "c") == LABELS
    # JSON Lines rows 1 and 3 are in FewRel-instance form (no texts): the CP-form rows of each relation give them
    assert relation_corpus_label_table(files["jsonl"], cache_dir=tmp_path / "c") == LABELS
    assert relation_corpus_label_table(files["fewrel"], cache_dir=tmp_path / "c") == {}
    rows = cp_rows()
    rows[3]["rstate"] = "another text"
    conflicting = write(tmp_path / "conflict.json", json.dumps(rows))
    with pytest.raises(DataFormatError, match=r"conflict\.json: instance 3, fields 'rname'/'rstate': relation 'P112' .*"
                                              r"at .*conflict\.json: instance 2"):
        load_relation_corpus(conflicting, cache_dir=tmp_path / "c")


def test_several_files_of_mixed_formats_concatenate_in_order(files, tmp_path):
    loaded = load_relation_corpus([files["jsonl"], files["fewrel"], files["cp"]], cache_dir=tmp_path / "cache")
    once = load_fewrel_json(files["fewrel"]).to_list()
    assert loaded.to_list() == once * 3
    only_fewrel = load_relation_corpus([files["fewrel"], files["fewrel"]], cache_dir=tmp_path / "cache")
    assert only_fewrel.to_list() == load_fewrel_json([files["fewrel"]] * 2).to_list()  # relations merged
    assert not only_fewrel.cache_files  # FewRel-only input stays load_fewrel_json, in memory


def _break(rows: list[dict], index: int, edit) -> list[dict]:
    rows = json.loads(json.dumps(rows))
    edit(rows[index])
    return rows


CP_ERRORS = [
    (lambda row: row["h"]["pos"][0].append(99), r"instance 2 \(relation 'P112'\), field 'h': mention 0 index 99"),
    (lambda row: row.pop("r"), r"instance 2, field 'r': missing"),
    (lambda row: row["t"].pop("pos"), r"instance 2 \(relation 'P112'\), field 't.pos': missing"),
    (lambda row: row.update(tokens=[]), r"instance 2 \(relation 'P112'\), field 'tokens': empty"),
    (lambda row: row.update(r=7), r"instance 2, field 'r': must be a non-empty string, got 7"),
    (lambda row: row["h"].update(name=None), r"instance 2 \(relation 'P112'\), field 'h': name must be a string"),
]


@pytest.mark.parametrize("edit, message", CP_ERRORS)
def test_malformed_cp_row_names_file_index_and_field(tmp_path, edit, message):
    path = write(tmp_path / "bad_cp.json", json.dumps(_break(cp_rows(), 2, edit)))
    with pytest.raises(DataFormatError, match=r"bad_cp\.json: " + message):
        load_relation_corpus(path, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())  # nothing cached that a later run could mistake for whole


@pytest.mark.parametrize("edit, message", CP_ERRORS)
def test_malformed_jsonl_row_names_file_line_index_and_field(tmp_path, edit, message):
    lines = [json.dumps(row) for row in _break(cp_rows(), 2, edit)]
    path = write(tmp_path / "bad.jsonl", "\n".join(lines[:1] + [""] + lines[1:]))  # blank line: line 4 holds #2
    message = message.replace("instance 2", r"line 4 \(instance 2\)")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl: " + message):
        load_relation_corpus(path, cache_dir=tmp_path / "cache")


def test_malformed_json_names_the_instance(tmp_path):
    text = json.dumps(cp_rows())
    cut = text.index('{"tokens"', text.index('{"tokens"') + 1)  # start of instance 1
    path = write(tmp_path / "broken.json", text[:cut] + '{"tokens": [,' + text[cut + 12:])
    with pytest.raises(DataFormatError, match=r"broken\.json: instance 1: malformed JSON at character \d+"):
        load_relation_corpus(path, cache_dir=tmp_path / "cache")
    lines = [json.dumps(row) for row in cp_rows()]
    lines[3] = lines[3][:-1]
    path = write(tmp_path / "broken.jsonl", "\n".join(lines))
    with pytest.raises(DataFormatError, match=r"broken\.jsonl: line 4 \(instance 3\): malformed JSON at column"):
        load_relation_corpus(path, cache_dir=tmp_path / "cache")
    duplicated = write(tmp_path / "dup.jsonl", lines[0] + "\n" + lines[1][:-1] + ', "r": "P1"}\n')
    with pytest.raises(DataFormatError, match=r"dup\.jsonl: line 2 \(instance 1\): duplicate key 'r'"):
        load_relation_corpus(duplicated, cache_dir=tmp_path / "cache")


def test_cache_is_reused_and_keyed_on_the_file(files, tmp_path):
    cache = tmp_path / "cache"
    first = load_relation_corpus(files["cp"], cache_dir=cache)
    arrow_files = sorted(cache.glob("*.arrow"))
    assert len(arrow_files) == 1 and first.cache_files[0]["filename"] == str(arrow_files[0])
    stamp = arrow_files[0].stat().st_mtime_ns
    again = load_relation_corpus(files["cp"], cache_dir=cache)
    assert again.cache_files == first.cache_files and arrow_files[0].stat().st_mtime_ns == stamp  # not rewritten
    rows = cp_rows()[:2]
    write(files["cp"], json.dumps(rows))  # changed file (size and mtime): read again
    changed = load_relation_corpus(files["cp"], cache_dir=cache)
    assert len(changed) == 2 and len(list(cache.glob("*.arrow"))) == 2


# --------------------------------------------------------------------------- the streaming list reader

NASTY = [
    {"tokens": ["a\"b", "\\", "é", "\u20ac", "tab\there"], "n": [1, -2.5e3, 12345678901234567890, True, None]},
    {"s": "x" * 50, "nested": [[[]], {}, {"k": [0]}]},
    [],
    "plain \\u0041 string",
    123456,
    {"unicode": "\U0001f600 emoji"},
]


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 5, 7, 64])
def test_json_list_split_across_chunk_boundaries(indent, chunk_chars):
    text = json.dumps(NASTY, indent=indent, ensure_ascii=indent is None)  # \u escapes in one, raw UTF-8 in the other
    assert list(iter_json_array(io.StringIO(text), "mem", chunk_chars=chunk_chars)) == NASTY
    spaced = " \n[ " + text.strip()[1:-1] + " ]\n\n"
    assert list(iter_json_array(io.StringIO(spaced), "mem", chunk_chars=chunk_chars)) == NASTY


@pytest.mark.parametrize("chunk_chars", [1, 4, 1 << 20])
@pytest.mark.parametrize("text, message", [
    ("[]", None),
    ("  [ ]  ", None),
    ('[{"a": 1}, {"a": 2},]', r"mem: instance 2: malformed JSON at character 20: Expecting value"),
    ('[{"a": 1} {"a": 2}]', r"mem: after instance 0: expected ',' or '\]' at character 10, found '\{'"),
    ('[{"a": 1}, {"a": 2}', r"mem: after instance 1: expected ',' or '\]' at character 19, found end of file"),
    ('[{"a": 1}] [', r"mem: extra data after the list at character 11: '\['"),
    ('{"a": 1}', r"mem: top level must be a JSON list, found '\{'"),
    ('[{"a": 1}, {"a": tru}]', r"mem: instance 1: malformed JSON at character 17: Expecting value"),
    ('[{"a": "unterminated}]', r"mem: instance 0: malformed JSON at character 7: Unterminated string"),
])
def test_json_list_errors(text, message, chunk_chars):
    reader = iter_json_array(io.StringIO(text), "mem", chunk_chars=chunk_chars)
    if message is None:
        assert list(reader) == []
    else:
        with pytest.raises(DataFormatError, match=message):
            list(reader)


def test_reader_holds_about_one_chunk(tmp_path):
    """A malformed row is reported without reading the rest of a large file into memory."""
    good = json.dumps({"tokens": ["x"] * 20, "r": "P1"})
    text = "[" + good + ', {"tokens": [1,,]}, ' + ", ".join([good] * 20000) + "]"
    handle = io.StringIO(text)
    with pytest.raises(DataFormatError, match="instance 1: malformed JSON"):
        list(iter_json_array(handle, "mem", chunk_chars=4096))
    assert handle.tell() <= 2 * 4096 < len(text)


# --------------------------------------------------------------------------- label tables


def test_rel2scope_is_not_a_label_table(tmp_path):
    scope = write(tmp_path / "rel2scope.json", json.dumps({"P2384": [0, 4], "P2388": [4, 750]}))
    with pytest.raises(DataFormatError, match=r"rel2scope\.json: key 'P2384': \[0, 4\] is a rel2scope\.json row "
                                              r"range .*pid2name\.json"):
        load_label_table(scope)


def test_pretrain_script_reads_cp_corpus_with_its_label_texts(files, tmp_path, monkeypatch):
    """The pre-training command's --train_files takes the authors' file; the rows' own texts label its relations."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    from modeling_sacon.commands import pretrain
    data_args = pretrain.DataArguments(train_files=[str(files["cp"])])
    dataset, labels, card = pretrain.load_training_data(data_args)
    assert dataset.to_list() == load_fewrel_json(files["fewrel"]).to_list()
    assert labels == LABELS
    assert os.path.isdir(tmp_path / "hf" / "sacon_relation_corpus")
    override = write(tmp_path / "labels.json", json.dumps({"P17": ["nation", "its country"]}))
    _, labels, _ = pretrain.load_training_data(pretrain.DataArguments(train_files=[str(files["cp"])],
                                                                      label_files=[str(override)]))
    assert labels == {**LABELS, "P17": ("nation", "its country")}  # explicit --label_files win over the rows' texts


# --------------------------------------------------------------------------- paper-scale tooling


def _script(name: str):
    return importlib.import_module(f"benchmarks.harness.{name}")


def test_synthetic_corpus_is_seeded_long_tailed_and_loads(files, tmp_path):
    make = _script("synthetic_corpus")
    common = ["--num_sentences", "60", "--num_relations", "5", "--source_files", str(files["fewrel"])]
    first = make.main(["--output", str(tmp_path / "a.json"), *common])
    make.main(["--output", str(tmp_path / "b.json"), *common])
    make.main(["--output", str(tmp_path / "c.json"), *common, "--seed", "1"])
    make.main(["--output", str(tmp_path / "d.jsonl"), *common, "--format", "jsonl"])
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()
    assert first["sentences"] == 60 and first["relations"] == 5

    dataset = load_relation_corpus(tmp_path / "a.json", cache_dir=tmp_path / "cache")
    assert load_relation_corpus(tmp_path / "d.jsonl", cache_dir=tmp_path / "cache").to_list() == dataset.to_list()
    relations = dataset["relation"]
    scopes = json.loads((tmp_path / "a.rel2scope.json").read_text())
    assert [relation for relation, (start, end) in scopes.items() for _ in range(start, end)] == relations
    assert min(end - start for start, end in scopes.values()) >= 2 and sum(e - s for s, e in scopes.values()) == 60
    labels = load_label_table(tmp_path / "a.labels.json")
    assert relation_corpus_label_table(tmp_path / "a.json", cache_dir=tmp_path / "cache") == labels
    assert set(labels) == set(relations) and labels["P112.1"] == ("P112 #1", "")  # own names: no table given
    source_sentences = {tuple(x["tokens"]) for rows in FEWREL.values() for x in rows}
    assert any(tuple(row["tokens"]) not in source_sentences for row in dataset)  # perturbed
    for row in dataset:
        for entity in (row["head"], row["tail"]):
            assert " ".join(row["tokens"][i] for i in entity["indices"]).lower() == entity["name"]
        source = row["relation"].split(".")[0]
        words = {w for x in FEWREL[source] for w in x["tokens"]}
        assert set(row["tokens"]) <= words  # resampled from the relation's own sentences


def test_word_piece_cache_is_exact_and_follows_the_vocabulary():
    from modeling_sacon import SaconProcessor
    from modeling_sacon.utils.defaults import default_backbone_path

    processor = SaconProcessor.from_pretrained(default_backbone_path())
    words = ["[E1]", "Zürich", "lies", "[BLANK]", "in", "Zürich", "unaffordable", "[/E2]", "."]
    expected = processor.tokenizer(words, add_special_tokens=False)["input_ids"]
    assert processor._word_pieces(words) == expected
    assert processor._word_pieces(words[::-1]) == expected[::-1]  # served from the cache
    assert "_piece_cache" not in processor.to_dict()
    processor.tokenizer.add_tokens(["unaffordable"])
    assert processor._word_pieces(["unaffordable"]) == [[len(processor.tokenizer) - 1]]  # not the stale pieces
