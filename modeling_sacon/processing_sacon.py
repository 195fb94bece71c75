"""`SaconProcessor`: turns sentences with marked entities and relation label texts into SaCon model inputs.

Sentences (any form of `sentence_forms`, or FewRel rows): entity markers around head and tail (`[E1] head [/E1]`,
`[E2] tail [/E2]`), word-piece tokenisation, truncation that always keeps both entities, and the positions of the two
start markers that the model pools. Labels: "relation name [SEP] description".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase, ProcessorMixin

from .configuration_sacon import PROCESSOR_OPTIONS, SaconConfig
from .sentence_forms import DEFAULT_MARKERS, to_instance
from .hub_files import resolve_file

LabelText = str | tuple[str, str] | Sequence[str]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def _has_tokenizer_files(path_or_repo: str | os.PathLike, hub_kwargs: Mapping[str, Any]) -> bool:
    return any(resolve_file(path_or_repo, name, hub_kwargs) is not None for name in TOKENIZER_FILES)


def _sacon_config_dict(path_or_repo: str | os.PathLike, hub_kwargs: Mapping[str, Any]) -> dict:
    """The `config.json` of a SaCon checkpoint; {} for anything else (a plain encoder keeps the defaults)."""
    config_file = resolve_file(path_or_repo, "config.json", hub_kwargs)
    if config_file is None:
        return {}
    config = json.loads(Path(config_file).read_text())
    return config if config.get("model_type") == SaconConfig.model_type else {}


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


def sentence_names(count: int, names: Sequence[str] | None = None) -> list[str]:
    """How errors name the sentences of a batch: the given names, or "sentence 0", "sentence 1", ..."""
    if names is None:
        return [f"sentence {i}" for i in range(count)]
    if len(names) != count:
        raise ValueError(f"got {len(names)} names for {count} sentences")
    return list(names)


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


def check_processor_options(
    head_markers: Sequence[str], tail_markers: Sequence[str], blank_token: str, max_length: int, label_max_length: int
) -> None:
    """The tokenisation options, checked when the processor is built (also from a `processor_config.json`)."""
    for name, markers in (("head_markers", head_markers), ("tail_markers", tail_markers)):
        if isinstance(markers, str) or len(markers) != 2 or not all(isinstance(m, str) and m.strip() for m in markers):
            raise ValueError(f"{name} must be two non-empty strings (start, end), got {markers!r}")
    all_markers = [*head_markers, *tail_markers]
    if len(set(all_markers)) != 4:
        raise ValueError(f"entity markers must be four distinct strings, got {all_markers}")
    if not isinstance(blank_token, str) or not blank_token.strip() or blank_token in all_markers:
        raise ValueError(f"blank_token must be a non-empty string other than the entity markers, got {blank_token!r}")
    for name, value in (("max_length", max_length), ("label_max_length", label_max_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 8:
            raise ValueError(f"{name} must be an int of at least 8 tokens, got {value!r}")


class SaconProcessor(ProcessorMixin):
    """SaCon's processor: a tokenizer plus the entity markers, blank token and sequence lengths that go with it.

    `processor(sentences=..., labels=...)` returns the keyword arguments of `SaconDualEncoderModel.forward`.
    Sentences come in any form of `sentence_forms` (inline markers, character spans, token spans, FewRel rows).

    Saved as a standard processor (`processor_config.json` + tokenizer files); registered for `AutoProcessor`, it
    also writes its code with an `auto_map`, so `AutoProcessor.from_pretrained(repo, trust_remote_code=True)` works
    from the checkpoint alone (the model saves the `relation-classification` pipeline's code). A checkpoint without `processor_config.json` takes the options from its SaCon
    `config.json`; a plain encoder gets the defaults.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        head_markers: Sequence[str] = DEFAULT_MARKERS[:2],
        tail_markers: Sequence[str] = DEFAULT_MARKERS[2:],
        blank_token: str = "[BLANK]",
        max_length: int = 64,
        label_max_length: int = 64,
    ):
        super().__init__(tokenizer)
        check_processor_options(head_markers, tail_markers, blank_token, max_length, label_max_length)
        self.head_markers, self.tail_markers = list(head_markers), list(tail_markers)
        self.blank_token = blank_token
        self.max_length, self.label_max_length = max_length, label_max_length
        # Special tokens are never split: new ones get ids at the end of the vocabulary, ones already in it ([unused0]
        # of BERT vocabularies) keep theirs.
        new_tokens = [t for t in [*self.head_markers, *self.tail_markers, blank_token] if t not in tokenizer.get_added_vocab()]
        if new_tokens:
            tokenizer.add_special_tokens({"additional_special_tokens": new_tokens}, replace_extra_special_tokens=False)
        self.marker_ids = [tokenizer.convert_tokens_to_ids(t) for t in [*self.head_markers, *self.tail_markers]]
        self.blank_id = tokenizer.convert_tokens_to_ids(blank_token)

    # -- construction / persistence -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "SaconProcessor":
        """From a saved processor, a SaCon checkpoint (options from its config) or any encoder's tokenizer (defaults).

        A checkpoint whose tokenizer files are missing raises an `OSError` naming it and the fix; a SaCon checkpoint
        whose tokenizer lacks the markers (or the blank token) raises a `ValueError` naming the file and them.
        """
        try:
            processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, ValueError) as err:
            if _has_tokenizer_files(pretrained_model_name_or_path, kwargs):
                raise
            raise OSError(
                f"{pretrained_model_name_or_path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}), so "
                "SaconProcessor cannot be loaded from it. Save the processor next to the model: "
                f"`processor.save_pretrained({str(pretrained_model_name_or_path)!r})` (the Trainer does this when "
                "given `processing_class=processor`)."
            ) from err
        if _sacon_config_dict(pretrained_model_name_or_path, kwargs):  # a trained checkpoint: its markers were saved
            from .checkpoint_files import check_saved_markers

            files = [resolve_file(pretrained_model_name_or_path, name, kwargs) for name in TOKENIZER_FILES[:2]]
            check_saved_markers(files, [*processor.head_markers, *processor.tail_markers, processor.blank_token])
        return processor

    @classmethod
    def get_processor_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> tuple[dict, dict]:
        """`processor_config.json`, or, for checkpoints saved without it, the options of a SaCon `config.json`."""
        hub_kwargs = dict(kwargs)  # the parent pops the ones that locate files
        processor_dict, kwargs = super().get_processor_dict(pretrained_model_name_or_path, **kwargs)
        if not any(option in processor_dict for option in PROCESSOR_OPTIONS):
            config = _sacon_config_dict(pretrained_model_name_or_path, hub_kwargs)
            processor_dict.update({k: config[k] for k in PROCESSOR_OPTIONS if config.get(k) is not None})
        return processor_dict, kwargs

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """Tokenizer files and `processor_config.json` (with `auto_map` set, also this code; the pipeline's code is
        saved with the model, whose config names it). `push_to_hub=True` uploads all of it, `kwargs` going to it."""
        files = super().save_pretrained(save_directory)
        if push_to_hub:
            self.push_to_hub(kwargs.pop("repo_id", Path(save_directory).name), **kwargs)
        return files

    @property
    def never_mask_ids(self) -> set[int]:
        """Ids MLM must leave alone: special tokens, entity markers, the blank."""
        return set(self.tokenizer.all_special_ids) | set(self.marker_ids) | {self.blank_id}

    # -- sentences ------------------------------------------------------------------------------------------------

    def __call__(
        self,
        sentences: Sequence[Any] | None = None,
        labels: Sequence[LabelText] | None = None,
        *,
        names: Sequence[str] | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchEncoding:
        """Model inputs of sentences in any accepted form and/or of relation labels ("text" or (name, description)).

        Sentences give `input_ids`, `attention_mask`, `entity_positions`; labels give `label_input_ids` and
        `label_attention_mask`: together, the keyword arguments of `SaconDualEncoderModel.forward`.
        """
        if sentences is None and labels is None:
            raise ValueError("give sentences (with marked head and tail entities) and/or relation labels")
        encoding = {}
        if sentences is not None:
            instances = self.to_instances(sentences, names)
            names = sentence_names(len(instances), names)
            encoding.update(self.encode_instances(instances, names=names, return_tensors=return_tensors))
        if labels is not None:
            batch = self.encode_labels(labels, return_tensors=return_tensors)
            encoding.update({f"label_{key}": value for key, value in batch.items()})
        return BatchEncoding(encoding, tensor_type=return_tensors)

    def to_instances(self, sentences: Sequence[Any], names: Sequence[str] | None = None) -> list[dict]:
        """Canonical instances of sentences in any accepted form; `ValueError` naming the sentence and the problem."""
        if isinstance(sentences, (str, Mapping)):
            raise ValueError("sentences must be a list (wrap a single sentence in [...])")
        names = sentence_names(len(sentences), names)
        markers = [*self.head_markers, *self.tail_markers]
        instances = [to_instance(sentence, name, markers) for sentence, name in zip(sentences, names)]
        for instance, name in zip(instances, names):
            self.checked_spans(instance, name)  # FewRel rows come through to_instance as they are
        return instances

    @staticmethod
    def checked_spans(instance: Mapping, name: str) -> dict[str, tuple[int, int]]:
        """{"head": (first, last), "tail": (first, last)} token indices of a FewRel or canonical instance, checked:
        `ValueError` naming the instance for missing tokens, empty or out-of-range spans, overlapping entities."""
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
        return spans

    def _marked_words(
        self, instance: Mapping, name: str, blank_head: bool, blank_tail: bool
    ) -> tuple[list[str], tuple[tuple[int, int], tuple[int, int]]]:
        """Words with markers inserted; returns (words, ((head start, head end), (tail start, tail end)) marker word
        indices). The indices are kept, not searched for: a token may itself spell a marker."""
        spans = self.checked_spans(instance, name)
        (hs, he), (ts, te) = spans["head"], spans["tail"]
        tokens = instance["tokens"]
        words: list[str] = []
        regions = {}
        i = 0
        while i < len(tokens):
            if i == hs or i == ts:
                is_head = i == hs
                start_marker, end_marker = (self.head_markers if is_head else self.tail_markers)
                end = he if is_head else te
                start_word = len(words)
                words.append(start_marker)
                blank = blank_head if is_head else blank_tail
                words.extend([self.blank_token] if blank else [str(w) for w in tokens[i : end + 1]])
                regions["head" if is_head else "tail"] = (start_word, len(words))
                words.append(end_marker)
                i = end + 1
            else:
                words.append(str(tokens[i]))
                i += 1
        return words, (regions["head"], regions["tail"])

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
        all_words, all_regions = [], []
        for i, instance in enumerate(instances):
            name = names[i] if names is not None else f"instance {i}"
            words, regions = self._marked_words(
                instance, name, bool(blank_head[i]) if blank_head is not None else False,
                bool(blank_tail[i]) if blank_tail is not None else False,
            )
            all_words.append(words)
            all_regions.append(regions)
        flat_words = [w for words in all_words for w in words]
        flat_pieces = self._word_pieces(flat_words)
        input_ids, positions, cursor = [], [], 0
        for words, regions in zip(all_words, all_regions):
            pieces = flat_pieces[cursor : cursor + len(words)]
            cursor += len(words)
            kept = self._truncate_words(pieces, regions, budget)
            # each start marker's own position (a token that spells a marker must not be taken for it)
            positions.append([len(prefix) + [w for w, _ in kept].index(start) for start, _ in regions])
            input_ids.append(prefix + [p for _, p in kept] + suffix)
        batch = tok.pad({"input_ids": input_ids}, padding=padding, return_attention_mask=True)
        batch["entity_positions"] = positions
        return BatchEncoding(dict(batch), tensor_type=return_tensors)

    def _word_pieces(self, words: list[str]) -> list[list[int]]:
        """The word pieces of each word. Words are tokenised one at a time, so a word's pieces depend on the word
        alone: they are cached, since pre-training collates the same words batch after batch and tokenising them
        again (and converting each word's encoding in Python) was most of a collation's time. The cache is
        bounded, and dropped when the vocabulary changes (markers added); it is never saved."""
        cache = self.__dict__.get("_piece_cache")
        if cache is None or cache[0] != len(self.tokenizer) or len(cache[1]) > 500_000:
            cache = self.__dict__["_piece_cache"] = (len(self.tokenizer), {})
        pieces = cache[1]
        missing = [word for word in dict.fromkeys(words) if word not in pieces]
        if missing:
            pieces.update(zip(missing, self.tokenizer(missing, add_special_tokens=False)["input_ids"]))
        return [pieces[word] for word in words]

    def _truncate_words(
        self, pieces: list[list[int]], regions: tuple[tuple[int, int], tuple[int, int]], budget: int
    ) -> list[tuple[int, int]]:
        """(word index, piece id) kept: every marker and mention piece, then as much context as fits, dropping what
        is farthest from them. `regions` are the (start marker, end marker) word indices of head and tail."""
        flat = [(w, p) for w, word_pieces in enumerate(pieces) for p in word_pieces]
        if len(flat) <= budget:
            return flat

        def priority(k: int) -> tuple[int, int]:
            w = flat[k][0]
            for start, end in regions:
                if w in (start, end):
                    return (0, 0)  # markers are never dropped
                if start < w < end:
                    return (1, k)  # mention pieces: trimmed from their end only if the entities alone overflow
            return (2, min(start - w if w < start else w - end for start, end in regions))

        keep = sorted(sorted(range(len(flat)), key=priority)[:budget])
        return [flat[k] for k in keep]

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


__all__ = ["SaconProcessor", "check_processor_options", "encode_in_length_order", "entity_indices", "sentence_names"]
