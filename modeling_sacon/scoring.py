"""Few-shot / zero-shot scoring shared by `SaconForFewShotRelationClassification`, the cached evaluator and the
inference API: plain functions of embeddings, no model state.

Exact semantics of :func:`prototype_logits` (all steps broadcast over optional leading batch dimensions ``...``):

1. ``normalize=True`` (default): every query, support and label embedding is L2-normalised first (SaCon is trained in
   the cosine space of unit vectors). ``normalize=False`` uses the vectors as given.
2. One prototype per relation, ``[..., N, D]``:

   * ``"prototype"``       ``p_j = mean_k support[j, k]``                         (Prototypical Networks)
   * ``"zero_shot"``       ``p_j = label[j]``                                     (no support needed)
   * ``"label_augmented"`` ``p_j = mean_k support[j, k] + label[j]``              (ours; see below)

   The prototype is *not* re-normalised here (the cosine below normalises it anyway).

   ``"label_augmented"`` is this package's rule, not the authors'. SaCon's paper evaluates with SimpleFSRE (Liu et al.,
   Findings of ACL 2022), which also adds a relation embedding to each prototype, but: on *raw* (unnormalised)
   vectors compared by a plain dot product; with the relation side built from BERT's pooler output plus a padded
   mean (padding tokens counted); and trained episodically with a focal loss. Here both sides are the SaCon towers'
   own representations, L2-normalised first, compared by the same scaled cosine as in pre-training, with no extra
   parameters, so it works on a pre-trained checkpoint without fine-tuning.
3. Similarity of each query ``q_i`` to each prototype, ``[..., Q, N]``:

   * ``"cosine"``    ``scale * cos(q_i, p_j)``, with ``cos(a, b) = a.b / (max(|a|, eps) * max(|b|, eps))``
   * ``"euclidean"`` ``-scale * |q_i - p_j|^2`` (negative squared distance)

   ``scale`` is a multiplier (a float or a 0-d / broadcastable tensor): pass ``exp(logit_scale)`` for SaCon's
   temperature, ``1.0`` for raw similarities.
4. ``nota_logit`` not None: a none-of-the-above column is appended *unscaled*, ``[..., Q, N + 1]``, whose value is
   ``nota_logit`` for every query (a float, a 0-d tensor, or a tensor broadcastable to ``[..., Q]``). A query is
   predicted NOTA (label ``N``, as in the FewRel toolkit) when every relation logit is below it.

Errors (``ValueError``): an unknown method or similarity; ``"zero_shot"`` / ``"label_augmented"`` without
``label_emb``; ``"prototype"`` / ``"label_augmented"`` without ``support_emb``; mismatched N, K or D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEWSHOT_METHODS = ("prototype", "zero_shot", "label_augmented")
SIMILARITIES = ("cosine", "euclidean")
_EPS = 1e-8

__all__ = [
    "FEWSHOT_METHODS",
    "SIMILARITIES",
    "build_prototypes",
    "similarity_logits",
    "append_nota",
    "prototype_logits",
    "check_method",
    "check_similarity",
]


def check_method(method: str) -> str:
    if method not in FEWSHOT_METHODS:
        raise ValueError(f"fewshot_method={method!r} is unknown; choose one of {FEWSHOT_METHODS}")
    return method


def check_similarity(similarity: str) -> str:
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity={similarity!r} is unknown; choose one of {SIMILARITIES}")
    return similarity


def _l2(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else F.normalize(x, dim=-1, eps=_EPS)


def build_prototypes(
    support_emb: torch.Tensor | None,
    label_emb: torch.Tensor | None,
    method: str = "prototype",
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """Prototypes ``[..., N, D]`` from support ``[..., N, K, D]`` and/or labels ``[..., N, D]`` (steps 1-2 above)."""
    check_method(method)
    needs_support = method in ("prototype", "label_augmented")
    needs_label = method in ("zero_shot", "label_augmented")
    if needs_label and label_emb is None:
        raise ValueError(
            f"fewshot_method={method!r} needs label (relation description) embeddings, but none were given"
        )
    if needs_support and support_emb is None:
        raise ValueError(f"fewshot_method={method!r} needs support embeddings ([..., N, K, D]), but none were given")
    if needs_support and support_emb.dim() < 3:
        raise ValueError(f"support embeddings must be [..., N, K, D], got shape {tuple(support_emb.shape)}")
    if needs_support and support_emb.shape[-2] == 0:
        raise ValueError("support embeddings have K = 0 shots; use fewshot_method='zero_shot' without support")
    if normalize:
        support_emb, label_emb = _l2(support_emb), _l2(label_emb)
    if method == "zero_shot":
        return label_emb
    prototypes = support_emb.mean(dim=-2)
    if method == "label_augmented":
        if label_emb.shape[-2:] != prototypes.shape[-2:]:
            raise ValueError(
                f"label embeddings {tuple(label_emb.shape)} do not match the support's N x D "
                f"{tuple(prototypes.shape[-2:])}"
            )
        prototypes = prototypes + label_emb
    return prototypes


def similarity_logits(
    query_emb: torch.Tensor,
    prototypes: torch.Tensor,
    similarity: str = "cosine",
    scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """``[..., Q, N]`` scaled cosine or negative squared euclidean distance (step 3 above); no normalisation of
    ``query_emb`` beyond the cosine's own."""
    check_similarity(similarity)
    if query_emb.shape[-1] != prototypes.shape[-1]:
        raise ValueError(
            f"query embeddings have D={query_emb.shape[-1]} but prototypes have D={prototypes.shape[-1]}"
        )
    if similarity == "cosine":
        sims = _l2(query_emb) @ _l2(prototypes).transpose(-1, -2)
    else:
        # the explicit difference (not |q|^2 - 2 q.p + |p|^2) is exact, and episodes are small
        sims = -(query_emb.unsqueeze(-2) - prototypes.unsqueeze(-3)).pow(2).sum(-1)
    return sims * scale


