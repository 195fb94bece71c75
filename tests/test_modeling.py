"""SaconDualEncoderModel: forward and gradients, construction from pretrained encoders, config validation."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from modeling_sacon import SaconConfig, SaconDualEncoderModel, SaconFewShotConfig, SaconProcessor
from modeling_sacon.configuration_sacon import FEWSHOT_OPTIONS, MOVED_OPTIONS
from modeling_sacon.utils.defaults import default_backbone_path
from modeling_sacon.modeling_sacon import packed_last_hidden_state, packs_sequences

from conftest import tiny_bert_config


def make_batch(processor, instances, relations, label_texts, generator=None, mlm_probability=0.15):
    """Sentence and distinct-label tensors with MLM on both sides, as the pre-training collator builds them."""
    distinct = sorted(set(relations))
    sentences = processor.encode_instances(instances)
    labels_enc = processor.encode_labels([label_texts[r] for r in distinct])
    generator = generator or torch.Generator().manual_seed(0)
    input_ids, mlm_labels = processor.mask_tokens(sentences["input_ids"], mlm_probability, generator)
    label_ids, label_mlm = processor.mask_tokens(labels_enc["input_ids"], mlm_probability, generator)
    return {
        "input_ids": input_ids,
        "attention_mask": sentences["attention_mask"],
        "entity_positions": sentences["entity_positions"],
        "label_input_ids": label_ids,
        "label_attention_mask": labels_enc["attention_mask"],
        "labels": torch.tensor([distinct.index(r) for r in relations]),
        "mlm_labels": mlm_labels,
        "label_mlm_labels": label_mlm,
    }


TOY_LABELS = {"P1": ("located in", "the place something is in"), "P2": ("founded by", "who founded it")}
TOY = [
    {"tokens": "paris is a city in france".split(), "h": ["paris", "", [[0]]], "t": ["france", "", [[5]]]},
    {"tokens": "apple was founded by steve jobs".split(), "h": ["apple", "", [[0]]], "t": ["jobs", "", [[4, 5]]]},
    {"tokens": "lyon lies in the south of france".split(), "h": ["lyon", "", [[0]]], "t": ["france", "", [[6]]]},
]


def test_forward_shapes_and_gradients_reach_everything(processor, tiny_model):
    batch = make_batch(processor, TOY, ["P1", "P2", "P1"], TOY_LABELS, mlm_probability=0.3)
    out = tiny_model.train()(**batch)
    assert out.logits_per_sentence.shape == (3, 2) and out.logits_per_label.shape == (2, 3)
    assert out.sentence_embeds.shape == (3, 64) and out.label_embeds.shape == (2, 64)
    expected = out.contrastive_loss + out.sentence_mlm_loss + out.label_mlm_loss
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    for name in ("sentence_encoder", "label_encoder"):
        grads = [p.grad for n, p in tiny_model.named_parameters() if n.startswith(name) and p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert tiny_model.logit_scale.grad is not None and torch.isfinite(tiny_model.logit_scale.grad)
    assert tiny_model.logit_scale.grad.abs() > 0


def test_logits_without_loss_and_scale_clamp(processor, tiny_model):
    batch = make_batch(processor, TOY, ["P1", "P2", "P1"], TOY_LABELS)
    for key in ("labels", "mlm_labels", "label_mlm_labels"):
        batch.pop(key)
    with torch.no_grad():
        tiny_model.logit_scale.fill_(10.0)
        out = tiny_model(**batch)
    assert out.loss is None
    cosine = out.sentence_embeds @ out.label_embeds.T
    assert torch.allclose(out.logits_per_sentence, 100.0 * cosine, atol=1e-4)  # exp(log 100), not exp(10)


def test_features_match_forward_embeddings(processor, tiny_model):
    batch = make_batch(processor, TOY, ["P1", "P2", "P1"], TOY_LABELS, mlm_probability=0.0)
    with torch.no_grad():
        out = tiny_model(**batch)
        sentence = tiny_model.get_sentence_features(batch["input_ids"], batch["attention_mask"], batch["entity_positions"])
        label = tiny_model.get_label_features(batch["label_input_ids"], batch["label_attention_mask"])
    assert torch.allclose(torch.nn.functional.normalize(sentence, dim=-1), out.sentence_embeds, atol=1e-6)
    assert torch.allclose(torch.nn.functional.normalize(label, dim=-1), out.label_embeds, atol=1e-6)


def test_label_mean_ignores_padding(processor, tiny_model):
    """A label encoded alone and padded inside a batch with a longer one gives the same embedding."""
    texts = [("located in", ""), ("founded by", "the person or organisation who founded this organisation")]
    with torch.no_grad():
        alone = tiny_model.get_label_features(**processor.encode_labels(texts[:1]))
        padded = tiny_model.get_label_features(**processor.encode_labels(texts))[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


PACKING_LABELS = {
    "P1": ("located in", ""),
    "P2": ("founded by", "the person or organisation who founded this organisation, company or institution"),
    "P3": ("country", "sovereign state of this item"),
    "P4": ("part of", "object of which the subject is a part"),
    "P5": ("sibling", ""),
}


LONG_SENTENCE = {  # a sentence twice as long as TOY's, so two short ones share a packed row
    "tokens": ("the river thames flows through london , the capital of the united kingdom , and past many towns and "
               "villages until it reaches the north sea near its estuary").split(),
    "h": ["thames", "", [[2]]], "t": ["north sea", "", [[24, 25]]],
}


@pytest.mark.parametrize("tower, flag, rows", [("label", "pack_label_texts", 5), ("sentence", "pack_sentences", 6)])
def test_packed_towers_match_padded_forward_and_gradients(processor, tiny_model, tower, flag, rows):
    """Packing a tower's sequences into fewer rows changes the cost, not the embeddings, losses or gradients (the
    sentence tower's entity positions index the padded layout, which the packed states are returned in)."""
    encoder = tiny_model.label_encoder if tower == "label" else tiny_model.sentence_encoder
    assert packs_sequences(encoder)
    relations = ["P1", "P2", "P3", "P4", "P5", "P1"]  # 6 sentences, 5 distinct label texts
    batch = make_batch(processor, [*TOY, LONG_SENTENCE, *TOY[:2]], relations, PACKING_LABELS, mlm_probability=0.3)
    rows_seen = []
    encoder.register_forward_hook(lambda module, args, kwargs, out: rows_seen.append(kwargs["input_ids"].shape), with_kwargs=True)
    results = {}
    for pack in (False, True):
        setattr(tiny_model.config, flag, pack)
        tiny_model.zero_grad()
        out = tiny_model(**batch)  # eval mode: no dropout, so both passes are deterministic
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if n.startswith(tower) and p.grad is not None}
        results[pack] = (out, grads)
    padded_shape, packed_shape = rows_seen
    assert padded_shape[0] == rows and packed_shape[0] < rows  # the packed pass really ran on fewer rows
    (padded, padded_grads), (packed, packed_grads) = results[False], results[True]
    for field in ("loss", f"{tower}_mlm_loss", f"{tower}_anchored_loss", f"{tower}_embeds"):
        assert torch.allclose(getattr(packed, field), getattr(padded, field), atol=1e-5), field
    assert padded_grads.keys() == packed_grads.keys() and len(padded_grads) > 10
    for name, grad in padded_grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-5), name


