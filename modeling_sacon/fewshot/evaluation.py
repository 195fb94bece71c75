"""FewRel evaluation on cached embeddings: encode every distinct sentence and label once, score many episodes.

The FewRel toolkit re-encodes the N*K + Q sentences of every episode; with 10,000 episodes per setting that is
the whole cost of evaluation. Here each distinct sentence of the split is encoded exactly once (in length-sorted
batches, so padding is minimal), and episodes only index into the cache. `evaluate_reencoding` keeps the toolkit's
way for comparison: same episodes, same scoring, same accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import datasets
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data.corpus import label_texts
from ..data.episodes import Episode, EpisodeSampler, EvalSetting, mean_and_ci95, parse_setting
from ..processing_sacon import SaconProcessor, encode_in_length_order, entity_indices
from ..scoring import check_method, prototype_logits


class SaconEncoder:
    """Sentence -> [h ; t] at the start markers, label -> [CLS ; mean]: SaCon's own representations."""

    def __init__(self, model: PreTrainedModel, processor: SaconProcessor):
        self.model, self.processor = model, processor
        self.has_labels = model.config.share_encoders or getattr(model, "label_encoder", None) is not None
        self.logit_scale = float(model.logit_scale_value().detach().exp())

    @torch.no_grad()
    def encode_sentences(self, instances: Sequence[Mapping]) -> torch.Tensor:
        return self.encode_tokenized(self.tokenize_sentences(instances))

    def tokenize_sentences(self, instances: Sequence[Mapping]) -> list[dict]:
        """Unpadded features (`input_ids`, `entity_positions`) of each instance: lengths known before batching."""
        encoded = self.processor.encode_instances(instances, padding=False, return_tensors=None)
        return [{"input_ids": ids, "entity_positions": positions}
                for ids, positions in zip(encoded["input_ids"], encoded["entity_positions"])]

    @torch.no_grad()
    def encode_tokenized(self, features: Sequence[Mapping]) -> torch.Tensor:
        """[B, D] sentence features of `tokenize_sentences` output, padded to the longest of the batch."""
        inputs = self.processor.tokenizer.pad({"input_ids": [f["input_ids"] for f in features]}, return_tensors="pt")
        inputs["entity_positions"] = torch.tensor([f["entity_positions"] for f in features])
        return self.model.get_sentence_features(**inputs.to(self.model.device)).float().cpu()

    @torch.no_grad()
    def encode_labels(self, labels: Sequence[tuple[str, str]]) -> torch.Tensor:
        inputs = self.processor.encode_labels(labels).to(self.model.device)
        return self.model.get_label_features(**inputs).float().cpu()


