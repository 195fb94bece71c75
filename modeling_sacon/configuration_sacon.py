"""SaCon configuration: two encoder sub-configs plus the contrastive/MLM options of the paper."""

from __future__ import annotations

import copy
import math
import os

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .scoring import check_method, check_similarity

LABEL_POOLING_CHOICES = ("cls_mean", "cls", "mean")
LABEL_ANCHORED_REDUCTIONS = ("sum", "mean")
# The pipeline a checkpoint declares: `pipeline(RELATION_CLASSIFICATION_TASK, model=repo, trust_remote_code=True)` runs
# pipeline_sacon.py, which the processor saves beside the model.
RELATION_CLASSIFICATION_TASK = "relation-classification"
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
        head_markers / tail_markers (`list[str]`): entity marker strings written around head and tail.
        blank_token (`str`): the token that replaces a blanked entity mention.
        max_length / label_max_length (`int`): tokenisation lengths of sentences and label texts.
        fewshot_method (`str`): how `SaconForFewShotRelationClassification` builds a relation's prototype:
            `"prototype"` (mean support [h ; t]), `"zero_shot"` (the label embedding) or `"label_augmented"` (both
            summed, as SimpleFSRE uses SaCon); see `scoring.py`.
        fewshot_similarity (`str`): `"cosine"` or `"euclidean"` (negative squared distance), times exp(logit_scale).
        fewshot_nota (`bool`): append a none-of-the-above column (label N) to the few-shot logits.
        fewshot_nota_init (`float`, *optional*): initial NOTA threshold in the similarity's units; `None`: 0.5 for
            cosine, -1.0 (the same point of unit vectors, |a - b|^2 = 2 - 2 cos) for euclidean.
        custom_pipelines (`dict`): the `relation-classification` pipeline's entry (`CUSTOM_PIPELINES`), read by
            `transformers.pipeline`.
        pack_label_texts (`bool`): run the label tower on the batch's label texts packed end to end (block-diagonal
            attention, original position ids) instead of padded to the longest: same outputs, and about 45% fewer
            tokens at the default batch (16 label texts of 10 to 60 tokens: 427 real of 784 padded). Used with a BERT tower
            under SDPA attention; other towers run padded.
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
    head_markers: list[str] | None = None
    tail_markers: list[str] | None = None
    blank_token: str = "[BLANK]"
    max_length: int = 64
    label_max_length: int = 64
    pack_label_texts: bool = True
    fewshot_method: str = "prototype"
    fewshot_similarity: str = "cosine"
    fewshot_nota: bool = False
    fewshot_nota_init: float | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    custom_pipelines: dict | None = None

    def __post_init__(self, **kwargs):
        if self.label_config is None and not self.share_encoders:
            sentence = self.sentence_config
            self.label_config = sentence.to_dict() if isinstance(sentence, PretrainedConfig) else sentence
        super().__post_init__(**kwargs)
        if self.share_encoders:
            self.label_config = None
        self.head_markers = list(self.head_markers or ("[E1]", "[/E1]"))
        self.tail_markers = list(self.tail_markers or ("[E2]", "[/E2]"))
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
        check_method(self.fewshot_method)
        check_similarity(self.fewshot_similarity)
        if self.projection_dim is not None and self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be a positive int or None, got {self.projection_dim}")
        if self.logit_scale_init_value > self.logit_scale_max:
            raise ValueError(
                f"logit_scale_init_value ({self.logit_scale_init_value}) exceeds logit_scale_max ({self.logit_scale_max})"
            )
        for name in ("head_markers", "tail_markers"):
            markers = getattr(self, name)
            if len(markers) != 2 or not all(isinstance(m, str) and m.strip() for m in markers):
                raise ValueError(f"{name} must be two non-empty strings (start, end), got {markers!r}")
        all_markers = self.head_markers + self.tail_markers
        if len(set(all_markers)) != 4:
            raise ValueError(f"entity markers must be four distinct strings, got {all_markers}")
        if self.blank_token in all_markers:
            raise ValueError(f"blank_token {self.blank_token!r} must differ from the entity markers")
        for name in ("max_length", "label_max_length"):
            if getattr(self, name) < 8:
                raise ValueError(f"{name} must be at least 8 tokens, got {getattr(self, name)}")

    @property
    def marker_tokens(self) -> list[str]:
        """Head start, head end, tail start, tail end: the tokens the processor adds to the vocabulary."""
        return [*self.head_markers, *self.tail_markers]

    @property
    def label_encoder_config(self) -> PretrainedConfig:
        return self.sentence_config if self.share_encoders else self.label_config


__all__ = ["SaconConfig"]
