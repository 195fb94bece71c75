"""Episodic datasets and a collator, so the stock `transformers.Trainer` fine-tunes and evaluates
`SaconForFewShotRelationClassification` on N-way K-shot episodes.

* `EpisodicDataset(dataset, sampler)`: item ``i`` is episode ``i`` of an `EpisodeSampler` over a canonical dataset
  (rows of `data.INSTANCE_FEATURES`): a pure function of ``(seed, i)``, so evaluation sets are fixed and training
  episodes reproducible whatever order the Trainer visits them in.
* `EpisodeCollator(processor, label_table=None)`: a list of `EpisodeExample` -> the model's forward kwargs, episode-
  shaped (dimension 0 is the episode, then relation-major rows: relation 0's K shots, relation 1's, ...)::

      support_input_ids / support_attention_mask    [E, N * K, L]   support_entity_positions [E, N * K, 2]
      query_input_ids / query_attention_mask        [E, Q, L]       query_entity_positions   [E, Q, 2]
      relation_input_ids / relation_attention_mask  [E, N, L']      (only with a label table)
      labels                                        [E, Q]          (0..N-1, N = none-of-the-above)
      n_way, k_shot                                 ints

  Episode-shaped rather than flat ([E * N * K, L]) because the Trainer takes dimension 0 of the inputs as the batch:
  it weights eval losses by it and, on the last eval batch, truncates predictions and labels to the dataset's
  remaining *items* (episodes) along it.

Items are `EpisodeExample` dataclasses, not dicts: the Trainer's `remove_unused_columns` only filters dict features,
so the default `TrainingArguments` work unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.data

from .corpus import label_texts
from .episodes import EpisodeSampler

__all__ = ["EpisodeExample", "EpisodicDataset", "EpisodeCollator"]


@dataclass(frozen=True)
class EpisodeExample:
    """One episode with its instances: `support[j]` holds the K instances of `relations[j]`; `query_labels[i]` is the
    label of `query[i]` (N = none-of-the-above). Instances are canonical rows (`tokens`, `head`, `tail`, `relation`)."""

    relations: tuple[str, ...]
    support: tuple[tuple[Mapping[str, Any], ...], ...]
    query: tuple[Mapping[str, Any], ...]
    query_labels: tuple[int, ...]
    index: int = -1

    @property
    def n_way(self) -> int:
        return len(self.relations)

    @property
    def k_shot(self) -> int:
        return len(self.support[0]) if self.support else 0


class EpisodicDataset(torch.utils.data.Dataset):
    """Episodes of an `EpisodeSampler` over a canonical dataset; ``len`` is the sampler's ``num_episodes``.

    Args:
        dataset: a `datasets.Dataset` with the canonical features (`data.load_fewrel_json`), or a list of rows.
        sampler: an `EpisodeSampler` over ``dataset["relation"]``; or leave it None and pass the sampler's options
            (``n_way``, ``k_shot``, ``q_query``, ``na_rate`` / ``nota_fraction``, ``zero_shot``, ``seed``,
            ``num_episodes``) as keyword arguments.
    """

    def __init__(self, dataset, sampler: EpisodeSampler | None = None, **sampler_kwargs):
        # plain Python rows: random access into an Arrow table per instance is ~10x slower than a list
        self.rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
        if not self.rows:
            raise ValueError("the dataset is empty")
        missing = [key for key in ("tokens", "head", "tail", "relation") if key not in self.rows[0]]
        if missing:
            raise ValueError(f"dataset rows must have the canonical fields (data.INSTANCE_FEATURES); missing {missing}")
        if sampler is None:
            sampler = EpisodeSampler([row["relation"] for row in self.rows], **sampler_kwargs)
        elif sampler_kwargs:
            raise ValueError(f"pass either a sampler or its options, not both (got {sorted(sampler_kwargs)})")
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, index: int) -> EpisodeExample:
        episode = self.sampler.episode(index)
        rows = self.rows
        return EpisodeExample(
            relations=episode.relations,
            support=tuple(tuple(rows[r] for r in shots) for shots in episode.support),
            query=tuple(rows[r] for r in episode.query),
            query_labels=episode.query_labels,
            index=int(index),
        )

    @property
    def relation_names(self) -> tuple[str, ...]:
        return tuple(self.sampler.relation_names)


class EpisodeCollator:
    """Batches `EpisodeExample`s into `SaconForFewShotRelationClassification` inputs (episode-shaped: see the module
    docstring).

    Args:
        processor: a `SaconProcessor` (markers, truncation, label texts).
        label_table: ``{relation: (name, description)}`` (e.g. `data.load_label_table("fewrel/pid2name.json")`);
            with it every batch carries the episodes' label texts (needed by ``zero_shot`` / ``label_augmented``).
        label_fallback: name a relation missing from the table after itself (`data.label_texts(fallback=True)`);
            by default a missing relation raises `UnknownRelationError`.
    """

    def __init__(self, processor, label_table: Mapping[str, Sequence[str]] | None = None, label_fallback: bool = False):
        self.processor = processor
        self.label_table = label_table
        self.label_fallback = label_fallback

    def __call__(self, examples: Sequence[EpisodeExample]) -> dict[str, Any]:
        if not examples:
            raise ValueError("empty batch")
        for example in examples:
            if not isinstance(example, EpisodeExample):
                raise TypeError(
                    f"EpisodeCollator expects EpisodeExample items (from EpisodicDataset), got {type(example).__name__}"
                )
        first = examples[0]
        n_way, k_shot, queries = first.n_way, first.k_shot, len(first.query)
        for example in examples[1:]:
            if (example.n_way, example.k_shot, len(example.query)) != (n_way, k_shot, queries):
                raise ValueError(
                    f"episodes of one batch must share N, K and Q: episode {example.index} is "
                    f"{example.n_way}-way {example.k_shot}-shot with {len(example.query)} queries, episode "
                    f"{first.index} is {n_way}-way {k_shot}-shot with {queries}"
                )
        episodes = len(examples)

        def shaped(encoded, prefix: str) -> dict[str, torch.Tensor]:
            return {f"{prefix}_{key}": value.reshape(episodes, -1, *value.shape[1:]) for key, value in encoded.items()}

        batch: dict[str, Any] = {}
        if k_shot:
            support = [inst for ex in examples for shots in ex.support for inst in shots]
            names = [f"episode {ex.index} support {j}/{k}" for ex in examples for j in range(n_way) for k in range(k_shot)]
            batch.update(shaped(self.processor.encode_instances(support, names=names), "support"))
        query = [inst for ex in examples for inst in ex.query]
        names = [f"episode {ex.index} query {i}" for ex in examples for i in range(len(ex.query))]
        batch.update(shaped(self.processor.encode_instances(query, names=names), "query"))
        if self.label_table is not None:
            relations = [r for ex in examples for r in ex.relations]
            table = label_texts(relations, self.label_table, fallback=self.label_fallback, source="EpisodeCollator")
            labels = self.processor.encode_labels([table[r] for r in relations])
            batch.update(shaped({"input_ids": labels["input_ids"], "attention_mask": labels["attention_mask"]}, "relation"))
        batch["labels"] = torch.tensor([list(ex.query_labels) for ex in examples], dtype=torch.long)
        batch["n_way"] = n_way
        batch["k_shot"] = k_shot
        return batch
