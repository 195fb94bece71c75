"""Weight-space interpolation of the label encoder with the backbone it started from (WiSE-FT, Wortsman et al.,
CVPR 2022: "Robust fine-tuning of zero-shot models").

Why: pre-training fits the label encoder to the corpus' few hundred relation texts, so a relation text it never saw
is read as a variant of a seen one, while the untouched backbone reads texts well but is not aligned with the sentence
encoder. Weights between the two, `backbone + weight * (trained - backbone)`, keep most of the alignment and much of
the backbone's reading: they score higher on relations unseen in pre-training than the trained weights (docs/results.md; they do not separate
inverse kin relations such as child and mother). Only the label encoder moves; the sentence encoder, and so few-shot
prototypes, stay as trained.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["interpolate_label_encoder", "interpolate_weights", "load_reference_weights", "recorded_label_backbone"]


@torch.no_grad()
def interpolate_weights(module: nn.Module, reference: Mapping[str, torch.Tensor], weight: float, what: str = "module") -> None:
    """In place: every tensor of `module`'s state becomes `reference + weight * (tensor - reference)` (0: the
    reference, 1: unchanged).

    `reference` must hold every tensor of the module under the same name and shape, except that an embedding matrix
    may have more rows than its reference (tokens added after loading the backbone, e.g. entity markers): those rows
    keep their trained values. Keys of `reference` the module lacks (a pooler) are ignored. Anything else raises,
    naming the tensor: a reference of another architecture would otherwise give silent nonsense.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"interpolation weight must be in [0, 1] (0: the reference, 1: the trained weights), got {weight}")
    state = module.state_dict()
    missing = [name for name in state if name not in reference]
    if missing:
        raise ValueError(f"the reference weights lack {len(missing)} tensor(s) of the {what}, e.g. {missing[0]!r}: "
                         "not the backbone it was initialised from")
    for name, tensor in state.items():
        start = reference[name].to(device=tensor.device, dtype=tensor.dtype)
        if start.shape == tensor.shape:
            tensor.lerp_(start, 1.0 - weight)  # tensor + (1 - w) * (start - tensor) = start + w * (tensor - start)
        elif start.dim() == 2 and start.shape[1:] == tensor.shape[1:] and start.shape[0] < tensor.shape[0]:
            tensor[: start.shape[0]].lerp_(start, 1.0 - weight)  # added token rows: no reference, kept as trained
        else:
            raise ValueError(f"{what} tensor {name!r} has shape {tuple(tensor.shape)}, the reference's "
                             f"{tuple(start.shape)}: not the backbone it was initialised from")


def interpolate_label_encoder(model: nn.Module, reference: Mapping[str, torch.Tensor], weight: float) -> None:
    """WiSE-FT for a `SaconDualEncoderModel`'s label encoder (see the module docstring); the sentence encoder, the
    heads and the logit scale are untouched; `config.label_encoder_interpolation` records the weight. Refused for a model whose one encoder reads both (`share_encoders`)."""
    if getattr(model.config, "share_encoders", False) or getattr(model, "label_encoder", None) is None:
        raise ValueError("the model has no label encoder of its own (share_encoders): interpolating it would move the "
                         "sentence encoder too")
    interpolate_weights(model.label_encoder, reference, weight, what="label encoder")
    # recorded in config.json; a second interpolation toward the same reference multiplies the weights
    model.config.label_encoder_interpolation = getattr(model.config, "label_encoder_interpolation", 1.0) * weight


def recorded_label_backbone(model: nn.Module) -> str | None:
    """The directory the label encoder was initialised from, as its config records it, if that directory exists here
    (a checkpoint made elsewhere records a path of that machine: then None, and the caller must be told the backbone)."""
    recorded = getattr(getattr(model.config, "label_config", None), "_name_or_path", "") or ""
    return recorded if recorded and os.path.isdir(recorded) else None


def load_reference_weights(name_or_path: str) -> dict[str, torch.Tensor]:
    """The state dict of a backbone (a directory or Hub id that `AutoModel` loads), on the CPU."""
    from transformers import AutoModel

    return {name: tensor.detach().cpu() for name, tensor in AutoModel.from_pretrained(name_or_path).state_dict().items()}
