"""`TrainerCallback`s of SaCon pre-training: public Trainer hooks instead of overrides of private methods."""

from __future__ import annotations

import os

import torch
from transformers import Trainer, TrainerCallback
from transformers.dynamic_module_utils import custom_object_save
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..fewshot.zeroshot_protocol import save_pretraining_relations

__all__ = ["HubCheckpointCardCallback", "LogitScaleClampCallback", "PretrainingRelationsCallback"]


class LogitScaleClampCallback(TrainerCallback):
    """Clamps `logit_scale` to `config.logit_scale_max` after every optimizer step (as CLIP trainers do).

    The forward pass already uses at most the maximum on every path (`logit_scale_value`, a straight-through clamp),
    so the bound holds without this; clamping the parameter too keeps it from drifting past the bound, from where
    it would need as many steps to come back. Works for the dual encoder and the few-shot model (`model.sacon`),
    under any Trainer it is added to.
    """

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        for module in model.modules() if model is not None else ():
            scale = getattr(module, "logit_scale", None)
            if isinstance(scale, torch.nn.Parameter):
                with torch.no_grad():
                    scale.clamp_(max=module.config.logit_scale_max)
        return control


class HubCheckpointCardCallback(TrainerCallback):
    """Before each Hub push (`on_push_begin`): the model's code files and the SaCon model card join `output_dir`.

    The Trainer pushes a checkpoint by copying only config and weights (and re-saving the processor) into `output_dir`
    and uploading that folder; without the code that `auto_map` names the pushed repo would not load, and without the
    card it would carry no results. `upload_folder(run_as_future=True)` reads `output_dir` when its job runs, not when
    it is queued: files written while the previous upload is pending would be committed under the previous step's
    message (or half-copied), so this waits for it first. (The Trainer itself skips a checkpoint push while one is
    pending unless `hub_always_push`, before this event.)

    Args:
        trainer: the `SaconTrainer` whose pending push to wait for and whose `create_model_card` writes the card.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_push_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return control
        pending = self.trainer.push_in_progress
        if pending is not None and not pending.is_done():
            pending.wait_until_done()
        os.makedirs(args.output_dir, exist_ok=True)
        if model is not None and getattr(model.config, "auto_map", None):  # set when a save copied the code
            custom_object_save(model, args.output_dir)  # the modeling file and everything it imports relatively
        self.trainer.create_model_card()
        return control


class PretrainingRelationsCallback(TrainerCallback):
    """Every saved checkpoint (`on_save`) records the relations it was pre-trained on, as the final model does.

    Without the file the zero-shot evaluator cannot check that a checkpoint never saw a split's test relations and
    only warns; with it a checkpoint taken mid-run (a training curve, a killed run) is held to the same strictness.

    Args:
        relations: the relation ids of the training corpus.
    """

    def __init__(self, relations: list[str]):
        self.relations = list(relations)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(checkpoint):  # not when a save wrote elsewhere (a hyperparameter search's run dir)
                save_pretraining_relations(checkpoint, self.relations)
        return control
