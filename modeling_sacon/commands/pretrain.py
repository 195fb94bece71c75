"""SaCon pre-training as a command: arguments, data loading and checks, model composition, Trainer run, save.

`examples/pretrain.py` is the script over it (with the CPU budget of the README's main job as its defaults);
`benchmarks/` and other programs call :func:`main` with an argv, or :func:`run` with parsed arguments.

    main(["--max_steps", "200", "--output_dir", "out"])          # as `python examples/pretrain.py ...`
    main(["args.json"])                                           # all options in one JSON file

Every input is validated before training starts: errors name the file, relation, instance and field, or the option.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from transformers import AutoTokenizer, TrainerState, set_seed
from transformers.trainer import TRAINER_STATE_NAME

from modeling_sacon import SaconDualEncoderModel, SaconProcessor
from modeling_sacon.commands import parse_arguments
from modeling_sacon.data.collator import DEFAULT_BLANK_PROBABILITY, DEFAULT_MLM_PROBABILITY, SaconPretrainingCollator
from modeling_sacon.data import (
    PRETRAIN_LABEL_FILES,
    check_relation_leakage,
    check_sentence_overlap,
    get_data_dir,
    label_texts,
    load_fewrel_source,
    load_hub_few_rel,
    load_label_table,
    load_pretraining_corpus,
    load_relation_corpus,
    relation_corpus_label_table,
    resolve_data_path,
)
from modeling_sacon.utils.defaults import default_backbone_path
from modeling_sacon.data.episodes import parse_settings
from modeling_sacon.fewshot.zeroshot_protocol import filter_corpus_for_split, load_zeroshot_split, save_pretraining_relations
from modeling_sacon.training.checkpoints import last_complete_checkpoint
from modeling_sacon.training.callbacks import PretrainingRelationsCallback
from modeling_sacon.training.hard_negatives import nearest_relations
from modeling_sacon.training.interpolation import interpolate_label_encoder, load_reference_weights
from modeling_sacon.training.model_card import EMBEDDED_CORPUS_DESCRIPTIONS
from modeling_sacon.training.trainer import SaconTrainer, SaconTrainingArguments, check_batch_shape

logger = logging.getLogger("pretrain")

DEFAULT_BACKBONE_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
NONE_VALUES = ("", "none", "None")
EVAL_LABEL_FILE = "fewrel/pid2name.json"


@dataclass
class ModelArguments:
    sentence_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Sentence encoder checkpoint (default: the packaged all-MiniLM-L6-v2)."}
    )
    label_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Label encoder checkpoint (default: a second copy of the sentence encoder)."}
    )
    share_encoders: bool = field(default=False, metadata={"help": "One encoder for sentences and labels (the paper: two)."})
    freeze_label_encoder: bool = field(
        default=False,
        metadata={"help": "Keep the label encoder's pretrained weights (locked, as LiT locks a tower; no dropout): only "
                  "the sentence encoder learns, so relation texts never seen in training are read as the backbone "
                  "reads them instead of by a tower fitted to the corpus' few hundred label texts. With MiniLM it "
                  "scored lower on val_wiki and the zero-shot splits (docs/results.md)."},
    )
    label_encoder_interpolation: float = field(
        default=1.0,
        metadata={"help": "After training, move the label encoder back toward its backbone: its weights become backbone "
                  "+ W x (trained - backbone) (WiSE-FT; 1: as trained). Relation texts unseen in pre-training are then "
                  "read more as the backbone reads them while staying aligned with the sentence encoder; the sentence "
                  "encoder is untouched. 0.5-0.7 scored higher on FewRel's zero-shot splits (docs/results.md). "
                  "Checkpoints keep the trained weights (a resumed run interpolates at its end)."},
    )
    projection_dim: int | None = field(default=None, metadata={"help": "Linear projections to this size (default: none)."})
    label_pooling: str = field(default="cls_mean", metadata={"help": "cls_mean (the paper), cls or mean."})
    label_anchored_reduction: str = field(
        default="sum", metadata={"help": "sum (the authors' code) or mean (SupCon) over a label's positive sentences."}
    )
    sentence_anchored_weight: float = field(default=1.0, metadata={"help": "Weight of the sentence-anchored InfoNCE."})
    label_anchored_weight: float = field(default=1.0, metadata={"help": "Weight of the label-anchored InfoNCE."})
    sentence_mlm_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of the sentence encoder's MLM (0: off, and its inputs are not masked). Default: 1 when "
                  "the checkpoint has a pretrained MLM head (bert-base-uncased), else 0 (all-MiniLM-L6-v2: MLM through a "
                  "new head cost transfer in the README's ablation)."},
    )
    label_mlm_weight: float | None = field(
        default=None, metadata={"help": "Weight of the label encoder's MLM; default as --sentence_mlm_weight."}
    )
    mlm_probability: float = field(default=DEFAULT_MLM_PROBABILITY, metadata={"help": "Share of maskable tokens chosen for MLM."})
    label_negatives: int = field(
        default=0,
        metadata={"help": "Relation descriptions of other corpus relations added to each batch as extra negatives of "
                  "the sentence-anchored softmax (no sentences of their own)."},
    )
    hard_label_negatives: bool = field(
        default=False,
        metadata={"help": "Take the --label_negatives among the batch relations' nearest relations by label-text "
                  "embedding (computed once with the starting label encoder) instead of at random."},
    )
    temperature: float = field(default=0.07, metadata={"help": "Initial temperature (logit_scale = log(1 / temperature))."})
    learn_temperature: bool = field(default=True, metadata={"help": "Learn logit_scale (--logit_scale_learning_rate)."})


@dataclass
class DataArguments:
    train_files: list[str] | None = field(
        default=None,
        metadata={"help": "Corpus files, format detected per file: FewRel JSON ({relation: [{tokens, h, t}]}), the "
                  "authors' cpdata.json list ([{tokens, h: {name, id, pos}, t, r}]) or JSON Lines (one instance per line, "
                  "with 'r' or 'relation'); CP / JSON Lines are streamed into a cached Arrow file. Default: the embedded corpus."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset in the few_rel layout: a corpus pushed by examples/push_corpus.py (label texts "
                  "from its labels.json), or thunlp/few_rel (--dataset_revision refs/convert/parquet, --dataset_split "
                  "train_wiki)."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Its revision (branch, tag or commit)."})
    dataset_split: str = field(default="train", metadata={"help": "Its split used for pre-training."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Directory of the embedded corpus and of relative files (default: SACON_DATA_DIR)."}
    )
    label_files: list[str] | None = field(
        default=None,
        metadata={"help": "Label tables {relation: [name, description]}, later files win (default for --train_files: "
                  "fewrel/pid2name.json + pretrain/labels.json, overridden by texts the rows carry: cpdata.json's "
                  "rname / rstate). rel2scope.json holds row ranges, not texts."},
    )
    corpus: str = field(
        default="v2",
        metadata={"help": "The embedded corpus used without --train_files / --dataset_name: v2 (912 relations: 105 dense + "
                  "807 long-tail), v2_dense (the 105) or v1 (the earlier 82 relations)."},
    )
    label_fallback: bool = field(
        default=False, metadata={"help": "Name relations without label text after themselves ('_' read as a space)."}
    )
    max_seq_length: int = field(default=64, metadata={"help": "Sentence length in tokens (the paper: 64)."})
    label_max_length: int = field(default=64, metadata={"help": "Label text length in tokens."})
    blank_probability: float = field(
        default=DEFAULT_BLANK_PROBABILITY, metadata={"help": "Probability of blanking each entity mention."}
    )
    exclude_relations_from: list[str] | None = field(
        default=None,
        metadata={"help": "Zero-shot split files ({train, eval, test} relation ids, e.g. zeroshot/fewrel_rel2id_5_40.json, "
                  "relative to the data dir or absolute): their test and eval relations are removed from the training "
                  "corpus, so a checkpoint pre-trained for a split never sees its test relations."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows (debugging)."})
    eval_fewrel: str | None = field(
        default="fewrel/val_wiki.json",
        metadata={"help": "FewRel JSON scored at the end (and at --eval_strategy); 'none' skips evaluation."},
    )
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Score a Hub dataset in the few_rel layout instead (thunlp/few_rel)."}
    )
    eval_dataset_revision: str | None = field(default=None, metadata={"help": "Its revision (refs/convert/parquet)."})
    eval_dataset_split: str = field(default="val_wiki", metadata={"help": "Its split scored."})
    eval_label_files: list[str] | None = field(
        default=None,
        metadata={"help": "Label tables of the evaluation relations (zero-shot / label-augmented methods); default: "
                  f"{EVAL_LABEL_FILE}, with --eval_dataset_name the rows' own names."},
    )
    allow_eval_relations: bool = field(
        default=False, metadata={"help": "Allow training relations that are FewRel evaluation relations (leakage)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start afresh even if --output_dir holds checkpoints (default: resume)."}
    )


def parse_args(
    args: list[str] | None = None, defaults: Mapping[str, Any] | None = None
) -> tuple[ModelArguments, DataArguments, SaconTrainingArguments]:
    return parse_arguments((ModelArguments, DataArguments, SaconTrainingArguments), args, defaults)


# ----------------------------------------------------------------------------------------------------------------
# Data: everything is loaded and checked before a model is built.


def load_training_data(data_args: DataArguments):
    """(canonical Dataset, {relation: (name, description)} for its relations, model-card facts)."""
    if data_args.train_files and data_args.dataset_name:
        raise ValueError("give --train_files or --dataset_name, not both")
    if data_args.dataset_name:
        source = f"{data_args.dataset_name}[{data_args.dataset_split}]"
        dataset, table = load_hub_few_rel(
            data_args.dataset_name, data_args.dataset_split, config=data_args.dataset_config_name,
            revision=data_args.dataset_revision,
        )
        if data_args.label_files:
            table.update(load_label_table(data_files(data_args, data_args.label_files)))
        card = {"corpus_description": f"The `{data_args.dataset_name}` dataset, split `{data_args.dataset_split}`.",
                "datasets": [data_args.dataset_name]}
    elif data_args.train_files:
        source = ", ".join(data_args.train_files)
        train_files = data_files(data_args, data_args.train_files)
        dataset = load_relation_corpus(train_files)  # FewRel JSON, the authors' (CP) list or JSON Lines
        # Label texts: the default tables < the rows' own texts (cpdata.json's rname / rstate) < explicit --label_files.
        carried = relation_corpus_label_table(train_files)
        if data_args.label_files:
            table = {**carried, **load_label_table(data_files(data_args, data_args.label_files))}
        else:
            table = {**load_label_table(data_files(data_args, PRETRAIN_LABEL_FILES)), **carried}
        card = {"corpus_description": f"Relation-corpus files: {', '.join(f'`{Path(p).name}`' for p in data_args.train_files)}."}
    else:
        source = f"the embedded pre-training corpus ({data_args.corpus})"
        dataset, table = load_pretraining_corpus(
            get_data_dir(data_args.data_dir), corpus=data_args.corpus, allow_eval_relations=data_args.allow_eval_relations
        )
        if data_args.label_files:
            table = {**table, **load_label_table(data_files(data_args, data_args.label_files))}
        card = {"corpus_description": EMBEDDED_CORPUS_DESCRIPTIONS[data_args.corpus],
                "datasets": ["thunlp/few_rel", "thunlp/docred"]}
    for split_file in data_args.exclude_relations_from or ():
        dataset, note = exclude_split_relations(dataset, split_file, source, data_args.data_dir)
        card["corpus_description"] += f" {note}"
    if data_args.max_train_samples is not None:
        dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    relation_column = dataset["relation"][:]  # one list: iterating a Dataset column reads it row by row (~35 us a row)
    unlabelled = sum(1 for relation in relation_column if not relation)
    if unlabelled:
        raise ValueError(f"{source}: {unlabelled} rows have no relation (unlabelled data cannot be pre-trained on)")
    relations = list(dict.fromkeys(relation_column))
    labels = label_texts(relations, table, fallback=data_args.label_fallback, source=source)  # names every missing one
    return dataset, labels, {**card, "source": source}


def exclude_split_relations(
    dataset: datasets.Dataset, split_file: str, source: str, data_dir: str | None = None
) -> tuple[datasets.Dataset, str]:
    """`dataset` without the test and eval relations of a zero-shot split file, and the model card's sentence on it."""
    split = load_zeroshot_split(resolve_data_path(split_file, data_dir))
    dataset, removed = filter_corpus_for_split(dataset, split)
    logger.info(
        f"--exclude_relations_from {split_file}: {len(dataset)} rows of {source} kept without the split's test and eval "
        f"relations {sorted(split.held_out)} ({sum(removed.values())} rows removed)"
    )
    note = (f"The test and eval relations of the zero-shot split `{Path(split.path).name}` "
            f"({', '.join(sorted(split.held_out))}) were removed before training ({sum(removed.values())} rows).")
    return dataset, note


