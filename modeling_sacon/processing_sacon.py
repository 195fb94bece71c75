"""Turns FewRel-style instances and relation label texts into SaCon model inputs.

Sentences: entity markers around head and tail (`[E1] head [/E1]`, `[E2] tail [/E2]`), word-piece tokenisation,
truncation that always keeps both entities, and the positions of the two start markers that the model pools.
Labels: "relation name [SEP] description".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path

import torch
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase

from .configuration_sacon import SaconConfig

PROCESSOR_CONFIG_NAME = "sacon_processor_config.json"
LabelText = str | tuple[str, str] | Sequence[str]


def encode_in_length_order(
    lengths: Sequence[int], batch_size: int, encode: Callable[[list[int]], torch.Tensor]
) -> torch.Tensor:
    """Rows of `encode(indices)` for every index, encoded in batches of similar length, returned in input order.

    Each batch pads to its longest member, so sorting first keeps short sentences out of long sentences' padding.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    encoded = torch.cat([encode(order[start : start + batch_size]) for start in range(0, len(order), batch_size)])
    out = torch.empty_like(encoded)
    out[torch.as_tensor(order, device=encoded.device)] = encoded
    return out


def entity_indices(instance: Mapping, role: str) -> list[int]:
    """Token indices of the first mention of the head (`role="h"`) or tail (`"t"`) entity.

    Accepts the FewRel form (`"h": [name, id, [[i, j, ...], ...]]`) and the package's canonical form
    (`"head": {"name", "id", "indices"}`).
    """
    canonical = {"h": "head", "t": "tail"}[role]
    if canonical in instance and isinstance(instance[canonical], Mapping):
        return list(instance[canonical]["indices"])
    if role not in instance:
        raise KeyError(f"missing field {role!r} (or {canonical!r})")
    entity = instance[role]
    mentions = entity[2] if len(entity) > 2 else None
    if not mentions:
        return []
    first = mentions[0]
    return [first] if isinstance(first, int) else list(first)