def test_packed_hidden_states_with_short_rows_and_left_padding(processor, tiny_model):
    encoded = processor.encode_labels(list(PACKING_LABELS.values()))
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    with torch.no_grad():
        reference = tiny_model.label_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        keep = mask.bool()
        for row_tokens in (None, 1, 40):  # 1: one sequence per row (capacity grows to the longest)
            packed = packed_last_hidden_state(tiny_model.label_encoder, ids, mask, row_tokens=row_tokens)
            assert torch.allclose(packed[keep], reference[keep], atol=1e-5) and not packed[~keep].any()
        # left padding: positions stay those of the padded batch (BERT does not shift them)
        shift = (~keep).sum(1)
        left_ids = torch.stack([row.roll(int(s)) for row, s in zip(ids, shift)])
        left_mask = torch.stack([row.roll(int(s)) for row, s in zip(mask, shift)])
        left_reference = tiny_model.label_encoder(input_ids=left_ids, attention_mask=left_mask).last_hidden_state
        left_packed = packed_last_hidden_state(tiny_model.label_encoder, left_ids, left_mask)
        assert torch.allclose(left_packed[left_mask.bool()], left_reference[left_mask.bool()], atol=1e-5)


@pytest.mark.parametrize("options", [{"share_encoders": True}, {"projection_dim": 16}, {"label_pooling": "mean"}])
def test_variants_train_and_round_trip(processor, tmp_path, options):
    torch.manual_seed(0)
    config = SaconConfig(sentence_config=tiny_bert_config(len(processor.tokenizer)).to_dict(), **options)
    model = SaconDualEncoderModel(config).eval()
    batch = make_batch(processor, TOY, ["P1", "P2", "P1"], TOY_LABELS)
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).loss, model(**batch).loss, atol=1e-6)
    assert ("label_encoder" in dict(model.named_children())) is not options.get("share_encoders", False)


