"""Model configuration and the named presets. Pure: no torch (see ``build.py``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from detr_ray.errors import ConfigError
from detr_ray.schema import check_choices, require


@dataclass(frozen=True)
class ModelConfig:
    """Every architectural choice of a DETR model; defaults are the official ``detr_r50``.

    ``num_classes`` is ``K`` (the class head has ``K + 1`` outputs); ``None``
    means "take it from the dataset" and must be resolved before building.
    The allowed words of ``backbone_depth`` and ``backbone_norm`` are those
    of :mod:`detr_ray.model.backbone` (a test keeps them equal).
    """

    backbone_depth: Literal[18, 34, 50, 101] = 50
    dilation: bool = False
    trainable_backbone_stages: int = 3
    backbone_norm: Literal["frozen", "batch", "group"] = "frozen"
    backbone_stages: Literal[3, 4] = 4
    d_model: int = 256
    nhead: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = False
    num_queries: int = 100
    position_encoding: Literal["sine", "learned"] = "sine"
    num_classes: int | None = None

    def __post_init__(self):
        check_choices(self)
        require(
            0 <= self.trainable_backbone_stages <= 5,
            "trainable_backbone_stages",
            self.trainable_backbone_stages,
            "in [0, 5]",
        )
        require(
            not self.dilation or self.backbone_stages == 4,
            "dilation",
            self.dilation,
            "false with 3 stages",
        )
        require(
            not self.dilation or self.backbone_depth >= 50,
            "dilation",
            self.dilation,
            "false for ResNet-18/34",
        )
        require(self.nhead >= 1, "nhead", self.nhead, ">= 1")
        require(
            self.d_model > 0 and self.d_model % 2 == 0, "d_model", self.d_model, "positive and even"
        )
        require(self.d_model % self.nhead == 0, "d_model", self.d_model, "a multiple of nhead")
        require(self.num_encoder_layers >= 0, "num_encoder_layers", self.num_encoder_layers, ">= 0")
        require(self.num_decoder_layers >= 1, "num_decoder_layers", self.num_decoder_layers, ">= 1")
        require(self.dim_feedforward > 0, "dim_feedforward", self.dim_feedforward, "> 0")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "in [0, 1)")
        require(self.num_queries >= 1, "num_queries", self.num_queries, ">= 1")
        require(
            self.num_classes is None or self.num_classes >= 1,
            "num_classes",
            self.num_classes,
            ">= 1",
        )


PRESETS: dict[str, ModelConfig] = {
    # The official models (facebookresearch/detr).
    "detr_r50": ModelConfig(),
    "detr_r101": ModelConfig(backbone_depth=101),
    "detr_r50_dc5": ModelConfig(dilation=True),
    # Small models that train from scratch on two CPU cores (group norm: no
    # ImageNet statistics to freeze, and no dependence on tiny batches).
    "detr_r18_small": ModelConfig(
        backbone_depth=18,
        trainable_backbone_stages=5,
        backbone_norm="group",
        d_model=128,
        nhead=8,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=512,
        num_queries=20,
    ),
    "detr_r18_tiny": ModelConfig(
        backbone_depth=18,
        trainable_backbone_stages=5,
        backbone_norm="group",
        d_model=64,
        nhead=4,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dim_feedforward=128,
        num_queries=10,
        dropout=0.0,
    ),
}


def preset_config(name: str, **overrides) -> ModelConfig:
    """A preset's :class:`ModelConfig`, with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
