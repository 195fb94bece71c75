"""Issue 9's building blocks: pretrained MLM heads carried over, the temperature clamp on the parameter itself, the
long-tail share of relation-balanced batches, and the embedded v2 corpus."""

from __future__ import annotations

import collections
import logging
import math

import pytest
import torch
from transformers import BertForMaskedLM, TrainerCallback

from modeling_sacon import SaconDualEncoderModel
from modeling_sacon.data import RelationBalancedBatchSampler, load_pretraining_corpus

from conftest import tiny_bert_config
from test_collator import synthetic_dataset
from test_trainer import arguments, tiny, trainer_for


@pytest.fixture
def masked_lm_dir(processor, tmp_path):
    """A tiny BertForMaskedLM saved with distinctive head weights (far from any fresh initialisation)."""
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config(len(processor.tokenizer))).eval()
    head = model.cls.predictions
    with torch.no_grad():
        head.transform.dense.weight.normal_(0.0, 0.5)
        head.transform.dense.bias.uniform_(-1.0, 1.0)
        head.transform.LayerNorm.weight.uniform_(0.5, 1.5)
        head.transform.LayerNorm.bias.uniform_(-1.0, 1.0)
        head.bias.uniform_(-3.0, 3.0)
    model.save_pretrained(tmp_path / "mlm")
    return tmp_path / "mlm", model


def test_pretrained_mlm_heads_are_carried_over(masked_lm_dir):
    path, reference = masked_lm_dir
    model, info = SaconDualEncoderModel.from_encoders_pretrained(str(path), output_loading_info=True)
    model.eval()
    assert info == {"pretrained_mlm_heads": {"sentence": True, "label": True}}
    source = reference.cls.predictions
    for head, encoder in ((model.sentence_mlm_head, model.sentence_encoder), (model.label_mlm_head, model.label_encoder)):
        torch.testing.assert_close(head.dense.weight, source.transform.dense.weight, rtol=0, atol=0)
        torch.testing.assert_close(head.dense.bias, source.transform.dense.bias, rtol=0, atol=0)
        torch.testing.assert_close(head.LayerNorm.weight, source.transform.LayerNorm.weight, rtol=0, atol=0)
        torch.testing.assert_close(head.LayerNorm.bias, source.transform.LayerNorm.bias, rtol=0, atol=0)
        torch.testing.assert_close(head.decoder.bias, source.bias, rtol=0, atol=0)
        assert head.decoder.weight is encoder.get_input_embeddings().weight  # decoder tied, as in BertForMaskedLM

    input_ids = torch.randint(1000, 2000, (3, 12), generator=torch.Generator().manual_seed(1))
    input_ids[:, 4] = 103  # [MASK]
    with torch.no_grad():
        expected = reference(input_ids=input_ids).logits
        hidden = model.sentence_encoder(input_ids=input_ids).last_hidden_state
        torch.testing.assert_close(model.sentence_mlm_head(hidden), expected, rtol=0, atol=1e-5)
        hidden = model.label_encoder(input_ids=input_ids).last_hidden_state
        torch.testing.assert_close(model.label_mlm_head(hidden), expected, rtol=0, atol=1e-5)


def test_growing_the_vocabulary_keeps_the_pretrained_output_bias(masked_lm_dir):
    path, reference = masked_lm_dir
    old = reference.config.vocab_size
    model = SaconDualEncoderModel.from_encoders_pretrained(str(path), vocab_size=old + 5)
    for head in (model.sentence_mlm_head, model.label_mlm_head):
        assert head.decoder.bias.shape == (old + 5,)
        torch.testing.assert_close(head.decoder.bias[:old], reference.cls.predictions.bias, rtol=0, atol=0)


