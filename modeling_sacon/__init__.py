"""SaCon (Synergistic Anchored Contrastive pre-training, AAAI 2024) for few-shot relation extraction, Hub-native.

Importing the package registers `SaconConfig` / `SaconDualEncoderModel` / `SaconProcessor` with `AutoConfig` /
`AutoModel` / `AutoProcessor`, and the `relation-classification` pipeline, and marks them for `auto_map`, so
`save_pretrained` writes checkpoints that also load with `trust_remote_code=True`.
"""

from importlib import import_module

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_sacon import SaconConfig
from .modeling_sacon import SaconDualEncoderModel, SaconOutput, SaconPreTrainedModel
from .modeling_sacon_fewshot import SaconFewShotConfig, SaconFewShotOutput, SaconForFewShotRelationClassification
from .pipeline_sacon import RELATION_CLASSIFICATION_TASK, RelationClassificationPipeline
from .processing_sacon import SaconProcessor

__version__ = "0.1.0"

AutoConfig.register(SaconConfig.model_type, SaconConfig, exist_ok=True)
AutoModel.register(SaconConfig, SaconDualEncoderModel, exist_ok=True)
SaconConfig.register_for_auto_class()
SaconDualEncoderModel.register_for_auto_class("AutoModel")
# SaconForFewShotRelationClassification has no Auto class: its episodes are not AutoModelForMultipleChoice's
# [batch, choices, length] inputs. Its checkpoints name the dual encoder for AutoModel (see its save_pretrained).
AutoProcessor.register(SaconConfig, SaconProcessor, exist_ok=True)
SaconProcessor.register_for_auto_class()  # save_pretrained writes processing_sacon.py (+ the pipeline) and auto_map
# pipeline("relation-classification", model=model, processor=processor) with loaded objects; a checkpoint's config
# names the same task in `custom_pipelines`, for pipeline(..., model="org/sacon-base", trust_remote_code=True).
PIPELINE_REGISTRY.register_pipeline(
    RELATION_CLASSIFICATION_TASK, pipeline_class=RelationClassificationPipeline, pt_model=AutoModel, type="text"
)

# Heavier parts (datasets, Trainer) load on first use, so `import modeling_sacon` stays cheap.
_LAZY = {
    "default_backbone_path": "utils.defaults",
    "get_data_dir": "data",
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
    "SaconFewShotConfig",
    "SaconFewShotOutput",
    "SaconForFewShotRelationClassification",
    "SaconOutput",
    "SaconPreTrainedModel",
    "SaconProcessor",
    "RelationClassificationPipeline",
    *_LAZY,
]
