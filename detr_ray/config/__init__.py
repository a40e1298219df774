"""The experiment configuration: typed sections, loaded from YAML, overridable with ``--set``.

Every section is a frozen dataclass; every weight and size is set in exactly
one place, and every problem names its dotted key (:mod:`detr_ray.schema`).
Pure: no torch, so reading a config, a job spec or ``--help`` is instant.

- ``model.py``: the model's architecture and the named presets;
- ``augmentation.py``: the sizes and probabilities of DETR's augmentation;
- ``data.py``, ``training.py``, ``running.py``: the other sections;
- ``experiment.py``: :class:`ExperimentConfig`, all sections, to and from plain data;
- ``presets.py``: the YAML-only conveniences (``model.preset``,
  ``data.augmentation.scaled_to``);
- ``loading.py``: YAML files and ``--set`` overrides.

The names below are the package's public face.
"""

from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.config.data import DataConfig, InitConfig, SyntheticDataConfig
from detr_ray.config.experiment import ExperimentConfig
from detr_ray.config.loading import apply_overrides, load_config, read_yaml_file
from detr_ray.config.model import PRESETS, ModelConfig, preset_config
from detr_ray.config.running import RunConfig, ScalingConfig, TrackingConfig
from detr_ray.config.training import LossConfig, MatcherConfig, OptimConfig, TrainConfig

__all__ = [
    "PRESETS",
    "AugmentationConfig",
    "DataConfig",
    "ExperimentConfig",
    "InitConfig",
    "LossConfig",
    "MatcherConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScalingConfig",
    "SyntheticDataConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "preset_config",
    "read_yaml_file",
]