def test_a_checkpoint_without_head_logs_that_its_heads_are_new(processor, tmp_path, caplog):
    torch.manual_seed(0)
    reference = BertForMaskedLM(tiny_bert_config(len(processor.tokenizer)))
    reference.bert.save_pretrained(tmp_path / "bare")  # the encoder alone, as all-MiniLM-L6-v2 is published
    with caplog.at_level(logging.WARNING, logger="modeling_sacon"):
        model, info = SaconDualEncoderModel.from_encoders_pretrained(str(tmp_path / "bare"), output_loading_info=True)
    assert info == {"pretrained_mlm_heads": {"sentence": False, "label": False}}
    messages = [record.getMessage() for record in caplog.records if "no masked-LM head" in record.getMessage()]
    assert len(messages) == 2 and "sentence tower" in messages[0] and "label tower" in messages[1]
    assert not torch.equal(model.sentence_mlm_head.dense.weight, reference.cls.predictions.transform.dense.weight)


def test_logit_scale_past_the_maximum_comes_back_and_stays_learnable(processor, tmp_path):
    data = synthetic_dataset(num_relations=8, per_relation=12)
    model = tiny(processor, seed=0)
    maximum = model.config.logit_scale_max
    with torch.no_grad():
        model.logit_scale.fill_(maximum + 1.0)  # as a run at lr 1e-2 can leave it
    trainer = trainer_for(processor, data, model, arguments(tmp_path, max_steps=3, save_strategy="no"))
    values = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            values.append(float(model.logit_scale.detach()))

    trainer.add_callback(Watch())
    trainer.train()
    assert values[0] == pytest.approx(maximum)  # clamped back after the first optimizer step
    assert values[1] != values[0] or values[2] != values[1]  # and moving again: its gradient is not zero
    assert all(value <= maximum + 1e-7 for value in values)
    assert trainer.temperature() == pytest.approx(math.exp(-values[-1]), rel=1e-5)


def test_longtail_share_fixes_the_tail_relations_of_every_batch():
    relations = [f"dense{i}" for i in range(6) for _ in range(30)] + [f"tail{i}" for i in range(20) for _ in range(3)]
    sampler = RelationBalancedBatchSampler(relations, 8, 2, seed=3, longtail_share=0.25, num_batches=50)
    assert sampler.tail_relations_per_batch == 2
    for batch in sampler:
        names = [relations[i] for i in batch]
        groups = [names[k : k + 2] for k in range(0, 16, 2)]
        assert all(a == b for a, b in groups)  # relation-major groups of n: every label row keeps its positives
        assert sum(group[0].startswith("tail") for group in groups) == 2
        assert len({group[0] for group in groups}) == 8
    uniform = RelationBalancedBatchSampler(relations, 8, 2, seed=3, num_batches=200)
    tail_share = sum(relations[i].startswith("tail") for batch in uniform for i in batch) / (200 * 16)
    assert tail_share > 0.6  # without the option the 20 tail relations crowd out the 6 dense ones (20/26 expected)
    small_tail = relations[:180] + relations[180:195]  # 6 dense relations, 5 long-tail ones
    assert RelationBalancedBatchSampler(small_tail, 8, 2, longtail_share=0.9).tail_relations_per_batch == 5  # all it has
    assert RelationBalancedBatchSampler(small_tail, 8, 2, longtail_share=0.0).tail_relations_per_batch == 2  # dense short
    for batch in RelationBalancedBatchSampler(small_tail, 8, 2, longtail_share=0.9, num_batches=5):
        assert len({small_tail[i] for i in batch}) == 8


