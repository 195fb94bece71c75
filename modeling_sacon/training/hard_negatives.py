"""Hard label negatives: each corpus relation's nearest other relations by label-text embedding.

Zero-shot classification among many candidates fails on nearby relations (a region vs a country, "part of" vs
"has part"); a random label negative is rarely one of them. The neighbours are computed once, before training,
with the label tower the run starts from, and the collator (`label_negative_neighbors`) appends the batch
relations' neighbours as extra negatives of the sentence-anchored softmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..processing_sacon import SaconProcessor


@torch.no_grad()
def nearest_relations(
    model, processor: SaconProcessor, label_table: Mapping[str, Sequence[str]], k: int, batch_size: int = 128
) -> dict[str, list[str]]:
    """relation -> its `k` nearest other relations of `label_table` (cosine of label features, nearest first).

    `model` is a `SaconDualEncoderModel` (its `get_label_features`); it is put back in its training mode after.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    relations = list(label_table)
    if len(relations) < 2:
        raise ValueError(f"hard label negatives need at least 2 relations with label texts, got {len(relations)}")
    was_training = model.training
    model.eval()
    try:
        features = torch.cat([
            model.get_label_features(**processor.encode_labels(
                [tuple(label_table[r]) for r in relations[i : i + batch_size]]
            ).to(model.device)).float().cpu()
            for i in range(0, len(relations), batch_size)
        ])
    finally:
        model.train(was_training)
    features = torch.nn.functional.normalize(features, dim=-1)
    similarity = features @ features.T
    similarity.fill_diagonal_(float("-inf"))  # a relation is not its own negative
    nearest = similarity.topk(min(k, len(relations) - 1), dim=-1).indices
    return {relation: [relations[j] for j in row] for relation, row in zip(relations, nearest.tolist())}
