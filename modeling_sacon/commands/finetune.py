"""Episodic few-shot fine-tuning of a SaCon checkpoint on FewRel with the stock `transformers.Trainer`, as a command.

`examples/finetune_fewrel.py` is the script over it (its docstring shows the usage, and it sets the run's budget); other
programs call :func:`main` with an argv.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from modeling_sacon.commands import parse_arguments
from modeling_sacon.data import load_fewrel_json, load_label_table, resolve_data_path
from modeling_sacon.utils.loading import load_sacon_model
from modeling_sacon.data.episodes import parse_setting
from modeling_sacon.metrics import load_fewrel_accuracy
from modeling_sacon.data.episodic import EpisodeCollator, EpisodicDataset
from modeling_sacon.modeling_sacon_fewshot import SaconForFewShotRelationClassification
from modeling_sacon.training.callbacks import LogitScaleClampCallback

logger = logging.getLogger("finetune_fewrel")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "a SaCon checkpoint (Hub id or directory); default: compose two all-MiniLM-L6-v2 towers"},
    )
    fewshot_method: str = field(
        default="label_augmented", metadata={"help": "prototype | zero_shot | label_augmented (SimpleFSRE-style)"}
    )
    fewshot_similarity: str = field(default="cosine", metadata={"help": "cosine | euclidean"})
    fewshot_nota: bool = field(default=False, metadata={"help": "learn a none-of-the-above threshold (label N)"})
    torch_num_threads: int = field(
        default=0,
        metadata={
            "help": "intra-op CPU threads; 0 keeps torch's default (one per core). On a machine shared with other "
            "jobs, 1 avoids OpenMP threads stalling each other"
        },
    )


@dataclass
class DataArguments:
    data_dir: str | None = field(
        default=None, metadata={"help": "directory of the relative files (default: SACON_DATA_DIR)"}
    )
    train_file: str = field(default="fewrel_train_sample/train_wiki_sample.json", metadata={"help": "FewRel JSON"})
    validation_file: str = field(default="fewrel/val_wiki.json", metadata={"help": "FewRel JSON"})
    label_file: str = field(default="fewrel/pid2name.json", metadata={"help": "{relation: [name, description]}"})
    n_way: int = field(default=5, metadata={"help": "training episodes: relations per episode"})
    k_shot: int = field(default=1, metadata={"help": "training episodes: support sentences per relation"})
    q_query: int = field(default=1, metadata={"help": "training episodes: queries per relation"})
    na_rate: int = field(default=0, metadata={"help": "training episodes: NOTA queries = na_rate * q_query"})
    train_episodes: int = field(default=10000, metadata={"help": "distinct training episodes (seeded)"})
    eval_setting: str = field(default="5-1", metadata={"help": "N-K, or nota-N-K-P (needs --fewshot_nota)"})
    eval_episodes: int = field(default=200, metadata={"help": "fixed evaluation episodes (seeded)"})
    eval_q_query: int = field(default=1, metadata={"help": "evaluation queries per relation"})
    eval_seed: int = field(default=12345, metadata={"help": "seed of the evaluation episodes"})
    max_length: int | None = field(default=None, metadata={"help": "sentence length in tokens (default: processor's)"})
    selection_relations: int = field(
        default=0,
        metadata={"help": "hold out the last N relations of --train_file and keep the checkpoint best on episodes of "
                  "them (--load_best_model_at_end); 0: no selection, the final model is evaluated. Selection never "
                  "uses --validation_file, the split the run reports"},
    )


@dataclass
class FewShotTrainingArguments(TrainingArguments):
    """`TrainingArguments` with episodic fine-tuning's defaults (a run's budget is the caller's)."""

    learning_rate: float = 2e-5
    per_device_train_batch_size: int = 2
    per_device_eval_batch_size: int = 8
    warmup_steps: int = 10
    weight_decay: float = 0.01
    eval_strategy: str = "no"  # during training only the --selection_relations episodes are scored
    save_strategy: str = "steps"
    report_to: str = "none"
    seed: int = 42
    dataloader_num_workers: int = 0
    dataloader_pin_memory: bool = torch.cuda.is_available()  # pinning without an accelerator only warns


