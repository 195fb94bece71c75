"""SaCon dual encoder: a sentence encoder pooled at entity-start markers and a label encoder over relation texts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import ModelOutput, can_return_tuple, logging

from .configuration_sacon import SaconConfig
from .pipeline_sacon import RelationClassificationPipeline
from .checkpoint_files import describe_unreadable_weights
from .hub_files import resolve_file
from .losses import SaconObjective

logger = logging.get_logger(__name__)


@dataclass
class SaconOutput(ModelOutput):
    r"""
    loss: total = contrastive + sentence_mlm_weight * sentence MLM + label_mlm_weight * label MLM.
    contrastive_loss: (sentence-anchored + label-anchored) / 2, each with its weight.
    logits_per_sentence: [B, U] scaled cosine of each sentence to each label row of this batch (this process's rows,
        with or without `return_loss`; the loss itself may run on the global batch of all processes).
    logits_per_label: [U, B], its transpose.
    sentence_embeds / label_embeds: L2-normalised [B, D] / [U, D] (local to this process).
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    sentence_anchored_loss: torch.FloatTensor | None = None
    label_anchored_loss: torch.FloatTensor | None = None
    sentence_mlm_loss: torch.FloatTensor | None = None
    label_mlm_loss: torch.FloatTensor | None = None
    logits_per_sentence: torch.FloatTensor | None = None
    logits_per_label: torch.FloatTensor | None = None
    sentence_embeds: torch.FloatTensor | None = None
    label_embeds: torch.FloatTensor | None = None


def packs_sequences(encoder: PreTrainedModel) -> bool:
    """Whether `encoder` runs packed rows exactly: BERT's absolute positions can be passed, SDPA takes a 4D mask."""
    config = encoder.config
    return config.model_type == "bert" and getattr(config, "_attn_implementation", None) == "sdpa"


def packed_last_hidden_state(
    encoder: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    row_tokens: int | None = None,
) -> torch.Tensor:
    """[U, L, H] hidden states of a padded batch, computed on its real tokens packed into fewer rows (zeros at padding).

    Sequences go first-fit decreasing into rows of `row_tokens` (default L, the padded length: rows are no longer
    than the padded batch's, so attention and its dropout cost no more per row, and there are fewer rows). A
    block-diagonal mask keeps each sequence attending to itself only and every token keeps its original position
    id, so the states equal those of the padded forward up to float rounding.
    """
    keep = attention_mask.bool()
    lengths = keep.sum(1).tolist()
    capacity = max(row_tokens or input_ids.shape[1], max(lengths))
    row_of, offset_of, fill = [0] * len(lengths), [0] * len(lengths), []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, used in enumerate(fill) if used + lengths[i] <= capacity), len(fill))
        if row == len(fill):
            fill.append(0)
        row_of[i], offset_of[i] = row, fill[row]
        fill[row] += lengths[i]
    device = input_ids.device
    seq, col = keep.nonzero(as_tuple=True)  # row-major: each sequence's tokens in order
    rank = (keep.cumsum(1) - 1)[seq, col]
    row = torch.tensor(row_of, device=device)[seq]
    pos = torch.tensor(offset_of, device=device)[seq] + rank
    shape = (len(fill), max(fill))
    packed_ids = input_ids.new_zeros(shape).index_put_((row, pos), input_ids[seq, col])
    position_ids = input_ids.new_zeros(shape).index_put_((row, pos), col)
    segment = input_ids.new_full(shape, -1).index_put_((row, pos), seq)
    mask = segment.unsqueeze(2) == segment.unsqueeze(1)  # [R, P, P]; padding attends to padding only (no empty row)
    packed_types = None
    if token_type_ids is not None:
        packed_types = token_type_ids.new_zeros(shape).index_put_((row, pos), token_type_ids[seq, col])
    hidden = encoder(
        input_ids=packed_ids, attention_mask=mask.unsqueeze(1), position_ids=position_ids, token_type_ids=packed_types
    ).last_hidden_state  # [R, P, H]
    out = hidden.new_zeros(*input_ids.shape, hidden.shape[-1])
    return out.index_put((seq, col), hidden[row, pos])


