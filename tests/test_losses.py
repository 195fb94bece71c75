"""The loss terms against closed-form values, a plain-Python re-computation, and batch permutations."""

import math

import pytest
import torch

from modeling_sacon.losses import (
    deduplicate_labels,
    label_anchored_loss,
    masked_lm_loss,
    sentence_anchored_loss,
    symmetric_contrastive_loss,
)

E = math.e


def one_hot_example():
    """4 sentences, relations [0, 1, 0, 0]; each sentence equals its label's one-hot vector: cosines are 1 or 0."""
    labels = torch.tensor([0, 1, 0, 0])
    label_embeds = torch.eye(2)
    sentence_embeds = label_embeds[labels] * torch.tensor([[2.0], [0.5], [3.0], [1.0]])  # norms must not matter
    return sentence_embeds, label_embeds, labels


def test_closed_form_values_both_reductions():
    sentence_embeds, label_embeds, labels = one_hot_example()
    scale = torch.tensor(0.0)  # exp(0) = 1: logits are the cosines
    # sentence-anchored: every sentence sees e^1 for its label and e^0 for the other: -log(e / (e + 1))
    expected_s = math.log((E + 1) / E)
    # label 0 has 3 positives among 4 sentences (p = e / (3e + 1) each); label 1 one positive (p = e / (e + 3))
    expected_l_sum = (3 * math.log((3 * E + 1) / E) + math.log((E + 3) / E)) / 2
    expected_l_mean = (math.log((3 * E + 1) / E) + math.log((E + 3) / E)) / 2

    total, s_loss, l_loss, logits = symmetric_contrastive_loss(sentence_embeds, label_embeds, labels, scale, "sum")
    assert s_loss.item() == pytest.approx(expected_s, abs=1e-6)
    assert l_loss.item() == pytest.approx(expected_l_sum, abs=1e-6)
    assert total.item() == pytest.approx((expected_s + expected_l_sum) / 2, abs=1e-6)
    assert logits.shape == (4, 2)
    _, _, l_mean, _ = symmetric_contrastive_loss(sentence_embeds, label_embeds, labels, scale, "mean")
    assert l_mean.item() == pytest.approx(expected_l_mean, abs=1e-6)


def plain_python_losses(sim, labels, reduction):
    """The paper's definitions written with loops over Python floats: sim[b][u] are scaled cosines."""
    num_sentences, num_labels = len(sim), len(sim[0])
    s_terms = [-(sim[b][labels[b]] - math.log(sum(math.exp(x) for x in sim[b]))) for b in range(num_sentences)]
    l_terms = []
    for u in range(num_labels):
        log_z = math.log(sum(math.exp(sim[b][u]) for b in range(num_sentences)))
        positives = [-(sim[b][u] - log_z) for b in range(num_sentences) if labels[b] == u]
        l_terms.append(sum(positives) / (len(positives) if reduction == "mean" else 1))
    return sum(s_terms) / num_sentences, sum(l_terms) / num_labels


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_plain_python_with_repeated_relations(reduction):
    generator = torch.Generator().manual_seed(3)
    sentence_embeds = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    label_embeds = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 2, 2, 1, 0, 2, 1])
    scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    s_norm = sentence_embeds / sentence_embeds.norm(dim=1, keepdim=True)
    l_norm = label_embeds / label_embeds.norm(dim=1, keepdim=True)
    sim = (scale.exp() * s_norm @ l_norm.T).tolist()
    expected_s, expected_l = plain_python_losses(sim, labels.tolist(), reduction)
    _, s_loss, l_loss, _ = symmetric_contrastive_loss(sentence_embeds, label_embeds, labels, scale, reduction)
    assert s_loss.item() == pytest.approx(expected_s, rel=1e-9)
    assert l_loss.item() == pytest.approx(expected_l, rel=1e-9)


def test_invariant_to_permuting_sentences_and_labels():
    generator = torch.Generator().manual_seed(0)
    sentence_embeds = torch.randn(6, 4, generator=generator)
    label_embeds = torch.randn(3, 4, generator=generator)
    labels = torch.tensor([0, 1, 1, 2, 0, 1])
    scale = torch.tensor(2.0)
    reference = symmetric_contrastive_loss(sentence_embeds, label_embeds, labels, scale)[0]
    sentence_order = torch.randperm(6, generator=generator)
    label_order = torch.tensor([2, 0, 1])  # new row r holds old label label_order[r]
    old_to_new = torch.argsort(label_order)
    permuted = symmetric_contrastive_loss(
        sentence_embeds[sentence_order], label_embeds[label_order], old_to_new[labels[sentence_order]], scale
    )[0]
    assert permuted.item() == pytest.approx(reference.item(), abs=1e-6)


def test_label_anchored_rejects_label_without_sentence():
    with pytest.raises(ValueError, match="at least one sentence"):
        label_anchored_loss(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="reduction"):
        label_anchored_loss(torch.zeros(2, 2), torch.tensor([0, 1]), reduction="max")


def test_sentence_anchored_is_cross_entropy_and_mlm_denominator():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(E / (E + 1))) / 2
    assert sentence_anchored_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(expected, abs=1e-6)
    assert masked_lm_loss(logits, torch.tensor([0, 1]), num_items=4).item() == pytest.approx(expected / 2, abs=1e-6)


def test_deduplicate_labels_keeps_first_row_per_relation():
    embeds = torch.arange(5.0).unsqueeze(1)  # rows 0..4
    relation_ids = torch.tensor([7, 3, 7, 9, 3])
    unique_embeds, labels = deduplicate_labels(embeds, relation_ids, torch.tensor([9, 7, 3, 3]))
    assert unique_embeds.squeeze(1).tolist() == [1.0, 0.0, 3.0]  # relations 3, 7, 9 -> first rows 1, 0, 3
    assert labels.tolist() == [2, 1, 0, 0]
    with pytest.raises(ValueError, match="no label row"):
        deduplicate_labels(embeds, relation_ids, torch.tensor([5]))


def test_non_default_anchored_weights_against_hand_computed_values():
    """The objective (what the model's forward calls) with weights 0.3 / 2.5 and scale 2 on the one-hot example."""
    from modeling_sacon import SaconConfig
    from modeling_sacon.losses import SaconObjective

    config = SaconConfig(sentence_anchored_weight=0.3, label_anchored_weight=2.5, label_anchored_reduction="sum")
    sentence_embeds, label_embeds, labels = one_hot_example()
    e2 = math.exp(2.0)  # logits are 2 * cosine: 2 for a sentence's own label, 0 for the other
    expected_s = math.log((e2 + 1) / e2)
    expected_l = (3 * math.log((3 * e2 + 1) / e2) + math.log((e2 + 3) / e2)) / 2
    total, s_loss, l_loss = SaconObjective(config).contrastive(sentence_embeds, label_embeds, labels, torch.tensor(math.log(2.0)))
    assert s_loss.item() == pytest.approx(expected_s, abs=1e-6) and l_loss.item() == pytest.approx(expected_l, abs=1e-6)
    assert total.item() == pytest.approx((0.3 * expected_s + 2.5 * expected_l) / 2, abs=1e-6)
