"""Pre-training batches for SaCon: entity blanking, MLM on both encoders, one label row per distinct relation.

Randomness (which mentions are blanked, which tokens are masked) never comes from the global RNGs. Each batch draws
from its own `torch.Generator`, seeded from `(collator seed, serve key)`:

* under :class:`~modeling_sacon.training.trainer.SaconTrainer`, the batch sampler is wrapped by :class:`ServeKeyedBatchSampler`,
  which tags every row with the *serve key* `(epoch, batch index in the epoch's global batch stream)`; a
  :class:`ServedDataset` passes the key to the collator with the row. The draws of a batch are then a pure function
  of `(seed, epoch, batch index)`: a batch served again (next epoch) gets fresh blanks and masks, and a run resumed
  from a checkpoint, with its skipped batches never collated, collates every later batch exactly as the uninterrupted
  run did -- whatever the dataloader prefetches, however many workers collate, whichever process takes the batch;
* called directly on plain rows (no key), the collator counts its calls and uses `(seed, call number)`: reproducible
  for a fresh collator, and still re-drawn on every call.

Why not the global torch RNG, which the Trainer saves and restores in checkpoints? The Trainer restores it only after
it has fetched the first batches following the resume point, accelerate's `DataLoaderShard` collates one batch
ahead, and dataloader workers have RNG streams of their own: global-RNG draws would differ between a resumed and an
uninterrupted run (and between `dataloader_num_workers` settings).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .corpus import UnknownRelationError
from ..processing_sacon import SaconProcessor

SERVE_KEY = "_sacon_serve_key"
"""Row field through which :class:`ServedDataset` hands a batch's serve key to the collator."""