def data_files(data_args: DataArguments, paths) -> list[str]:
    """Paths as given, relative ones taken in --data_dir (or SACON_DATA_DIR) when they are not found as they are."""
    return [str(resolve_data_path(path, data_args.data_dir)) for path in paths]


def load_eval_data(data_args: DataArguments):
    """(FewRel rows, label table) to score, or (None, None)."""
    if not data_args.eval_dataset_name and (data_args.eval_fewrel is None or data_args.eval_fewrel in NONE_VALUES):
        return None, None
    # A Hub split's rows carry their names; the default table is for FewRel JSON.
    label_files = data_args.eval_label_files or ([] if data_args.eval_dataset_name else [EVAL_LABEL_FILE])
    dataset, table, _ = load_fewrel_source(
        data_args.eval_fewrel, label_files, dataset_name=data_args.eval_dataset_name,
        split=data_args.eval_dataset_split, revision=data_args.eval_dataset_revision, data_dir=data_args.data_dir,
    )
    return dataset, table


def eval_split_name(data_args: DataArguments) -> str:
    """The evaluated split, for the logs and the model card."""
    return data_args.eval_dataset_split if data_args.eval_dataset_name else Path(data_args.eval_fewrel).stem


def check_training_options(training_args: SaconTrainingArguments, relations: list[str]) -> None:
    """Batch shape and schedule options, checked against the data before any model is loaded."""
    check_batch_shape(training_args, relations)
    if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise ValueError("set --max_steps (or --num_train_epochs) to a positive value")
    parse_settings(training_args.fewrel_eval_settings)  # raises naming the bad setting