def compute_metrics(eval_pred) -> dict[str, float]:
    """Query accuracy through the package's `fewrel_accuracy` metric (every episode has the same number of queries,
    so this is also the mean episode accuracy)."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    logits = np.asarray(logits).reshape(-1, np.asarray(logits).shape[-1])
    labels = np.asarray(labels).reshape(-1)
    keep = labels != -100
    result = _fewrel_accuracy().compute(predictions=logits.argmax(-1)[keep].tolist(), references=labels[keep].tolist())
    return {"accuracy": float(result["accuracy"])}


@functools.lru_cache(maxsize=1)
def _fewrel_accuracy():
    return load_fewrel_accuracy()


class StepTimer(TrainerCallback):
    """Logs seconds per optimisation step (what the defaults were tuned with)."""

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times = getattr(self, "times", []) + [time.perf_counter() - self._start]


def load_model(model_args: ModelArguments):
    options = {
        "fewshot_method": model_args.fewshot_method,
        "fewshot_similarity": model_args.fewshot_similarity,
        "fewshot_nota": model_args.fewshot_nota,
    }
    return load_sacon_model(model_args.model_name_or_path, model_class=SaconForFewShotRelationClassification, **options)


SELECTION = "selection"  # the Trainer logs the held-out episodes' accuracy as eval_selection_accuracy


def split_selection_relations(train, count: int, n_way: int, eval_n_way: int):
    """(training rows, held-out rows of the last `count` relations in file order), each with enough relations."""
    column = train["relation"][:]
    relations = list(dict.fromkeys(column))
    if count < 0 or (count and count < eval_n_way):
        raise ValueError(f"--selection_relations {count}: an evaluation episode needs {eval_n_way} relations")
    if len(relations) - count < n_way:
        raise ValueError(
            f"--selection_relations {count} leaves {len(relations) - count} of the {len(relations)} training relations: "
            f"a training episode needs --n_way {n_way}"
        )
    held_out = set(relations[len(relations) - count:])
    return (train.select([i for i, r in enumerate(column) if r not in held_out]),
            train.select([i for i, r in enumerate(column) if r in held_out]))


def configure_selection(training_args: TrainingArguments, selection: bool) -> None:
    """Select checkpoints on the held-out training relations only; refuse to select on the reported split."""
    if not selection:
        if training_args.load_best_model_at_end:
            raise ValueError(
                "--load_best_model_at_end would select a checkpoint on --validation_file, the split the run reports "
                "(an optimistic score): hold out training relations with --selection_relations N to select on them"
            )
        if training_args.eval_strategy != "no":
            raise ValueError(
                f"--eval_strategy {training_args.eval_strategy.value} scores episodes during training, but there is "
                "nothing to score but the reported split: pass --selection_relations N (or leave --eval_strategy no)"
            )
        return
    if training_args.eval_strategy == "no":
        raise ValueError("--selection_relations needs --eval_strategy steps (or epoch) to score checkpoints")
    training_args.metric_for_best_model = f"{SELECTION}_accuracy"
    training_args.greater_is_better = True


def main(argv: list[str] | None = None, defaults: Mapping[str, Any] | None = None) -> dict[str, float]:
    model_args, data_args, training_args = parse_arguments(
        (ModelArguments, DataArguments, FewShotTrainingArguments), argv, defaults
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    configure_selection(training_args, data_args.selection_relations > 0)  # before anything is loaded
    if model_args.torch_num_threads:
        torch.set_num_threads(model_args.torch_num_threads)

    model, processor = load_model(model_args)
    if data_args.max_length is not None:
        processor.max_length = data_args.max_length
    data_file = functools.partial(resolve_data_path, data_dir=data_args.data_dir)  # relative ones in --data_dir
    label_table = load_label_table(data_file(data_args.label_file))

    setting = parse_setting(data_args.eval_setting)
    train, held_out = split_selection_relations(
        load_fewrel_json(data_file(data_args.train_file)), data_args.selection_relations, data_args.n_way, setting.n_way
    )
    zero_shot = model_args.fewshot_method == "zero_shot"
    train_dataset = EpisodicDataset(
        train, n_way=data_args.n_way, k_shot=0 if zero_shot else data_args.k_shot, q_query=data_args.q_query,
        na_rate=data_args.na_rate, zero_shot=zero_shot, seed=training_args.seed, num_episodes=data_args.train_episodes,
    )
    if setting.nota_fraction and not model_args.fewshot_nota:
        raise ValueError(f"--eval_setting {setting} has NOTA queries: add --fewshot_nota")
    if data_args.na_rate and not model_args.fewshot_nota:
        raise ValueError("--na_rate > 0 trains on NOTA queries: add --fewshot_nota")
    episodes = functools.partial(
        EpisodicDataset, n_way=setting.n_way, k_shot=0 if zero_shot else setting.k_shot, q_query=data_args.eval_q_query,
        nota_fraction=setting.nota_fraction, zero_shot=zero_shot, seed=data_args.eval_seed,
        num_episodes=data_args.eval_episodes,
    )
    eval_dataset = episodes(load_fewrel_json(data_file(data_args.validation_file)))  # scored once, on the kept model
    selection_dataset = episodes(held_out) if len(held_out) else None
    logger.info(f"train: {train_dataset.sampler}\nselection: {selection_dataset and selection_dataset.sampler}"
                f"\neval: {eval_dataset.sampler}")

    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset={SELECTION: selection_dataset} if selection_dataset is not None else None,
        data_collator=EpisodeCollator(processor, label_table),
        processing_class=processor.tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[timer, LogitScaleClampCallback()],  # keeps model.sacon.logit_scale itself within the bound
    )
    result = trainer.train()
    metrics = dict(result.metrics)
    times = getattr(timer, "times", [])
    if times:
        metrics["seconds_per_step"] = float(np.median(times))
    key = f"eval_{SELECTION}_accuracy"
    metrics["selection_accuracy_by_step"] = {int(log["step"]): log[key] for log in trainer.state.log_history if key in log}
    if training_args.load_best_model_at_end and trainer.state.best_metric is not None:  # the model holds that checkpoint
        metrics["best_selection_accuracy"] = trainer.state.best_metric
        metrics["best_checkpoint"] = trainer.state.best_model_checkpoint
    # the reported score: the kept model on --validation_file, which took no part in training or selection
    metrics.update(trainer.evaluate(eval_dataset=eval_dataset, metric_key_prefix="eval"))
    trainer.save_model(training_args.output_dir)
    processor.save_pretrained(training_args.output_dir)
    trainer.log_metrics("final", {k: v for k, v in metrics.items() if not isinstance(v, dict)})
    Path(training_args.output_dir, "finetune_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics

