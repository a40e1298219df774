"""detr-ray's checkpoint file, and loading any supported checkpoint as a model.

A detr-ray checkpoint is a ``torch.save``d dict::

    format        "detr-ray/1"
    model         the DETR state_dict (our key names)
    model_config  ModelConfig as a dict
    label_map     LabelMap as a dict (category ids and names)
    augmentation  AugmentationConfig as a dict (the validation scale lives there)
    ...           training state added by the trainer (optimizer, epoch, ...)

Everything in it is a tensor or a plain container, so it loads with
``torch.load(weights_only=True)``. A directory (a Ray Train checkpoint) is
read through its ``checkpoint.pt``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from detr_ray.data.labels import LabelMap
from detr_ray.data.transforms import AugmentationConfig
from detr_ray.model.config import ModelConfig, build_model
from detr_ray.model.detr import DETR
from detr_ray.model.official import (
    is_official_checkpoint,
    load_checkpoint_file,
    load_official_state_dict,
    official_config,
    official_label_map,
)

FORMAT = "detr-ray/1"
CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_dict(
    model: DETR,
    model_config: ModelConfig,
    label_map: LabelMap,
    augmentation: AugmentationConfig | None = None,
    **training_state,
) -> dict:
    """The dict to ``torch.save`` (``model`` may be DDP-wrapped)."""
    module = model.module if hasattr(model, "module") else model
    return {
        "format": FORMAT,
        "model": module.state_dict(),
        "model_config": model_config.to_dict(),
        "label_map": label_map.to_dict(),
        "augmentation": plain_data(asdict(augmentation or AugmentationConfig())),
        **training_state,
    }


def plain_data(value):
    """Tuples -> lists, recursively (the saved dict stays plain JSON-like data)."""
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A file, or a checkpoint directory holding ``checkpoint.pt``."""
    path = Path(path)
    if path.is_dir():
        inner = path / CHECKPOINT_FILE
        if not inner.is_file():
            raise FileNotFoundError(f"checkpoint directory {path} has no {CHECKPOINT_FILE}")
        return inner
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint file or directory (safely: weights only)."""
    return load_checkpoint_file(resolve_checkpoint_path(path))


@dataclass
class LoadedModel:
    model: DETR
    model_config: ModelConfig
    label_map: LabelMap
    augmentation: AugmentationConfig


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """A model ready for inference (eval mode) from a detr-ray or official checkpoint."""
    checkpoint = load_checkpoint(path)
    if is_official_checkpoint(checkpoint):
        config = official_config(checkpoint["model"], checkpoint.get("args"))
        model = build_model(config)
        load_official_state_dict(model, checkpoint["model"])
        label_map = official_label_map(config.num_classes)
        augmentation = AugmentationConfig()
    elif checkpoint.get("format") == FORMAT:
        config = ModelConfig.from_dict(checkpoint["model_config"])
        model = build_model(config)
        try:
            model.load_state_dict(checkpoint["model"], strict=True)
        except RuntimeError as e:
            raise ValueError(f"checkpoint {path} does not fit its own model_config: {e}") from None
        label_map = LabelMap.from_dict(checkpoint["label_map"])
        augmentation = _augmentation_from_dict(checkpoint.get("augmentation") or {})
    else:
        raise ValueError(
            f"{path} is neither a detr-ray checkpoint nor an official DETR checkpoint "
            f"(top-level keys: {sorted(checkpoint)[:8]})"
        )
    return LoadedModel(model.to(device).eval(), config, label_map, augmentation)


def _augmentation_from_dict(data: dict) -> AugmentationConfig:
    tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return AugmentationConfig(**tuples)


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> Path:
    """Write atomically (a temporary file, then a rename), so a crash mid-write
    never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, path)
    return path
