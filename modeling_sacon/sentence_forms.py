"""The sentence forms SaCon accepts, turned into canonical instances ``{"tokens", "head", "tail"}``.

Shipped with every checkpoint (the processor imports it), so Hub users without the package parse the same forms.

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
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_MARKERS", "to_instance", "word_tokenize"]

DEFAULT_MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")
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


def to_instance(sentence: Any, name: str = "sentence", markers: Sequence[str] = DEFAULT_MARKERS) -> dict:
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
