"""Property-based fuzzing (hypothesis) of every input form: the processor's sentence forms, the pipeline and the corpus
loaders. Every input gives a correct result or a named error (`ValueError`, the package's own `DataFormatError`),
never an IndexError / KeyError / TypeError or a silently wrong answer (entity positions not on the markers)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import pipeline

from modeling_sacon.data import DataFormatError, load_fewrel_json, load_relation_corpus

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
MARKERS = ["<e1>", "</e1>", "<e2>", "</e2>", "<E1>", "[E1]", "[/E1]", "[E2]", "[/E2]", "[e2]"]
WORD = st.one_of(st.text(min_size=0, max_size=8), st.sampled_from(MARKERS), st.sampled_from([" ", ".", "Paris", "é", "日本"]))


def check_encoding(processor, encoding, count: int) -> None:
    """The oracle: one row per sentence, each entity position on its start marker, within the length."""
    ids, positions = encoding["input_ids"], encoding["entity_positions"]
    assert ids.shape[0] == count and positions.shape == (count, 2) and ids.shape[1] <= processor.max_length
    head_marker, tail_marker = processor.marker_ids[0], processor.marker_ids[2]
    for row, (head, tail) in zip(ids.tolist(), positions.tolist()):
        assert row[head] == head_marker and row[tail] == tail_marker


def expected_positions(processor, tokens: list[str], head: int, tail: int) -> list[int]:
    """Independent oracle: [CLS] + the pieces of every token before the entity + the other entity's two markers."""
    def pieces(words):
        return sum(len(processor.tokenizer(word, add_special_tokens=False)["input_ids"]) for word in words)

    return [1 + pieces(tokens[:start]) + (2 if other < start else 0) for start, other in ((head, tail), (tail, head))]


def test_a_token_that_spells_a_marker_is_not_taken_for_it(processor):
    """Found by the fuzzing: the head position pointed at a sentence token "[E1]" instead of the inserted marker."""
    encoding = processor([{"tokens": ["[E1]", "a", "[/E1]", "b", "c"], "head": (1, 3), "tail": (4, 5)}])
    assert encoding["entity_positions"].tolist() == [[2, 7]] == [expected_positions(processor, ["[E1]", "a", "[/E1]", "b", "c"], 1, 4)]


def encode_or_refuse(processor, sentences):
    try:
        encoding = processor(sentences)
    except ValueError:
        return None
    check_encoding(processor, encoding, len(sentences))
    return encoding


@FUZZ
@given(parts=st.lists(WORD, max_size=12))
def test_marked_strings(processor, parts):
    """Random unicode with markers anywhere: at the edges, nested, repeated, missing."""
    encode_or_refuse(processor, [" ".join(parts)])
    encode_or_refuse(processor, ["".join(parts)])


@FUZZ
@given(tokens=st.lists(WORD, max_size=10), spans=st.lists(st.integers(-3, 13), min_size=4, max_size=4))
def test_token_spans(processor, tokens, spans):
    """Tokens (empty, whitespace, marker strings themselves) with spans at, inside and past the ends."""
    encoding = encode_or_refuse(processor, [{"tokens": tokens, "head": spans[:2], "tail": spans[2:]}])
    if encoding is not None and encoding["attention_mask"].sum() < processor.max_length:  # not truncated
        assert encoding["entity_positions"][0].tolist() == expected_positions(processor, tokens, spans[0], spans[2])
    fewrel = {"tokens": tokens, "h": ["x", "", [list(range(spans[0], spans[1]))]], "t": ["y", "", [[spans[2]]]]}
    encode_or_refuse(processor, [fewrel])


@FUZZ
@given(text=st.text(max_size=40), spans=st.lists(st.integers(-2, 45), min_size=4, max_size=4))
def test_character_spans(processor, text, spans):
    encode_or_refuse(processor, [(text, tuple(spans[:2]), tuple(spans[2:]))])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.integers(200, 600), head=st.integers(0, 599), tail=st.integers(0, 599), marker=st.sampled_from(MARKERS))
def test_very_long_sentences_keep_both_markers(processor, length, head, tail, marker):
    assume(head < length and tail < length and head != tail)
    tokens = [f"w{i}" if i % 7 else marker for i in range(length)]  # marker strings as plain tokens, too
    encoding = encode_or_refuse(processor, [{"tokens": tokens, "head": (head, head + 1), "tail": (tail, tail + 1)}])
    assert encoding is not None