class MeanPoolingEncoder:
    """An off-the-shelf encoder as sentence-transformers uses it: mean of the token states of the plain sentence.

    Entities are not marked: this is the baseline a SaCon checkpoint has to beat. Labels are "name: description".
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 128):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.has_labels = True
        self.logit_scale = 1.0 / 0.07

    @torch.no_grad()
    def _mean(self, texts: list[str]) -> torch.Tensor:
        inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**inputs.to(self.model.device)).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu()

    def encode_sentences(self, instances: Sequence[Mapping]) -> torch.Tensor:
        return self._mean([" ".join(instance["tokens"]) for instance in instances])

    def encode_labels(self, labels: Sequence[tuple[str, str]]) -> torch.Tensor:
        return self._mean([f"{name}: {description}" if description else name for name, description in labels])


@dataclass
class SettingResult:
    setting: str
    accuracy: float
    ci95: float
    episodes: int
    nota_threshold: float | None = None

    def as_dict(self) -> dict:
        out = {"accuracy": self.accuracy, "ci95": self.ci95, "episodes": self.episodes}
        if self.nota_threshold is not None:
            out["nota_threshold"] = self.nota_threshold
        return out


def encode_length_sorted(
    encoder,
    instances: Sequence[Mapping],
    batch_size: int = 64,
    show_progress: bool = False,
) -> torch.Tensor:
    """[n, D] sentence embeddings of `instances`, in their order, computed in batches of similar length.

    An encoder that can tokenise ahead (`tokenize_sentences` / `encode_tokenized`, as `SaconEncoder`) is sorted by
    its real token counts and tokenises each sentence once; any other (`encode_sentences` only) by word counts,
    which sub-word splitting makes a loose proxy (batches then pad to their longest sub-word sequence).
    """
    if hasattr(encoder, "tokenize_sentences"):
        items = encoder.tokenize_sentences(instances)
        lengths, encode = [len(item["input_ids"]) for item in items], encoder.encode_tokenized
    else:
        items, encode = list(instances), encoder.encode_sentences
        lengths = [len(instance["tokens"]) for instance in items]
    with tqdm(total=-(-len(items) // batch_size), desc="encoding sentences", disable=not show_progress) as progress:

        def encode_chunk(chunk: list[int]) -> torch.Tensor:
            progress.update()
            return encode([items[i] for i in chunk]).float().cpu()

        return encode_in_length_order(lengths, batch_size, encode_chunk)


def sentence_key(instance: Mapping) -> tuple:
    """Identity of a sentence for embedding caches: its tokens and the head / tail spans (what the encoder sees)."""
    return (tuple(instance["tokens"]), tuple(entity_indices(instance, "h")), tuple(entity_indices(instance, "t")))


class FewShotEvaluator:
    """Scores FewRel settings (`5-1`, `10-5`, `zs-5`, `nota-5-1-0.5`, ...) on one split with cached embeddings.

    `model` is a SaCon model (with `processor`) or any object with `encode_sentences` / `encode_labels` /
    `has_labels` / `logit_scale` (e.g. `MeanPoolingEncoder`). `label_table` maps relation -> (name, description); it is needed for
    zero-shot and label-augmented scoring only.
    """

    def __init__(
        self,
        model,
        processor: SaconProcessor | None = None,
        dataset: datasets.Dataset | None = None,
        label_table: Mapping[str, tuple[str, str]] | None = None,
        *,
        batch_size: int = 64,
        show_progress: bool = True,
        label_fallback: bool = False,
        source: str = "",
    ):
        if dataset is None:
            raise ValueError("FewShotEvaluator needs a dataset (rows in modeling_sacon.data.INSTANCE_FEATURES form)")
        self.encoder = SaconEncoder(model, processor) if processor is not None else model
        self.dataset, self.label_table = dataset, label_table
        self.batch_size, self.show_progress = batch_size, show_progress
        self.label_fallback, self.source = label_fallback, source
        self.relations = list(dataset["relation"])
        self.sentence_embeddings: torch.Tensor | None = None
        self.label_embeddings: dict[str, torch.Tensor] | None = None

    # -- encoding -------------------------------------------------------------------------------------------------

    def encode(self) -> None:
        """Encode each distinct sentence once, in length-sorted batches; rows repeating a sentence share its vector."""
        if self.sentence_embeddings is not None:
            return
        rows = list(self.dataset)
        distinct: dict[tuple, int] = {}
        first_rows: list[int] = []  # the first row of each distinct sentence, in order of appearance
        row_to_distinct = []
        for i, row in enumerate(rows):
            d = distinct.setdefault(sentence_key(row), len(distinct))
            if d == len(first_rows):
                first_rows.append(i)
            row_to_distinct.append(d)
        vectors = encode_length_sorted(self.encoder, [rows[i] for i in first_rows], self.batch_size, self.show_progress)
        self.sentence_embeddings = vectors[torch.as_tensor(row_to_distinct)]

    def encode_labels(self) -> dict[str, torch.Tensor]:
        """One embedding per relation of the split; raises naming any relation without label text."""
        if self.label_embeddings is None:
            if self.label_table is None:
                raise ValueError("zero-shot and label-augmented scoring need a label table (relation -> name, description)")
            if not self.encoder.has_labels:
                raise ValueError("this model has no label encoder: zero-shot and label-augmented scoring need one")
            names = list(dict.fromkeys(self.relations))
            texts = label_texts(names, self.label_table, fallback=self.label_fallback, source=self.source)
            vectors = torch.cat([
                self.encoder.encode_labels([texts[n] for n in names[i : i + self.batch_size]])
                for i in range(0, len(names), self.batch_size)
            ])
            self.label_embeddings = dict(zip(names, vectors))
        return self.label_embeddings

    # -- scoring --------------------------------------------------------------------------------------------------

    def _logits(self, episodes: Sequence[Episode], embed, method: str, similarity: str, nota_logit) -> torch.Tensor:
        """[E, Q, N(+1)] logits of a chunk of same-shaped episodes; `embed` maps a LongTensor of rows to [..., D]."""
        query = embed(torch.tensor([e.query for e in episodes]))  # [E, Q, D]
        support = None
        if method != "zero_shot":
            support = embed(torch.tensor([list(e.support) for e in episodes]))  # [E, N, K, D]
        labels = None
        if method != "prototype":
            table = self.encode_labels()
            names = {name: i for i, name in enumerate(table)}
            matrix = torch.stack(list(table.values()))  # [R, D]
            labels = matrix[torch.tensor([[names[r] for r in e.relations] for e in episodes])]  # [E, N, D]
        return prototype_logits(query, support, labels, method, similarity, self.encoder.logit_scale, nota_logit)

    def _run(self, sampler: EpisodeSampler, embed, method: str, similarity: str, nota_logit, desc: str, chunk: int):
        """Per-episode accuracies, scoring `chunk` episodes at a time."""
        accuracies = []
        starts = range(0, len(sampler), chunk)
        for start in tqdm(starts, desc=desc, disable=not self.show_progress):
            episodes = [sampler[i] for i in range(start, min(start + chunk, len(sampler)))]
            logits = self._logits(episodes, embed, method, similarity, nota_logit)
            gold = torch.tensor([e.query_labels for e in episodes])
            accuracies.extend((logits.argmax(-1) == gold).float().mean(-1).tolist())
        return accuracies

    def _method_for(self, setting: EvalSetting, method: str) -> str:
        check_method(method)
        return "zero_shot" if setting.zero_shot else method

    def _calibrate_nota(self, setting: EvalSetting, method: str, similarity: str, seed: int, num_episodes: int) -> float:
        """The NOTA threshold logit maximising accuracy on separately seeded episodes of the same setting.

        A trained `SaconForFewShotRelationClassification` learns its threshold; a pre-trained encoder has none, so
        it is chosen on calibration episodes (seed + 1,000,003) that never coincide with the scored ones.
        """
        sampler = EpisodeSampler.from_setting(self.relations, setting, seed=seed + 1_000_003, num_episodes=num_episodes)
        episodes = list(sampler)
        logits = self._logits(episodes, self._cached, method, similarity, None).flatten(0, 1)  # [E * Q, N]
        gold = torch.tensor([e.query_labels for e in episodes]).flatten()
        scores, is_nota, right = logits.max(-1).values, gold == setting.n_way, logits.argmax(-1) == gold
        candidates = torch.unique(scores)
        # accuracy(t): NOTA queries whose best score is below t + the others, argmaxed right, at or above t
        accuracy = [((scores < t) & is_nota).sum() + ((scores >= t) & right).sum() for t in candidates]
        return float(candidates[int(torch.stack(accuracy).argmax())])

    def _cached(self, rows: torch.Tensor) -> torch.Tensor:
        return self.sentence_embeddings[rows]

    def evaluate(
        self,
        settings: Sequence[str | EvalSetting],
        num_episodes: int = 10_000,
        seed: int = 0,
        method: str = "prototype",
        similarity: str = "cosine",
        q_query: int = 1,
    ) -> dict[str, dict]:
        """{setting name: {"accuracy", "ci95", "episodes"(, "nota_threshold")}}, on cached embeddings."""
        parsed = [parse_setting(s) if isinstance(s, str) else s for s in settings]
        samplers = [EpisodeSampler.from_setting(self.relations, s, q_query, seed=seed, num_episodes=num_episodes) for s in parsed]
        self.encode()
        results = {}
        for setting, sampler in zip(parsed, samplers):
            scoring = self._method_for(setting, method)
            threshold = None
            if setting.nota_fraction > 0:
                threshold = self._calibrate_nota(setting, scoring, similarity, seed, min(num_episodes, 1000))
            accuracies = self._run(sampler, self._cached, scoring, similarity, threshold, f"scoring {setting.name}", 500)
            mean, ci = mean_and_ci95(accuracies)
            results[setting.name] = SettingResult(setting.name, mean, ci, len(accuracies), threshold).as_dict()
        return results

    def evaluate_reencoding(
        self, setting: str | EvalSetting, num_episodes: int, seed: int = 0, method: str = "prototype", similarity: str = "cosine"
    ) -> dict:
        """The FewRel toolkit's way, for comparison: every episode encodes its own N*K + Q sentences from scratch."""
        setting = parse_setting(setting) if isinstance(setting, str) else setting
        if setting.nota_fraction > 0:
            raise ValueError("evaluate_reencoding compares plain N-way K-shot settings; NOTA needs a calibrated threshold")
        sampler = EpisodeSampler.from_setting(self.relations, setting, seed=seed, num_episodes=num_episodes)
        rows = self.dataset

        def fresh(indices: torch.Tensor) -> torch.Tensor:
            vectors = self.encoder.encode_sentences([rows[i] for i in indices.flatten().tolist()])
            return vectors.view(*indices.shape, -1)

        scoring = self._method_for(setting, method)
        accuracies = self._run(sampler, fresh, scoring, similarity, None, f"re-encoding {setting.name}", chunk=1)
        mean, ci = mean_and_ci95(accuracies)
        return SettingResult(setting.name, mean, ci, len(accuracies)).as_dict()


__all__ = ["FewShotEvaluator", "MeanPoolingEncoder", "SaconEncoder", "SettingResult", "encode_length_sorted", "sentence_key"]