def use_all_cores(training_args: SaconTrainingArguments) -> None:
    """Give torch this process's share of the CPU cores when training on the CPU.

    `accelerate launch` exports OMP_NUM_THREADS=1 to a single CPU process (unless told
    `--num_cpu_threads_per_process`), so torch would use one core of many. On GPUs nothing changes.
    """
    if training_args.device.type != "cpu" or "ACCELERATE_MIXED_PRECISION" not in os.environ:
        return  # not on the CPU, or not started by `accelerate launch`: torch's own default stands
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = max(1, cores // local_processes)
    if torch.get_num_threads() < threads:
        logger.info(f"torch threads {torch.get_num_threads()} -> {threads} ({cores} cores, {local_processes} local process(es))")
        torch.set_num_threads(threads)


def limit_heap_fragmentation(training_args: SaconTrainingArguments) -> None:
    """With GradCache on a CPU, fix glibc's mmap threshold at 1 MiB (as `MALLOC_MMAP_THRESHOLD_=1048576` does).

    glibc raises its threshold to 32 MB after the first frees, so activations come from its heap; a cached step's
    mini-batches of many shapes then leave that heap fragmented and resident (peak RSS +29% over the batch-32 run at
    batch 256 in mini-batches of 32, against +0.7% with the fixed threshold; README, GradCache). A user's own
    MALLOC_MMAP_THRESHOLD_ wins; elsewhere than glibc this does nothing.
    """
    if training_args.contrastive_mini_batch_size is None or training_args.device.type != "cpu":
        return
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3  # malloc.h
    if libc.mallopt(m_mmap_threshold, 1 << 20) == 1:
        logger.info("glibc mmap threshold fixed at 1 MiB (GradCache on the CPU: keeps the heap from fragmenting)")


def checkpoint_is_finished(checkpoint: str, training_args: SaconTrainingArguments) -> bool:
    state_file = os.path.join(checkpoint, TRAINER_STATE_NAME)
    if training_args.max_steps <= 0 or not os.path.isfile(state_file):
        return False
    return TrainerState.load_from_json(state_file).global_step >= training_args.max_steps


def final_step_evaluation(trainer: SaconTrainer) -> dict[str, float]:
    """The evaluation metrics logged at the last step, if `--eval_strategy` already scored the final model."""
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") != trainer.state.global_step:
            break
        if any(key.startswith("eval_") and key.endswith("_accuracy") for key in entry):
            return {key: value for key, value in entry.items() if key.startswith("eval_")}
    return {}


def strict_override_note(leaked: list[str], overlap: int) -> str:
    """What `--allow_eval_relations` let through, for the model card."""
    found = [f"FewRel evaluation relation(s) {', '.join(leaked)}"] if leaked else []
    found += [f"{overlap} sentence(s) of the evaluation file"] if overlap else []
    return " and ".join(found) or "nothing (no evaluation relation or sentence was found)"


def seen_relation_names(labels: dict[str, tuple[str, str]]) -> list[str]:
    return [f"{relation} ({name})" if name and name != relation else relation for relation, (name, _) in labels.items()]


# ----------------------------------------------------------------------------------------------------------------
# Model


def resolve_mlm_weight(model_args: ModelArguments, tower: str, loading_info: dict) -> float:
    """The given `--{tower}_mlm_weight`, else 1 with a pretrained MLM head and 0 (logged) without one."""
    weight = getattr(model_args, f"{tower}_mlm_weight")
    if weight is not None:
        return weight
    if loading_info["pretrained_mlm_heads"][tower]:
        return 1.0
    logger.warning(
        f"{tower} tower: no pretrained MLM head, so its MLM term is off ({tower}_mlm_weight 0, inputs unmasked); "
        f"pass --{tower}_mlm_weight 1 to train a new head"
    )
    return 0.0


def freeze_label_encoder(model: SaconDualEncoderModel) -> None:
    """Lock the label encoder (`--freeze_label_encoder`): no gradients, no dropout, no label MLM."""
    model.config.label_mlm_weight = 0.0  # a pretrained head's default weight 1 would mask the label inputs for nothing
    model.label_encoder.requires_grad_(False)
    for module in model.label_encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # the Trainer's model.train() would otherwise add noise to the fixed label vectors


def backbone_paths(model_args: ModelArguments) -> tuple[str, str]:
    """(sentence encoder, label encoder) checkpoints the model starts from."""
    sentence_path = model_args.sentence_model_name_or_path or default_backbone_path()
    return sentence_path, model_args.label_model_name_or_path or sentence_path


def build_model_and_processor(model_args: ModelArguments, data_args: DataArguments):
    sentence_path, label_path = backbone_paths(model_args)
    tokenizer = AutoTokenizer.from_pretrained(sentence_path)
    if label_path != sentence_path and not model_args.share_encoders:
        if AutoTokenizer.from_pretrained(label_path).get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"--label_model_name_or_path {label_path} has another vocabulary than {sentence_path}: both encoders "
                "read one tokenizer (the entity markers are added to it)"
            )
    processor = SaconProcessor(tokenizer, max_length=data_args.max_seq_length, label_max_length=data_args.label_max_length)
    model, loading_info = SaconDualEncoderModel.from_encoders_pretrained(
        sentence_path,
        None if model_args.share_encoders else label_path,
        output_loading_info=True,
        vocab_size=len(processor.tokenizer),
        share_encoders=model_args.share_encoders,
        projection_dim=model_args.projection_dim,
        label_pooling=model_args.label_pooling,
        label_anchored_reduction=model_args.label_anchored_reduction,
        sentence_anchored_weight=model_args.sentence_anchored_weight,
        label_anchored_weight=model_args.label_anchored_weight,
        sentence_mlm_weight=model_args.sentence_mlm_weight or 0.0,  # resolved below, once the checkpoint is read
        label_mlm_weight=model_args.label_mlm_weight or 0.0,
        label_negatives=model_args.label_negatives,
        logit_scale_init_value=math.log(1.0 / model_args.temperature),
        learn_logit_scale=model_args.learn_temperature,
    )
    for tower in ("sentence", "label"):  # defaults follow whether the checkpoint brought a pretrained head
        setattr(model.config, f"{tower}_mlm_weight", resolve_mlm_weight(model_args, tower, loading_info))
    if model_args.freeze_label_encoder:
        freeze_label_encoder(model)
    base_model = None
    if model_args.sentence_model_name_or_path is None:
        base_model = DEFAULT_BACKBONE_HUB_ID
    elif not Path(sentence_path).exists():
        base_model = sentence_path  # a Hub id
    return model, processor, base_model


