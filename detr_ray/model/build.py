"""The one builder: a :class:`~detr_ray.config.model.ModelConfig` -> a :class:`DETR`."""

from __future__ import annotations

from detr_ray.config.model import ModelConfig, preset_config
from detr_ray.errors import ConfigError
from detr_ray.model.backbone import ResNetBackbone
from detr_ray.model.detr import DETR
from detr_ray.model.position_encoding import LearnedPositionalEncoding, SinePositionalEncoding
from detr_ray.model.transformer import Transformer


def build_model(config: ModelConfig) -> DETR:
    """The DETR that ``config`` describes (``config.num_classes`` must be set)."""
    if config.num_classes is None:
        raise ConfigError("model.num_classes is not set (it normally comes from the dataset)")
    backbone = ResNetBackbone(
        depth=config.backbone_depth,
        dilation=config.dilation,
        trainable_stages=config.trainable_backbone_stages,
        norm=config.backbone_norm,
        num_stages=config.backbone_stages,
    )
    num_feats = config.d_model // 2
    position_encoding: SinePositionalEncoding | LearnedPositionalEncoding
    if config.position_encoding == "sine":
        position_encoding = SinePositionalEncoding(num_feats, normalize=True)
    else:
        position_encoding = LearnedPositionalEncoding(num_feats)
    transformer = Transformer(
        d_model=config.d_model,
        nhead=config.nhead,
        num_encoder_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers,
        dim_feedforward=config.dim_feedforward,
        dropout=config.dropout,
        pre_norm=config.pre_norm,
    )
    return DETR(
        backbone=backbone,
        position_encoding=position_encoding,
        transformer=transformer,
        num_classes=config.num_classes,
        num_queries=config.num_queries,
    )


def build_preset(name: str, num_classes: int, **overrides) -> DETR:
    """``build_model(preset_config(name, num_classes=num_classes, **overrides))``."""
    return build_model(preset_config(name, num_classes=num_classes, **overrides))
