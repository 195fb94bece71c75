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

**Sentences** (each of `sentences`, and each support example) may be given as

* (a) tokens and token spans: ``{"tokens": [...], "head": (start, end), "tail": (start, end)}`` or
  ``(tokens, head_span, tail_span)``; spans are half-open token indices (``end`` excluded). FewRel instances
  (``"h"`` / ``"t"``) and the package's canonical rows (``"head": {"indices": [...]}``) are accepted as they are;
* (b) raw text and character spans: ``{"text": "...", "head": (start, end), "tail": (start, end)}`` or
  ``(text, head_span, tail_span)``; half-open character offsets, ``text[start:end]`` is the mention (surrounding
  whitespace inside the span is ignored);
* (c) a string with inline markers: ``"<e1>Paris</e1> is the capital of <e2>France</e2>"`` (case-insensitive), or
  the checkpoint's configured markers (``"[E1] Paris [/E1] is the capital of [E2] France [/E2]"``).

Text in (b) and (c) is split into words by :func:`word_tokenize`: maximal runs of word characters (``\\w+``, Unicode
letters, digits and ``_``) and single other non-space characters (punctuation), each with its character offsets. A
character span must start at a word's first character and end at a word's last one. The words then go through the
same processor as FewRel tokens, so ``"Paris is the capital of France."`` with spans (0, 5) / (24, 30) is
exactly the token form ``["Paris", "is", "the", "capital", "of", "France", "."]`` with spans (0, 1) / (5, 6).

Invalid input raises `ValueError` naming the sentence (``sentence 3``, ``support['capital of'][1]``) and the problem:
an empty span, a span outside the text, a span that cuts a word, overlapping head and tail, missing, repeated or
unbalanced markers. Nothing is silently dropped.

**Candidates**: `relations` gives descriptions (``{"name": "description"}``, a list of ``(name, description)`` or of
names); `support` gives example sentences per relation (``{"name": [sentence, ...]}``, any number each). Scoring
(`scoring.py`): descriptions only -> ``zero_shot``; support only -> ``prototype``; both (for the same relations) ->
``label_augmented``. Scores are ``exp(logit_scale) * cosine`` (``similarity="cosine"``) or ``exp(logit_scale) *
-squared distance`` (``"euclidean"``) of L2-normalised embeddings, or softmax probabilities with
``scores="probabilities"``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.utils import logging

from ..modeling_sacon import SaconDualEncoderModel
from ..processing_sacon import SaconProcessor, encode_in_length_order
from ..scoring import build_prototypes, check_similarity, similarity_logits

logger = logging.get_logger(__name__)

__all__ = ["SaconRelationClassifier", "word_tokenize", "to_instance"]

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_INLINE_MARKERS = ("<e1>", "</e1>", "<e2>", "</e2>")


