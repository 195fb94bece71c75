"""Marker insertion, entity-preserving truncation, label texts, MLM masking, input validation, saving and loading."""

import copy
import json
import subprocess
import sys
import textwrap

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


MARKED = ["<e1>fox</e1> jumps over the <e2>lazy dog</e2> .", "[E2] Paris [/E2] is home to the [E1] Louvre [/E1] ."]


def test_call_returns_the_models_keyword_arguments(processor, tiny_model):
    batch = processor(MARKED, labels=[("crosses", "obstacle this bridge crosses"), "located in"])
    tokens = {"tokens": "fox jumps over the lazy dog .".split(), "head": {"indices": [0]}, "tail": {"indices": [4, 5]}}
    assert batch["input_ids"][0].tolist() == processor.encode_instances([tokens])["input_ids"][0].tolist()
    assert torch.equal(batch["label_input_ids"], processor.encode_labels([("crosses", "obstacle this bridge crosses"), "located in"])["input_ids"])
    with torch.no_grad():
        out = tiny_model(**batch)
    assert out.logits_per_sentence.shape == (2, 2)
    with pytest.raises(ValueError, match="sentence 1: the tail start marker is missing"):
        processor([MARKED[0], "<e1>Paris</e1> only"])


def test_save_and_auto_processor_round_trip(processor, tmp_path):
    from transformers import AutoProcessor

    from modeling_sacon import SaconProcessor

    tokenizer = copy.deepcopy(processor.tokenizer)  # the session's processor keeps its tokenizer as it is
    custom = SaconProcessor(tokenizer, ("[unused0]", "[unused1]"), ("[unused2]", "[unused3]"), "[unused4]", 48, 24)
    custom.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["auto_map"] == {"AutoProcessor": "processing_sacon.SaconProcessor"}
    assert saved["head_markers"] == ["[unused0]", "[unused1]"] and saved["max_length"] == 48
    saved_files = {p.name for p in tmp_path.iterdir()}
    assert {"processing_sacon.py", "sentence_forms.py"} <= saved_files
    assert "pipeline_sacon.py" not in saved_files  # the pipeline's code goes with the model, whose config names it
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is SaconProcessor
    assert (loaded.head_markers, loaded.blank_token, loaded.max_length, loaded.label_max_length) == (
        ["[unused0]", "[unused1]"], "[unused4]", 48, 24)
    assert loaded.marker_ids == custom.marker_ids
    assert torch.equal(loaded(MARKED[:1])["input_ids"], custom(MARKED[:1])["input_ids"])


def test_options_come_from_a_sacon_config_when_no_processor_config(processor, tiny_model, tmp_path):
    """Checkpoints saved as model + tokenizer only, when config.json held the tokenisation options: they apply."""
    from transformers import AutoProcessor

    from modeling_sacon import SaconProcessor

    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    legacy = {"head_markers": ["[E1]", "[/E1]"], "tail_markers": ["[E2]", "[/E2]"], "blank_token": "[BLANK]",
              "max_length": 24, "label_max_length": 64}
    (tmp_path / "config.json").write_text(json.dumps({**config, **legacy}))
    processor.tokenizer.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is SaconProcessor and loaded.max_length == 24
    assert loaded.marker_ids == processor.marker_ids


def test_plain_encoder_keeps_default_markers():
    from transformers import AutoProcessor, PreTrainedTokenizerBase

    from modeling_sacon import SaconProcessor
    from modeling_sacon.utils.defaults import default_backbone_path

    plain = SaconProcessor.from_pretrained(default_backbone_path())
    assert plain.head_markers + plain.tail_markers == ["[E1]", "[/E1]", "[E2]", "[/E2]"] and plain.max_length == 64
    assert isinstance(AutoProcessor.from_pretrained(default_backbone_path()), PreTrainedTokenizerBase)  # unchanged


def test_checkpoint_without_tokenizer_names_the_directory_and_the_fix(tiny_model, tmp_path):
    from transformers import AutoProcessor

    from modeling_sacon import SaconProcessor

    tiny_model.save_pretrained(tmp_path)
    for load in (SaconProcessor.from_pretrained, AutoProcessor.from_pretrained):
        with pytest.raises(OSError, match="has no tokenizer files") as err:
            load(tmp_path)
        assert str(tmp_path) in str(err.value) and "processor.save_pretrained(" in str(err.value)


def test_push_to_hub_uploads_the_processor_code(fake_hub, tmp_path):
    from hub_server import hub_env

    code = """
        from modeling_sacon import SaconProcessor
        from modeling_sacon.utils.defaults import default_backbone_path
        SaconProcessor.from_pretrained(default_backbone_path()).save_pretrained("out", push_to_hub=True, repo_id="org/proc")
    """
    env = hub_env(fake_hub.endpoint, tmp_path)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    files = fake_hub.files("org/proc")
    assert {"processor_config.json", "tokenizer.json", "processing_sacon.py", "sentence_forms.py"} <= set(files), sorted(files)
    assert json.loads(files["processor_config.json"])["auto_map"] == {"AutoProcessor": "processing_sacon.SaconProcessor"}
