"""The DETR model, in torch alone: ResNet backbone, positional encodings,
transformer, heads; presets; official-checkpoint conversion; post-processing."""

from detr_ray.model.backbone import FrozenBatchNorm2d, ResNetBackbone, load_torchvision_state_dict
from detr_ray.model.config import PRESETS, ModelConfig, build_model, build_preset, preset_config
from detr_ray.model.detr import DETR, MLP
from detr_ray.model.official import (
    from_official_checkpoint,
    from_official_state_dict,
    official_label_map,
    to_official_state_dict,
)
from detr_ray.model.position_encoding import LearnedPositionalEncoding, SinePositionalEncoding
from detr_ray.model.postprocess import postprocess
from detr_ray.model.pretrained import initialise_from
from detr_ray.model.transformer import Transformer

__all__ = [
    "DETR",
    "MLP",
    "PRESETS",
    "FrozenBatchNorm2d",
    "LearnedPositionalEncoding",
    "ModelConfig",
    "ResNetBackbone",
    "SinePositionalEncoding",
    "Transformer",
    "build_model",
    "build_preset",
    "from_official_checkpoint",
    "from_official_state_dict",
    "initialise_from",
    "load_torchvision_state_dict",
    "official_label_map",
    "postprocess",
    "preset_config",
    "to_official_state_dict",
]