def word_tokenize(text: str) -> list[tuple[str, int, int]]:
    """Words of `text` with their half-open character offsets: runs of ``\\w`` characters, and every other
    non-space character on its own (``"U.S.-based"`` -> ``U . S . - based``)."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def _span(value: Any, name: str, role: str, kind: str) -> tuple[int, int]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{name}: the {role} span must be a ({kind} start, end) pair of ints, got {value!r}")
    return int(value[0]), int(value[1])


def _check_overlap(head: tuple[int, int], tail: tuple[int, int], name: str, kind: str) -> None:
    if head[0] < tail[1] and tail[0] < head[1]:
        raise ValueError(f"{name}: the head {kind} span {head} and the tail {kind} span {tail} overlap")


def _from_token_spans(tokens: Sequence[str], head: Any, tail: Any, name: str) -> dict:
    if not isinstance(tokens, Sequence) or isinstance(tokens, str) or not tokens:
        raise ValueError(f"{name}: 'tokens' must be a non-empty list of strings")
    if not all(isinstance(t, str) and t.strip() for t in tokens):
        raise ValueError(f"{name}: every token must be a non-empty string")
    spans = {}
    for role, value in (("head", head), ("tail", tail)):
        start, end = _span(value, name, role, "token")
        if start >= end:
            raise ValueError(f"{name}: the {role} token span ({start}, {end}) is empty (spans are [start, end))")
        if start < 0 or end > len(tokens):
            raise ValueError(
                f"{name}: the {role} token span ({start}, {end}) lies outside the sentence of {len(tokens)} tokens"
            )
        spans[role] = (start, end)
    _check_overlap(spans["head"], spans["tail"], name, "token")
    return _instance(list(tokens), spans["head"], spans["tail"])


def _instance(tokens: list[str], head: tuple[int, int], tail: tuple[int, int]) -> dict:
    return {
        "tokens": tokens,
        "head": {"name": " ".join(tokens[head[0] : head[1]]), "id": "", "indices": list(range(*head))},
        "tail": {"name": " ".join(tokens[tail[0] : tail[1]]), "id": "", "indices": list(range(*tail))},
    }


def _from_char_spans(text: str, head: Any, tail: Any, name: str) -> dict:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name}: 'text' must be a non-empty string")
    words = word_tokenize(text)
    starts = {start: i for i, (_, start, _) in enumerate(words)}
    ends = {end: i for i, (_, _, end) in enumerate(words)}
    spans = {}
    for role, value in (("head", head), ("tail", tail)):
        start, end = _span(value, name, role, "character")
        if start < 0 or end > len(text) or start > end:
            raise ValueError(
                f"{name}: the {role} character span ({start}, {end}) lies outside the text of {len(text)} characters"
            )
        mention = text[start:end]
        if not mention.strip():
            raise ValueError(f"{name}: the {role} character span ({start}, {end}) is empty ({mention!r})")
        start += len(mention) - len(mention.lstrip())  # whitespace at the span's edges is ignored
        end -= len(mention) - len(mention.rstrip())
        for position, table, edge in ((start, starts, "start"), (end, ends, "end")):
            if position not in table:
                cut = next((w for w in words if w[1] < position < w[2]), None)
                where = f"cuts the word {cut[0]!r} at ({cut[1]}, {cut[2]})" if cut else "does not fall on a word boundary"
                raise ValueError(
                    f"{name}: the {role} character span ({start}, {end}) = {text[start:end]!r} {where} (its {edge}); "
                    "spans must cover whole words"
                )
        spans[role] = (starts[start], ends[end] + 1)
    char_spans = {role: (words[s][1], words[e - 1][2]) for role, (s, e) in spans.items()}
    _check_overlap(char_spans["head"], char_spans["tail"], name, "character")
    return _instance([w for w, _, _ in words], spans["head"], spans["tail"])


def _marker_pattern(markers: Sequence[str]) -> re.Pattern:
    return re.compile("|".join(re.escape(m) for m in sorted(set(markers), key=len, reverse=True)), re.IGNORECASE)


def _from_markers(sentence: str, name: str, configured: Sequence[str]) -> dict:
    """Inline markers: `<e1>`..`</e1>`, `<e2>`..`</e2>` or the configured four; removed, leaving character spans."""
    roles = {}
    for i, marker in enumerate(_INLINE_MARKERS):
        roles[marker] = i
    for i, marker in enumerate(configured):
        roles[marker.lower()] = i
    found = [(m.group().lower(), m.start(), m.end()) for m in _marker_pattern(list(roles)).finditer(sentence)]
    labels = ("head start", "head end", "tail start", "tail end")
    spelled = "<e1>...</e1> and <e2>...</e2> (or " + " ... ".join(configured) + ")"
    counts = [0, 0, 0, 0]
    for marker, _, _ in found:
        counts[roles[marker]] += 1
    for i, count in enumerate(counts):
        if count != 1:
            problem = "is missing" if count == 0 else f"appears {count} times"
            raise ValueError(f"{name}: the {labels[i]} marker {problem}; mark each entity once as {spelled}")
    text, spans, cursor, position = [], {}, 0, 0
    opened: dict[int, int] = {}
    for marker, start, end in found:
        text.append(sentence[cursor:start])
        position += start - cursor
        cursor = end
        role = roles[marker]
        if role in (0, 2):
            opened[role] = position
        else:
            if role - 1 not in opened:
                raise ValueError(f"{name}: the {labels[role]} marker comes before its start marker ({spelled})")
            spans[role - 1] = (opened.pop(role - 1), position)
    if opened:  # unreachable with counts == 1 and every end after its start, kept as a guard
        raise ValueError(f"{name}: unbalanced entity markers ({spelled})")
    text.append(sentence[cursor:])
    plain = "".join(text)
    (hs, he), (ts, te) = spans[0], spans[2]
    if hs < te and ts < he:
        raise ValueError(f"{name}: the head and tail markers overlap or nest; mark two disjoint entities as {spelled}")
    return _from_char_spans(plain, (hs, he), (ts, te), name)


def to_instance(sentence: Any, name: str = "sentence", markers: Sequence[str] = ("[E1]", "[/E1]", "[E2]", "[/E2]")) -> dict:
    """Any accepted sentence form (module docstring) -> a canonical instance ``{"tokens", "head", "tail"}``."""
    if isinstance(sentence, str):
        return _from_markers(sentence, name, markers)
    if isinstance(sentence, Mapping):
        if "text" in sentence:
            if "tokens" in sentence:
                raise ValueError(f"{name}: give either 'text' (with character spans) or 'tokens', not both")
            return _from_char_spans(sentence["text"], sentence.get("head"), sentence.get("tail"), name)
        if "tokens" in sentence:
            head = sentence.get("head")
            if isinstance(head, Mapping) or ("h" in sentence and "head" not in sentence):
                return dict(sentence)  # FewRel / canonical: the processor validates it (and names the sentence)
            return _from_token_spans(sentence["tokens"], head, sentence.get("tail"), name)
        raise ValueError(f"{name}: a sentence dict needs 'text' (character spans) or 'tokens' (token spans)")
    if isinstance(sentence, Sequence) and len(sentence) == 3:
        body, head, tail = sentence
        if isinstance(body, str):
            return _from_char_spans(body, head, tail, name)
        return _from_token_spans(body, head, tail, name)
    raise ValueError(
        f"{name}: unsupported sentence {type(sentence).__name__}; give a marked string, {{'text', 'head', 'tail'}} "
        "with character spans, or {'tokens', 'head', 'tail'} with token spans"
    )


def _relation_texts(relations: Any) -> list[tuple[str, str]]:
    """{"name": "description"}, [(name, description)], or [name] -> [(name, description)], names unique."""
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
    names = [name for name, _ in items]
    for name, text in items:
        if not isinstance(name, str) or not name.strip() or not isinstance(text, str):
            raise ValueError(f"relations: names and descriptions must be strings (name non-empty), got {(name, text)!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"relations: duplicate relation names in {names}")
    if not items:
        raise ValueError("relations is empty")
    return items


class SaconRelationClassifier:
    """Ranks candidate relations for sentences with marked head and tail entities (see the module docstring)."""

    def __init__(
        self,
        model: SaconDualEncoderModel,
        processor: SaconProcessor,
        *,
        batch_size: int = 32,
        label_encoder_loaded: bool = True,
    ):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.label_encoder_loaded = label_encoder_loaded

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
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- encoding ----------------------------------------------------------------------------------------------------

    def to_instances(self, sentences: Sequence[Any], names: Sequence[str] | None = None) -> list[dict]:
        """Validated canonical instances (raises `ValueError` naming the sentence)."""
        markers = [*self.processor.head_markers, *self.processor.tail_markers]
        names = names or [f"sentence {i}" for i in range(len(sentences))]
        return [to_instance(s, n, markers) for s, n in zip(sentences, names)]

    @torch.no_grad()
    def encode_sentences(self, sentences: Sequence[Any], names: Sequence[str] | None = None) -> torch.Tensor:
        """[B, D] sentence features (unnormalised [h ; t], as `get_sentence_features`) of sentences in any form."""
        if isinstance(sentences, (str, Mapping)):
            raise ValueError("sentences must be a list (wrap a single sentence in [...])")
        names = list(names) if names is not None else [f"sentence {i}" for i in range(len(sentences))]
        instances = self.to_instances(sentences, names)
        if not instances:
            raise ValueError("no sentences given")

        def encode(chunk: list[int]) -> torch.Tensor:
            batch = self.processor.encode_instances([instances[i] for i in chunk], names=[names[i] for i in chunk])
            return self.model.get_sentence_features(**{k: v.to(self.device) for k, v in batch.items()})

        # word counts: the sub-word counts are only known once tokenised, which encode_instances does per batch
        return encode_in_length_order([len(instance["tokens"]) for instance in instances], self.batch_size, encode)

    @torch.no_grad()
    def encode_relations(self, relations: Any) -> tuple[list[str], torch.Tensor]:
        """Names and [N, D] label features of relation descriptions."""
        if not self.label_encoder_loaded:
            raise ValueError(
                "relation descriptions need the label encoder, but this checkpoint has none (its weights were missing); "
                "give support examples instead"
            )
        items = _relation_texts(relations)
        features = []
        for start in range(0, len(items), self.batch_size):
            batch = self.processor.encode_labels(items[start : start + self.batch_size])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            features.append(self.model.get_label_features(**batch))
        return [name for name, _ in items], torch.cat(features)

    # -- prediction ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
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
            sentences: sentences in any accepted form (module docstring).
            relations: descriptions of the candidates (zero-shot, or label-augmented together with `support`).
            support: ``{relation: [example sentences]}`` (prototype, or label-augmented with `relations`); with both,
                the two must name the same relations.
            top_k: keep the best `top_k` (default: all candidates).
            similarity: ``"cosine"`` or ``"euclidean"``.
            scores: ``"logits"`` (scaled similarities) or ``"probabilities"`` (softmax over the candidates).
        """
        check_similarity(similarity)
        if scores not in ("logits", "probabilities"):
            raise ValueError(f"scores={scores!r} is unknown; choose 'logits' or 'probabilities'")
        if relations is None and support is None:
            raise ValueError("give candidate relations: descriptions (relations=...) and/or examples (support=...)")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")

        label_names = label_emb = None
        if relations is not None:
            label_names, label_emb = self.encode_relations(relations)
        support_groups = None
        if support is not None:
            if not isinstance(support, Mapping) or not support:
                raise ValueError("support must be a non-empty dict {relation: [example sentences]}")
            support_groups = {}
            for name, examples in support.items():
                if isinstance(examples, (str, Mapping)) or not isinstance(examples, Sequence) or not examples:
                    raise ValueError(f"support[{name!r}] must be a non-empty list of example sentences")
                support_groups[name] = list(examples)
            if label_names is not None and set(label_names) != set(support_groups):
                raise ValueError(
                    f"relations and support must name the same relations: only in relations "
                    f"{sorted(set(label_names) - set(support_groups))}, only in support "
                    f"{sorted(set(support_groups) - set(label_names))}"
                )
        names = label_names if label_names is not None else list(support_groups)
        method = "label_augmented" if (relations is not None and support is not None) else (
            "zero_shot" if support is None else "prototype"
        )

        query = self.encode_sentences(sentences)
        prototypes = []
        if support_groups is not None:
            flat = [ex for name in names for ex in support_groups[name]]
            tags = [f"support[{name!r}][{k}]" for name in names for k in range(len(support_groups[name]))]
            features = self.encode_sentences(flat, tags)
            cursor = 0
            for j, name in enumerate(names):
                k = len(support_groups[name])
                shots = features[cursor : cursor + k].unsqueeze(0)  # [1, K_j, D]: relations may have different K
                cursor += k
                label = None if label_emb is None else label_emb[j : j + 1]
                prototypes.append(build_prototypes(shots, label, method))
            prototypes = torch.cat(prototypes)
        else:
            prototypes = build_prototypes(None, label_emb, "zero_shot")
        scale = self.model.logit_scale_value().exp()
        query = torch.nn.functional.normalize(query, dim=-1)
        logits = similarity_logits(query, prototypes, similarity, scale)  # [B, N]
        if scores == "probabilities":
            logits = logits.softmax(-1)
        k = len(names) if top_k is None else min(top_k, len(names))
        values, indices = logits.topk(k, dim=-1)
        return [
            [(names[i], float(v)) for v, i in zip(row_values.tolist(), row_indices.tolist())]
            for row_values, row_indices in zip(values, indices)
        ]
