"""Episodic few-shot / zero-shot relation classification on top of any SaCon checkpoint.

`SaconForFewShotRelationClassification` holds a complete `SaconDualEncoderModel` under the attribute `sacon` (the
`base_model_prefix` of every SaCon model), exactly as `BertForSequenceClassification` holds a `BertModel` under
`bert`:

* loading a `SaconDualEncoderModel` checkpoint (keys `sentence_encoder.*`, `label_encoder.*`, `logit_scale`, ...)
  adds the `sacon.` prefix, so every encoder weight loads and only the new `nota_threshold` is initialised;
* its own checkpoints (keys `sacon.*` + `nota_threshold`) reload as themselves, and also as a plain
  `SaconDualEncoderModel` (the prefix is stripped; `nota_threshold` is reported unexpected), so a fine-tuned model is
  still a SaCon checkpoint for the `relation-classification` pipeline and the evaluator.

The few-shot options are fields of `SaconFewShotConfig` (a `SaconConfig` with `fewshot_method`,
`fewshot_similarity`, `fewshot_nota`, `fewshot_nota_init`), saved in `config.json`; a plain SaCon checkpoint loads
with their defaults, and a plain `SaconConfig` (e.g. `AutoModel` on a fine-tuned checkpoint) drops them.

The NOTA column is `exp(logit_scale) * nota_threshold`: a virtual prototype at a fixed similarity. Keeping the
parameter in similarity units (not logits) lets it move meaningfully at fine-tuning learning rates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import ModelOutput, can_return_tuple, logging

from .configuration_sacon import SaconConfig
from .modeling_sacon import SaconDualEncoderModel, SaconPreTrainedModel
from .scoring import check_method, check_similarity, prototype_logits

logger = logging.get_logger(__name__)

_NEEDS_LABELS = ("zero_shot", "label_augmented")


class SaconFewShotConfig(SaconConfig):
    r"""
    A [`SaconConfig`] plus the scoring options of [`SaconForFewShotRelationClassification`].

    Args:
        fewshot_method (`str`): how a relation's prototype is built: `"prototype"` (mean support [h ; t]),
            `"zero_shot"` (the label embedding) or `"label_augmented"` (both summed, as SimpleFSRE uses SaCon); see
            `scoring.py`.
        fewshot_similarity (`str`): `"cosine"` or `"euclidean"` (negative squared distance), times exp(logit_scale).
        fewshot_nota (`bool`): append a none-of-the-above column (label N) to the logits.
        fewshot_nota_init (`float`, *optional*): initial NOTA threshold in the similarity's units; `None`: 0.5 for
            cosine, -1.0 (the same point of unit vectors, |a - b|^2 = 2 - 2 cos) for euclidean.
    """

    fewshot_method: str = "prototype"
    fewshot_similarity: str = "cosine"
    fewshot_nota: bool = False
    fewshot_nota_init: float | None = None

    def _validate(self) -> None:
        super()._validate()
        check_method(self.fewshot_method)
        check_similarity(self.fewshot_similarity)

    @classmethod
    def from_sacon_config(cls, config: SaconConfig, **options) -> "SaconFewShotConfig":
        """`config` as a few-shot config (itself when it already is one), `options` set on it."""
        if not isinstance(config, cls):
            config = cls.from_dict(config.to_dict())
        for key, value in options.items():
            if value is not None:
                setattr(config, key, value)
        config._validate()
        return config


def default_nota_init(config: "SaconFewShotConfig") -> float:
    """`config.fewshot_nota_init`, else the similarity's 0.5-cosine point (0.5, or -1.0 for euclidean)."""
    if config.fewshot_nota_init is not None:
        return float(config.fewshot_nota_init)
    return 0.5 if config.fewshot_similarity == "cosine" else -1.0