def test_saved_checkpoint_declares_ties_and_init(processor, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert "logit_scale" in state and "sentence_mlm_head.decoder.bias" in state
    assert "sentence_mlm_head.decoder.weight" not in state  # tied to the word embeddings, declared, not duplicated
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_sacon.SaconConfig",
        "AutoModel": "modeling_sacon.SaconDualEncoderModel",
    }
    # the pipeline that config.custom_pipelines names is saved with the model, with the code it imports
    assert {"pipeline_sacon.py", "scoring.py", "processing_sacon.py"} <= {path.name for path in tmp_path.iterdir()}
    # a checkpoint without logit_scale gets the configured initial value, never uninitialised memory
    del state["logit_scale"]
    from safetensors.torch import save_file

    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert reloaded.logit_scale.item() == pytest.approx(tiny_model.config.logit_scale_init_value)
    assert reloaded.sentence_mlm_head.decoder.weight is reloaded.sentence_encoder.embeddings.word_embeddings.weight


def test_gradient_checkpointing_gives_same_gradients(processor, tiny_model):
    batch = make_batch(processor, TOY, ["P1", "P2", "P1"], TOY_LABELS)
    tiny_model.eval()  # no dropout: the two passes must agree
    tiny_model(**batch).loss.backward()
    reference = tiny_model.sentence_encoder.embeddings.word_embeddings.weight.grad.clone()
    tiny_model.zero_grad()
    tiny_model.activation_checkpointing_enable()
    tiny_model.train()
    for module in tiny_model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    tiny_model(**batch).loss.backward()
    assert torch.allclose(tiny_model.sentence_encoder.embeddings.word_embeddings.weight.grad, reference, atol=1e-6)


def test_from_encoders_pretrained_on_minilm_with_fewrel(processor, val_wiki):
    model = SaconDualEncoderModel.from_encoders_pretrained(default_backbone_path(), vocab_size=len(processor.tokenizer))
    original = AutoModel.from_pretrained(default_backbone_path())
    # the pretrained weights are kept (not re-initialised), and the two towers are independent copies
    for tower in (model.sentence_encoder, model.label_encoder):
        assert torch.equal(tower.encoder.layer[0].attention.self.query.weight, original.encoder.layer[0].attention.self.query.weight)
        assert torch.equal(tower.embeddings.word_embeddings.weight[: original.config.vocab_size], original.embeddings.word_embeddings.weight)
    assert model.sentence_encoder.embeddings.word_embeddings.weight is not model.label_encoder.embeddings.word_embeddings.weight
    assert model.get_input_embeddings().num_embeddings == len(processor.tokenizer)

    from modeling_sacon.data import label_texts, load_label_table

    relations = ["P177", "P364", "P2094", "P361"]
    instances = [inst for r in relations for inst in val_wiki[r][:2]]
    table = label_texts(relations, load_label_table(processor_data_path("pid2name.json")))
    batch = make_batch(processor, instances, [r for r in relations for _ in range(2)], table, torch.Generator().manual_seed(1))
    never = torch.tensor(sorted(processor.never_mask_ids))
    for ids_key, labels_key in (("input_ids", "mlm_labels"), ("label_input_ids", "label_mlm_labels")):
        masked_positions = batch[labels_key] != -100
        assert masked_positions.any()
        assert not torch.isin(batch[labels_key][masked_positions], never).any()  # no marker / special was chosen
    markers = torch.tensor(processor.marker_ids)
    assert (torch.isin(batch["input_ids"], markers).sum(1) == 4).all()  # all four markers survive masking
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.logits_per_sentence.shape == (8, 4)
    assert out.sentence_mlm_loss > 0 and out.label_mlm_loss > 0


def processor_data_path(name):
    from modeling_sacon.data import get_data_dir

    return get_data_dir() / "fewrel" / name


