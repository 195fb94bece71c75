"""Marker insertion, entity-preserving truncation, label texts, MLM masking and input validation."""

import pytest
import torch

INSTANCE = {
    "tokens": "the quick brown fox jumps over the lazy dog near the river bank today".split(),
    "h": ["fox", "Q1", [[3]]],
    "t": ["lazy dog", "Q2", [[7, 8]]],
}


def tokens_of(processor, ids):
    return processor.tokenizer.convert_ids_to_tokens(ids)


def test_markers_wrap_entities_and_positions_point_at_start_markers(processor):
    batch = processor.encode_instances([INSTANCE])
    ids = batch["input_ids"][0].tolist()
    words = tokens_of(processor, ids)
    head, tail = batch["entity_positions"][0].tolist()
    assert words[head] == "[E1]" and words[head + 1] == "fox" and words[head + 2] == "[/E1]"
    assert words[tail : tail + 4] == ["[E2]", "lazy", "dog", "[/E2]"]
    assert words[0] == "[CLS]" and words[-1] == "[SEP]"


def test_canonical_schema_gives_same_ids(processor):
    canonical = {
        "tokens": INSTANCE["tokens"],
        "head": {"name": "fox", "id": "Q1", "indices": [3]},
        "tail": {"name": "lazy dog", "id": "Q2", "indices": [7, 8]},
    }
    assert torch.equal(processor.encode_instances([INSTANCE])["input_ids"], processor.encode_instances([canonical])["input_ids"])


def test_truncation_keeps_both_entities(processor, val_wiki):
    long_tokens = ["filler"] * 40 + INSTANCE["tokens"] + ["filler"] * 40
    instance = {"tokens": long_tokens, "h": ["fox", "", [[43]]], "t": ["dog", "", [[47, 48]]]}
    old = processor.max_length
    try:
        processor.max_length = 16
        batch = processor.encode_instances([instance, *val_wiki["P177"][:20]])
    finally:
        processor.max_length = old
    assert batch["input_ids"].shape[1] == 16
    for ids, (head, tail) in zip(batch["input_ids"].tolist(), batch["entity_positions"].tolist()):
        words = tokens_of(processor, ids)
        assert {"[E1]", "[/E1]", "[E2]", "[/E2]"} <= set(words)
        assert words[head] == "[E1]" and words[tail] == "[E2]"
    first = tokens_of(processor, batch["input_ids"][0].tolist())
    assert first[first.index("[E1]") : first.index("[E1]") + 3] == ["[E1]", "fox", "[/E1]"]


def test_blanking_replaces_the_mention(processor):
    batch = processor.encode_instances([INSTANCE], blank_head=[True], blank_tail=[False])
    words = tokens_of(processor, batch["input_ids"][0].tolist())
    head = batch["entity_positions"][0, 0].item()
    assert words[head : head + 3] == ["[E1]", processor.blank_token, "[/E1]"]
    assert "fox" not in words and "lazy" in words


def test_label_text_is_name_sep_description(processor):
    batch = processor.encode_labels([("crosses", "obstacle this bridge crosses"), ("located in", "")])
    first = tokens_of(processor, [i for i in batch["input_ids"][0].tolist() if i != processor.tokenizer.pad_token_id])
    assert first == ["[CLS]", "crosses", "[SEP]", "obstacle", "this", "bridge", "crosses", "[SEP]"]
    second = [i for i in batch["input_ids"][1].tolist() if i != processor.tokenizer.pad_token_id]
    assert tokens_of(processor, second) == ["[CLS]", "located", "in", "[SEP]"]
    with pytest.raises(ValueError, match="empty relation name"):
        processor.encode_labels([("", "description")])


@pytest.mark.parametrize(
    "h, t, message",
    [
        (["fox", "", [[30]]], ["dog", "", [[7]]], r"head span \[30\] lies outside the sentence of 14 tokens"),
        (["fox", "", [[-1]]], ["dog", "", [[7]]], "outside the sentence"),
        (["fox", "", [[]]], ["dog", "", [[7]]], "head entity has an empty span"),
        (["fox", "", [[3]]], ["dog", "", []], "tail entity has an empty span"),
        (["fox", "", [[3, 4, 5]]], ["dog", "", [[5, 6]]], "overlap"),
    ],
)
def test_bad_spans_name_the_instance_and_problem(processor, h, t, message):
    with pytest.raises(ValueError, match=message) as err:
        processor.encode_instances([INSTANCE, {**INSTANCE, "h": h, "t": t}], names=["ok", "val_wiki.json P177 #5"])
    assert "val_wiki.json P177 #5" in str(err.value)


def test_missing_fields_are_named(processor):
    with pytest.raises(ValueError, match="instance 0: cannot read the tail entity"):
        processor.encode_instances([{"tokens": ["a", "b"], "h": ["a", "", [[0]]]}])
    with pytest.raises(ValueError, match="'tokens' is missing or empty"):
        processor.encode_instances([{"tokens": [], "h": ["a", "", [[0]]], "t": ["b", "", [[1]]]}])


def test_mask_tokens_never_touches_markers_blanks_or_specials(processor, val_wiki):
    instances = val_wiki["P361"][:64]
    batch = processor.encode_instances(instances, blank_head=[i % 2 == 0 for i in range(64)])
    ids = batch["input_ids"]
    masked, labels = processor.mask_tokens(ids, 0.5, torch.Generator().manual_seed(0))
    protected = torch.isin(ids, torch.tensor(sorted(processor.never_mask_ids)))
    assert protected.any() and (labels[protected] == -100).all()
    assert torch.equal(masked[protected], ids[protected])
    chosen = labels != -100
    assert 0.4 < chosen.sum() / (~protected).sum() < 0.6
    assert torch.equal(labels[chosen], ids[chosen])
    share_mask = (masked[chosen] == processor.tokenizer.mask_token_id).float().mean().item()
    assert 0.7 < share_mask < 0.9
    assert not torch.isin(masked[chosen], torch.tensor(processor.marker_ids + [processor.blank_id])).any()
