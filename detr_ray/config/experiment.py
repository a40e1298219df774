"""The whole experiment: every section, read from and written to plain data.

``ExperimentConfig.from_dict`` is the one path from YAML's nested dict to the
sections; :mod:`detr_ray.config.presets` expands the YAML-only conveniences
first. The resolved config (what :meth:`ExperimentConfig.to_dict` writes)
spells every key out, and ``from_dict`` of it is equal to the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from detr_ray.config.data import DataConfig, InitConfig
from detr_ray.config.model import ModelConfig
from detr_ray.config.presets import expand_conveniences
from detr_ray.config.running import RunConfig, ScalingConfig, TrackingConfig
from detr_ray.config.training import LossConfig, MatcherConfig, OptimConfig, TrainConfig
from detr_ray.errors import ConfigError
from detr_ray.schema import build, plain_data


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        if self.train.amp == "fp16" and not self.scaling.use_gpu:
            raise ConfigError(
                "train.amp: fp16 needs a GPU (scaling.use_gpu: true); use bf16 on CPU"
            )
        if self.model.deformable and self.train.query_groups > 1:
            raise ConfigError(
                f"train.query_groups must be 1 for model.family deformable_detr, got "
                f"{self.train.query_groups}: query groups are implemented for DETR; "
                "train.dense_aux_weight speeds up both families"
            )

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, raw: dict) -> ExperimentConfig:
        """Build and validate from a nested dict (YAML's shape)."""
        raw = expand_conveniences(plain_data(raw))
        model_raw = raw.pop("model", None) or {}
        if not isinstance(model_raw, dict):
            raise ConfigError(f"model must be a mapping, got {model_raw!r}")
        # model.init_from and model.class_head are the model section's keys in YAML
        init_raw = {k: model_raw.pop(k) for k in ("init_from", "class_head") if k in model_raw}
        init = build(InitConfig, init_raw, prefix="model.")
        return build(cls, {**raw, "model": model_raw, "init": init})

    def to_dict(self) -> dict:
        """The resolved config as plain data; ``from_dict`` of it is equal to ``self``."""
        data = plain_data(self)
        data["model"].update(data.pop("init"))
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, e.g. for MLflow params."""
        return _flatten(self.to_dict())


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