@pytest.mark.parametrize(
    "options, message",
    [
        ({"label_pooling": "max"}, "label_pooling='max' is unknown"),
        ({"label_anchored_reduction": "avg"}, "label_anchored_reduction='avg' is unknown"),
        ({"label_mlm_weight": -0.5}, "label_mlm_weight must be a non-negative number"),
        ({"sentence_anchored_weight": -1}, "sentence_anchored_weight must be a non-negative"),
        ({"logit_scale_init_value": 9.0}, "exceeds logit_scale_max"),
        ({"fewshot_method": "nearest"}, "fewshot_method='nearest' is unknown"),
        ({"fewshot_similarity": "dot"}, "similarity='dot' is unknown"),
    ],
)
def test_config_rejects_bad_options(options, message):
    """The architecture and objective options of SaconConfig; the few-shot ones of SaconFewShotConfig."""
    config_class = SaconFewShotConfig if any(key.startswith("fewshot_") for key in options) else SaconConfig
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        config_class(**options)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"head_markers": ["[E1]"]}, "head_markers must be two non-empty strings"),
        ({"head_markers": ["[X]", "[Y]"], "tail_markers": ["[X]", "[Z]"]}, "four distinct strings"),
        ({"blank_token": "[E1]"}, "blank_token must be a non-empty string other than the entity markers"),
        ({"max_length": 4}, "max_length must be an int of at least 8 tokens"),
    ],
)
def test_processor_rejects_bad_options(processor, options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        SaconProcessor(processor.tokenizer, **options)


def test_config_holds_architecture_and_objective_only():
    """Tokenisation options live in the processor's config, few-shot scoring in SaconFewShotConfig; a config.json
    saved with them (before they moved) still loads, and they are dropped."""
    fields = SaconConfig().to_dict()
    assert not set(fields) & set(MOVED_OPTIONS)
    assert set(FEWSHOT_OPTIONS) <= set(SaconFewShotConfig().to_dict())
    old = SaconConfig.from_dict({**fields, "head_markers": ["<h>", "</h>"], "max_length": 32, "fewshot_method": "zero_shot"})
    assert not hasattr(old, "head_markers") and not hasattr(old, "fewshot_method")
    assert SaconFewShotConfig.from_dict({**fields, "fewshot_method": "zero_shot"}).fewshot_method == "zero_shot"


def test_mismatched_hidden_sizes_need_a_projection():
    small, large = tiny_bert_config(100).to_dict(), {**tiny_bert_config(100).to_dict(), "hidden_size": 48, "num_attention_heads": 4}
    with pytest.raises(ValueError, match="set projection_dim"):
        SaconDualEncoderModel(SaconConfig(sentence_config=small, label_config=large))
    model = SaconDualEncoderModel(SaconConfig(sentence_config=small, label_config=large, projection_dim=8))
    assert model.get_label_features(torch.tensor([[1, 2, 3]])).shape == (1, 8)


def test_a_checkpoint_saved_before_the_config_split_still_loads():
    """`tests/data/checkpoint_before_config_split`: a few-shot checkpoint saved by the code whose SaconConfig held the
    tokenisation and few-shot options (markers, max_length 32, label_augmented with NOTA, label pooling cls)."""
    from modeling_sacon import SaconForFewShotRelationClassification

    path = Path(__file__).parent / "data" / "checkpoint_before_config_split"
    expected = torch.load(path / "expected_features.pt")
    ids = torch.tensor([[2, 5, 9, 7, 3, 11, 4, 1]])
    mask, positions = torch.ones_like(ids), torch.tensor([[1, 4]])
    fewshot = SaconForFewShotRelationClassification.from_pretrained(path).eval()
    assert (fewshot.config.fewshot_method, fewshot.config.fewshot_nota, fewshot.config.label_pooling) == ("label_augmented", True, "cls")
    assert torch.equal(fewshot.nota_threshold.detach(), expected["nota"])
    dual = SaconDualEncoderModel.from_pretrained(path).eval()  # as AutoModel reads it: the few-shot options dropped
    assert not hasattr(dual.config, "fewshot_method") and not hasattr(dual.config, "max_length")
    with torch.no_grad():
        for model in (fewshot.sacon, dual):
            assert torch.allclose(model.get_sentence_features(ids, mask, positions), expected["sentence"], atol=1e-6)
            assert torch.allclose(model.get_label_features(ids, mask), expected["label"], atol=1e-6)


def test_marker_pooling_reads_the_hand_placed_positions(processor, tiny_model):
    """[h ; t] are the encoder's hidden states at exactly the given rows' positions (identity projection)."""
    batch = processor(["<e1>Paris</e1> is the capital of <e2>France</e2>", "<e2>Bern</e2> , capital of <e1>Swiss</e1>"])
    positions = torch.tensor([[3, 1], [0, 5]])  # arbitrary, hand-placed: not even on the markers
    with torch.no_grad():
        hidden = tiny_model.sentence_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        features = tiny_model.get_sentence_features(batch["input_ids"], batch["attention_mask"], positions)
    expected = torch.stack([torch.cat([hidden[0, 3], hidden[0, 1]]), torch.cat([hidden[1, 0], hidden[1, 5]])])
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)


def test_swapping_head_and_tail_changes_the_sentence_feature(processor, tiny_model):
    """The relation is directed: "Paris capital of France" and its swap must not share a representation."""
    tokens = "Paris is the capital of France".split()
    batch = processor([{"tokens": tokens, "head": (0, 1), "tail": (5, 6)}, {"tokens": tokens, "head": (5, 6), "tail": (0, 1)}])
    with torch.no_grad():
        forward, swapped = tiny_model.get_sentence_features(**batch)
    assert not torch.allclose(forward, swapped, atol=1e-3)
    half = forward.shape[0] // 2  # not merely the two halves exchanged: the markers themselves differ
    assert not torch.allclose(forward, torch.cat([swapped[half:], swapped[:half]]), atol=1e-3)
