"""GradCache (`contrastive_mini_batch_size`): one cached step gives the loss and the gradients of the uncached batch.

With dropout off, mini-batches of 4 (and an uneven 5 + 5 + 5 + 1) over a batch of 16 reproduce the model's own
forward and backward on the 16 rows. With dropout on, a 16-row forward and four 4-row forwards cannot draw the same
masks (each dropout call draws one stream for its tensor), so two checks cover it: one mini-batch of 16 replays the
masks of the model's own forward exactly, and mini-batches of 4 give the exact gradients of the loss under the
masks of their first pass (a one-graph computation over the same forwards); without the RNG replay both fail.
Across two processes with gather, see `test_distributed.py`.
"""

from __future__ import annotations

import copy

import pytest
import torch

from modeling_sacon import SaconConfig, SaconDualEncoderModel
from modeling_sacon.data.collator import SaconPretrainingCollator
from modeling_sacon.losses import masked_lm_loss
from modeling_sacon.training.gradcache import LABEL_KEYS, SENTENCE_KEYS, cached_contrastive_step, length_order, split_rows
from modeling_sacon.training.trainer import LOSS_TERMS, SaconTrainer, SaconTrainingArguments

from conftest import tiny_bert_config
from test_collator import synthetic_dataset

ATOL = 1e-5
TERMS = ("loss", "contrastive_loss", "sentence_anchored_loss", "label_anchored_loss", "sentence_mlm_loss", "label_mlm_loss")


@pytest.fixture(autouse=True)
def grad_enabled(one_thread):
    """Scripts that other tests run in-process turn gradients off globally (torch.set_grad_enabled(False))."""
    with torch.enable_grad():
        yield


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(num_relations=8, per_relation=8)


@pytest.fixture(scope="module")
def batch(processor, data):
    """16 sentences of 8 relations (2 each), their 8 label rows, MLM masks on both: a collated pre-training batch."""
    dataset, table = data
    rows = dataset.select(range(0, 64, 4)).to_list()
    out = SaconPretrainingCollator(processor, table, seed=0)(rows)
    assert out["input_ids"].shape[0] == 16 and out["label_input_ids"].shape[0] == 8
    assert (out["mlm_labels"] != -100).any() and (out["label_mlm_labels"] != -100).any()
    return out


def tiny(processor, dropout: float) -> SaconDualEncoderModel:
    torch.manual_seed(0)
    config = tiny_bert_config(len(processor.tokenizer))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    return SaconDualEncoderModel(SaconConfig(sentence_config=config.to_dict())).train()


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def max_grad_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    assert a.keys() == b.keys()
    return max(((a[n] - b[n]).abs().max().item(), n) for n in a)


def assert_same_step(reference, ref_grads, cached, cached_grads) -> None:
    for term in TERMS:
        assert float(getattr(cached, term)) == pytest.approx(float(getattr(reference, term).detach()), abs=ATOL), term
    diff, name = max_grad_diff(ref_grads, cached_grads)
    assert diff <= ATOL, (name, diff)
    # not vacuous: every part of the model gets a real gradient, logit_scale included
    assert ref_grads["logit_scale"].abs() > 1e-4
    for prefix in ("sentence_encoder.", "label_encoder.", "sentence_mlm_head.", "label_mlm_head."):
        assert any(g.abs().max() > 1e-3 for n, g in ref_grads.items() if n.startswith(prefix)), prefix


@pytest.mark.parametrize("mini_batch_size", [4, 5])
def test_without_dropout_equals_the_uncached_batch(processor, batch, mini_batch_size):
    model = tiny(processor, dropout=0.0)
    reference = copy.deepcopy(model)
    ref_out = reference(**batch)
    ref_out.loss.backward()
    cached = cached_contrastive_step(model, batch, mini_batch_size)
    assert_same_step(ref_out, grads(reference), cached, grads(model))


def test_one_mini_batch_replays_the_dropout_masks_of_the_model_forward(processor, batch):
    """Dropout on: a mini-batch of the whole batch draws in the forward's order and shapes, so the cached step must
    equal the model's own forward and backward exactly; without the replay, pass 2 draws other masks."""
    model = tiny(processor, dropout=0.1)
    reference = copy.deepcopy(model)
    torch.manual_seed(1)
    ref_out = reference(**batch)
    ref_out.loss.backward()
    torch.manual_seed(1)
    cached = cached_contrastive_step(model, batch, 16)
    assert_same_step(ref_out, grads(reference), cached, grads(model))

    unreplayed = copy.deepcopy(reference)
    unreplayed.zero_grad()
    torch.manual_seed(1)
    cached_contrastive_step(unreplayed, batch, 16, preserve_rng_state=False)
    assert max_grad_diff(grads(reference), grads(unreplayed))[0] > 1e-2