def append_nota(logits: torch.Tensor, nota_logit: float | torch.Tensor) -> torch.Tensor:
    """``[..., Q, N]`` -> ``[..., Q, N + 1]``: the last column is ``nota_logit`` (step 4 above)."""
    nota = torch.as_tensor(nota_logit, dtype=logits.dtype, device=logits.device)
    nota = nota.expand(logits.shape[:-1]).unsqueeze(-1)
    return torch.cat([logits, nota], dim=-1)


def prototype_logits(
    query_emb: torch.Tensor,
    support_emb: torch.Tensor | None = None,
    label_emb: torch.Tensor | None = None,
    method: str = "prototype",
    similarity: str = "cosine",
    scale: float | torch.Tensor = 1.0,
    nota_logit: float | torch.Tensor | None = None,
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """Logits ``[..., Q, N]`` (``[..., Q, N + 1]`` with ``nota_logit``) of queries against N relations.

    Args:
        query_emb: ``[..., Q, D]`` query sentence embeddings.
        support_emb: ``[..., N, K, D]`` support embeddings (relation-major), or None for zero-shot.
        label_emb: ``[..., N, D]`` relation-description embeddings, or None (ignored by ``"prototype"``).
        method: ``"prototype"``, ``"zero_shot"`` or ``"label_augmented"``.
        similarity: ``"cosine"`` or ``"euclidean"``.
        scale: multiplier of the similarities, e.g. ``model.logit_scale_value().exp()``.
        nota_logit: value of an appended none-of-the-above column (unscaled), or None for no column.
        normalize: L2-normalise all inputs first (default, SaCon's space).

    See the module docstring for the exact semantics.
    """
    if query_emb.dim() < 2:
        raise ValueError(f"query embeddings must be [..., Q, D], got shape {tuple(query_emb.shape)}")
    prototypes = build_prototypes(support_emb, label_emb, method, normalize=normalize)
    query = _l2(query_emb) if normalize else query_emb
    logits = similarity_logits(query, prototypes, similarity, scale)
    if nota_logit is not None:
        logits = append_nota(logits, nota_logit)
    return logits
