"""SaCon configuration: the architecture (two encoder sub-configs, pooling, projections) and the objective.

Tokenisation options (entity markers, blank token, lengths) belong to the processor (`processor_config.json`);
few-shot scoring options to `SaconFewShotConfig` (the few-shot model) and the pipeline's parameters."""

from __future__ import annotations

import copy
import math
import os

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

logger = logging.get_logger(__name__)

LABEL_POOLING_CHOICES = ("cls_mean", "cls", "mean")
LABEL_ANCHORED_REDUCTIONS = ("sum", "mean")
# The pipeline a checkpoint declares: `pipeline(RELATION_CLASSIFICATION_TASK, model=repo, trust_remote_code=True)` runs
# pipeline_sacon.py, which the processor saves beside the model.
RELATION_CLASSIFICATION_TASK = "relation-classification"
# Options that config.json held before they moved to the processor (tokenisation) and to `SaconFewShotConfig`
# (few-shot scoring): a SaconConfig drops them on load. Old checkpoints' processors still read their tokenisation
# options from config.json when no processor_config.json is there (`SaconProcessor.get_processor_dict`).
PROCESSOR_OPTIONS = ("head_markers", "tail_markers", "blank_token", "max_length", "label_max_length")
FEWSHOT_OPTIONS = ("fewshot_method", "fewshot_similarity", "fewshot_nota", "fewshot_nota_init")
MOVED_OPTIONS = PROCESSOR_OPTIONS + FEWSHOT_OPTIONS
CUSTOM_PIPELINES = {
    RELATION_CLASSIFICATION_TASK: {"impl": "pipeline_sacon.RelationClassificationPipeline", "pt": ["AutoModel"], "type": "text"}
}


