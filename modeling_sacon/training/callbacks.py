"""`TrainerCallback`s of SaCon pre-training: public Trainer hooks instead of overrides of private methods."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

__all__ = ["LogitScaleClampCallback"]


class LogitScaleClampCallback(TrainerCallback):
    """Clamps `logit_scale` to `config.logit_scale_max` after every optimizer step (as CLIP trainers do).

    A clamp inside the forward pass alone traps the scale: once the parameter passes the maximum its gradient is zero
    and it never comes back. Clamping the parameter itself keeps it at most the maximum, where it stays learnable.
    """

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        scale = getattr(model, "logit_scale", None)
        if isinstance(scale, torch.nn.Parameter):
            with torch.no_grad():
                scale.clamp_(max=model.config.logit_scale_max)
        return control
