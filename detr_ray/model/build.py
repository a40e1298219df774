"""The one builder: a :class:`~detr_ray.config.model.ModelConfig` -> a detector.

A :data:`Detector` is a :class:`DETR` or a :class:`DeformableDETR`; both take
``(images (B, 3, H, W), padding_mask (B, H, W))`` and return every decoder
layer's class logits and boxes first (DETR: ``K + 1`` softmax logits,
Deformable DETR: ``K`` sigmoid logits, as its ``sigmoid_classes`` says).
"""

from __future__ import annotations

from typing import TypeAlias

from detr_ray.config.model import ModelConfig, preset_config
from detr_ray.errors import ConfigError
from detr_ray.model.backbone import ResNetBackbone
from detr_ray.model.deformable.detector import DeformableDETR
from detr_ray.model.detr import DETR
from detr_ray.model.position_encoding import LearnedPositionalEncoding, SinePositionalEncoding
from detr_ray.model.transformer import Transformer

Detector: TypeAlias = DETR | DeformableDETR


def build_model(config: ModelConfig) -> Detector:
    """The detector that ``config`` describes (``config.num_classes`` must be set)."""
    if config.num_classes is None:
        raise ConfigError("model.num_classes is not set (it normally comes from the dataset)")
    backbone = ResNetBackbone(
        depth=config.backbone_depth,
        dilation=config.dilation,
        trainable_stages=config.trainable_backbone_stages,
        norm=config.backbone_norm,
        num_stages=config.backbone_stages,
    )
    if config.deformable:
        return DeformableDETR(
            backbone,
            config.num_classes,
            num_queries=config.num_queries,
            num_feature_levels=config.num_feature_levels,
            dim=config.d_model,
            ffn_dim=config.dim_feedforward,
            dropout=config.dropout,
            num_heads=config.nhead,
            enc_layers=config.num_encoder_layers,
            dec_layers=config.num_decoder_layers,
            enc_points=config.enc_points,
            dec_points=config.dec_points,
            with_box_refine=config.with_box_refine,
            two_stage=config.two_stage,
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


def build_preset(name: str, num_classes: int, **overrides) -> Detector:
    """``build_model(preset_config(name, num_classes=num_classes, **overrides))``."""
    return build_model(preset_config(name, num_classes=num_classes, **overrides))