def one_graph_over_mini_batches(model, batch, size: int):
    """The uncached objective with every mini-batch forward kept in one graph and one backward: the exact gradient
    under the dropout masks that these forwards (in pass 1's order: sentences longest first, then labels) draw."""
    config = model.config
    order = length_order(batch["attention_mask"], size)
    assert order is not None and not torch.equal(order, torch.arange(len(order)))  # the reordering is exercised
    sorted_batch = {**batch, **{k: batch[k][order] for k in SENTENCE_KEYS if k in batch}, "labels": batch["labels"][order]}
    sentence_chunks, label_chunks = split_rows(sorted_batch, SENTENCE_KEYS, size), split_rows(batch, LABEL_KEYS, size)
    sentences = [model.encode_sentences(c["input_ids"], c["attention_mask"], c["entity_positions"]) for c in sentence_chunks]
    labels = [model.encode_labels(c["label_input_ids"], c["label_attention_mask"]) for c in label_chunks]
    contrastive, s_loss, l_loss = model.objective.contrastive(
        torch.cat([e for _, e in sentences]), torch.cat([e for _, e in labels]), sorted_batch["labels"], model.logit_scale_value()
    )

    def mlm(head, parts, key):
        chunks = sentence_chunks if key == "mlm_labels" else label_chunks
        hidden = torch.cat([h[c[key] != -100] for (h, _), c in zip(parts, chunks)])
        return masked_lm_loss(head(hidden), torch.cat([c[key][c[key] != -100] for c in chunks]))

    s_mlm, l_mlm = mlm(model.sentence_mlm_head, sentences, "mlm_labels"), mlm(model.label_mlm_head, labels, "label_mlm_labels")
    loss = contrastive + config.sentence_mlm_weight * s_mlm + config.label_mlm_weight * l_mlm
    loss.backward()
    return dict(zip(TERMS, (loss, contrastive, s_loss, l_loss, s_mlm, l_mlm)))


def test_dropout_on_gives_the_exact_gradients_of_the_first_pass_masks(processor, batch):
    model = tiny(processor, dropout=0.1)
    reference = copy.deepcopy(model)
    torch.manual_seed(2)
    ref = one_graph_over_mini_batches(reference, batch, 4)
    after_reference = torch.rand(3)
    torch.manual_seed(2)
    cached = cached_contrastive_step(model, batch, 4)
    # the replay restores the RNG: training continues on the stream pass 1 left, not a rewound one
    assert torch.equal(torch.rand(3), after_reference)
    for term, value in ref.items():
        assert float(getattr(cached, term)) == pytest.approx(float(value.detach()), abs=ATOL), term
    diff, name = max_grad_diff(grads(reference), grads(model))
    assert diff <= ATOL, (name, diff)

    unreplayed = copy.deepcopy(reference)
    unreplayed.zero_grad()
    torch.manual_seed(2)
    cached_contrastive_step(unreplayed, batch, 4, preserve_rng_state=False)
    assert max_grad_diff(grads(reference), grads(unreplayed))[0] > 1e-2


def test_longest_first_mini_batches_carry_less_padding(batch):
    order = length_order(batch["attention_mask"], 4)
    lengths = batch["attention_mask"].sum(1)
    assert sorted(order.tolist()) == list(range(16)) and (lengths[order].diff() <= 0).all()
    assert length_order(batch["attention_mask"], 16) is None  # one mini-batch: the batch order stands

    def padded_slots(chunks):
        return sum(c["attention_mask"].numel() for c in chunks)

    reordered = {k: batch[k][order] for k in SENTENCE_KEYS if k in batch}
    assert padded_slots(split_rows(reordered, SENTENCE_KEYS, 4)) < padded_slots(split_rows(batch, SENTENCE_KEYS, 4))


