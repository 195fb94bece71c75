"""The examples' one loading rule: a SaCon checkpoint, or SaCon composed (untrained) from a plain encoder."""

from __future__ import annotations

from transformers import PreTrainedModel

from ..modeling_sacon import SaconDualEncoderModel
from ..processing_sacon import SaconProcessor
from .defaults import default_backbone_path

__all__ = ["load_sacon_model"]


def load_sacon_model(
    model_name_or_path: str | None = None,
    *,
    compose: bool | None = None,
    model_class: type[PreTrainedModel] = SaconDualEncoderModel,
    **model_kwargs,
) -> tuple[PreTrainedModel, SaconProcessor]:
    """(model in eval mode, processor) for the examples and benchmarks.

    Args:
        model_name_or_path: a SaCon checkpoint (directory or Hub id), loaded as it was saved. `None`: the packaged,
            offline all-MiniLM-L6-v2 (see `default_backbone_path`), composed.
        compose: compose SaCon from `model_name_or_path` as a plain encoder (both towers copies of it, the entity
            markers added to its tokenizer): an *untrained* SaCon, for smoke runs and baselines. Default: only when no
            path is given.
        model_class: `SaconDualEncoderModel`, or `SaconForFewShotRelationClassification` to wrap either kind.
        model_kwargs: keyword arguments of `model_class` (e.g. the few-shot options).
    """
    compose = model_name_or_path is None if compose is None else compose
    path = model_name_or_path or default_backbone_path()
    processor = SaconProcessor.from_pretrained(path)
    if compose:
        model = SaconDualEncoderModel.from_encoders_pretrained(path, vocab_size=len(processor.tokenizer))
        if model_class is not SaconDualEncoderModel:
            model = model_class.from_dual_encoder(model, **model_kwargs)
    else:
        model = model_class.from_pretrained(path, **model_kwargs)
        if model.get_input_embeddings().num_embeddings < len(processor.tokenizer):  # markers added since it was saved
            model.resize_token_embeddings(len(processor.tokenizer))
    return model.eval(), processor
