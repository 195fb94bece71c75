"""The `relation-classification` pipeline: rank candidate relations for sentences with marked head and tail entities.

```python
from transformers import pipeline

classifier = pipeline("relation-classification", model="org/sacon-base", trust_remote_code=True)
classifier(
    "<e1>Lyon</e1> lies in the south of <e2>France</e2> .",
    relations={"country": "sovereign state of this item", "founded by": "founder or co-founder of this organization"},
)   # -> [{"label": "country", "score": 0.97}, {"label": "founded by", "score": 0.03}]
```

Shipped with every SaCon checkpoint (the processor saves it; `custom_pipelines` in the config points at it), so it
runs from the Hub repository alone. Inside the package it is registered in `PIPELINE_REGISTRY`, so
`pipeline("relation-classification", model=model, processor=processor)` takes loaded objects too.

**Sentences**: one sentence, or a list of them, in any form of `sentence_forms`: inline markers
(``"<e1>Paris</e1> is the capital of <e2>France</e2>"``), ``{"text", "head", "tail"}`` with character spans,
``{"tokens", "head", "tail"}`` with token spans, or FewRel rows.

**Candidates**: `relations` gives descriptions (``{"name": "description"}``, a list of ``(name, description)`` or of
names) and `support` example sentences (``{"name": [sentence, ...]}``, any number each). Descriptions only score
against the label embeddings (zero-shot); examples only against their mean (prototypes, few-shot); both, for the
same relations, against mean + label embedding (label-augmented). See `scoring.py`.

**Output**: per sentence, ``[{"label", "score"}, ...]`` sorted by score, best first: the layout of `text-classification`
with `top_k=None` (one list per input; a single sentence in, its list out). `top_k` keeps the best k.
Scores are softmax probabilities over the candidates (`function_to_apply="softmax"`, the default) or the raw logits
``exp(logit_scale) * cosine`` (`"none"`). With `nota_threshold` (a logit), a "none of the above" candidate whose
logit is the threshold joins the ranking: it comes first when every relation scores below the threshold.

Invalid input raises `ValueError` naming the sentence (``sentence 3``, ``support['founded by'][0]``) and the
problem: a bad span, missing markers, no or empty candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Pipeline

from .configuration_sacon import RELATION_CLASSIFICATION_TASK
from .processing_sacon import encode_in_length_order, sentence_names
from .scoring import append_nota, build_prototypes, check_similarity, similarity_logits

__all__ = ["RELATION_CLASSIFICATION_TASK", "RelationClassificationPipeline"]

SCORE_FUNCTIONS = ("softmax", "none")


def relation_texts(relations: Any) -> list[tuple[str, str]]:
    """{"name": "description"}, [(name, description)] or [name] -> [(name, description)], names unique."""
    if isinstance(relations, Mapping):
        items = [(name, "" if text is None else text) for name, text in relations.items()]
    elif isinstance(relations, Sequence) and not isinstance(relations, str):
        items = []
        for item in relations:
            if isinstance(item, str):
                items.append((item, ""))
            elif isinstance(item, Sequence) and len(item) == 2:
                items.append((item[0], "" if item[1] is None else item[1]))
            else:
                raise ValueError(f"relations: expected a name or (name, description), got {item!r}")
    else:
        raise ValueError(f"relations must be a dict name -> description or a list, got {type(relations).__name__}")
    if not items:
        raise ValueError("relations is empty: give at least one candidate relation, e.g. {'founded by': 'founder of ...'}")
    names = [name for name, _ in items]
    for name, text in items:
        if not isinstance(name, str) or not name.strip() or not isinstance(text, str):
            raise ValueError(f"relations: names and descriptions must be strings (name non-empty), got {(name, text)!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"relations: duplicate relation names in {names}")
    return items


def support_examples(support: Any) -> dict[str, list]:
    """{"name": [example sentences]} checked: a non-empty dict of non-empty lists."""
    if not isinstance(support, Mapping):
        raise ValueError(f"support must be a dict {{relation: [example sentences]}}, got {type(support).__name__}")
    if not support:
        raise ValueError("support is empty: give at least one relation with example sentences")
    groups = {}
    for name, examples in support.items():
        if isinstance(examples, (str, Mapping)) or not isinstance(examples, Sequence) or not examples:
            raise ValueError(f"support[{name!r}] must be a non-empty list of example sentences")
        groups[name] = list(examples)
    return groups


class RelationClassificationPipeline(Pipeline):
    """Ranks candidate relations (descriptions and/or examples) for each sentence; see the module docstring."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    @property
    def label_encoder_loaded(self) -> bool:
        """False when the model's checkpoint had no label-encoder weights (`SaconPreTrainedModel.from_pretrained`
        marks it): descriptions would be embedded by random weights, so they are refused."""
        return getattr(self.model, "label_encoder_loaded", True)

    def _sanitize_parameters(
        self,
        candidates: tuple[list[str], torch.Tensor] | None = None,
        top_k: int | None = None,
        function_to_apply: str | None = None,
        similarity: str | None = None,
        nota_threshold: float | None = None,
        nota_label: str | None = None,
    ) -> tuple[dict, dict, dict]:
        forward, postprocess = {}, {}
        if candidates is not None:
            forward["prototypes"] = candidates[1]
            postprocess["names"] = candidates[0]
        if similarity is not None:
            forward["similarity"] = check_similarity(similarity)
        if nota_threshold is not None:
            if isinstance(nota_threshold, bool) or not isinstance(nota_threshold, (int, float)):
                raise ValueError(f"nota_threshold must be a number (a logit) or None, got {nota_threshold!r}")
            forward["nota_threshold"] = float(nota_threshold)
        if nota_label is not None:
            postprocess["nota_label"] = nota_label
        if top_k is not None:
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
                raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
            postprocess["top_k"] = top_k
        if function_to_apply is not None:
            if function_to_apply not in SCORE_FUNCTIONS:
                raise ValueError(f"function_to_apply={function_to_apply!r} is unknown; choose one of {SCORE_FUNCTIONS}")
            postprocess["function_to_apply"] = function_to_apply
        return {}, forward, postprocess

    def __call__(self, sentences: Any, relations: Any = None, support: Any = None, **kwargs: Any) -> list:
        """Ranked candidates for one sentence (a list of dicts), or for each of a list of sentences (a list of lists).

        Args:
            sentences: a sentence in any accepted form, or a list of them (a list is always a batch).
            relations: candidate descriptions (zero-shot; label-augmented together with `support`).
            support: ``{relation: [example sentences]}`` (few-shot; with `relations`, the same relations).
            batch_size: sentences per forward pass (also used for the candidates).
            top_k: keep the best `top_k` candidates (default: all).
            function_to_apply: ``"softmax"`` (default) or ``"none"`` (logits).
            similarity: ``"cosine"`` (default) or ``"euclidean"``.
            nota_threshold: logit of an added "none of the above" candidate (default: none); `nota_label` names it.
        """
        batch_size = kwargs.get("batch_size") or self._batch_size or 1  # the call's, else the one given at creation
        if not isinstance(sentences, list):  # one sentence, or a stream (a generator, a dataset)
            kwargs["candidates"] = self.encode_candidates(relations, support, batch_size)
            return super().__call__(sentences, **kwargs)
        # A list: every sentence is checked before anything is encoded, and sentences of similar length share batches.
        instances = self.processor.to_instances(sentences)
        if not instances:
            raise ValueError("no sentences given")
        kwargs["candidates"] = self.encode_candidates(relations, support, batch_size)
        order = sorted(range(len(instances)), key=lambda i: len(instances[i]["tokens"]))
        ranked = super().__call__([instances[i] for i in order], **kwargs)
        outputs = [None] * len(instances)
        for position, i in enumerate(order):
            outputs[i] = ranked[position]
        return outputs

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Model, config (with `custom_pipelines`) and this code, as any custom pipeline; plus the whole processor."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)

    # -- candidates ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_sentences(
        self, sentences: Sequence[Any], names: Sequence[str] | None = None, batch_size: int = 32
    ) -> torch.Tensor:
        """[B, D] sentence features (unnormalised, as `get_sentence_features`), encoded in length-sorted batches."""
        names = sentence_names(len(sentences), names)
        instances = self.processor.to_instances(sentences, names)
        if not instances:
            raise ValueError("no sentences given")

        def encode(chunk: list[int]) -> torch.Tensor:
            batch = self.processor.encode_instances([instances[i] for i in chunk], names=[names[i] for i in chunk])
            return self.model.get_sentence_features(**batch.to(self.device))

        # word counts: the sub-word counts are only known once tokenised, which encode_instances does per batch
        return encode_in_length_order([len(instance["tokens"]) for instance in instances], batch_size, encode)

    @torch.no_grad()
    def encode_relations(self, relations: Any, batch_size: int = 32) -> tuple[list[str], torch.Tensor]:
        """Names and [N, D] label features of relation descriptions."""
        if not self.label_encoder_loaded:
            raise ValueError(
                "relation descriptions need the label encoder, but this checkpoint has none (its weights were missing); "
                "give support examples instead"
            )
        items = relation_texts(relations)
        features = [
            self.model.get_label_features(**self.processor.encode_labels(items[start : start + batch_size]).to(self.device))
            for start in range(0, len(items), batch_size)
        ]
        return [name for name, _ in items], torch.cat(features)

    def encode_candidates(self, relations: Any, support: Any, batch_size: int = 32) -> tuple[list[str], torch.Tensor]:
        """Candidate names and their [N, D] prototypes (zero-shot, few-shot or label-augmented, `scoring.py`)."""
        if relations is None and support is None:
            raise ValueError("give candidate relations: descriptions (relations=...) and/or examples (support=...)")
        names, label_features = self.encode_relations(relations, batch_size) if relations is not None else (None, None)
        if support is None:
            return names, build_prototypes(None, label_features, "zero_shot")
        groups = support_examples(support)
        if names is not None and set(names) != set(groups):
            raise ValueError(
                f"relations and support must name the same relations: only in relations "
                f"{sorted(set(names) - set(groups))}, only in support {sorted(set(groups) - set(names))}"
            )
        names = names if names is not None else list(groups)
        examples = [example for name in names for example in groups[name]]
        tags = [f"support[{name!r}][{k}]" for name in names for k in range(len(groups[name]))]
        features = self.encode_sentences(examples, tags, batch_size).split([len(groups[name]) for name in names])
        method = "prototype" if label_features is None else "label_augmented"
        prototypes = [  # one relation at a time: relations may have different numbers of examples
            build_prototypes(shots.unsqueeze(0), None if label_features is None else label_features[j : j + 1], method)
            for j, shots in enumerate(features)
        ]
        return names, torch.cat(prototypes)

    # -- Pipeline steps -----------------------------------------------------------------------------------------------

    def preprocess(self, sentence: Any) -> dict[str, torch.Tensor]:
        (instance,) = self.processor.to_instances([sentence], ["sentence"])
        return dict(self.processor.encode_instances([instance], names=["sentence"]))

    def _forward(
        self,
        model_inputs: dict[str, torch.Tensor],
        prototypes: torch.Tensor,
        similarity: str = "cosine",
        nota_threshold: float | None = None,
    ) -> dict[str, torch.Tensor]:
        features = F.normalize(self.model.get_sentence_features(**model_inputs), dim=-1)
        logits = similarity_logits(features, prototypes, similarity, self.model.logit_scale_value().exp())
        if nota_threshold is not None:
            logits = append_nota(logits, nota_threshold)
        return {"logits": logits}

    def postprocess(
        self,
        model_outputs: dict[str, torch.Tensor],
        names: list[str],
        top_k: int | None = None,
        function_to_apply: str = "softmax",
        nota_label: str = "none of the above",
    ) -> list[dict[str, Any]]:
        logits = model_outputs["logits"][0].float()
        labels = names if logits.shape[-1] == len(names) else [*names, nota_label]
        scores = logits.softmax(-1) if function_to_apply == "softmax" else logits
        order = torch.sort(scores, descending=True, stable=True).indices.tolist()
        return [{"label": labels[i], "score": scores[i].item()} for i in order[:top_k]]
