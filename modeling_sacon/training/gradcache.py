"""Cached contrastive training (GradCache, Gao et al. 2021) for SaCon: a large contrastive batch at the memory of a
small one, with exactly the gradients of the large batch.

A contrastive loss couples every sentence with every label of the batch, so the batch cannot be split into
independent micro-batches (gradient accumulation would shrink the set of negatives). But the loss depends on the
encoders only through the embeddings. One step therefore runs in three stages:

1. embed the whole (per-process) batch in mini-batches without a graph, saving the RNG state before each one
   (sentences longest first, so that a mini-batch carries little padding: the loss ignores their order);
2. compute the contrastive term on the concatenated embeddings with the model's own objective
   (`SaconObjective.contrastive`: gathered across processes, labels deduplicated, as in the plain forward) and its
   gradients with respect to the embeddings and `logit_scale`;
3. re-run each mini-batch with a graph under its saved RNG state (the same dropout masks as stage 1, as
   sentence-transformers' `CachedMultipleNegativesRankingLoss` does) and back-propagate
   `<embeddings, cached gradient>` plus that mini-batch's share of the MLM loss: `SaconObjective.masked_lm` against
   the whole batch's `mlm_denominator` (the global count / world size under several processes, as the forward).

The loss is not written here a second time: caching is how the objective runs (as sentence-transformers'
`CachedMultipleNegativesRankingLoss` runs its loss), through the model's public `encode_sentences` / `encode_labels`.

Label rows (the batch's U distinct relation texts) go through the label tower in mini-batches of the same size as
the sentences: U is at most B (half of it with two sentences per relation), and their MLM needs a graph too, so a
one-pass label encoding would set the memory peak at large batches.

Under DDP the re-runs call the towers directly, not the wrapped module's forward, so DDP's hooks do not all-reduce
each mini-batch; `synchronize_gradients` then averages the accumulated gradients once, on the micro-batch where
the Trainer syncs (outside `no_sync`), which keeps gradient accumulation correct.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.utils.checkpoint import get_device_states, set_device_states

from ..losses import all_reduce_sum, world_size
from ..modeling_sacon import SaconDualEncoderModel, SaconOutput

SENTENCE_KEYS = ("input_ids", "attention_mask", "entity_positions", "token_type_ids", "mlm_labels")
LABEL_KEYS = ("label_input_ids", "label_attention_mask", "label_token_type_ids", "label_mlm_labels")
BATCH_KEYS = ("labels", "label_relation_ids")
NOT_TOKEN_ALIGNED = ("entity_positions",)
IGNORED_KEYS = ("return_loss", "return_dict", "gather_across_processes")  # forward options the cached step sets itself

__all__ = ["RandContext", "cached_contrastive_step", "length_order", "split_rows", "synchronize_gradients"]


class RandContext:
    """Captures the CPU (and the inputs' accelerator) RNG state when built; `with` replays it, then restores the
    state the RNG had on entry, so the replay does not disturb the random stream of the rest of training."""

    def __init__(self, *tensors: torch.Tensor):
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)
        self._fork = None

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=self.devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        set_device_states(self.devices, self.device_states)

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)
        self._fork = None


def split_rows(inputs: Mapping[str, torch.Tensor], keys: Sequence[str], size: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive chunks of `size` rows of the `keys` present in `inputs`. Token-aligned tensors ([rows, L]: ids,
    masks, MLM labels) are cut to the last column any of the chunk's rows uses, so a chunk of short rows does not
    carry the batch's padding."""
    present = [k for k in keys if inputs.get(k) is not None]
    mask_key = next((k for k in present if k.endswith("attention_mask")), None)
    chunks = []
    for start in range(0, inputs[present[0]].shape[0], size):
        chunk = {k: inputs[k][start : start + size] for k in present}
        if mask_key is not None:
            used = chunk[mask_key].bool().any(0).nonzero()
            length = int(used.max()) + 1 if used.numel() else 1
            chunk = {k: v if k in NOT_TOKEN_ALIGNED else v[:, :length] for k, v in chunk.items()}
        chunks.append(chunk)
    return chunks


def length_order(attention_mask: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """Sentence rows longest first when they fill more than one mini-batch, so each mini-batch holds rows of similar
    length and carries little padding (the loss does not depend on the order of the sentences); None: keep the
    batch order (one mini-batch gains nothing)."""
    if attention_mask is None or attention_mask.shape[0] <= size:
        return None
    return torch.argsort(attention_mask.sum(1), descending=True, stable=True)


def cached_contrastive_step(
    model: SaconDualEncoderModel,
    inputs: Mapping[str, torch.Tensor],
    mini_batch_size: int,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    gather_across_processes: bool = False,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    preserve_rng_state: bool = True,
) -> SaconOutput:
    """One GradCache forward/backward of SaCon's loss on `inputs` (a collated batch, as `model.forward` takes it).

    Gradients accumulate into `model`'s parameters through `backward(surrogate)` once per mini-batch (pass
    `accelerator.backward` for mixed-precision scaling; divide inside it for gradient accumulation); the forwards
    and the loss run under `forward_context()` (autocast), the backwards outside it. Returns the
    loss terms (detached) as the plain forward would: `loss`, `contrastive_loss`, both anchored losses, both MLM
    losses (no logits: sentences are encoded longest first, see `length_order`). `preserve_rng_state=False` skips
    the RNG replay (only correct without dropout; kept to show what the replay buys).
    """
    if mini_batch_size < 1:
        raise ValueError(f"contrastive_mini_batch_size must be >= 1, got {mini_batch_size}")
    unknown = sorted(set(inputs) - {*SENTENCE_KEYS, *LABEL_KEYS, *BATCH_KEYS, *IGNORED_KEYS})
    if unknown:
        raise ValueError(f"cached contrastive step: unexpected batch keys {unknown}")
    for key in ("input_ids", "entity_positions", "label_input_ids", "labels"):
        if inputs.get(key) is None:
            raise ValueError(f"cached contrastive step: the batch has no {key!r} (keys: {sorted(inputs)})")
    objective = model.objective
    gather = gather_across_processes and world_size() > 1
    order = length_order(inputs.get("attention_mask"), mini_batch_size)
    sentence_inputs = {k: inputs[k] if order is None else inputs[k][order] for k in SENTENCE_KEYS if inputs.get(k) is not None}
    labels = inputs["labels"] if order is None else inputs["labels"][order]
    sentence_chunks = split_rows(sentence_inputs, SENTENCE_KEYS, mini_batch_size)
    label_inputs = dict(inputs)
    if inputs.get("label_mlm_labels") is not None:
        label_inputs["label_mlm_labels"] = objective.label_mlm_targets(
            inputs["label_mlm_labels"], inputs.get("label_relation_ids"), gather
        )
    label_chunks = split_rows(label_inputs, LABEL_KEYS, mini_batch_size)

    def encode_sentences(chunk: dict) -> tuple[torch.Tensor, torch.Tensor]:  # (hidden states, embeddings)
        return model.encode_sentences(
            chunk["input_ids"], chunk.get("attention_mask"), chunk["entity_positions"], chunk.get("token_type_ids")
        )

    def encode_labels(chunk: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return model.encode_labels(chunk["label_input_ids"], chunk.get("label_attention_mask"), chunk.get("label_token_type_ids"))

    # 1. embeddings without a graph, one RNG snapshot per mini-batch
    rng_states: list[RandContext | None] = []
    sentence_embeds, label_embeds = [], []
    with torch.no_grad(), forward_context():
        for chunks, encode, out in ((sentence_chunks, encode_sentences, sentence_embeds),
                                    (label_chunks, encode_labels, label_embeds)):
            for chunk in chunks:
                rng_states.append(RandContext(*chunk.values()) if preserve_rng_state else None)
                out.append(encode(chunk)[1])

    # 2. the contrastive loss on the whole batch and its gradients w.r.t. the embeddings and logit_scale
    with torch.enable_grad(), forward_context():
        sentence_leaf = torch.cat(sentence_embeds).requires_grad_()
        label_leaf = torch.cat(label_embeds).requires_grad_()
        scale_leaf = model.logit_scale_value().detach().requires_grad_(model.logit_scale.requires_grad)
        contrastive, s_loss, l_loss = objective.contrastive(
            sentence_leaf, label_leaf, labels, scale_leaf, inputs.get("label_relation_ids"), gather
        )
        leaves = [sentence_leaf, label_leaf] + ([scale_leaf] if scale_leaf.requires_grad else [])
        grads = torch.autograd.grad(contrastive, leaves)
    sentence_grads = grads[0].split([len(e) for e in sentence_embeds])
    label_grads = grads[1].split([len(e) for e in label_embeds])
    scale_grad = grads[2] if len(grads) > 2 else None

    # 3. re-run each mini-batch with a graph: cached embedding gradients + its share of the MLM loss
    towers = (
        ("sentence", "mlm_labels", model.sentence_mlm_head, sentence_inputs, sentence_chunks, sentence_grads, encode_sentences),
        ("label", "label_mlm_labels", model.label_head, label_inputs, label_chunks, label_grads, encode_labels),
    )
    mlm_totals: dict[str, torch.Tensor] = {}
    states = iter(rng_states)
    for tower, key, head, whole, chunks, cached_grads, encode in towers:
        with_mlm = whole.get(key) is not None and objective.mlm_enabled(tower)
        denominator = objective.mlm_denominator(whole[key], gather) if with_mlm else None
        if with_mlm:
            mlm_totals[tower] = torch.zeros((), device=contrastive.device)
        for chunk, cached_grad in zip(chunks, cached_grads):
            with next(states) or contextlib.nullcontext(), torch.enable_grad(), forward_context():
                hidden, embeds = encode(chunk)
                surrogate = (embeds * cached_grad).sum()
                if with_mlm:
                    mlm = objective.masked_lm(head, hidden, chunk[key], denominator)
                    mlm_totals[tower] += mlm.detach().float()
                    surrogate = surrogate + objective.weighted_mlm(tower, mlm)
                if scale_grad is not None:  # logit_scale's cached gradient, once per step
                    surrogate = surrogate + model.logit_scale_value() * scale_grad
                    scale_grad = None
            backward(surrogate)

    sentence_mlm, label_mlm = mlm_totals.get("sentence"), mlm_totals.get("label")
    return SaconOutput(
        loss=objective.total(contrastive.detach(), sentence_mlm, label_mlm), contrastive_loss=contrastive.detach(),
        sentence_anchored_loss=s_loss.detach(), label_anchored_loss=l_loss.detach(),
        sentence_mlm_loss=sentence_mlm, label_mlm_loss=label_mlm,
    )


def synchronize_gradients(model: torch.nn.Module, bucket_bytes: int = 25 * 2**20) -> None:
    """Average the parameters' gradients over processes, in buckets, when `model` is a DDP module due to sync.

    The cached step's re-runs bypass DDP's forward, so its hooks never all-reduce; this does the one all-reduce
    that DDP would have done at the end of the backward. Inside `no_sync()` (a micro-batch before the last of a
    gradient-accumulation step) it does nothing, and the next synced call averages the accumulated sums.
    """
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel) or world_size() == 1:
        return
    if not model.require_backward_grad_sync:
        return
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    count = all_reduce_sum(torch.tensor(float(len(grads)), device=next(model.parameters()).device))
    if int(count) != len(grads) * world_size():
        raise RuntimeError("the processes hold gradients of different parameters: cannot average them")
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for grad in grads:  # DDP-style buckets: one all-reduce per ~bucket_bytes, per dtype and device
        bucket = buckets.setdefault((grad.dtype, grad.device), [])
        bucket.append(grad)
        if sum(g.numel() * g.element_size() for g in bucket) >= bucket_bytes:
            _all_reduce_mean(buckets.pop((grad.dtype, grad.device)))
    for key in sorted(buckets, key=str):
        _all_reduce_mean(buckets[key])


def _all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size()
    for tensor, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        tensor.copy_(part.view_as(tensor))
