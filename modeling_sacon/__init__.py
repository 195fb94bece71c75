"""SaCon (Synergistic Anchored Contrastive pre-training, AAAI 2024) for few-shot relation extraction, Hub-native.

Importing the package registers `SaconConfig` / `SaconDualEncoderModel` with `AutoConfig` / `AutoModel`, and marks
them for `auto_map`, so `save_pretrained` writes checkpoints that also load with `trust_remote_code=True`.
"""

from importlib import import_module

from transformers import AutoConfig, AutoModel, AutoModelForMultipleChoice

from .configuration_sacon import SaconConfig
from .modeling_sacon import SaconDualEncoderModel, SaconOutput, SaconPreTrainedModel
from .modeling_sacon_fewshot import SaconFewShotOutput, SaconForFewShotRelationClassification
from .processing_sacon import SaconProcessor

__version__ = "0.1.0"

AutoConfig.register(SaconConfig.model_type, SaconConfig, exist_ok=True)
AutoModel.register(SaconConfig, SaconDualEncoderModel, exist_ok=True)
SaconConfig.register_for_auto_class()
SaconDualEncoderModel.register_for_auto_class("AutoModel")
# Episodes are multiple choice: logits [batch, N choices], the label is the right choice's index, cross-entropy.
AutoModelForMultipleChoice.register(SaconConfig, SaconForFewShotRelationClassification, exist_ok=True)
SaconForFewShotRelationClassification.register_for_auto_class("AutoModelForMultipleChoice")

# Heavier parts (datasets, Trainer) load on first use, so `import modeling_sacon` stays cheap.
_LAZY = {
    "default_backbone_path": "utils.defaults",
    "get_data_dir": "data",
    "SaconRelationClassifier": "fewshot.inference",
    "SaconTrainer": "training.trainer",
    "SaconTrainingArguments": "training.trainer",
    "SaconPretrainingCollator": "data.collator",
    "FewShotEvaluator": "fewshot.evaluation",
    "EpisodeSampler": "data.episodes",
    "EpisodicDataset": "data.episodic",
    "EpisodeCollator": "data.episodic",
    "prototype_logits": "scoring",
    "render_model_card": "training.model_card",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SaconConfig",
    "SaconDualEncoderModel",
    "SaconFewShotOutput",
    "SaconForFewShotRelationClassification",
    "SaconOutput",
    "SaconPreTrainedModel",
    "SaconProcessor",
    *_LAZY,
]
