"""SaCon's symmetric anchored contrastive loss and the masked-LM term, as plain functions plus a module.

Shapes: B sentences, U distinct relation labels in the (global) batch, D embedding size, M masked tokens, V vocab.
`labels[b]` is the index (in [0, U)) of sentence b's relation among the U label rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def sentence_anchored_loss(logits_per_sentence: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each sentence picks its relation among the batch's U distinct labels.

    logits_per_sentence: [B, U]; labels: [B] -> scalar (mean over sentences).
    """
    return F.cross_entropy(logits_per_sentence, labels)


def label_anchored_loss(
    logits_per_label: torch.Tensor, labels: torch.Tensor, reduction: str = "sum", negative_rows: bool = False
) -> torch.Tensor:
    """Each label scores all B sentences; every sentence of its relation is a positive.

    logits_per_label: [U, B]; labels: [B] -> scalar (mean over the anchor labels). The per-label term is the negative
    sum of the positives' log-probabilities (`"sum"`, the authors' code) or their mean (`"mean"`, SupCon-style).
    Every label row must have a sentence in the batch, unless `negative_rows=True`: then rows without one (extra
    relation descriptions, see `SaconConfig.label_negatives`) are negatives of the sentence-anchored term only, and
    the mean runs over the rows that have positives.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    num_labels = logits_per_label.shape[0]
    log_probs = F.log_softmax(logits_per_label, dim=1)  # [U, B]
    positives = labels.unsqueeze(0) == torch.arange(num_labels, device=labels.device).unsqueeze(1)  # [U, B]
    anchors = positives.any(dim=1)  # [U]
    if not negative_rows and not bool(anchors.all()):
        raise ValueError("every label row needs at least one sentence of its relation in the batch")
    if not bool(anchors.any()):
        raise ValueError("no label row has a sentence of its relation in the batch")
    per_label = -(log_probs * positives).sum(dim=1)  # [U]
    if reduction == "mean":
        per_label = per_label / positives.sum(dim=1).clamp(min=1)
    return per_label[anchors].mean()


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_items: float | None = None) -> torch.Tensor:
    """Cross-entropy over the masked tokens only.

    logits: [M, V]; labels: [M]. `num_items` overrides the denominator (the default is M), so that several processes
    can divide their local sums by a shared count and DDP's gradient averaging reproduces the global mean.
    """
    total = F.cross_entropy(logits, labels, reduction="sum")
    denominator = num_items if num_items is not None else max(labels.numel(), 1)
    return total / denominator


def symmetric_contrastive_loss(
    sentence_embeds: torch.Tensor,
    label_embeds: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
    reduction: str = "sum",
    sentence_weight: float = 1.0,
    label_weight: float = 1.0,
    negative_rows: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weighted sentence-anchored + weighted label-anchored) / 2 on L2-normalised embeddings.

    sentence_embeds: [B, D]; label_embeds: [U, D] (normalised here); logit_scale: scalar log-scale.
    Returns (contrastive, sentence_anchored, label_anchored, logits_per_sentence [B, U]).
    """
    sentence_embeds = F.normalize(sentence_embeds, dim=-1)
    label_embeds = F.normalize(label_embeds, dim=-1)
    logits_per_sentence = logit_scale.exp() * sentence_embeds @ label_embeds.t()  # [B, U]
    s_loss = sentence_anchored_loss(logits_per_sentence, labels)
    l_loss = label_anchored_loss(logits_per_sentence.t(), labels, reduction, negative_rows)
    return (sentence_weight * s_loss + label_weight * l_loss) / 2, s_loss, l_loss, logits_per_sentence


# ----------------------------------------------------------------------------------------------------------------
# Cross-process negatives


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 with gradients flowing back to every process's local rows; sizes may differ per rank.

    `accelerator.gather` has no backward; the functional collective does (its backward is a reduce-scatter).
    """
    from torch.distributed import _functional_collectives as fc

    # newer torch names it all_gather_single_autograd and deprecates the old name with a warning on every call
    gather = getattr(fc, "all_gather_single_autograd", None) or fc.all_gather_tensor_autograd
    return _gather(tensor, lambda padded: gather(padded, gather_dim=0, group=dist.group.WORLD))


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 for tensors that need no gradient (ids, counts)."""

    def collect(padded: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(padded) for _ in range(world_size())]
        dist.all_gather(out, padded)
        return torch.cat(out, dim=0)

    return _gather(tensor.detach(), collect)


def _gather(tensor: torch.Tensor, collect) -> torch.Tensor:
    """Pads every rank's rows to the largest count (collectives need equal shapes), gathers, trims the padding."""
    if world_size() == 1:
        return tensor
    sizes = gather_sizes(tensor.shape[0], tensor.device)
    longest = max(sizes)
    if tensor.shape[0] < longest:
        tensor = torch.cat([tensor, tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))], dim=0)
    chunks = collect(tensor.contiguous()).split(longest, dim=0)
    return torch.cat([chunk[:size] for chunk, size in zip(chunks, sizes)], dim=0)