class SaconMLMHead(nn.Module):
    """BERT-style prediction head (transform + decoder); the decoder weight is tied to the word embeddings."""

    def __init__(self, hidden_size: int, vocab_size: int, hidden_act: str = "gelu", layer_norm_eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = ACT2FN[hidden_act]
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.act(self.dense(hidden))))


def _build_encoder(config) -> PreTrainedModel:
    """A bare encoder; BERT-likes skip the pooler, which SaCon never uses (and which would get no gradient)."""
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)


def _load_encoder(path: str, **kwargs) -> PreTrainedModel:
    try:
        return AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
    except TypeError:
        return AutoModel.from_pretrained(path, **kwargs)


# Masked-LM heads that map onto `SaconMLMHead` (transform dense -> activation -> LayerNorm -> tied decoder + bias):
# a checkpoint key that marks the head -> the (dense, LayerNorm) modules of the `AutoModelForMaskedLM` holding it.
MLM_HEAD_LAYOUTS = {
    "cls.predictions.transform.dense.weight": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm"),
    "lm_head.dense.weight": ("lm_head.dense", "lm_head.layer_norm"),  # RoBERTa, XLM-R, CamemBERT
}


def checkpoint_keys(path: str, **kwargs) -> set[str] | None:
    """The tensor names of a checkpoint's safetensors weights, read from the file headers only (None: not found)."""
    from safetensors import safe_open

    single = resolve_file(path, "model.safetensors", kwargs)
    if single is not None:
        with safe_open(single, framework="pt") as f:
            return set(f.keys())
    index = resolve_file(path, "model.safetensors.index.json", kwargs)
    if index is not None:
        import json

        with open(index, encoding="utf-8") as f:
            return set(json.load(f)["weight_map"])
    return None


def load_encoder_and_mlm_head(path: str, **kwargs) -> tuple[PreTrainedModel, dict[str, torch.Tensor] | None]:
    """A bare encoder, plus its checkpoint's MLM head as a `SaconMLMHead` state dict (None when it has none).

    A checkpoint with a head (`BertForMaskedLM`, `RobertaForMaskedLM`, ... as bert-base-uncased is saved) is loaded
    through `AutoModelForMaskedLM`, so the head's transform, LayerNorm and output bias are kept; the decoder weight is
    tied to the word embeddings, as in the source model.
    """
    keys = checkpoint_keys(path, **kwargs) or set()
    layout = next((MLM_HEAD_LAYOUTS[key] for key in MLM_HEAD_LAYOUTS if key in keys), None)
    if layout is None:
        return _load_encoder(path, **kwargs), None
    from transformers import AutoModelForMaskedLM

    masked_lm = AutoModelForMaskedLM.from_pretrained(path, **kwargs)
    dense, layer_norm = (masked_lm.get_submodule(name) for name in layout)
    state = {f"dense.{k}": v for k, v in dense.state_dict().items()}
    state.update({f"LayerNorm.{k}": v for k, v in layer_norm.state_dict().items()})
    state["decoder.bias"] = masked_lm.get_output_embeddings().bias.detach().clone()
    return masked_lm.base_model, state


def _embedding_weight_name(encoder: PreTrainedModel, prefix: str) -> str:
    weight = encoder.get_input_embeddings().weight
    for name, param in encoder.named_parameters():
        if param is weight:
            return f"{prefix}.{name}"
    raise ValueError(f"cannot find the input embedding weight of {type(encoder).__name__}")