__all__ = ["SERVE_KEY", "SaconPretrainingCollator", "ServeKeyedBatchSampler", "ServedDataset", "derive_seed"]


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed for `torch.Generator.manual_seed` from non-negative ints (via numpy's `SeedSequence`)."""
    words = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


# Entity blanking and masking as the authors pre-train (CP's --alpha 0.3 keeps a mention with probability 0.3; BERT's
# 15%): the defaults of the collator and of the pre-training command alike.
DEFAULT_BLANK_PROBABILITY = 0.7
DEFAULT_MLM_PROBABILITY = 0.15


@dataclass
class SaconPretrainingCollator:
    """Canonical rows (`modeling_sacon.data.INSTANCE_FEATURES`) -> the keyword arguments of
    `SaconDualEncoderModel.forward` with the loss.

    Args:
        processor: the `SaconProcessor` (markers, blank token, lengths, MLM masking).
        label_table: relation -> (name, description); every relation of a batch needs an entry.
        relation_to_id: corpus-wide relation ids for `label_relation_ids` (deduplicating labels when negatives are
            gathered across processes). Default: the order of `label_table`.
        blank_probability: each mention (head and tail independently) is replaced by the blank token with this
            probability, re-drawn every time the instance is served (0.7 in CP and SaCon).
        mlm_probability: share of maskable tokens chosen for MLM, in sentences and label texts alike.
        label_negatives: relation descriptions appended to the label rows beyond the batch's own relations, drawn
            (from the batch's generator) among the other relations of `relation_to_id`: extra negatives of the
            sentence-anchored softmax (the model needs `SaconConfig.label_negatives` > 0 to accept them).
        label_negative_neighbors: relation -> other relations nearest first (see
            `modeling_sacon.training.hard_negatives.nearest_relations`). When given, the label negatives are the
            batch relations' nearest neighbours outside the batch (taken rank by rank, relation by relation), then
            random ones if those run out: hard negatives for relations that zero-shot classification confuses.
        sentence_mlm / label_mlm: mask that tower's inputs and return its MLM labels. Turn one off when its MLM
            weight is 0: masked tokens would otherwise corrupt the contrastive inputs with no MLM loss to learn from.
        seed: base seed of the per-batch generators (see the module docstring).

    Output keys: `input_ids`, `attention_mask`, `entity_positions` ([B, 2]), `label_input_ids`,
    `label_attention_mask` ([U, L']: the batch's U distinct relations, in order of first appearance, each encoded
    once), `labels` ([B] row of each sentence's relation among the U), `mlm_labels`, `label_mlm_labels` (-100 where
    not masked), `label_relation_ids` ([U] corpus-wide ids).
    """

    processor: SaconProcessor
    label_table: Mapping[str, Sequence[str]]
    relation_to_id: Mapping[str, int] | None = None
    blank_probability: float = DEFAULT_BLANK_PROBABILITY
    mlm_probability: float = DEFAULT_MLM_PROBABILITY
    seed: int = 0
    sentence_mlm: bool = True
    label_mlm: bool = True
    label_negatives: int = 0
    label_negative_neighbors: Mapping[str, Sequence[str]] | None = None
    calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        for name in ("blank_probability", "mlm_probability"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.mlm_probability >= 1.0:
            raise ValueError(f"mlm_probability must be below 1, got {self.mlm_probability}")
        if self.relation_to_id is None:
            self.relation_to_id = {relation: i for i, relation in enumerate(self.label_table)}
        ids = list(self.relation_to_id.values())
        if len(set(ids)) != len(ids):
            raise ValueError("relation_to_id gives the same id to two relations")
        if self.label_negatives < 0:
            raise ValueError(f"label_negatives must be >= 0, got {self.label_negatives}")
        self._negative_pool = [r for r in self.relation_to_id if r in self.label_table]
        self._negative_ids = frozenset(self._negative_pool)  # a negative needs a label text and a corpus-wide id

    # -- validation -----------------------------------------------------------------------------------------------

    def check_relations(self, relations: Iterable[str], source: str = "") -> None:
        """Raise `UnknownRelationError` naming every relation that has no label text or no corpus-wide id.

        Call it on the whole corpus before training: the collator raises the same error, but only when it meets
        the relation, possibly hours into a run.
        """
        seen = list(dict.fromkeys(relations))
        no_text = [r for r in seen if r not in self.label_table]
        no_id = [r for r in seen if r in self.label_table and r not in self.relation_to_id]
        where = f" (in {source})" if source else ""
        if no_text:
            raise UnknownRelationError(
                f"no label text for relation(s) {', '.join(map(repr, no_text))}{where}; add them to a label table "
                "(--label_files) or allow fallback names (--label_fallback)"
            )
        if no_id:
            raise UnknownRelationError(f"relation(s) {', '.join(map(repr, no_id))}{where} have no id in relation_to_id")

    # -- batches --------------------------------------------------------------------------------------------------

    def generator_for(self, features: Sequence[Mapping[str, Any]]) -> torch.Generator:
        """The batch's generator: from its serve key when the rows carry one, else from the call counter."""
        key = features[0].get(SERVE_KEY) if features and isinstance(features[0], Mapping) else None
        if key is None:
            entropy = (self.seed, 0, self.calls)  # 0: "no key", so this stream never meets a keyed one
        else:
            entropy = (self.seed, 1, *(int(k) for k in key))
        self.calls += 1
        return torch.Generator().manual_seed(derive_seed(*entropy))

    def draw_label_negatives(self, distinct: Sequence[str], generator: torch.Generator) -> list[str]:
        """`label_negatives` relations outside the batch (fewer if the corpus has fewer): the batch relations' nearest
        neighbours first when `label_negative_neighbors` is given, the rest in a seeded random order."""
        if not self.label_negatives:
            return []
        taken, chosen = set(distinct), []
        if self.label_negative_neighbors is not None:
            ranks = itertools.zip_longest(*(self.label_negative_neighbors.get(r, ()) for r in distinct))
            for candidate in itertools.chain.from_iterable(ranks):  # every relation's nearest, then its second, ...
                if len(chosen) == self.label_negatives:
                    return chosen
                if candidate in self._negative_ids and candidate not in taken:  # None: a shorter list ran out
                    chosen.append(candidate)
                    taken.add(candidate)
        pool = [r for r in self._negative_pool if r not in taken]
        order = torch.randperm(len(pool), generator=generator)[: self.label_negatives - len(chosen)]
        return chosen + [pool[i] for i in order.tolist()]

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        generator = self.generator_for(features)
        relations = [row["relation"] for row in features]
        distinct = list(dict.fromkeys(relations))
        self.check_relations(distinct)
        row_of = {relation: i for i, relation in enumerate(distinct)}

        blanks = torch.rand((len(features), 2), generator=generator) < self.blank_probability  # [B, (head, tail)]
        names = [f"batch row {i} (relation {r!r})" for i, r in enumerate(relations)]
        sentences = self.processor.encode_instances(
            features, blank_head=blanks[:, 0].tolist(), blank_tail=blanks[:, 1].tolist(), names=names
        )
        label_rows = distinct + self.draw_label_negatives(distinct, generator)
        label_inputs = self.processor.encode_labels([tuple(self.label_table[r]) for r in label_rows])
        batch = {
            "input_ids": sentences["input_ids"],
            "attention_mask": sentences["attention_mask"],
            "entity_positions": sentences["entity_positions"],
            "label_input_ids": label_inputs["input_ids"],
            "label_attention_mask": label_inputs["attention_mask"],
            "labels": torch.tensor([row_of[r] for r in relations], dtype=torch.long),
            "label_relation_ids": torch.tensor([self.relation_to_id[r] for r in label_rows], dtype=torch.long),
        }
        if self.sentence_mlm:
            batch["input_ids"], batch["mlm_labels"] = self.processor.mask_tokens(
                batch["input_ids"], self.mlm_probability, generator
            )
        if self.label_mlm:
            batch["label_input_ids"], batch["label_mlm_labels"] = self.processor.mask_tokens(
                batch["label_input_ids"], self.mlm_probability, generator
            )
        return batch


# ----------------------------------------------------------------------------------------------------------------
# Serve keys: which (epoch, batch) a row is served in, carried from the batch sampler to the collator.


class ServeKeyedBatchSampler(torch.utils.data.Sampler[list[tuple[int, int, int]]]):
    """Wraps a batch sampler of row indices; yields `[(row, epoch, batch index), ...]` instead.

    The batch index counts the wrapped sampler's batches within the epoch. Give this sampler the *global* batch
    stream (one process's view of it when not distributed): accelerate's `BatchSamplerShard` then deals batches
    round-robin to the processes, and every batch keeps the key it has in the global stream.
    """

    def __init__(self, batch_sampler: Iterable[Sequence[int]]):
        self.batch_sampler = batch_sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch = self.epoch
        for index, batch in enumerate(self.batch_sampler):
            yield [(int(row), epoch, index) for row in batch]


class ServedDataset(torch.utils.data.Dataset):
    """A map-style view of `dataset` addressed by `(row, *serve key)` tuples (or plain row indices).

    Rows come back as dicts with the serve key under :data:`SERVE_KEY`, for the collator's generator.
    `set_epoch` forwards to `keyed_sampler`: that is how the Trainer's per-epoch `DataLoader.set_epoch` reaches it.
    """

    def __init__(self, dataset, keyed_sampler: ServeKeyedBatchSampler | None = None):
        self.dataset = dataset
        self.keyed_sampler = keyed_sampler

    def set_epoch(self, epoch: int) -> None:
        """The Trainer calls `set_epoch` on its (accelerate) train dataloader before every epoch. accelerate's
        `DataLoaderShard.set_epoch` forwards it to the batch sampler only one wrapper deep, and to the dataset's
        `set_epoch` (when no sampler two wrappers deep has one, as here): through here the epoch reaches
        `keyed_sampler` whatever wraps it (`BatchSamplerShard` under several processes, `SkipBatchSampler` over
        that when resuming)."""
        if self.keyed_sampler is not None:
            self.keyed_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    @staticmethod
    def _split(key) -> tuple[int, tuple[int, ...] | None]:
        if isinstance(key, (tuple, list)):
            return int(key[0]), tuple(int(k) for k in key[1:])
        return int(key), None

    def _tag(self, row: Mapping, serve: tuple[int, ...] | None) -> dict:
        row = dict(row)
        if serve is not None:
            row[SERVE_KEY] = serve
        return row

    def __getitem__(self, key) -> dict:
        index, serve = self._split(key)
        return self._tag(self.dataset[index], serve)

    def __getitems__(self, keys: Sequence) -> list[dict]:
        split = [self._split(k) for k in keys]
        indices = [index for index, _ in split]
        getitems = getattr(self.dataset, "__getitems__", None)
        rows = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return [self._tag(row, serve) for row, (_, serve) in zip(rows, split)]