# ----------------------------------------------------------------------------------------------------------------


def main(args: list[str] | None = None, defaults: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Parse `args` (default: `sys.argv[1:]`; `defaults` as in :func:`parse_args`) and :func:`run` them."""
    return run(*parse_args(args, defaults))


def run(model_args: ModelArguments, data_args: DataArguments, training_args: SaconTrainingArguments) -> dict[str, float]:
    """Pre-train, evaluate and save as the arguments say; returns the train and evaluation metrics."""
    # 1. Arguments.
    if not 0.0 < model_args.temperature <= 1.0:
        raise ValueError(f"--temperature must be in (0, 1], got {model_args.temperature}")
    if model_args.hard_label_negatives and model_args.label_negatives < 1:
        raise ValueError("--hard_label_negatives chooses the --label_negatives: give --label_negatives N (N >= 1)")
    if model_args.freeze_label_encoder and model_args.share_encoders:
        raise ValueError("--freeze_label_encoder with --share_encoders would lock the sentence encoder too: use one")
    if model_args.freeze_label_encoder and model_args.label_mlm_weight:
        raise ValueError(f"--freeze_label_encoder trains nothing in the label encoder: --label_mlm_weight "
                         f"{model_args.label_mlm_weight} would have no effect (leave it unset or 0)")
    interpolation = model_args.label_encoder_interpolation
    if not 0.0 <= interpolation <= 1.0:
        raise ValueError(f"--label_encoder_interpolation must be in [0, 1] (1: as trained), got {interpolation}")
    if interpolation < 1.0 and (model_args.share_encoders or model_args.freeze_label_encoder):
        raise ValueError(f"--label_encoder_interpolation {interpolation} needs a label encoder of its own that trains: "
                         "not with --share_encoders (it would move the sentence encoder) or --freeze_label_encoder")

    # 2. Logging and seed.
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(logging.INFO if training_args.should_log else log_level)
    logging.getLogger("modeling_sacon").setLevel(logger.level)  # e.g. which MLM heads were carried over
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.info(
        f"process {training_args.process_index} of {training_args.world_size}, device {training_args.device}, "
        f"bf16 {training_args.bf16}, fp16 {training_args.fp16}"
    )
    use_all_cores(training_args)
    limit_heap_fragmentation(training_args)
    set_seed(training_args.seed)

    # 3. Data: training corpus and its label texts, evaluation rows; all checked before a model is built.
    with training_args.main_process_first(desc="training corpus"):  # one process per node writes the Arrow cache
        train_dataset, labels, card_facts = load_training_data(data_args)
    eval_dataset, eval_labels = load_eval_data(data_args)
    relations = list(labels)
    # The strict protocol: every known FewRel evaluation relation, whatever --eval_fewrel, and the evaluation sentences.
    strict = {"source": "the training data", "allow": data_args.allow_eval_relations,
              "hint": "remove them or pass --allow_eval_relations (the model card then says so)"}
    leaked = check_relation_leakage(relations, eval_dataset.unique("relation") if eval_dataset is not None else (), **strict)
    overlap = check_sentence_overlap(train_dataset, eval_dataset, **strict) if eval_dataset is not None else 0
    check_training_options(training_args, relations)
    logger.info(f"training data: {len(train_dataset)} rows, {len(relations)} relations ({card_facts['source']})")
    if eval_dataset is not None:
        logger.info(f"evaluation: {len(eval_dataset)} rows of {eval_split_name(data_args)}, {training_args.fewrel_eval_settings}")

    resume = training_args.resume_from_checkpoint
    if resume in ("last", "latest", "true", "True"):
        resume = last_complete_checkpoint(training_args.output_dir, not training_args.save_only_model)
        if resume is None:
            raise ValueError(f"--resume_from_checkpoint last: no checkpoint in {training_args.output_dir}")
    elif resume is None and os.path.isdir(training_args.output_dir) and not data_args.overwrite_output_dir:
        resume = last_complete_checkpoint(training_args.output_dir, not training_args.save_only_model)
        if resume is not None:
            logger.warning(f"resuming from {resume} (found in --output_dir); pass --overwrite_output_dir to start afresh")
    if resume is not None and not os.path.isdir(resume):
        raise ValueError(f"--resume_from_checkpoint {resume} is not a directory")

    # 4. Model and processor: two pretrained encoders composed into SaCon, markers added to the tokenizer.
    model, processor, base_model = build_model_and_processor(model_args, data_args)
    collator = SaconPretrainingCollator(
        processor, labels, relation_to_id={relation: i for i, relation in enumerate(relations)},
        blank_probability=data_args.blank_probability, mlm_probability=model_args.mlm_probability,
        sentence_mlm=model.config.sentence_mlm_weight > 0, label_mlm=model.config.label_mlm_weight > 0,
        label_negatives=model.config.label_negatives,
        label_negative_neighbors=(
            nearest_relations(model, processor, labels, model.config.label_negatives)
            if model_args.hard_label_negatives else None
        ),
        seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
    )

    # 5. Trainer (re-checks batch shape and label coverage; with --push_to_hub it creates the Hub repo now).
    trainer = SaconTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
        eval_label_table=eval_labels,
        model_card_fields={
            "base_model": base_model,
            "datasets": card_facts.get("datasets"),
            "corpus_description": card_facts["corpus_description"],
            "num_relations": len(relations),
            "num_instances": len(train_dataset),
            "seen_relations": seen_relation_names(labels),
            "excludes_fewrel_eval": not leaked and not overlap,
            "eval_leakage_allowed": strict_override_note(leaked, overlap) if data_args.allow_eval_relations else None,
            "share_encoders": model_args.share_encoders,
            "blank_probability": data_args.blank_probability,
            "mlm_probability": model_args.mlm_probability,
            "eval_split": eval_split_name(data_args) if eval_dataset is not None else None,
            "training": {
                "max sentence length": data_args.max_seq_length, "entity blanking": data_args.blank_probability,
                **({"label encoder": "locked (its pretrained weights)"} if model_args.freeze_label_encoder else {}),
                **({"label encoder": f"interpolated with its backbone after training, weight "
                    f"{model_args.label_encoder_interpolation:g} (WiSE-FT)"}
                   if model_args.label_encoder_interpolation < 1.0 else {}),
                **({"label negatives per batch": f"{model_args.label_negatives} "
                    f"({'nearest by label text' if model_args.hard_label_negatives else 'random'})"}
                   if model_args.label_negatives else {}),
            },
        },
    )

    # Each checkpoint records its pre-training relations (the zero-shot evaluator's strictness check); so does
    # output_dir from the start, which checkpoint pushes upload.
    trainer.add_callback(PretrainingRelationsCallback(relations))
    if trainer.is_world_process_zero():
        save_pretraining_relations(training_args.output_dir, relations)

    # 6. Train, then score the FewRel episodes.
    metrics: dict[str, float] = {}
    if resume is not None and checkpoint_is_finished(resume, training_args):
        # Trainer.train would still run one more optimizer step past max_steps on such a checkpoint
        logger.warning(f"{resume} already reached --max_steps {training_args.max_steps}: evaluating it as it is")
        trainer.state = TrainerState.load_from_json(os.path.join(resume, TRAINER_STATE_NAME))
        trainer.model.load_state_dict(SaconDualEncoderModel.from_pretrained(resume).state_dict())
    else:
        train_result = trainer.train(resume_from_checkpoint=resume)
        metrics.update(train_result.metrics)
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
    if model_args.label_encoder_interpolation < 1.0:  # after the checkpoints, which keep the trained weights to resume
        label_path = backbone_paths(model_args)[1]
        interpolate_label_encoder(trainer.model, load_reference_weights(label_path), model_args.label_encoder_interpolation)
        logger.info(f"label encoder interpolated with {label_path}, weight {model_args.label_encoder_interpolation:g}")
    if eval_dataset is not None:
        eval_metrics = final_step_evaluation(trainer) or trainer.evaluate()  # not twice when --eval_steps hit it
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    trainer.save_state()

    # 7. Save model (safetensors + code), processor and model card; push them with --push_to_hub.
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training")  # save_model + create_model_card + upload of output_dir
    else:
        trainer.save_model()
        trainer.create_model_card()
    logger.info(f"model, processor and model card written to {training_args.output_dir}")
    return metrics