@dataclass
class SaconFewShotOutput(ModelOutput):
    r"""
    loss: mean cross-entropy of the query logits against `labels` (label N = none-of-the-above).
    logits: [E, Q, N] (or [E, Q, N + 1] with NOTA) scores of each episode's queries against its N relations.
    query_embeds / support_embeds / label_embeds: with `return_embeddings=True`, the unnormalised features
        [E, Q, D], [E, N, K, D], [E, N, D].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    query_embeds: torch.FloatTensor | None = None
    support_embeds: torch.FloatTensor | None = None
    label_embeds: torch.FloatTensor | None = None


def _as_int(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single integer, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _rows(x: torch.Tensor, name: str) -> tuple[int | None, int]:
    """(episodes, rows per episode) of an episode-shaped [E, R, L] input, (None, rows) of a flat [E * R, L] one."""
    if x.dim() == 3:
        return x.shape[0], x.shape[1]
    if x.dim() == 2:
        return None, x.shape[0]
    raise ValueError(f"{name} must be [E, rows, L] or [E * rows, L], got shape {tuple(x.shape)}")


def _episode_shape(query, support, relation, n_way: int, k_shot: int | None) -> tuple[int, int, int]:
    """Episodes E, shots K and queries Q of a batch, from whichever inputs are present; consistency checked."""
    episodes = None
    if support is not None:
        e, rows = _rows(support, "support_input_ids")
        if e is None:
            if k_shot is None:
                raise ValueError("k_shot is required with flat [E * N * K, L] support inputs")
            e, rest = divmod(rows, n_way * k_shot)
            if rest or e == 0:
                raise ValueError(f"support_input_ids has {rows} rows: not a multiple of n_way x k_shot = {n_way} x {k_shot}")
        else:
            k, rest = divmod(rows, n_way)
            if rest or (k_shot is not None and k != k_shot):
                raise ValueError(f"support_input_ids has {rows} rows per episode, not n_way x k_shot = {n_way} x {k_shot}")
            k_shot = k
        episodes = e
    if relation is not None:
        e, rows = _rows(relation, "relation_input_ids")
        if e is None:
            e, rest = divmod(rows, n_way)
            if rest:
                raise ValueError(f"relation_input_ids has {rows} rows: not a multiple of n_way={n_way}")
        elif rows != n_way:
            raise ValueError(f"relation_input_ids has {rows} relations per episode, not n_way={n_way}")
        if episodes is not None and e != episodes:
            raise ValueError(f"the relation inputs describe {e} episodes but the support inputs {episodes}")
        episodes = e
    if not episodes:
        raise ValueError("cannot tell the number of episodes: give support inputs or relation inputs")
    e, rows = _rows(query, "query_input_ids")
    if e is not None:
        if e != episodes:
            raise ValueError(f"the query inputs describe {e} episodes but the support / relation inputs {episodes}")
        queries = rows
    else:
        queries, rest = divmod(rows, episodes)
        if rest:
            raise ValueError(f"{rows} query rows cannot be split evenly over {episodes} episodes")
    return episodes, k_shot or 0, queries


class SaconForFewShotRelationClassification(SaconPreTrainedModel):
    """N-way K-shot relation classification of query sentences against support sets and/or relation descriptions.

    Inputs of one batch of E episodes (each N relations, K support sentences per relation, Q queries), rows
    relation-major (relation 0's K shots, then relation 1's, ...), in either layout:

    * episode-shaped, what `EpisodeCollator` produces (the Trainer takes dimension 0 as the batch of episodes):
      `support_input_ids` / `support_attention_mask` [E, N * K, L], `support_entity_positions` [E, N * K, 2];
      `query_*` [E, Q, L] / [E, Q, 2]; `relation_input_ids` / `relation_attention_mask` [E, N, L']; `labels` [E, Q];
    * flat: the same rows concatenated over episodes: [E * N * K, L], [E * Q, L], [E * N, L'], `labels` [E * Q]
      (E is then read from the support rows, E * N * K, else from the relation rows, E * N).

    `labels` hold each query's relation index in its episode, N for none-of-the-above, -100 ignored; `n_way` and
    `k_shot` are ints (`k_shot=0` and no support inputs for zero-shot). Logits are always [E, Q, N (+1)].

    The relation texts ("name [SEP] description") are `relation_*`, not `label_*` as in
    `SaconDualEncoderModel.forward`: the stock `Trainer` treats every forward argument whose name contains "label"
    as a label (`transformers.utils.find_labels`), so `labels` must be the only one for the default
    `TrainingArguments` to compute the eval loss and metrics.
    """

    config_class = SaconFewShotConfig

    def __init__(
        self,
        config: SaconConfig,
        dual_encoder: SaconDualEncoderModel | None = None,
        fewshot_method: str | None = None,
        fewshot_similarity: str | None = None,
        fewshot_nota: bool | None = None,
        fewshot_nota_init: float | None = None,
    ):
        # written into the config, so saved checkpoints keep them
        config = SaconFewShotConfig.from_sacon_config(
            config, fewshot_method=fewshot_method, fewshot_similarity=fewshot_similarity, fewshot_nota=fewshot_nota,
            fewshot_nota_init=fewshot_nota_init,
        )
        super().__init__(config)
        if dual_encoder is not None:
            dual_encoder.config = config  # one config object: the dual encoder's fields, and the few-shot options
        self.sacon = dual_encoder if dual_encoder is not None else SaconDualEncoderModel(config)
        self.nota_threshold = nn.Parameter(torch.tensor(default_nota_init(config)))
        self.post_init()
        # The MLM decoders are tied to the word embeddings and never saved; listing them here lets the Trainer's
        # `load_best_model_at_end` (a non-strict `load_state_dict`) re-tie them instead of warning about missing keys.
        self._keys_to_ignore_on_save.update(self.all_tied_weights_keys)

    @classmethod
    def from_dual_encoder(cls, model: SaconDualEncoderModel, **options) -> "SaconForFewShotRelationClassification":
        """Wrap an in-memory `SaconDualEncoderModel` (e.g. from `from_encoders_pretrained`), keeping its weights;
        `options` are `fewshot_method`, `fewshot_similarity`, `fewshot_nota`, `fewshot_nota_init`."""
        return cls(model.config, dual_encoder=model, **options)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SaconForFewShotRelationClassification):
            init.constant_(module.nota_threshold, default_nota_init(self.config))

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the dual encoder's code and its `auto_map` entry (`AutoModel`, when
        registered): `AutoModel.from_pretrained(dir, trust_remote_code=True)` and the `relation-classification`
        pipeline then read this checkpoint as the SaCon dual encoder it holds, without the package."""
        if SaconDualEncoderModel._auto_class is not None and kwargs.get("is_main_process", True):
            os.makedirs(save_directory, exist_ok=True)
            custom_object_save(self.sacon, save_directory, config=self.config)  # the same config object
        return super().save_pretrained(save_directory, *args, **kwargs)

    # -- helpers ----------------------------------------------------------------------------------------------------

    def get_input_embeddings(self) -> nn.Module:
        return self.sacon.get_input_embeddings()

    def resize_token_embeddings(self, new_num_tokens: int, mean_resizing: bool = True) -> nn.Embedding:
        return self.sacon.resize_token_embeddings(new_num_tokens, mean_resizing=mean_resizing)

    @property
    def fewshot_method(self) -> str:
        return self.config.fewshot_method

    def nota_logit(self) -> torch.Tensor:
        """The NOTA column's value: exp(logit_scale) * nota_threshold."""
        return self.sacon.logit_scale_value().exp() * self.nota_threshold

    def check_method(self, method: str, has_label_inputs: bool) -> None:
        """Clear errors for a scoring method the inputs or the model cannot serve."""
        if check_method(method) in _NEEDS_LABELS:
            if not self.label_encoder_loaded:
                raise ValueError(
                    f"fewshot_method={method!r} needs a trained label encoder, but this model's checkpoint had no "
                    "label-encoder weights (they are random); use fewshot_method='prototype' or a full SaCon checkpoint"
                )
            if not has_label_inputs:
                raise ValueError(
                    f"fewshot_method={method!r} needs relation label texts: pass relation_input_ids / "
                    "relation_attention_mask ([E * N, L']), e.g. EpisodeCollator(processor, label_table=...)"
                )

    # -- forward ----------------------------------------------------------------------------------------------------

    @can_return_tuple
    def forward(
        self,
        query_input_ids: torch.Tensor | None = None,
        query_attention_mask: torch.Tensor | None = None,
        query_entity_positions: torch.Tensor | None = None,
        support_input_ids: torch.Tensor | None = None,
        support_attention_mask: torch.Tensor | None = None,
        support_entity_positions: torch.Tensor | None = None,
        relation_input_ids: torch.Tensor | None = None,
        relation_attention_mask: torch.Tensor | None = None,
        n_way: int | torch.Tensor | None = None,
        k_shot: int | torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        query_token_type_ids: torch.Tensor | None = None,
        support_token_type_ids: torch.Tensor | None = None,
        relation_token_type_ids: torch.Tensor | None = None,
        fewshot_method: str | None = None,
        nota: bool | None = None,
        return_embeddings: bool = False,
    ) -> SaconFewShotOutput:
        r"""
        fewshot_method: overrides `config.fewshot_method` for this call.
        nota: overrides `config.fewshot_nota` (append the none-of-the-above column) for this call.
        return_embeddings: also return the query / support / label features.
        """
        method = fewshot_method or self.config.fewshot_method
        use_nota = self.config.fewshot_nota if nota is None else bool(nota)
        n_way, k_shot = _as_int(n_way, "n_way"), _as_int(k_shot, "k_shot")
        if query_input_ids is None:
            raise ValueError("query_input_ids are required")
        if n_way is None or n_way < 1:
            raise ValueError(f"n_way (the number of relations per episode) must be a positive int, got {n_way!r}")
        self.check_method(method, relation_input_ids is not None)
        needs_support = method != "zero_shot"
        if needs_support and (support_input_ids is None or k_shot == 0):
            raise ValueError(
                f"fewshot_method={method!r} needs support sentences (support_input_ids [E * N * K, L], k_shot >= 1); "
                "use fewshot_method='zero_shot' for episodes without support"
            )

        episodes, k_shot, queries = _episode_shape(
            query_input_ids, support_input_ids if needs_support else None, relation_input_ids, n_way, k_shot
        )

        def flat(x):
            return None if x is None else x.reshape(-1, *x.shape[-1:]) if x.dim() == 3 else x

        query = self.sacon.get_sentence_features(
            flat(query_input_ids), flat(query_attention_mask), flat(query_entity_positions), flat(query_token_type_ids)
        ).reshape(episodes, queries, -1)
        support = None
        if needs_support:
            support = self.sacon.get_sentence_features(
                flat(support_input_ids), flat(support_attention_mask), flat(support_entity_positions),
                flat(support_token_type_ids),
            ).reshape(episodes, n_way, k_shot, -1)
        label = None
        if relation_input_ids is not None and method in _NEEDS_LABELS:
            label = self.sacon.get_label_features(
                flat(relation_input_ids), flat(relation_attention_mask), flat(relation_token_type_ids)
            ).reshape(episodes, n_way, -1)

        scale = self.sacon.logit_scale_value().exp()
        logits = prototype_logits(
            query, support, label, method, self.config.fewshot_similarity, scale,
            self.nota_logit() if use_nota else None,
        )  # [E, Q, N (+1)]

        loss = None
        if labels is not None:
            labels = labels.reshape(-1).to(logits.device)
            if labels.numel() != episodes * queries:
                raise ValueError(f"labels has {labels.numel()} entries for {episodes} x {queries} queries")
            if not use_nota and (labels == n_way).any():
                raise ValueError(
                    f"labels contain {n_way} (none-of-the-above) but the NOTA column is off: set "
                    "config.fewshot_nota=True (or pass nota=True)"
                )
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels)

        out = SaconFewShotOutput(loss=loss, logits=logits)
        if return_embeddings:
            out.query_embeds, out.support_embeds, out.label_embeds = query, support, label
        return out


__all__ = ["SaconFewShotConfig", "SaconFewShotOutput", "SaconForFewShotRelationClassification"]