def test_split_rows_partitions_rows_and_trims_only_padding(batch):
    chunks = split_rows(batch, SENTENCE_KEYS, 5)
    assert [len(c["input_ids"]) for c in chunks] == [5, 5, 5, 1]
    assert set(chunks[0]) == {"input_ids", "attention_mask", "entity_positions", "mlm_labels"}
    for i, chunk in enumerate(chunks):
        rows = batch["attention_mask"][5 * i : 5 * i + 5]
        assert chunk["attention_mask"].shape[1] == int(rows.sum(1).max())  # right-padded rows: cut at the longest
        width = chunk["input_ids"].shape[1]
        assert torch.equal(chunk["input_ids"], batch["input_ids"][5 * i : 5 * i + 5, :width])
        assert torch.equal(chunk["entity_positions"], batch["entity_positions"][5 * i : 5 * i + 5])
        assert not batch["attention_mask"][5 * i : 5 * i + 5, width:].any()


def test_rejects_bad_input(processor, batch):
    model = tiny(processor, dropout=0.0)
    with pytest.raises(ValueError, match="contrastive_mini_batch_size must be >= 1"):
        cached_contrastive_step(model, batch, 0)
    with pytest.raises(ValueError, match="unexpected batch keys \\['pixel_values'\\]"):
        cached_contrastive_step(model, {**batch, "pixel_values": batch["input_ids"]}, 4)
    with pytest.raises(ValueError, match="has no 'labels'"):
        cached_contrastive_step(model, {k: v for k, v in batch.items() if k != "labels"}, 4)
    with pytest.raises(ValueError, match="contrastive_mini_batch_size must be >= 1"):
        SaconTrainingArguments(output_dir="unused", contrastive_mini_batch_size=0)


# ---------------------------------------------------------------------------------------------------------------
# The Trainer hook


class GradientRecorder:
    """Copies every gradient just before each optimizer step (after clipping would have run: it is off here)."""

    def __init__(self):
        from transformers import TrainerCallback

        recorder = self

        class Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                recorder.steps.append(grads(model))

        self.steps: list[dict[str, torch.Tensor]] = []
        self.callback = Callback()


def train(processor, data, tmp_path, **options):
    dataset, table = data
    args = SaconTrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        instances_per_relation=2, optim="sgd", learning_rate=0.5, logit_scale_learning_rate=0.5,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0, logging_steps=1, save_strategy="no",
        seed=0, disable_tqdm=True, report_to="none", use_cpu=True, dataloader_pin_memory=False, **options,
    )
    recorder = GradientRecorder()
    trainer = SaconTrainer(
        model=tiny(processor, dropout=0.0), args=args, train_dataset=dataset, processing_class=processor,
        data_collator=SaconPretrainingCollator(processor, table, seed=0), callbacks=[recorder.callback],
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return trainer.model, recorder.steps, logs


def test_trainer_cached_steps_equal_uncached_steps_with_gradient_accumulation(processor, data, tmp_path, monkeypatch):
    """Two optimizer steps of 2 accumulated micro-batches of 8, cached in mini-batches of 3: the same gradients at
    every step, the same parameters after it (SGD), the same logged loss terms. A spy proves the cached step ran
    (a Trainer falling back to the plain step would pass the comparison)."""
    from modeling_sacon.training import gradcache

    calls = []

    def spy(model, inputs, mini_batch_size, **kwargs):
        calls.append((len(inputs["input_ids"]), mini_batch_size))
        return cached_contrastive_step(model, inputs, mini_batch_size, **kwargs)

    monkeypatch.setattr(gradcache, "cached_contrastive_step", spy)
    plain_model, plain_grads, plain_logs = train(processor, data, tmp_path / "plain")
    assert calls == []
    cached_model, cached_grads, cached_logs = train(processor, data, tmp_path / "cached", contrastive_mini_batch_size=3)
    assert calls == [(8, 3)] * 4  # 2 optimizer steps x 2 accumulated micro-batches, each cached in mini-batches of 3
    assert len(plain_grads) == len(cached_grads) == 2
    for plain, cached in zip(plain_grads, cached_grads):
        diff, name = max_grad_diff(plain, cached)
        assert diff <= ATOL, (name, diff)
    for (name, p), q in zip(plain_model.named_parameters(), cached_model.parameters()):
        assert torch.allclose(p, q, atol=ATOL), name
    assert len(plain_logs) == len(cached_logs) == 2
    for plain, cached in zip(plain_logs, cached_logs):
        for key in ("loss", *LOSS_TERMS):
            assert cached[key] == pytest.approx(plain[key], abs=1e-4), key