class SaconPreTrainedModel(PreTrainedModel):
    config: SaconConfig
    config_class = SaconConfig
    base_model_prefix = "sacon"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    # False when the checkpoint had no label-encoder weights (they are then random): descriptions must be refused.
    label_encoder_loaded: bool = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus: a weights file safetensors cannot read raises an `OSError` naming
        it; a checkpoint without label-encoder weights marks the model `label_encoder_loaded = False`, so zero-shot
        and label-augmented scoring (the pipeline's descriptions, the few-shot model's methods) refuse it instead of
        scoring with random weights."""
        from safetensors import SafetensorError

        want_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as err:
            raise OSError(describe_unreadable_weights(pretrained_model_name_or_path, err, kwargs)) from err
        if any(key.startswith(("sacon.label_encoder.", "label_encoder.")) for key in info.get("missing_keys", ())):
            model.label_encoder_loaded = False
            logger.warning(
                "the checkpoint has no label-encoder weights: the label encoder is randomly initialised, so relation "
                "descriptions (zero-shot, label-augmented scoring) are refused until it is trained"
            )
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus, with `auto_map` set, the `relation-classification` pipeline's code
        (the config's `custom_pipelines` names it), so `pipeline(..., trust_remote_code=True)` runs from the
        checkpoint alone."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        if self._auto_class is not None and kwargs.get("is_main_process", True):
            custom_object_save(RelationClassificationPipeline, save_directory)
        return out

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Heads and projections as BERT; `logit_scale` explicitly, since a checkpoint lacking it must not load garbage."""
        super()._init_weights(module)
        if isinstance(module, SaconDualEncoderModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class SaconDualEncoderModel(SaconPreTrainedModel):
    """SaCon: sentence encoder -> [h ; t] at entity-start markers; label encoder -> [CLS ; masked mean].

    The two towers are compared by cosine times `exp(logit_scale)`; with `return_loss=True` the forward adds the
    symmetric anchored contrastive loss and both MLM losses (see `losses.py`).
    """

    def __init__(
        self,
        config: SaconConfig,
        sentence_encoder: PreTrainedModel | None = None,
        label_encoder: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        self.sentence_encoder = sentence_encoder if sentence_encoder is not None else _build_encoder(config.sentence_config)
        config.sentence_config = self.sentence_encoder.config
        if not config.share_encoders:
            self.label_encoder = label_encoder if label_encoder is not None else _build_encoder(config.label_config)
            config.label_config = self.label_encoder.config

        s_cfg, l_cfg = config.sentence_config, config.label_encoder_config
        self.sentence_mlm_head = SaconMLMHead(s_cfg.hidden_size, s_cfg.vocab_size, s_cfg.hidden_act, s_cfg.layer_norm_eps)
        ties = {"sentence_mlm_head.decoder.weight": _embedding_weight_name(self.sentence_encoder, "sentence_encoder")}
        if not config.share_encoders:
            self.label_mlm_head = SaconMLMHead(l_cfg.hidden_size, l_cfg.vocab_size, l_cfg.hidden_act, l_cfg.layer_norm_eps)
            ties["label_mlm_head.decoder.weight"] = _embedding_weight_name(self.label_encoder, "label_encoder")
        self._tied_weights_keys = ties

        sentence_dim, label_dim = 2 * s_cfg.hidden_size, 2 * l_cfg.hidden_size
        if config.projection_dim is None:
            if sentence_dim != label_dim:
                raise ValueError(
                    f"the encoders' hidden sizes differ ({s_cfg.hidden_size} vs {l_cfg.hidden_size}): "
                    "set projection_dim so both towers map to one space"
                )
            self.sentence_projection = nn.Identity()
            self.label_projection = nn.Identity()
        else:
            self.sentence_projection = nn.Linear(sentence_dim, config.projection_dim, bias=False)
            self.label_projection = nn.Linear(label_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value), requires_grad=config.learn_logit_scale)
        self.objective = SaconObjective(config)
        self.post_init()

    # -- towers ---------------------------------------------------------------------------------------------------

    @property
    def label_tower(self) -> PreTrainedModel:
        return self.sentence_encoder if self.config.share_encoders else self.label_encoder

    @property
    def label_head(self) -> SaconMLMHead:
        return self.sentence_mlm_head if self.config.share_encoders else self.label_mlm_head

    def get_input_embeddings(self) -> nn.Module:
        return self.sentence_encoder.get_input_embeddings()

    def resize_token_embeddings(self, new_num_tokens: int, mean_resizing: bool = True) -> nn.Embedding:
        """Resize both towers (they share a tokenizer: the markers are added to it) and re-tie the MLM decoders."""
        embeddings = self.sentence_encoder.resize_token_embeddings(new_num_tokens, mean_resizing=mean_resizing)
        if not self.config.share_encoders:
            self.label_encoder.resize_token_embeddings(new_num_tokens, mean_resizing=mean_resizing)
        self.tie_weights()
        return embeddings

    def logit_scale_value(self) -> torch.Tensor:
        """The log-scale actually used: at most `logit_scale_max` (as CLIP), on every path (any Trainer, any model).

        A straight-through clamp: the value is `min(logit_scale, max)` but the gradient is always 1, so a parameter
        past the bound is not trapped there (`clamp`'s gradient would be 0 and nothing could bring it back). Below
        the bound the value is `logit_scale` exactly. `SaconTrainer` also clamps the parameter after each step.
        """
        excess = (self.logit_scale - self.config.logit_scale_max).clamp(min=0.0)
        return self.logit_scale - excess.detach()

    @staticmethod
    def _last_hidden_state(
        tower: PreTrainedModel,
        pack: bool,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """[N, L, H] states of a padded batch; with `pack` (and a tower that packs exactly, and some padding), computed
        on the real tokens packed into fewer rows: the same states at real tokens, zeros at padding."""
        if pack and attention_mask is not None and packs_sequences(tower) and not bool(attention_mask.all()):
            return packed_last_hidden_state(tower, input_ids, attention_mask, token_type_ids)
        return tower(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    def encode_sentences(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        entity_positions: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states [B, L, H], features [B, D]): [h ; t] at the entity-start markers, projected, not
        normalised. The hidden states feed the sentence MLM head."""
        if entity_positions is None:
            raise ValueError("entity_positions ([B, 2] head-start and tail-start marker indices) are required")
        hidden = self._last_hidden_state(
            self.sentence_encoder, self.config.pack_sentences, input_ids, attention_mask, token_type_ids
        )  # [B, L, H]
        rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1)
        pooled = hidden[rows, entity_positions].flatten(1)  # [B, 2H]
        return hidden, self.sentence_projection(pooled)

    def encode_labels(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states [U, L, H], features [U, D]): [CLS ; masked mean] of "name [SEP] description" (or the
        configured pooling), projected, not normalised. The hidden states feed the label MLM head."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self._last_hidden_state(
            self.label_tower, self.config.pack_label_texts, input_ids, attention_mask, token_type_ids
        )  # [U, L, H]
        cls = hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # padding excluded (the authors' mean includes it)
        pooling = self.config.label_pooling
        pooled = torch.cat([cls, mean] if pooling == "cls_mean" else [cls, cls] if pooling == "cls" else [mean, mean], dim=-1)
        return hidden, self.label_projection(pooled)

    def get_sentence_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        entity_positions: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, D] sentence representations ([h ; t] at the entity-start markers, projected), not normalised."""
        return self.encode_sentences(input_ids, attention_mask, entity_positions, token_type_ids)[1]

    def get_label_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[U, D] label representations ([CLS ; masked mean] of "name [SEP] description", projected), not normalised."""
        return self.encode_labels(input_ids, attention_mask, token_type_ids)[1]

    # -- forward --------------------------------------------------------------------------------------------------

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        entity_positions: torch.Tensor | None = None,
        label_input_ids: torch.Tensor | None = None,
        label_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        label_mlm_labels: torch.Tensor | None = None,
        label_relation_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        label_token_type_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        gather_across_processes: bool = False,
    ) -> SaconOutput:
        r"""
        entity_positions: [B, 2] indices of the head-start and tail-start markers.
        label_input_ids / label_attention_mask: [U, L'] the batch's distinct relation texts.
        labels: [B] index of each sentence's relation among the U label rows (needed for the loss).
        mlm_labels / label_mlm_labels: [B, L] / [U, L'] original ids at masked positions, -100 elsewhere.
        label_relation_ids: [U] corpus-wide relation ids, used to deduplicate labels when gathering across processes.
        gather_across_processes: contrast against the global batch of all processes (negatives from every rank).
        """
        return_loss = return_loss if return_loss is not None else labels is not None
        sentence_hidden, sentence_features = self.encode_sentences(input_ids, attention_mask, entity_positions, token_type_ids)
        label_hidden = label_features = None
        if label_input_ids is not None:
            label_hidden, label_features = self.encode_labels(label_input_ids, label_attention_mask, label_token_type_ids)

        logit_scale = self.logit_scale_value()
        out = SaconOutput(sentence_embeds=nn.functional.normalize(sentence_features, dim=-1))
        if label_features is not None:
            out.label_embeds = nn.functional.normalize(label_features, dim=-1)
            out.logits_per_sentence = logit_scale.exp() * out.sentence_embeds @ out.label_embeds.t()
            out.logits_per_label = out.logits_per_sentence.t()
        if return_loss:
            if label_features is None or labels is None:
                raise ValueError("return_loss=True needs label_input_ids and labels (each sentence's label row)")
            terms = self.objective(
                sentence_features, label_features, labels, logit_scale, label_relation_ids, gather_across_processes,
                sentence_mlm=None if mlm_labels is None else (self.sentence_mlm_head, sentence_hidden, mlm_labels),
                label_mlm=None if label_mlm_labels is None else (self.label_head, label_hidden, label_mlm_labels),
            )
            for name in ("loss", "contrastive_loss", "sentence_anchored_loss", "label_anchored_loss",
                         "sentence_mlm_loss", "label_mlm_loss"):
                setattr(out, name, getattr(terms, name))
        return out

    # -- construction from two pretrained encoders -----------------------------------------------------------------

    @classmethod
    def from_encoders_pretrained(
        cls,
        sentence_model_name_or_path: str,
        label_model_name_or_path: str | None = None,
        *,
        vocab_size: int | None = None,
        encoder_kwargs: dict | None = None,
        output_loading_info: bool = False,
        **config_kwargs,
    ) -> "SaconDualEncoderModel" | tuple["SaconDualEncoderModel", dict[str, Any]]:
        """Compose SaCon from pretrained encoders (as `VisionTextDualEncoderModel.from_vision_text_pretrained`).

        The label encoder defaults to a second, independent copy of the sentence checkpoint (the paper). A checkpoint
        saved with a masked-LM head (`BertForMaskedLM`, `RobertaForMaskedLM`) gives that tower's MLM head its
        pretrained transform, LayerNorm and output bias (the decoder stays tied to the word embeddings); a tower
        whose checkpoint has none gets a new head, and a warning says so. Pass `vocab_size=len(processor.tokenizer)`
        to grow the embeddings (and the heads' output bias) for the entity markers the processor added. Projections
        and `logit_scale` are new. With `output_loading_info=True`, also returns `{"pretrained_mlm_heads":
        {"sentence": bool, "label": bool}}`.
        """
        encoder_kwargs = encoder_kwargs or {}
        sentence_encoder, sentence_head = load_encoder_and_mlm_head(sentence_model_name_or_path, **encoder_kwargs)
        label_encoder, label_head, label_path = None, None, None
        if not config_kwargs.get("share_encoders", False):
            label_path = label_model_name_or_path or sentence_model_name_or_path
            label_encoder, label_head = load_encoder_and_mlm_head(label_path, **encoder_kwargs)
        config = SaconConfig(
            sentence_config=sentence_encoder.config.to_dict(),
            label_config=None if label_encoder is None else label_encoder.config.to_dict(),
            **config_kwargs,
        )
        model = cls(config, sentence_encoder=sentence_encoder, label_encoder=label_encoder)
        towers = [("sentence", model.sentence_mlm_head, sentence_head, sentence_model_name_or_path)]
        if label_encoder is not None:
            towers.append(("label", model.label_mlm_head, label_head, label_path))
        for tower, head, state, path in towers:
            if state is None:
                if getattr(config, f"{tower}_mlm_weight") > 0:
                    logger.warning(
                        f"{path} has no masked-LM head: the {tower} tower's MLM head is newly initialised (its MLM loss "
                        f"starts at chance; {tower}_mlm_weight=0 trains without it)"
                    )
                else:
                    logger.info(f"{path} has no masked-LM head: the {tower} tower's MLM head is new (and unused: weight 0)")
                continue
            head.load_state_dict(state, strict=False)  # the decoder weight stays tied to the word embeddings
            logger.info(f"{tower} tower: MLM head (transform, LayerNorm, output bias) carried over from {path}")
        if vocab_size is not None and vocab_size != model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(vocab_size)
        if output_loading_info:
            info = {"pretrained_mlm_heads": {"sentence": sentence_head is not None,
                                             "label": (label_head if label_encoder is not None else sentence_head) is not None}}
            return model, info
        return model


__all__ = ["SaconDualEncoderModel", "SaconMLMHead", "load_encoder_and_mlm_head", "SaconOutput", "SaconPreTrainedModel", "packed_last_hidden_state"]
