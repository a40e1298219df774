"""Model configuration, the named presets, and the one builder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from detr_ray.model.backbone import NORMS, RESNET_LAYOUTS, ResNetBackbone
from detr_ray.model.detr import DETR
from detr_ray.model.position_encoding import LearnedPositionalEncoding, SinePositionalEncoding
from detr_ray.model.transformer import Transformer

POSITION_ENCODINGS = ("sine", "learned")


@dataclass(frozen=True)
class ModelConfig:
    """Every architectural choice of a DETR model; defaults are the official ``detr_r50``.

    ``num_classes`` is ``K`` (the class head has ``K + 1`` outputs); ``None``
    means "take it from the dataset" and must be resolved before building.
    """

    backbone_depth: int = 50
    dilation: bool = False
    trainable_backbone_stages: int = 3
    backbone_norm: str = "frozen"
    backbone_stages: int = 4
    d_model: int = 256
    nhead: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = False
    num_queries: int = 100
    position_encoding: str = "sine"
    num_classes: int | None = None

    def __post_init__(self):
        depths, encodings = sorted(RESNET_LAYOUTS), POSITION_ENCODINGS
        checks = [
            ("backbone_depth", self.backbone_depth in depths, f"one of {depths}"),
            ("trainable_backbone_stages", 0 <= self.trainable_backbone_stages <= 5, "in [0, 5]"),
            ("backbone_norm", self.backbone_norm in NORMS, f"one of {NORMS}"),
            ("backbone_stages", self.backbone_stages in (3, 4), "3 or 4"),
            ("dilation", not self.dilation or self.backbone_stages == 4, "false with 3 stages"),
            ("nhead", self.nhead >= 1, ">= 1"),
            ("d_model", self.d_model % max(self.nhead, 1) == 0, "a multiple of nhead"),
            ("d_model", self.d_model > 0 and self.d_model % 2 == 0, "positive and even"),
            ("num_encoder_layers", self.num_encoder_layers >= 0, ">= 0"),
            ("num_decoder_layers", self.num_decoder_layers >= 1, ">= 1"),
            ("dim_feedforward", self.dim_feedforward > 0, "> 0"),
            ("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)"),
            ("num_queries", self.num_queries >= 1, ">= 1"),
            ("position_encoding", self.position_encoding in encodings, f"one of {encodings}"),
            ("num_classes", self.num_classes is None or self.num_classes >= 1, ">= 1"),
            ("dilation", not self.dilation or self.backbone_depth >= 50, "false for ResNet-18/34"),
        ]  # fmt: skip
        for key, ok, requirement in checks:
            if not ok:
                raise ValueError(f"model.{key} must be {requirement}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    # The official models (facebookresearch/detr).
    "detr_r50": ModelConfig(),
    "detr_r101": ModelConfig(backbone_depth=101),
    "detr_r50_dc5": ModelConfig(dilation=True),
    # Small models that train from scratch on two CPU cores (group norm: no
    # ImageNet statistics to freeze, and no dependence on tiny batches).
    "detr_r18_small": ModelConfig(
        backbone_depth=18, trainable_backbone_stages=5, backbone_norm="group", d_model=128, nhead=8,
        num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=512, num_queries=20,
    ),
    "detr_r18_tiny": ModelConfig(
        backbone_depth=18, trainable_backbone_stages=5, backbone_norm="group", d_model=64, nhead=4,
        num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=128, num_queries=10,
        dropout=0.0,
    ),
}  # fmt: skip


def build_model(config: ModelConfig) -> DETR:
    """The DETR that ``config`` describes (``config.num_classes`` must be set)."""
    if config.num_classes is None:
        raise ValueError("model.num_classes is not set (it normally comes from the dataset)")
    backbone = ResNetBackbone(
        config.backbone_depth,
        config.dilation,
        config.trainable_backbone_stages,
        config.backbone_norm,
        config.backbone_stages,
    )
    num_feats = config.d_model // 2
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
    return DETR(backbone, position_encoding, transformer, config.num_classes, config.num_queries)


def preset_config(name: str, **overrides) -> ModelConfig:
    """A preset's :class:`ModelConfig`, with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def build_preset(name: str, num_classes: int, **overrides) -> DETR:
    """``build_model(preset_config(name, num_classes=num_classes, **overrides))``."""
    return build_model(preset_config(name, num_classes=num_classes, **overrides))