@pytest.fixture(scope="module")
def tiny_pipe(processor):
    from conftest import tiny_bert_config
    from modeling_sacon import SaconConfig, SaconDualEncoderModel

    torch.manual_seed(0)
    model = SaconDualEncoderModel(SaconConfig(sentence_config=tiny_bert_config(len(processor.tokenizer)).to_dict()))
    return pipeline("relation-classification", model=model.eval(), processor=processor, device="cpu")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sentence=st.one_of(st.text(max_size=30), st.lists(WORD, max_size=8).map(" ".join),
                          st.just("<e1>Paris</e1> is the capital of <e2>France</e2>")),
       names=st.one_of(st.lists(st.text(max_size=6), max_size=300),  # empty or duplicate names among them
                       st.lists(st.integers(0, 10**6), unique=True, min_size=100, max_size=300).map(
                           lambda numbers: [f"relation {n} é" for n in numbers])), top_k=st.one_of(st.none(), st.integers(-1, 400)))
def test_pipeline_candidates(tiny_pipe, sentence, names, top_k):
    """Any sentence, 0 to 300 candidates (empty or duplicate names), any top_k: a full ranking or a ValueError."""
    try:
        ranked = tiny_pipe(sentence, relations=names, top_k=top_k)
    except ValueError:
        return
    expected = len(names) if top_k is None else min(top_k, len(names))
    labels = [entry["label"] for entry in ranked]
    assert len(ranked) == expected and len(set(labels)) == expected and set(labels) <= set(names)
    assert all(a["score"] >= b["score"] for a, b in zip(ranked, ranked[1:]))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 50) | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                    max_leaves=12)
VALID = {"tokens": ["paris", "is", "in", "france"], "h": ["paris", "Q90", [[0]]], "t": ["france", "Q142", [[3]]]}


def mutated(instance: dict, data) -> dict:
    """A valid instance with one field (or one nested slot) replaced by random JSON, or removed."""
    field = data.draw(st.sampled_from(sorted(instance)))
    value = data.draw(JSON)
    changed = dict(instance)
    if data.draw(st.booleans()):
        changed.pop(field)
    elif isinstance(instance[field], list) and instance[field] and data.draw(st.booleans()):
        slot = data.draw(st.integers(0, len(instance[field]) - 1))
        changed[field] = [value if i == slot else item for i, item in enumerate(instance[field])]
    else:
        changed[field] = value
    return changed


def load_or_refuse(loader, path):
    try:
        dataset = loader(path)
    except DataFormatError as err:
        assert str(path) in str(err)  # the error names the file
        return
    for row in dataset:  # a loaded row is well formed: its entity indices point into its tokens
        for role in ("head", "tail"):
            assert row[role]["indices"] and all(0 <= i < len(row["tokens"]) for i in row[role]["indices"])


@FUZZ
@given(data=st.data())
def test_fewrel_json_rows(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fewrel") / "corpus.json"
    content = data.draw(st.one_of(
        JSON, st.dictionaries(st.sampled_from(["P17", "P1"]), st.lists(st.builds(lambda: VALID) | JSON, max_size=3)),
        st.builds(lambda: None).flatmap(lambda _: st.just({"P17": [VALID, mutated(VALID, data)]})),
    ))
    path.write_text(json.dumps(content))
    load_or_refuse(load_fewrel_json, path)


CP_VALID = {"tokens": ["paris", "is", "in", "france"], "h": {"name": "paris", "id": "Q90", "pos": [[0]]},
            "t": {"name": "france", "id": "Q142", "pos": [[3]]}, "r": "P17", "rname": "country", "rstate": "state"}


@FUZZ
@given(data=st.data(), jsonl=st.booleans())
def test_cp_and_json_lines_rows(tmp_path_factory, data, jsonl):
    folder = tmp_path_factory.mktemp("cp")
    rows = [CP_VALID, mutated(CP_VALID, data), data.draw(JSON)][: data.draw(st.integers(1, 3))]
    if jsonl:
        path = folder / "corpus.jsonl"
        path.write_text("\n".join(json.dumps(row) for row in rows) + data.draw(st.sampled_from(["", "\n", "\n{", "\n[]"])))
    else:
        path = folder / "cpdata.json"
        path.write_text(json.dumps(rows)[: data.draw(st.integers(1, 10_000))])  # sometimes cut short
    try:
        load_or_refuse(lambda p: load_relation_corpus(p, cache_dir=folder / "cache"), path)
    except ValueError as err:  # an undetectable format is a ValueError naming the file
        assert str(path) in str(err)
