"""Relation classification with a SaCon checkpoint: rank candidate relations for sentences with marked entities.

```python
from modeling_sacon.fewshot.inference import SaconRelationClassifier

clf = SaconRelationClassifier.from_pretrained("org/sacon-base")        # or a local checkpoint directory
clf.predict(
    ["<e1>Paris</e1> is the capital of <e2>France</e2> ."],
    relations={"capital of": "country, state or region of which this is the capital",
               "founded by": "founder or co-founder of this organization"},
)   # -> [[("capital of", 11.2), ("founded by", 3.4)]]
```

**Sentences** may be given in any form of `modeling_sacon.sentence_forms` (inline markers, character spans, token
spans, FewRel rows); invalid ones raise `ValueError` naming the sentence and the problem.

**Candidates**: `relations` gives descriptions (``{"name": "description"}``, a list of ``(name, description)`` or of
names); `support` gives example sentences per relation (``{"name": [sentence, ...]}``, any number each). Scoring
(`scoring.py`): descriptions only -> ``zero_shot``; support only -> ``prototype``; both (for the same relations) ->
``label_augmented``. Scores are ``exp(logit_scale) * cosine`` (``similarity="cosine"``) or ``exp(logit_scale) *
-squared distance`` (``"euclidean"``) of L2-normalised embeddings, or softmax probabilities with
``scores="probabilities"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.utils import logging

from ..modeling_sacon import SaconDualEncoderModel
from ..pipeline_sacon import RelationClassificationPipeline
from ..processing_sacon import SaconProcessor
from ..sentence_forms import to_instance, word_tokenize

logger = logging.get_logger(__name__)

__all__ = ["SaconRelationClassifier", "word_tokenize", "to_instance"]


class SaconRelationClassifier:
    """The `relation-classification` pipeline with the package's loading and the older `(name, score)` output.

    `from_pretrained` notices checkpoints without label-encoder weights (descriptions are then refused rather than
    scored against random weights) and strips the `sacon.` prefix of fine-tuned few-shot checkpoints.
    """

    def __init__(
        self,
        model: SaconDualEncoderModel,
        processor: SaconProcessor,
        *,
        batch_size: int = 32,
        label_encoder_loaded: bool = True,
    ):
        self.pipeline = RelationClassificationPipeline(
            model=model.eval(), processor=processor, batch_size=batch_size, device=model.device
        )
        self.pipeline.label_encoder_loaded = label_encoder_loaded
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, path_or_repo: str | os.PathLike, *, device: str | torch.device | None = None, batch_size: int = 32, **kwargs
    ) -> "SaconRelationClassifier":
        """A `SaconDualEncoderModel` (or a fine-tuned `SaconForFewShotRelationClassification`: its `sacon.` prefix is
        stripped) and its `SaconProcessor`; `kwargs` go to both `from_pretrained` calls (e.g. `revision`, `token`)."""
        model, info = SaconDualEncoderModel.from_pretrained(path_or_repo, output_loading_info=True, **kwargs)
        loaded = not any(key.startswith("label_encoder.") for key in info.get("missing_keys", ()))
        if not loaded:
            logger.warning(f"{path_or_repo} has no label-encoder weights: relation descriptions cannot be used")
        processor = SaconProcessor.from_pretrained(path_or_repo, **kwargs)
        if device is not None:
            model.to(device)
        return cls(model, processor, batch_size=batch_size, label_encoder_loaded=loaded)

    @property
    def model(self) -> SaconDualEncoderModel:
        return self.pipeline.model

    @property
    def processor(self) -> SaconProcessor:
        return self.pipeline.processor

    @property
    def label_encoder_loaded(self) -> bool:
        return self.pipeline.label_encoder_loaded

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    def to_instances(self, sentences: Sequence[Any], names: Sequence[str] | None = None) -> list[dict]:
        """Validated canonical instances (raises `ValueError` naming the sentence)."""
        return self.processor.to_instances(sentences, names)

    def encode_sentences(self, sentences: Sequence[Any], names: Sequence[str] | None = None) -> torch.Tensor:
        """[B, D] sentence features (unnormalised [h ; t], as `get_sentence_features`) of sentences in any form."""
        return self.pipeline.encode_sentences(sentences, names, self.batch_size)

    def encode_relations(self, relations: Any) -> tuple[list[str], torch.Tensor]:
        """Names and [N, D] label features of relation descriptions."""
        return self.pipeline.encode_relations(relations, self.batch_size)

    def predict(
        self,
        sentences: Sequence[Any],
        relations: Any = None,
        support: Mapping[str, Sequence[Any]] | None = None,
        top_k: int | None = None,
        *,
        similarity: str = "cosine",
        scores: str = "logits",
    ) -> list[list[tuple[str, float]]]:
        """For each sentence, the candidate relations ranked by score: ``[[(relation, score), ...], ...]``.

        Args:
            sentences: a list of sentences in any accepted form.
            relations: descriptions of the candidates (zero-shot, or label-augmented together with `support`).
            support: ``{relation: [example sentences]}`` (prototype, or label-augmented with `relations`); with both,
                the two must name the same relations.
            top_k: keep the best `top_k` (default: all candidates).
            similarity: ``"cosine"`` or ``"euclidean"``.
            scores: ``"logits"`` (scaled similarities) or ``"probabilities"`` (softmax over the candidates).
        """
        if scores not in ("logits", "probabilities"):
            raise ValueError(f"scores={scores!r} is unknown; choose 'logits' or 'probabilities'")
        if not isinstance(sentences, list):
            if isinstance(sentences, (str, Mapping)) or not isinstance(sentences, Sequence):
                raise ValueError("sentences must be a list (wrap a single sentence in [...])")
            sentences = list(sentences)
        ranked = self.pipeline(
            sentences, relations=relations, support=support, top_k=top_k, similarity=similarity,
            function_to_apply="softmax" if scores == "probabilities" else "none",
        )
        return [[(entry["label"], entry["score"]) for entry in entries] for entries in ranked]
