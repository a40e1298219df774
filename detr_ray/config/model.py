"""Model configuration and the named presets. Pure: no torch (see ``detr_ray.model.build``).

Two families share one section: ``detr`` (DETR: one feature map, softmax
classes with a background class) and ``deformable_detr`` (Deformable DETR:
multi-scale deformable attention, sigmoid classes trained with the focal
loss). The fields that only one family reads say so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from detr_ray.errors import ConfigError
from detr_ray.schema import check_choices, require


@dataclass(frozen=True)
class ModelConfig:
    """Every architectural choice of a detector; defaults are the official ``detr_r50``.

    ``num_classes`` is ``K`` (DETR's class head has ``K + 1`` outputs,
    Deformable DETR's ``K``); ``None`` means "take it from the dataset" and
    must be resolved before building. The allowed words of ``backbone_depth``
    and ``backbone_norm`` are those of :mod:`detr_ray.model.backbone` (a test
    keeps them equal).

    Deformable DETR reads ``num_encoder_layers``, ``num_decoder_layers``,
    ``d_model``, ``nhead``, ``dim_feedforward``, ``dropout`` and
    ``num_queries`` as DETR does, plus ``num_feature_levels`` (the backbone's
    ``layer2``-``layer4`` maps, then stride-2 extra levels), ``enc_points`` /
    ``dec_points`` (sampled points per head and level), ``with_box_refine``
    and ``two_stage``; it has no pre-norm or learned position encoding.
    """

    family: Literal["detr", "deformable_detr"] = "detr"
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
    # Deformable DETR only
    num_feature_levels: int = 4
    enc_points: int = 4
    dec_points: int = 4
    with_box_refine: bool = False
    two_stage: bool = False

    @property
    def deformable(self) -> bool:
        return self.family == "deformable_detr"

    def __post_init__(self):
        check_choices(self)
        if self.deformable:
            self._check_deformable()
        else:
            for key in ("with_box_refine", "two_stage"):
                require(not getattr(self, key), key, getattr(self, key), "false for family detr")
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

    def _check_deformable(self) -> None:
        word = "for family deformable_detr"
        require(not self.pre_norm, "pre_norm", self.pre_norm, f"false {word} (post-norm layers)")
        require(
            self.position_encoding == "sine",
            "position_encoding",
            self.position_encoding,
            f"'sine' {word}",
        )
        require(
            self.d_model % 32 == 0,
            "d_model",
            self.d_model,
            f"a multiple of 32 {word} (its projections' group norm has 32 groups)",
        )
        require(
            1 <= self.num_feature_levels <= 6,
            "num_feature_levels",
            self.num_feature_levels,
            "in [1, 6]",
        )
        for key in ("enc_points", "dec_points"):
            require(getattr(self, key) >= 1, key, getattr(self, key), ">= 1")
        require(
            not self.two_stage or self.with_box_refine,
            "two_stage",
            self.two_stage,
            "false unless with_box_refine is true (as the official two-stage model)",
        )


# The official Deformable DETR (fundamentalvision/Deformable-DETR): ResNet-50,
# 300 queries, 6 + 6 layers of width 256 and feed-forward 1024, 4 levels, 4 points.
_DEFORMABLE_R50 = ModelConfig(
    family="deformable_detr",
    dim_feedforward=1024,
    num_queries=300,
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
    # Deformable DETR: the official model and its two options.
    "deformable_detr_r50": _DEFORMABLE_R50,
    "deformable_detr_r50_refine": replace(_DEFORMABLE_R50, with_box_refine=True),
    "deformable_detr_r50_two_stage": replace(_DEFORMABLE_R50, with_box_refine=True, two_stage=True),
    # A small Deformable DETR that trains from scratch on two CPU cores: the
    # 3-level maps of a group-norm ResNet-18 (strides 8, 16, 32) plus one.
    "deformable_detr_r18_small": ModelConfig(
        family="deformable_detr",
        backbone_depth=18,
        trainable_backbone_stages=5,
        backbone_norm="group",
        d_model=128,
        nhead=8,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=512,
        num_queries=20,
        dropout=0.0,
    ),
}


def preset_config(name: str, **overrides) -> ModelConfig:
    """A preset's :class:`ModelConfig`, with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
