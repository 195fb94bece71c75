"""The temperature bound (`logit_scale <= config.logit_scale_max`) holds on every training path: the dual encoder and
the few-shot model, under `SaconTrainer` and a stock `transformers.Trainer`, and a scale past it keeps a gradient."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from modeling_sacon.data.episodic import EpisodeCollator, EpisodicDataset
from modeling_sacon.training.callbacks import LogitScaleClampCallback
from test_fewshot import label_table, tiny_fewshot, train_rows  # noqa: F401


def test_straight_through_clamp_keeps_the_value_and_a_gradient(tiny_model):
    maximum = tiny_model.config.logit_scale_max
    with torch.no_grad():
        tiny_model.logit_scale.fill_(maximum - 0.5)
    assert tiny_model.logit_scale_value().item() == tiny_model.logit_scale.item()  # below the bound: unchanged
    with torch.no_grad():
        tiny_model.logit_scale.fill_(maximum + 2.0)
    value = tiny_model.logit_scale_value()
    assert value.item() == pytest.approx(maximum)
    (3.0 * value).backward()
    assert tiny_model.logit_scale.grad.item() == 3.0  # `clamp` would give 0: the parameter could never come back


@pytest.mark.parametrize("clamp_callback", [False, True])
def test_few_shot_model_under_a_stock_trainer(processor, train_rows, label_table, tmp_path, clamp_callback):
    model = tiny_fewshot(processor, fewshot_method="prototype")
    maximum = model.sacon.config.logit_scale_max
    episodes = EpisodicDataset(train_rows, n_way=3, k_shot=1, q_query=1, seed=1, num_episodes=6)
    collator = EpisodeCollator(processor, label_table)
    batch = collator([episodes[0]])
    model.eval()  # no dropout, so two forwards compare
    with torch.no_grad():
        model.sacon.logit_scale.fill_(maximum)
        at_bound = model(**batch).logits
        model.sacon.logit_scale.fill_(maximum + 3.0)
        assert torch.equal(model(**batch).logits, at_bound)  # the scale used is exp(max), not exp(max + 3)
    seen = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append((model.sacon.logit_scale.item(), model.sacon.logit_scale_value().item()))

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=3, learning_rate=0.1,
                             optim="sgd", save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True)
    callbacks = [Watch(), LogitScaleClampCallback()] if clamp_callback else [Watch()]
    Trainer(model=model, args=args, train_dataset=episodes, data_collator=collator, callbacks=callbacks).train()
    assert all(used <= maximum + 1e-6 for _, used in seen)  # the bound holds on the value used, with or without it
    parameters = [parameter for parameter, _ in seen]
    assert len(set(parameters)) > 1  # the scale moves: its gradient is not zero past the bound
    if clamp_callback:
        assert all(parameter <= maximum + 1e-6 for parameter in parameters)  # and the parameter itself stays bounded