def test_the_embedded_v2_corpus(data_dir):
    dataset, labels = load_pretraining_corpus(data_dir)
    counts = collections.Counter(dataset["relation"])
    assert len(counts) == len(labels) == 912
    assert sum(count >= 20 for count in counts.values()) == 105 and min(counts.values()) >= 2
    assert not set(counts) & {"P155", "P177", "P25", "P50", "P1056"}  # FewRel val / test / NYT relations stay out
    sampler = RelationBalancedBatchSampler(dataset["relation"], 16, 2, seed=0, longtail_share=0.125, num_batches=5)
    for batch in sampler:
        assert sum(counts[dataset["relation"][i]] < 20 for i in batch) == 2 * 2
    dense, dense_labels = load_pretraining_corpus(data_dir, corpus="v2_dense")
    assert len(dense_labels) == 105 and len(dense) == sum(c for c in counts.values() if c >= 20)
    with pytest.raises(ValueError, match="unknown pre-training corpus 'v3'"):
        load_pretraining_corpus(data_dir, corpus="v3")


def test_a_tower_without_mlm_gets_unmasked_inputs(processor):
    from modeling_sacon.data.collator import SaconPretrainingCollator

    dataset, table = synthetic_dataset(num_relations=4, per_relation=2)
    rows = [dataset[i] for i in range(len(dataset))]
    masked = SaconPretrainingCollator(processor, table, mlm_probability=0.5, seed=0)(rows)
    plain = SaconPretrainingCollator(processor, table, mlm_probability=0.5, seed=0, sentence_mlm=False, label_mlm=False)(rows)
    assert "mlm_labels" not in plain and "label_mlm_labels" not in plain
    mask_id = processor.tokenizer.mask_token_id
    assert (masked["input_ids"] == mask_id).any() and not (plain["input_ids"] == mask_id).any()
    assert not (plain["label_input_ids"] == mask_id).any()
    where = masked["mlm_labels"] != -100  # masking only changed the chosen positions
    torch.testing.assert_close(plain["input_ids"][~where], masked["input_ids"][~where])


def test_label_rows_without_sentences_are_negatives_not_anchors():
    from modeling_sacon.losses import label_anchored_loss

    logits_per_label = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), 0.0], [5.0, 5.0]])  # [U=3, B=2]
    labels = torch.tensor([0, 1])  # row 2 has no sentence: a negative only
    with pytest.raises(ValueError, match="at least one sentence"):
        label_anchored_loss(logits_per_label, labels)
    # row 0: -log softmax([0, log 3])[0] = log 4; row 1: -log softmax([log 2, 0])[1] = log 3; row 2 is no anchor
    value = label_anchored_loss(logits_per_label, labels, negative_rows=True)
    assert value.item() == pytest.approx((math.log(4.0) + math.log(3.0)) / 2, abs=1e-6)


def test_label_negatives_enter_the_sentence_anchored_softmax(processor):
    from modeling_sacon import SaconConfig
    from modeling_sacon.data.collator import SaconPretrainingCollator

    dataset, table = synthetic_dataset(num_relations=8, per_relation=2)
    rows = [dataset[i] for i in range(8)]  # the first 4 relations, 2 sentences each
    collator = SaconPretrainingCollator(processor, table, seed=0, label_negatives=3, sentence_mlm=False, label_mlm=False)
    batch = collator(rows)
    ids = batch["label_relation_ids"].tolist()
    assert len(ids) == 4 + 3 and len(set(ids)) == 7  # the batch's 4 relations first, then 3 others
    assert int(batch["labels"].max()) == 3
    torch.manual_seed(0)
    config = SaconConfig(sentence_config=tiny_bert_config(len(processor.tokenizer)).to_dict(), label_negatives=3)
    model = SaconDualEncoderModel(config).eval()
    with torch.no_grad():
        out = model(**batch)
        assert out.logits_per_sentence.shape == (8, 7)
        expected = torch.nn.functional.cross_entropy(out.logits_per_sentence, batch["labels"])
        torch.testing.assert_close(out.sentence_anchored_loss, expected)
        plain = SaconDualEncoderModel(SaconConfig(sentence_config=config.sentence_config.to_dict()))
        plain.load_state_dict(model.state_dict())
        with pytest.raises(ValueError, match="at least one sentence"):  # negatives need the config to accept them
            plain.eval()(**batch)