def gather_sizes(size: int, device: torch.device) -> list[int]:
    local = torch.tensor([size], device=device, dtype=torch.long)
    out = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return [int(s.item()) for s in out]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a (gradient-free) tensor over processes; identity on one process."""
    if world_size() == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value


def deduplicate_labels(
    label_embeds: torch.Tensor, label_relation_ids: torch.Tensor, sentence_relation_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep one label row per relation (its first occurrence) and re-index the sentences to those rows.

    label_embeds: [U', D] (U' may repeat relations, e.g. across processes); label_relation_ids: [U'];
    sentence_relation_ids: [B] -> (label_embeds [U, D], labels [B]).
    """
    unique_ids, inverse = torch.unique(label_relation_ids, sorted=True, return_inverse=True)
    positions = torch.arange(inverse.numel(), device=inverse.device)
    first = torch.full((unique_ids.numel(),), inverse.numel(), device=inverse.device, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")  # [U] first row of each relation
    lookup = torch.searchsorted(unique_ids, sentence_relation_ids).clamp(max=unique_ids.numel() - 1)
    if bool((unique_ids[lookup] != sentence_relation_ids).any()):
        raise ValueError("a sentence's relation id has no label row in the batch")
    return label_embeds[first], lookup


def first_occurrence_across_processes(label_relation_ids: torch.Tensor) -> torch.Tensor:
    """[U] bool: which local label rows are the first row of their relation in the gathered (rank-major) batch.

    Exactly the rows `deduplicate_labels` keeps after a gather; a relation present on several processes is one label
    of the global batch. All True on one process (nothing is gathered, nothing deduplicated).
    """
    if world_size() == 1:
        return torch.ones_like(label_relation_ids, dtype=torch.bool)
    sizes = gather_sizes(label_relation_ids.shape[0], label_relation_ids.device)
    all_ids = gather_no_grad(label_relation_ids)
    positions = torch.arange(all_ids.numel(), device=all_ids.device)
    same = label_relation_ids.unsqueeze(1) == all_ids.unsqueeze(0)  # [U, U_all]
    first = torch.where(same, positions, all_ids.numel()).amin(dim=1)  # [U] first gathered row of each local relation
    offset = sum(sizes[: dist.get_rank()])
    return first == offset + torch.arange(label_relation_ids.shape[0], device=first.device)


@dataclass
class ObjectiveTerms:
    """The terms of one evaluation of the objective (MLM terms None when that tower's MLM is off or has no targets)."""

    loss: torch.Tensor
    contrastive_loss: torch.Tensor
    sentence_anchored_loss: torch.Tensor
    label_anchored_loss: torch.Tensor
    sentence_mlm_loss: torch.Tensor | None = None
    label_mlm_loss: torch.Tensor | None = None


class SaconObjective(nn.Module):
    """SaCon's objective, the one place it is defined: (w_s * sentence-anchored + w_l * label-anchored) / 2 over the
    (global) batch, plus w_smlm * sentence MLM + w_lmlm * label MLM. Weights, reduction and label negatives are read
    from the model's config at each call.

    The model's forward calls it whole (:meth:`forward`); GradCache (`training/gradcache.py`) calls the same pieces
    on cached embeddings and per mini-batch: :meth:`contrastive` on the whole batch, then per mini-batch
    :meth:`masked_lm` against the whole batch's :meth:`mlm_denominator`, and :meth:`total` of the terms.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config

    def contrastive(
        self,
        sentence_embeds: torch.Tensor,  # [B, D] (not normalised)
        label_embeds: torch.Tensor,  # [U, D]
        labels: torch.Tensor,  # [B] in [0, U)
        logit_scale: torch.Tensor,  # scalar log-scale, already clamped
        label_relation_ids: torch.Tensor | None = None,  # [U] corpus-wide ids, needed to gather
        gather: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(contrastive, sentence_anchored, label_anchored); with `gather` over several processes, on the global
        batch: every rank's sentences and labels, labels deduplicated by relation id (rank-offset indices)."""
        if gather and world_size() > 1:
            if label_relation_ids is None:
                raise ValueError("label_relation_ids are required to deduplicate labels across processes")
            sentence_relation_ids = gather_no_grad(label_relation_ids[labels])
            all_label_ids = gather_no_grad(label_relation_ids)
            sentence_embeds = gather_with_grad(sentence_embeds)
            label_embeds, labels = deduplicate_labels(gather_with_grad(label_embeds), all_label_ids, sentence_relation_ids)
        config = self.config
        loss, s_loss, l_loss, _ = symmetric_contrastive_loss(
            sentence_embeds, label_embeds, labels, logit_scale, config.label_anchored_reduction,
            config.sentence_anchored_weight, config.label_anchored_weight, config.label_negatives > 0,
        )
        return loss, s_loss, l_loss

    @staticmethod
    def mlm_denominator(mlm_labels: torch.Tensor, gather: bool = False) -> torch.Tensor | None:
        """The masked-token count a tower's MLM sum is divided by: this batch's, or with `gather` over several
        processes the global count / world size (DDP's gradient average then reproduces the global-batch mean).
        None when nothing is masked on one process (the term is then 0)."""
        count = (mlm_labels != -100).sum().float()
        if gather and world_size() > 1:
            return all_reduce_sum(count).clamp(min=1.0) / world_size()
        return count if count > 0 else None

    @staticmethod
    def label_mlm_targets(
        label_mlm_labels: torch.Tensor, label_relation_ids: torch.Tensor | None, gather: bool = False
    ) -> torch.Tensor:
        """Label MLM targets with, over several processes, only the row of each relation that the contrastive
        deduplication keeps: a relation on several ranks is one label of the global batch, so its tokens count once."""
        if not (gather and world_size() > 1):
            return label_mlm_labels
        keep = first_occurrence_across_processes(label_relation_ids)
        return label_mlm_labels.masked_fill(~keep.unsqueeze(1), -100)

    @staticmethod
    def masked_lm(
        head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, denominator: torch.Tensor | None
    ) -> torch.Tensor:
        """A tower's MLM sum over its masked positions (the vocabulary projection runs on those only) / denominator."""
        if denominator is None:
            return hidden.sum() * 0.0
        selected = targets != -100
        return masked_lm_loss(head(hidden[selected]), targets[selected], denominator)

    def mlm_enabled(self, tower: str) -> bool:
        """Whether the `"sentence"` or `"label"` tower's MLM term is on (its weight is positive)."""
        return getattr(self.config, f"{tower}_mlm_weight") > 0

    def weighted_mlm(self, tower: str, mlm: torch.Tensor) -> torch.Tensor:
        """A tower's MLM term as it enters the loss (times `{tower}_mlm_weight`)."""
        return getattr(self.config, f"{tower}_mlm_weight") * mlm

    def total(
        self, contrastive: torch.Tensor, sentence_mlm: torch.Tensor | None = None, label_mlm: torch.Tensor | None = None
    ) -> torch.Tensor:
        """contrastive + the weighted MLM terms that were computed."""
        loss = contrastive
        for tower, mlm in (("sentence", sentence_mlm), ("label", label_mlm)):
            if mlm is not None:
                loss = loss + self.weighted_mlm(tower, mlm)
        return loss

    def forward(
        self,
        sentence_embeds: torch.Tensor,
        label_embeds: torch.Tensor,
        labels: torch.Tensor,
        logit_scale: torch.Tensor,
        label_relation_ids: torch.Tensor | None = None,
        gather: bool = False,
        sentence_mlm: tuple[nn.Module, torch.Tensor, torch.Tensor] | None = None,
        label_mlm: tuple[nn.Module, torch.Tensor, torch.Tensor] | None = None,
    ) -> ObjectiveTerms:
        """The whole objective on one pass; `sentence_mlm` / `label_mlm` are (head, hidden states, targets) of a tower
        (None, or a zero weight: no MLM term)."""
        contrastive, s_loss, l_loss = self.contrastive(
            sentence_embeds, label_embeds, labels, logit_scale, label_relation_ids, gather
        )
        mlm: dict[str, torch.Tensor | None] = {"sentence": None, "label": None}
        for tower, inputs in (("sentence", sentence_mlm), ("label", label_mlm)):
            if inputs is None or not self.mlm_enabled(tower):
                continue
            head, hidden, targets = inputs
            if tower == "label":
                targets = self.label_mlm_targets(targets, label_relation_ids, gather)
            mlm[tower] = self.masked_lm(head, hidden, targets, self.mlm_denominator(targets, gather))
        return ObjectiveTerms(
            loss=self.total(contrastive, mlm["sentence"], mlm["label"]), contrastive_loss=contrastive,
            sentence_anchored_loss=s_loss, label_anchored_loss=l_loss,
            sentence_mlm_loss=mlm["sentence"], label_mlm_loss=mlm["label"],
        )


__all__ = [
    "ObjectiveTerms",
    "SaconObjective",
    "deduplicate_labels",
    "first_occurrence_across_processes",
    "gather_no_grad",
    "gather_with_grad",
    "label_anchored_loss",
    "masked_lm_loss",
    "sentence_anchored_loss",
    "symmetric_contrastive_loss",
]