class SaconProcessor:
    """Tokenizer wrapper that knows SaCon's entity markers, blank token and sequence lengths."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        head_markers: Sequence[str] = ("[E1]", "[/E1]"),
        tail_markers: Sequence[str] = ("[E2]", "[/E2]"),
        blank_token: str = "[BLANK]",
        max_length: int = 64,
        label_max_length: int = 64,
    ):
        self.tokenizer = tokenizer
        self.head_markers, self.tail_markers = list(head_markers), list(tail_markers)
        self.blank_token = blank_token
        self.max_length, self.label_max_length = max_length, label_max_length
        new_tokens = [t for t in [*self.head_markers, *self.tail_markers, blank_token] if t not in tokenizer.get_vocab()]
        if new_tokens:  # BERT vocabularies may use [unused0..3] instead: those are already there
            tokenizer.add_special_tokens({"additional_special_tokens": new_tokens}, replace_extra_special_tokens=False)
        self.marker_ids = [tokenizer.convert_tokens_to_ids(t) for t in [*self.head_markers, *self.tail_markers]]
        self.blank_id = tokenizer.convert_tokens_to_ids(blank_token)

    # -- construction / persistence -------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, tokenizer: PreTrainedTokenizerBase, config: SaconConfig) -> "SaconProcessor":
        return cls(
            tokenizer, config.head_markers, config.tail_markers, config.blank_token, config.max_length, config.label_max_length
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> "SaconProcessor":
        """From a SaCon checkpoint (markers read from its config) or from any encoder's tokenizer (defaults)."""
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        options = {}
        local = Path(name_or_path) / PROCESSOR_CONFIG_NAME
        if local.is_file():
            options = json.loads(local.read_text())
        else:
            try:
                config_dict, _ = SaconConfig.get_config_dict(name_or_path, **kwargs)
            except OSError:
                config_dict = {}
            if config_dict.get("model_type") == SaconConfig.model_type:  # else a plain encoder: keep the defaults
                return cls.from_config(tokenizer, SaconConfig.from_dict(config_dict))
        return cls(tokenizer, **options)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(save_directory)
        options = {
            "head_markers": self.head_markers,
            "tail_markers": self.tail_markers,
            "blank_token": self.blank_token,
            "max_length": self.max_length,
            "label_max_length": self.label_max_length,
        }
        (Path(save_directory) / PROCESSOR_CONFIG_NAME).write_text(json.dumps(options, indent=2) + "\n")

    @property
    def never_mask_ids(self) -> set[int]:
        """Ids MLM must leave alone: special tokens, entity markers, the blank."""
        return set(self.tokenizer.all_special_ids) | set(self.marker_ids) | {self.blank_id}

    # -- sentences ------------------------------------------------------------------------------------------------

    def _marked_words(
        self, instance: Mapping, name: str, blank_head: bool, blank_tail: bool
    ) -> tuple[list[str], int, int, tuple[int, int], tuple[int, int]]:
        """Words with markers inserted; returns (words, head-start word, tail-start word, head span, tail span)."""
        tokens = instance.get("tokens")
        if not tokens:
            raise ValueError(f"{name}: field 'tokens' is missing or empty")
        spans = {}
        for role, label in (("h", "head"), ("t", "tail")):
            try:
                indices = entity_indices(instance, role)
            except (KeyError, IndexError, TypeError) as err:
                raise ValueError(f"{name}: cannot read the {label} entity: {err}") from None
            if not indices:
                raise ValueError(f"{name}: the {label} entity has an empty span")
            bad = [i for i in indices if not isinstance(i, int) or not 0 <= i < len(tokens)]
            if bad:
                raise ValueError(
                    f"{name}: {label} span {indices} lies outside the sentence of {len(tokens)} tokens (bad index {bad[0]})"
                )
            spans[label] = (min(indices), max(indices))
        (hs, he), (ts, te) = spans["head"], spans["tail"]
        if hs <= te and ts <= he:
            raise ValueError(f"{name}: head span {list(spans['head'])} and tail span {list(spans['tail'])} overlap")
        words: list[str] = []
        head_start = tail_start = -1
        i = 0
        while i < len(tokens):
            if i == hs or i == ts:
                is_head = i == hs
                start_marker, end_marker = (self.head_markers if is_head else self.tail_markers)
                end = he if is_head else te
                if is_head:
                    head_start = len(words)
                else:
                    tail_start = len(words)
                words.append(start_marker)
                blank = blank_head if is_head else blank_tail
                words.extend([self.blank_token] if blank else [str(w) for w in tokens[i : end + 1]])
                words.append(end_marker)
                i = end + 1
            else:
                words.append(str(tokens[i]))
                i += 1
        return words, head_start, tail_start, spans["head"], spans["tail"]

    def encode_instances(
        self,
        instances: Sequence[Mapping],
        *,
        blank_head: Sequence[bool] | None = None,
        blank_tail: Sequence[bool] | None = None,
        names: Sequence[str] | None = None,
        padding: bool | str = True,
        return_tensors: str | None = "pt",
    ) -> BatchEncoding:
        """`input_ids`, `attention_mask`, `entity_positions` ([B, 2] head-start and tail-start markers).

        `blank_head` / `blank_tail` replace the mention by the blank token (entity blanking); `names` label the
        instances in error messages (e.g. "val_wiki.json P177 #3"); the default is "instance i".
        """
        tok = self.tokenizer
        prefix = [tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id]
        suffix = [tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id]
        budget = self.max_length - len(prefix) - len(suffix)
        all_words, starts = [], []
        for i, instance in enumerate(instances):
            name = names[i] if names is not None else f"instance {i}"
            words, h, t, _, _ = self._marked_words(
                instance, name, bool(blank_head[i]) if blank_head is not None else False,
                bool(blank_tail[i]) if blank_tail is not None else False,
            )
            all_words.append(words)
            starts.append((h, t))
        flat_words = [w for words in all_words for w in words]
        flat_pieces = tok(flat_words, add_special_tokens=False)["input_ids"] if flat_words else []
        input_ids, positions, cursor = [], [], 0
        for words, (h, t) in zip(all_words, starts):
            pieces = flat_pieces[cursor : cursor + len(words)]
            cursor += len(words)
            ids = prefix + self._truncate_words(words, pieces, h, t, budget) + suffix
            positions.append([ids.index(self.marker_ids[0]), ids.index(self.marker_ids[2])])
            input_ids.append(ids)
        batch = tok.pad({"input_ids": input_ids}, padding=padding, return_attention_mask=True)
        batch["entity_positions"] = positions
        return BatchEncoding(dict(batch), tensor_type=return_tensors)

    def _truncate_words(self, words: list[str], pieces: list[list[int]], head_word: int, tail_word: int, budget: int) -> list[int]:
        """Keep every marker and mention piece, then as much context as fits, dropping what is farthest from them."""
        flat = [(w, p) for w, word_pieces in enumerate(pieces) for p in word_pieces]
        if len(flat) <= budget:
            return [p for _, p in flat]
        end_markers = (self.head_markers[1], self.tail_markers[1])
        regions = []
        for start in (head_word, tail_word):
            end = start + 1
            while words[end] not in end_markers:
                end += 1
            regions.append((start, end))

        def priority(k: int) -> tuple[int, int]:
            w = flat[k][0]
            for start, end in regions:
                if w in (start, end):
                    return (0, 0)  # markers are never dropped
                if start < w < end:
                    return (1, k)  # mention pieces: trimmed from their end only if the entities alone overflow
            return (2, min(start - w if w < start else w - end for start, end in regions))

        keep = sorted(sorted(range(len(flat)), key=priority)[:budget])
        return [flat[k][1] for k in keep]

    # -- masked language modelling -------------------------------------------------------------------------------

    def mask_tokens(
        self, input_ids: torch.Tensor, mlm_probability: float = 0.15, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT masking: choose `mlm_probability` of the maskable tokens; 80% -> [MASK], 10% -> random, 10% kept.

        Special tokens, entity markers and blanks are never chosen (nor drawn as random replacements). Returns
        (masked input_ids, labels with -100 at unchosen positions).
        """
        never = torch.tensor(sorted(self.never_mask_ids), dtype=input_ids.dtype)
        maskable = ~torch.isin(input_ids, never)
        chosen = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & maskable
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
        roll = torch.rand(input_ids.shape, generator=generator)
        masked = input_ids.clone()
        masked[chosen & (roll < 0.8)] = self.tokenizer.mask_token_id
        randomise = chosen & (roll >= 0.8) & (roll < 0.9)
        allowed = self.replacement_ids.to(input_ids.dtype)
        picks = torch.randint(len(allowed), (int(randomise.sum()),), generator=generator)
        masked[randomise] = allowed[picks]
        return masked, labels

    @cached_property
    def replacement_ids(self) -> torch.Tensor:
        """Vocabulary ids a "random token" replacement may draw: everything but special, marker and blank ids."""
        vocab = torch.arange(len(self.tokenizer), dtype=torch.long)
        return vocab[~torch.isin(vocab, torch.tensor(sorted(self.never_mask_ids)))]

    # -- labels ---------------------------------------------------------------------------------------------------

    def label_text(self, label: LabelText) -> str:
        """"name [SEP] description" (just the name when the description is empty)."""
        if isinstance(label, str):
            return label
        name, description = (list(label) + [""])[:2]
        if not name:
            raise ValueError(f"label {label!r} has an empty relation name")
        return f"{name} {self.tokenizer.sep_token} {description}" if description else name

    def encode_labels(self, labels: Sequence[LabelText], return_tensors: str | None = "pt") -> BatchEncoding:
        """`input_ids` / `attention_mask` of relation texts, given as "text" or (name, description)."""
        texts = [self.label_text(label) for label in labels]
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.label_max_length, return_tensors=return_tensors,
            return_token_type_ids=False,
        )


__all__ = ["SaconProcessor", "entity_indices"]