class SaconConfig(PretrainedConfig):
    r"""
    Configuration of a [`SaconDualEncoderModel`].

    Args:
        sentence_config (`dict` or `PretrainedConfig`): config of the sentence encoder (any AutoConfig encoder).
        label_config (`dict` or `PretrainedConfig`, *optional*): config of the label encoder; defaults to a copy of
            `sentence_config`. Ignored when `share_encoders=True`.
        share_encoders (`bool`): use one encoder for sentences and labels (the paper uses two).
        projection_dim (`int`, *optional*): size of optional linear projections; `None` (the paper) uses the raw
            2 x hidden representations.
        label_pooling (`str`): `"cls_mean"` ([CLS ; masked mean], the paper), `"cls"` or `"mean"` (repeated twice
            so both towers keep the same width). Sentences are always [h ; t], the hidden states at the head-start
            and tail-start markers.
        logit_scale_init_value (`float`): initial log scale, log(1 / 0.07) as in the paper.
        logit_scale_max (`float`): the scale is clamped to at most this log value (log 100, as CLIP).
        learn_logit_scale (`bool`): whether `logit_scale` receives gradients.
        label_anchored_reduction (`str`): `"sum"` of positives' log-probabilities (the authors' code) or `"mean"`
            (SupCon-style).
        sentence_anchored_weight / label_anchored_weight (`float`): weights inside the contrastive term.
        sentence_mlm_weight / label_mlm_weight (`float`): weights of the two MLM terms (0 disables one).
        label_negatives (`int`): relation descriptions added to each pre-training batch beyond its own relations
            (drawn from the corpus's other relations by the collator): extra negatives of the sentence-anchored
            softmax, never anchors of the label-anchored term. 0 (the paper): only the batch's relations.
        custom_pipelines (`dict`): the `relation-classification` pipeline's entry (`CUSTOM_PIPELINES`), read by
            `transformers.pipeline`.
        pack_label_texts (`bool`): run the label tower on the batch's label texts packed end to end (block-diagonal
            attention, original position ids) instead of padded to the longest: same outputs, and about 45% fewer
            tokens at the default batch (16 label texts of 10 to 60 tokens: 427 real of 784 padded). Used with a BERT tower
            under SDPA attention; other towers run padded.
        pack_sentences (`bool`): the same for the sentence tower's sentences: same outputs, about 45% fewer tokens on
            the embedded corpus (batches of 32 sentences: 6,466 real of 11,712 padded over 6 batches), a pre-training
            step about 28% shorter on a CPU (`benchmarks/measure.py sentence_packing`).
    """

    model_type = "sacon"
    sub_configs_defaults = {
        "sentence_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "label_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", optional=True),
    }

    sentence_config: dict | PretrainedConfig | None = None
    label_config: dict | PretrainedConfig | None = None
    share_encoders: bool = False
    projection_dim: int | None = None
    label_pooling: str = "cls_mean"
    logit_scale_init_value: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100.0)
    learn_logit_scale: bool = True
    label_anchored_reduction: str = "sum"
    sentence_anchored_weight: float = 1.0
    label_anchored_weight: float = 1.0
    sentence_mlm_weight: float = 1.0
    label_mlm_weight: float = 1.0
    label_negatives: int = 0
    pack_label_texts: bool = True
    pack_sentences: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    custom_pipelines: dict | None = None

    def __post_init__(self, **kwargs):
        moved = sorted(key for key in MOVED_OPTIONS if key in kwargs and key not in self.__dataclass_fields__)
        if moved:  # e.g. a config.json saved before these options moved out (see MOVED_OPTIONS)
            logger.warning(
                f"{type(self).__name__} ignores {moved}: tokenisation options belong to the processor "
                "(SaconProcessor), few-shot scoring options to SaconFewShotConfig"
            )
            for key in moved:
                kwargs.pop(key)
        if self.label_config is None and not self.share_encoders:
            sentence = self.sentence_config
            self.label_config = sentence.to_dict() if isinstance(sentence, PretrainedConfig) else sentence
        super().__post_init__(**kwargs)
        if self.share_encoders:
            self.label_config = None
        self.custom_pipelines = self.custom_pipelines or copy.deepcopy(CUSTOM_PIPELINES)
        self._validate()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`PretrainedConfig.from_pretrained`, passing the path on so that an invalid value's error names the file."""
        kwargs.setdefault("name_or_path", str(pretrained_model_name_or_path))
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`PretrainedConfig.from_dict`; an invalid value read from a checkpoint raises a `ValueError` naming its
        config.json (`name_or_path`, which `from_pretrained` and `AutoConfig` pass) and the option."""
        try:
            return super().from_dict(config_dict, **kwargs)
        except ValueError as err:
            source = kwargs.get("name_or_path")
            if not source:
                raise
            path = os.path.join(source, "config.json") if os.path.isdir(source) else f"config.json of {source}"
            raise ValueError(f"{path}: {err}") from err

    def _validate(self) -> None:
        """Fail at construction time, with the option's name, rather than deep inside a forward pass."""
        if self.label_pooling not in LABEL_POOLING_CHOICES:
            raise ValueError(f"label_pooling={self.label_pooling!r} is unknown; choose one of {LABEL_POOLING_CHOICES}")
        if self.label_anchored_reduction not in LABEL_ANCHORED_REDUCTIONS:
            raise ValueError(
                f"label_anchored_reduction={self.label_anchored_reduction!r} is unknown; "
                f"choose one of {LABEL_ANCHORED_REDUCTIONS}"
            )
        for name in ("sentence_anchored_weight", "label_anchored_weight", "sentence_mlm_weight", "label_mlm_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if not isinstance(self.label_negatives, int) or self.label_negatives < 0:
            raise ValueError(f"label_negatives must be a non-negative int, got {self.label_negatives!r}")
        if self.projection_dim is not None and self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be a positive int or None, got {self.projection_dim}")
        if self.logit_scale_init_value > self.logit_scale_max:
            raise ValueError(
                f"logit_scale_init_value ({self.logit_scale_init_value}) exceeds logit_scale_max ({self.logit_scale_max})"
            )

    @property
    def label_encoder_config(self) -> PretrainedConfig:
        return self.sentence_config if self.share_encoders else self.label_config


__all__ = ["SaconConfig"]
