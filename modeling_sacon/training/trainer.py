"""`SaconTrainer`: `transformers.Trainer` for SaCon pre-training.

What it adds to the stock Trainer (transformers 5.x):

* **Loss scaling.** `SaconDualEncoderModel.forward` has no `**kwargs`, so `Trainer.model_accepts_loss_kwargs` is
  False, `num_items_in_batch` is never computed, and the loss the model returns is a *per-batch mean*. The class
  attribute `loss_is_scaled_for_ga = False` makes `Trainer.training_step` divide it by
  `current_gradient_accumulation_steps` -- once: the Trainer builds its `Accelerator` with
  `GradientAccumulationPlugin(num_steps=1)`, so `accelerator.backward` divides by 1. `compute_loss` here never
  multiplies by the number of processes (the stock one does so only for losses normalised by a global
  `num_items_in_batch`, under `average_tokens_across_devices`): DDP *averages* gradients, and the model's loss is
  built for that (the contrastive term on the gathered global batch is identical on every rank and its gradient
  reaches each rank's own rows through the autograd all-gather; the MLM terms divide local sums by
  global count / world size).
* **Cross-process negatives.** With more than one process, the model is called with `gather_across_processes=True`.
* **Cached contrastive batches.** With `contrastive_mini_batch_size`, `training_step` runs GradCache
  (`modeling_sacon.training.gradcache`): the whole batch is embedded in mini-batches without a graph, the loss and
  its embedding gradients are computed once, and each mini-batch is re-run with a graph under its saved RNG state.
  Loss and gradients are the uncached batch's (same dropout masks in both passes), memory is a mini-batch's.
* **Logging.** Every loss term (`contrastive_loss`, `sentence_anchored_loss`, `label_anchored_loss`,
  `sentence_mlm_loss`, `label_mlm_loss`), averaged over the micro-batches of the logging window (and over
  processes), and `temperature` = 1 / exp(logit_scale) at the logging step, are added to the Trainer's `loss` logs.
* **Optimizer.** Three parameter groups: weights with decay, biases/LayerNorm without (`get_decay_parameter_names`),
  and `logit_scale` alone, without decay, at `logit_scale_learning_rate` (at the encoders' 5e-5 the temperature
  barely moves in a short run). The scheduler scales every group's learning rate alike.
* **Batches.** Plain shuffled (the default, as the authors': each relation appears at its share of the corpus) or
  relation-balanced (`balanced_batches`: `RelationBalancedBatchSampler`, M relations x `instances_per_relation`, with
  a long-tail share), seeded by `data_seed` (else `seed`). The sampler yields the *global* batch stream; under several
  processes accelerate's `BatchSamplerShard` deals its batches round-robin (process r takes batches r, r + W, ...),
  so processes see disjoint batches. Rows carry a serve key (epoch, global batch index): the collator's blanking
  and MLM draws are a pure function of it, so a resumed run (the Trainer skips the consumed batches without
  collating them) continues exactly as the uninterrupted one (see `modeling_sacon.data.collator`).
* **Evaluation.** The stock `evaluate()` (hence `eval_strategy` during training) with the evaluation loop replaced
  through its public hooks (`get_eval_dataloader`, `evaluation_loop`): it scores seeded FewRel N-way K-shot episodes
  (`fewrel_eval_settings`, default 5-1) on `eval_dataset` (canonical FewRel rows, e.g. val_wiki) with
  `FewShotEvaluator`, prototypes of `[h ; t]`, and returns and logs `eval_fewrel_5_1_accuracy` (and
  `eval_fewrel_5_1_ci95`) beside the Trainer's speed metrics; episodes are drawn from the first
  `fewrel_eval_pool_per_relation` sentences of each relation (default 50: 800 sentences of val_wiki to encode), a
  fixed pool, so that evaluating during a CPU run costs seconds, not minutes. `metric_for_best_model=
  "fewrel_5_1_accuracy"` with `load_best_model_at_end` works. Every process computes the same (seeded) episodes; no
  collective is needed. (Not a callback: `on_evaluate` runs after `evaluate` has logged its metrics, too late for
  `log_history`, the reporters and the best-model choice.)
* **Model card.** `create_model_card` renders the package's card template (see `modeling_sacon.training.model_card`)
  instead of the Trainer's generic card; `HubCheckpointCardCallback` puts the model code files and the card beside
  every checkpoint push (`on_push_begin`).
* **A failing Hub.** The repository's creation (`init_hf_repo`) and a blocking `push_to_hub` are retried with
  exponential back-off on transient Hub errors (`hub_push_retries`, `hub_push_backoff`), each failure logged; a
  checkpoint push that failed (the Trainer's background upload drops its error) is pushed again when the next push
  begins (`CheckpointPushRetryCallback`); see `modeling_sacon.training.hub_pushes`.
* **No private overrides.** Nothing here overrides a private `Trainer` method (`tests/test_trainer_hooks.py` fails
  on one that is not listed there with the signature it was written against); the sampler's epoch arrives through
  the dataloader (`ServedDataset.set_epoch`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import EvalLoopOutput, seed_worker
from transformers.utils.hub import hf_api
from transformers.utils import logging

from ..data.collator import ServedDataset, ServeKeyedBatchSampler
from .callbacks import HubCheckpointCardCallback, LogitScaleClampCallback
from .hub_pushes import PUSH_IGNORE_PATTERNS, CheckpointPushRetryCallback, HubPushError, push_retry_options, retry_with_backoff
from ..data.corpus import RelationBalancedBatchSampler, balanced_batch_shape, first_per_relation

logger = logging.get_logger(__name__)

LOSS_TERMS = ("contrastive_loss", "sentence_anchored_loss", "label_anchored_loss", "sentence_mlm_loss", "label_mlm_loss")
LOGIT_SCALE_NAME = "logit_scale"
LABEL_ENCODER_PREFIX = "label_encoder."  # the label tower's parameters (also under a wrapper, e.g. `sacon.label_encoder.`)

__all__ = ["LOSS_TERMS", "SaconTrainer", "SaconTrainingArguments", "ShuffledBatchSampler", "check_batch_shape", "fewrel_metric_name"]


def fewrel_metric_name(setting: str, prefix: str = "eval") -> str:
    """`eval_fewrel_5_1` for setting "5-1" (`_accuracy` / `_ci95` are appended to it)."""
    slug = str(setting).replace("-", "_").replace(".", "_")
    return f"{prefix}_fewrel_{slug}" if prefix else f"fewrel_{slug}"


@dataclass
class SaconTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus SaCon's options. Defaults are the method's (batch, learning rates, warm-up); a run's
    budget (steps, output directory, checkpoint cadence) is the caller's: `examples/pretrain.py` sets the README's."""

    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "Sentences per batch and process (= relations per batch x instances_per_relation)."}
    )
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Sentences per encoding batch in evaluation."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of the encoders and heads."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps (a value below 1 is a share of max_steps)."})
    hub_always_push: bool = field(
        default=True, metadata={"help": "Push every saved checkpoint (waiting for the previous upload to finish first)."}
    )
    hub_push_retries: int = field(
        default=5, metadata={"help": "Retries of a Hub push (and of the repository's creation) after a transient error."}
    )
    hub_push_backoff: float = field(
        default=2.0, metadata={"help": "Seconds before the first retry of a Hub push; doubled at each retry (at most 60)."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator needs the raw rows (tokens, head, tail, relation)."}
    )

    logit_scale_learning_rate: float = field(
        default=1e-2,
        metadata={"help": "Learning rate of logit_scale (log of the inverse temperature); no weight decay."},
    )
    label_encoder_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the label encoder (default: --learning_rate). Lower, it keeps more of the "
                  "backbone's reading of relation texts the corpus never shows (0 locks its weights, without turning "
                  "off its dropout: --freeze_label_encoder does both)."},
    )
    contrastive_mini_batch_size: int | None = field(
        default=None,
        metadata={"help": "GradCache: encode each batch in mini-batches of this many sentences (and label rows) and "
                  "back-propagate cached embedding gradients; the gradients of the whole batch at the memory of a "
                  "mini-batch. None: off."},
    )
    balanced_batches: bool = field(
        default=False,
        metadata={"help": "Relation-balanced batches (M relations x instances_per_relation, long-tail share below); default: "
                  "plain shuffled batches, the authors' scheme (ahead of balanced ones in the README's ablations)."},
    )
    instances_per_relation: int = field(
        default=2, metadata={"help": "Sentences per relation in a balanced batch (n); per_device_train_batch_size = M x n."}
    )
    batches_per_epoch: int | None = field(
        default=None, metadata={"help": "Balanced batches per epoch (default: rows // global batch size)."}
    )
    longtail_share: float = field(
        default=0.125,
        metadata={"help": "Share of each balanced batch's relations drawn from the long tail (relations with fewer than "
                  "dense_min_instances sentences); without a long tail (or without dense relations) it has no effect."},
    )
    dense_min_instances: int = field(
        default=20,
        metadata={"help": "Relations with fewer sentences than this form the long tail (see longtail_share); 0: no long "
                  "tail, every relation drawn alike."},
    )
    fewrel_eval_settings: str = field(
        default="5-1",
        metadata={"help": "Comma-separated FewRel settings scored by evaluate(); zs-N (zero-shot) needs label texts of the "
                  "evaluation relations."},
    )
    fewrel_eval_episodes: int = field(default=500, metadata={"help": "Seeded episodes per setting in evaluate()."})
    fewrel_eval_seed: int = field(default=0, metadata={"help": "Seed of the evaluation episodes (fixed across evaluations)."})
    fewrel_eval_method: str = field(default="prototype", metadata={"help": "prototype, zero_shot or label_augmented."})
    fewrel_eval_pool_per_relation: int | None = field(
        default=50,
        metadata={"help": "Draw evaluation episodes from the first N sentences of each relation (each is encoded once; "
                  "all of val_wiki, 11,200 sentences, takes minutes on a CPU); 0 or None: every sentence."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.logit_scale_learning_rate < 0:
            raise ValueError(f"logit_scale_learning_rate must be >= 0, got {self.logit_scale_learning_rate}")
        if self.label_encoder_learning_rate is not None and self.label_encoder_learning_rate < 0:
            raise ValueError(f"label_encoder_learning_rate must be >= 0, got {self.label_encoder_learning_rate}")
        if self.instances_per_relation < 1:
            raise ValueError(f"instances_per_relation must be >= 1, got {self.instances_per_relation}")
        if self.contrastive_mini_batch_size is not None and self.contrastive_mini_batch_size < 1:
            raise ValueError(f"contrastive_mini_batch_size must be >= 1 (or None: off), got {self.contrastive_mini_batch_size}")
        if self.hub_push_retries < 0 or self.hub_push_backoff < 0:
            raise ValueError(f"hub_push_retries ({self.hub_push_retries}) and hub_push_backoff ({self.hub_push_backoff}) must be >= 0")
        if self.fewrel_eval_episodes < 1:
            raise ValueError(f"fewrel_eval_episodes must be >= 1, got {self.fewrel_eval_episodes}")
        if not self.balanced_batches:  # they would be ignored: say so rather than train on other batches than asked
            fields = type(self).__dataclass_fields__
            shaping = [f"{name}={getattr(self, name)!r}" for name in ("instances_per_relation", "longtail_share", "dense_min_instances")
                       if getattr(self, name) != fields[name].default]
            if shaping:
                raise ValueError(f"{', '.join(shaping)}: options of relation-balanced batches, but balanced_batches is False "
                                 "(the default: plain shuffled batches); set balanced_batches True (--balanced_batches True) "
                                 "or leave them out")


_DEFAULTS = SaconTrainingArguments.__dataclass_fields__


def _option(args: TrainingArguments, name: str):
    """A SaCon option from `args`, or its default when plain `TrainingArguments` were given."""
    return getattr(args, name, _DEFAULTS[name].default)


def check_batch_shape(args: TrainingArguments, relations: Sequence[str]) -> None:
    """The batch-shape rule of contrastive pre-training, checked before any model is built (`SaconTrainer` and
    `examples/pretrain.py` call it): a balanced batch is whole groups of `instances_per_relation` sentences of at least
    two (and at most all) of the data's relations; a shuffled batch holds at least two sentences."""
    batch_size = args.per_device_train_batch_size
    if _option(args, "balanced_batches"):
        balanced_batch_shape(batch_size, _option(args, "instances_per_relation"), len(set(relations)))
    elif batch_size < 2:
        raise ValueError(f"per_device_train_batch_size ({batch_size}) must be >= 2: a contrastive batch needs two sentences")


class ShuffledBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Plain shuffling into fixed-size batches (the last incomplete batch dropped), seeded by `(seed, epoch)`."""

    def __init__(self, num_rows: int, batch_size: int, seed: int = 0, num_batches: int | None = None):
        if num_rows < batch_size:
            raise ValueError(f"the training data has {num_rows} rows, fewer than one batch of {batch_size}")
        self.num_rows, self.batch_size, self.seed, self.epoch = num_rows, batch_size, seed, 0
        self.num_batches = num_batches if num_batches is not None else num_rows // batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        order = np.concatenate([rng.permutation(self.num_rows) for _ in range(math.ceil(self.num_batches * self.batch_size / self.num_rows))])
        for i in range(self.num_batches):
            yield order[i * self.batch_size : (i + 1) * self.batch_size].tolist()


class SaconTrainer(Trainer):
    """`Trainer` for SaCon pre-training (see the module docstring).

    Args (beyond `Trainer`'s):
        eval_dataset: FewRel rows in `modeling_sacon.data.INSTANCE_FEATURES` form (e.g. `load_fewrel_json(val_wiki)`)
            scored by `evaluate()`; a dict of them gives one metric set per name.
        eval_label_table: relation -> (name, description) of the evaluation relations; needed for the
            `zero_shot` / `label_augmented` methods only.
        model_card_fields: keyword arguments of `modeling_sacon.training.model_card.render_model_card` (corpus, base model,
            ...); the trainer adds the training protocol and the latest FewRel results.
    """

    # The model returns a per-batch mean: let `training_step` divide it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        eval_label_table: Mapping[str, Sequence[str]] | None = None,
        model_card_fields: Mapping[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.add_callback(LogitScaleClampCallback())
        self.add_callback(CheckpointPushRetryCallback(self))  # before the card callback writes into output_dir
        self.add_callback(HubCheckpointCardCallback(self))
        self.eval_label_table = eval_label_table
        self.model_card_fields = dict(model_card_fields or {})
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_count = 0
        self.check_training_setup()

    # -- validation -----------------------------------------------------------------------------------------------

    def check_training_setup(self) -> None:
        """Fail before training, naming the option, instead of inside the first batches."""
        if self.args.n_gpu > 1:
            raise ValueError(
                f"{self.args.n_gpu} GPUs in one process (torch DataParallel) would split each contrastive batch and its "
                "label rows independently: launch one process per GPU (accelerate launch / torchrun) instead"
            )
        if self.train_dataset is None:
            return
        relations = self._train_relations()
        check_batch_shape(self.args, relations)
        check = getattr(self.data_collator, "check_relations", None)
        if check is not None:
            check(relations, source="the training data")

    def _train_relations(self) -> list[str]:
        dataset = self.train_dataset
        if hasattr(dataset, "column_names"):
            return list(dataset["relation"][:])  # [:] reads the column at once; iterating it goes row by row
        return [row["relation"] for row in dataset]

    # -- data -----------------------------------------------------------------------------------------------------

    def _data_seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def build_batch_sampler(self) -> torch.utils.data.Sampler:
        """The global stream of row-index batches (before accelerate deals them to the processes)."""
        batch_size = self._train_batch_size
        world = max(1, self.accelerator.num_processes)
        num_batches = _option(self.args, "batches_per_epoch")
        rows = len(self.train_dataset)
        if num_batches is None:
            num_batches = max(1, rows // (batch_size * world)) * world  # a multiple of the world size: no wrap-around
        if _option(self.args, "balanced_batches"):
            n = _option(self.args, "instances_per_relation")
            return RelationBalancedBatchSampler(
                self._train_relations(), balanced_batch_shape(batch_size, n), n, seed=self._data_seed(),
                num_batches=num_batches, longtail_share=_option(self.args, "longtail_share"),
                dense_min_instances=_option(self.args, "dense_min_instances"),
            )
        return ShuffledBatchSampler(rows, batch_size, seed=self._data_seed(), num_batches=num_batches)

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("SaconTrainer: training requires a train_dataset")
        keyed_sampler = ServeKeyedBatchSampler(self.build_batch_sampler())
        params: dict[str, Any] = {
            "batch_sampler": keyed_sampler,
            "collate_fn": self.data_collator,
            "num_workers": self.args.dataloader_num_workers,
            "pin_memory": self.args.dataloader_pin_memory and self.args.device.type != "cpu",
        }
        if self.args.dataloader_num_workers > 0:
            params.update(
                persistent_workers=self.args.dataloader_persistent_workers,
                prefetch_factor=self.args.dataloader_prefetch_factor,
                multiprocessing_context=self.args.dataloader_multiprocessing_context,
                worker_init_fn=partial(
                    seed_worker, num_workers=self.args.dataloader_num_workers, rank=self.args.process_index
                ),
            )
        # accelerate wraps the batch sampler in BatchSamplerShard when there are several processes: disjoint batches.
        # The dataset view forwards the Trainer's per-epoch `set_epoch` to the keyed sampler, however deeply wrapped.
        dataset = ServedDataset(self.train_dataset, keyed_sampler=keyed_sampler)
        return self.accelerator.prepare(DataLoader(dataset, **params))

    # -- loss -----------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's own loss, a per-batch mean. `num_items_in_batch` is ignored (always None here, as the model
        takes no loss kwargs): `training_step` divides by the gradient accumulation steps, and nothing multiplies by
        the number of processes."""
        if self.accelerator.num_processes > 1:
            inputs = {**inputs, "gather_across_processes": True}
        outputs = model(**inputs, return_dict=True)
        loss = outputs.loss
        if loss is None:
            raise ValueError(f"the model returned no loss; the batch has keys {sorted(inputs)} (labels are needed)")
        if model.training:
            self._accumulate_terms(outputs)
        return (loss, outputs) if return_outputs else loss

    def _accumulate_terms(self, outputs) -> None:
        for name in LOSS_TERMS:
            value = getattr(outputs, name, None)
            if value is None:
                continue
            value = value.detach().float()
            self._term_sums[name] = self._term_sums[name] + value if name in self._term_sums else value
        self._term_count += 1

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """The stock step, or with `contrastive_mini_batch_size` the cached contrastive step (GradCache)."""
        mini_batch_size = _option(self.args, "contrastive_mini_batch_size")
        if not mini_batch_size:
            return super().training_step(model, inputs, num_items_in_batch)
        from .gradcache import cached_contrastive_step, synchronize_gradients

        world = self.accelerator.num_processes
        if world > 1 and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            raise ValueError(
                f"contrastive_mini_batch_size supports one process or DDP; this run uses {self.accelerator.distributed_type}"
            )
        model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        steps = self.current_gradient_accumulation_steps  # the loss is a batch mean: divide once, as the stock step

        outputs = cached_contrastive_step(
            self.accelerator.unwrap_model(model), inputs, mini_batch_size,
            backward=lambda surrogate: self.accelerator.backward(surrogate / steps),
            gather_across_processes=world > 1, forward_context=self.compute_loss_context_manager,
        )
        synchronize_gradients(model)  # DDP: the one all-reduce of this step (none inside no_sync)
        self._accumulate_terms(outputs)
        return outputs.loss / steps

    def _pop_term_logs(self) -> dict[str, float]:
        """Mean of each loss term over the micro-batches since the last log (and over processes)."""
        names = [name for name in LOSS_TERMS if name in self._term_sums]
        if not names:
            return {}
        means = torch.stack([self._term_sums[name] for name in names]) / self._term_count
        if self.accelerator.num_processes > 1:
            means = self.accelerator.reduce(means, reduction="mean")
        self._term_sums, self._term_count = {}, 0
        return dict(zip(names, means.tolist()))

    def temperature(self) -> float:
        model = self.accelerator.unwrap_model(self.model)
        return float(1.0 / model.logit_scale_value().detach().float().exp())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_count > 0:  # a training logging step (all processes log it together)
            logs.update(self._pop_term_logs())
            logs["temperature"] = self.temperature()
        super().log(logs, start_time)

    # -- optimizer ------------------------------------------------------------------------------------------------

    def parameter_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """[decayed weights, biases/LayerNorm (no decay), logit_scale (no decay, its own learning rate)], and with
        `label_encoder_learning_rate` the label encoder's decayed and undecayed weights as two more groups at that rate."""
        decay = set(self.get_decay_parameter_names(model))
        label_lr = _option(self.args, "label_encoder_learning_rate")
        groups = {"decay": [], "no_decay": [], "logit_scale": [], "label_decay": [], "label_no_decay": []}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name == LOGIT_SCALE_NAME or name.endswith("." + LOGIT_SCALE_NAME):
                groups["logit_scale"].append(param)
                continue
            label = label_lr is not None and (name.startswith(LABEL_ENCODER_PREFIX) or f".{LABEL_ENCODER_PREFIX}" in name)
            groups[("label_" if label else "") + ("decay" if name in decay else "no_decay")].append(param)
        if label_lr is not None and not groups["label_decay"] + groups["label_no_decay"]:
            raise ValueError("label_encoder_learning_rate: the model has no trainable label encoder of its own "
                             "(share_encoders, or a locked one)")
        out = [
            {"params": groups["decay"], "weight_decay": self.args.weight_decay},
            {"params": groups["no_decay"], "weight_decay": 0.0},
            {"params": groups["label_decay"], "weight_decay": self.args.weight_decay, "lr": label_lr},
            {"params": groups["label_no_decay"], "weight_decay": 0.0, "lr": label_lr},
        ]
        if groups["logit_scale"]:
            out.append({"params": groups["logit_scale"], "weight_decay": 0.0, "lr": _option(self.args, "logit_scale_learning_rate")})
        return [group for group in out if group["params"]]

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        special = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        if special or not isinstance(optimizer_cls, type) or not issubclass(optimizer_cls, torch.optim.Optimizer):
            logger.warning(
                f"optimizer {self.args.optim} builds its own parameter groups: logit_scale (and the label encoder, "
                "whatever label_encoder_learning_rate says) gets the encoders' learning rate and weight decay settings"
            )
            return super().create_optimizer(model)
        self.optimizer = optimizer_cls(self.parameter_groups(opt_model), **optimizer_kwargs)
        return self.optimizer

    # -- evaluation -----------------------------------------------------------------------------------------------

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        """The FewRel rows that `evaluation_loop` scores (the pool of `fewrel_eval_pool_per_relation` sentences per
        relation); they are not loss batches, so the loader only carries them."""
        if isinstance(eval_dataset, str):  # `Trainer.evaluate` passes the names of a dict `eval_dataset`
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("SaconTrainer.evaluate needs an eval_dataset of FewRel rows (e.g. val_wiki)")
        dataset = first_per_relation(dataset, _option(self.args, "fewrel_eval_pool_per_relation"))
        return DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=list)

    def evaluation_loop(
        self, dataloader: DataLoader, description: str, prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """FewRel accuracy of seeded N-way K-shot episodes over `dataloader.dataset`: `{prefix}_fewrel_{N}_{K}_accuracy`
        and `_ci95`. `Trainer.evaluate` adds the speed metrics, logs them, passes them to the callbacks' `on_evaluate`
        and to `metric_for_best_model`, as for any evaluation loop."""
        from ..fewshot.evaluation import FewShotEvaluator

        dataset = dataloader.dataset
        processor = self.processing_class if hasattr(self.processing_class, "encode_instances") else None
        processor = processor or getattr(self.data_collator, "processor", None)
        if processor is None:
            raise ValueError("SaconTrainer.evaluate needs the SaconProcessor (pass processing_class=processor)")
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            evaluator = FewShotEvaluator(
                model, processor, dataset, label_table=self.eval_label_table,
                batch_size=self.args.per_device_eval_batch_size,
                show_progress=not self.args.disable_tqdm and self.is_local_process_zero(),
            )
            settings = [s.strip() for s in _option(self.args, "fewrel_eval_settings").split(",") if s.strip()]
            results = evaluator.evaluate(
                settings, num_episodes=_option(self.args, "fewrel_eval_episodes"),
                seed=_option(self.args, "fewrel_eval_seed"), method=_option(self.args, "fewrel_eval_method"),
            )
        finally:
            model.train(was_training)
        metrics: dict[str, float] = {}
        for setting, result in results.items():
            key = fewrel_metric_name(setting, metric_key_prefix)
            metrics[f"{key}_accuracy"] = result["accuracy"]
            metrics[f"{key}_ci95"] = result["ci95"]
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(dataset))

    # -- model card and Hub ---------------------------------------------------------------------------------------

    def latest_fewrel_results(self) -> list[dict[str, Any]]:
        """The last logged value of every `eval*_fewrel_*_accuracy`, as `render_model_card` eval results."""
        latest: dict[str, dict[str, Any]] = {}
        for entry in self.state.log_history:
            for key, value in entry.items():
                if "_fewrel_" in key and key.endswith("_accuracy"):
                    stem = key[: -len("_accuracy")]
                    setting = stem.split("_fewrel_", 1)[1].replace("_", "-")
                    prefix = stem.split("_fewrel_", 1)[0]
                    split = prefix.split("_", 1)[1] if "_" in prefix else self.model_card_fields.get("eval_split", "val_wiki")
                    latest[stem] = {
                        "setting": setting, "accuracy": value, "ci95": entry.get(f"{stem}_ci95"), "split": split,
                        "method": "zero_shot" if setting.startswith("zs") else _option(self.args, "fewrel_eval_method"),
                        "episodes": _option(self.args, "fewrel_eval_episodes"),
                        "pool": _option(self.args, "fewrel_eval_pool_per_relation") or None,
                    }
        return list(latest.values())

    def training_summary(self) -> dict[str, Any]:
        """The protocol table of the model card."""
        args = self.args
        world = max(1, self.accelerator.num_processes)
        summary: dict[str, Any] = {
            "optimizer steps": self.state.global_step or args.max_steps,
            "batch size per process": args.per_device_train_batch_size,
            "processes": world,
            "gradient accumulation steps": args.gradient_accumulation_steps,
            "global batch (sentences)": args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
        }
        if _option(args, "balanced_batches"):
            n = _option(args, "instances_per_relation")
            summary["batches"] = f"relation-balanced: {args.per_device_train_batch_size // n} relations x {n} sentences"
        else:
            summary["batches"] = "shuffled"
        summary.update({
            "learning rate (encoders)": args.learning_rate,
            "learning rate (logit_scale)": _option(args, "logit_scale_learning_rate"),
            **({"learning rate (label encoder)": _option(args, "label_encoder_learning_rate")}
               if _option(args, "label_encoder_learning_rate") is not None else {}),
            "schedule": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}, warm-up {args.warmup_steps}",
            "weight decay": args.weight_decay,
            "seed": args.seed,
        })
        try:
            summary["final temperature"] = round(self.temperature(), 5)
        except Exception:  # noqa: BLE001 - the card must not fail on an unusual model
            pass
        losses = [entry["loss"] for entry in self.state.log_history if "loss" in entry]
        if losses:
            summary["last logged loss"] = round(losses[-1], 4)
        return summary

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """`Trainer.init_hf_repo` (creates the Hub repository), retried on transient Hub errors."""
        retry_with_backoff(lambda: super(SaconTrainer, self).init_hf_repo(token=token, private=private),
                           what=f"creating the Hub repository {self.args.hub_model_id}", **push_retry_options(self.args))

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token: str | None = None,
                    revision: str | None = None, **kwargs):
        """`Trainer.push_to_hub`; a blocking push is retried with back-off on transient Hub errors (the upload only: the
        model and card are saved once), and one that fails for good raises `HubPushError` saying where the model is."""
        if not blocking:
            return super().push_to_hub(commit_message, blocking, token=token, revision=revision, **kwargs)
        attempts = []

        def attempt():
            if not attempts:
                attempts.append(1)
                return super(SaconTrainer, self).push_to_hub(commit_message, blocking, token=token, revision=revision, **kwargs)
            return hf_api().upload_folder(
                repo_id=self.hub_model_id, folder_path=self.args.output_dir, commit_message=commit_message,
                token=token if token is not None else self.args.hub_token, ignore_patterns=PUSH_IGNORE_PATTERNS,
                revision=revision if revision is not None else self.args.hub_revision,
            )

        try:
            return retry_with_backoff(attempt, what=f"push {commit_message!r} to {self.hub_model_id}",
                                      **push_retry_options(self.args))
        except HubPushError as err:
            raise HubPushError(f"{err}. The model is saved in {self.args.output_dir}: upload it later with "
                               f"`hf upload {self.hub_model_id} {self.args.output_dir}`") from err.__cause__

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None, **kwargs) -> None:
        """Write `output_dir/README.md` from the SaCon template (replaces the Trainer's generic card).

        What the card says about training comes from this run, not from defaults: MLM per tower and shared encoders
        from the model's config, blanking and MLM probability from the data collator, relation and instance counts
        from the training set; `model_card_fields` given to the constructor take precedence.
        """
        if not self.is_world_process_zero():
            return
        from .model_card import config_card_fields, render_model_card

        fields = dict(self.model_card_fields)
        fields.pop("eval_split", None)
        for key, value in config_card_fields(self.accelerator.unwrap_model(self.model).config).items():
            fields.setdefault(key, value)
        for key in ("blank_probability", "mlm_probability"):
            if getattr(self.data_collator, key, None) is not None:
                fields.setdefault(key, getattr(self.data_collator, key))
        train = self.train_dataset
        if train is not None and "relation" in (getattr(train, "column_names", None) or ()):
            fields.setdefault("num_instances", len(train))
            fields.setdefault("num_relations", len(set(train["relation"][:])))
        hub_id = self.args.hub_model_id or getattr(self, "hub_model_id", None)
        fields.setdefault("model_name", model_name or (hub_id or os.path.basename(os.path.abspath(self.args.output_dir))).split("/")[-1])
        fields.setdefault("model_id", hub_id or fields["model_name"])
        if license is not None:
            fields["license"] = license
        if language is not None:
            fields["language"] = language
        if tags:
            fields["tags"] = [*fields.get("tags", []), *([tags] if isinstance(tags, str) else tags)]
        if finetuned_from is not None:
            fields.setdefault("base_model", finetuned_from)
        if dataset is not None:
            fields.setdefault("datasets", [dataset] if isinstance(dataset, str) else list(dataset))
        fields["training"] = {**self.training_summary(), **fields.get("training", {})}
        fields.setdefault("eval_results", self.latest_fewrel_results())
        pool = _option(self.args, "fewrel_eval_pool_per_relation")
        if fields["eval_results"] and pool and "eval_description" not in fields:
            from .model_card import DEFAULT_EVAL_DESCRIPTION

            fields["eval_description"] = (
                f"{DEFAULT_EVAL_DESCRIPTION} Measured at the end of pre-training on episodes drawn from the first {pool} "
                "sentences of each relation (a fixed pool); see the evaluation script for full-split results."
            )
        os.makedirs(self.args.output_dir, exist_ok=True)
        render_model_card(**fields).save(os.path.join(self.args.output_dir, "README.md"))
