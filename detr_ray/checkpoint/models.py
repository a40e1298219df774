"""Models built from checkpoint files: for inference, and to start a training run from.

Three kinds of file load into a model: detr-ray checkpoints, official DETR
checkpoints (``{"model", "args"}``) and, for fine-tuning only, torchvision
ResNet ``state_dict`` files (the backbone). The model package knows state
dicts only; reading files is done here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from detr_ray.checkpoint.files import checkpoint_kind, load_checkpoint
from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.config.model import ModelConfig
from detr_ray.data.labels import LabelMap
from detr_ray.errors import CheckpointError, ConfigError
from detr_ray.model.backbone import load_torchvision_state_dict
from detr_ray.model.build import build_model
from detr_ray.model.detr import DETR
from detr_ray.model.official import (
    from_official_state_dict,
    load_official_state_dict,
    official_config,
    official_label_map,
)
from detr_ray.model.pretrained import load_pretrained_state_dict
from detr_ray.schema import build
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions


@dataclass
class LoadedModel:
    model: DETR
    model_config: ModelConfig
    label_map: LabelMap
    augmentation: AugmentationConfig


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    options: StorageOptions = DEFAULT_OPTIONS,
) -> LoadedModel:
    """A model ready for inference (eval mode) from a detr-ray or official checkpoint."""
    checkpoint = load_checkpoint(path, options)
    kind = checkpoint_kind(checkpoint)
    if kind == "official":
        config = official_config(checkpoint["model"], checkpoint.get("args"))
        model = build_model(config)
        load_official_state_dict(model, checkpoint["model"])
        label_map = official_label_map(config.num_classes or 91)
        augmentation = AugmentationConfig()
    elif kind == "detr-ray":
        if not isinstance(checkpoint.get("model_config"), dict):
            raise CheckpointError(f"detr-ray checkpoint {path} has no model_config")
        config = _settings(ModelConfig, checkpoint, "model_config", path)
        model = build_model(config)
        try:
            model.load_state_dict(checkpoint["model"], strict=True)
        except RuntimeError as e:
            raise CheckpointError(
                f"checkpoint {path} does not fit its own model_config: {e}"
            ) from None
        label_map = LabelMap.from_dict(checkpoint["label_map"])
        augmentation = _settings(AugmentationConfig, checkpoint, "augmentation", path)
    elif kind == "torchvision":
        raise CheckpointError(
            f"{path} is a torchvision ResNet state_dict (backbone weights only): it can start a "
            "training run (model.init_from) but holds no detector to run"
        )
    else:
        raise CheckpointError(
            f"{path} is neither a detr-ray checkpoint nor an official DETR checkpoint "
            f"(top-level keys: {sorted(map(str, checkpoint))[:8]})"
        )
    return LoadedModel(model.to(device).eval(), config, label_map, augmentation)


def initialise_from(
    model: DETR,
    path: str | os.PathLike,
    label_map: LabelMap,
    class_head: str = "keep",
    options: StorageOptions = DEFAULT_OPTIONS,
) -> str:
    """Load pretrained weights from a file into ``model`` in place; returns what was loaded.

    Args:
        label_map: the labels ``model`` is being trained for.
        class_head: ``"keep"`` the checkpoint's rows of ``label_map``'s
            categories, or ``"reinit"`` them (the no-object row is kept).
    """
    checkpoint = load_checkpoint(path, options)
    found = checkpoint_kind(checkpoint)
    if found == "torchvision":
        load_torchvision_state_dict(model.backbone, checkpoint)
        return f"backbone from torchvision ResNet weights {path}"
    if found == "official":
        state_dict = from_official_state_dict(checkpoint["model"])
        source = official_label_map(state_dict["class_head.weight"].shape[0] - 1)
        kind = "official DETR checkpoint"
    elif found == "detr-ray":
        state_dict, source = dict(checkpoint["model"]), LabelMap.from_dict(checkpoint["label_map"])
        kind = "detr-ray checkpoint"
    else:
        raise CheckpointError(
            f"{path} is not a torchvision ResNet state_dict, an official DETR checkpoint "
            "or a detr-ray checkpoint"
        )
    load_pretrained_state_dict(
        model, state_dict, source, label_map, class_head=class_head, source_name=f"{kind} {path}"
    )
    return f"all weights from {kind} {path} (class head: {class_head})"


def _settings(cls, checkpoint: dict, key: str, path):
    """A settings dataclass stored in a checkpoint, read through the config loader."""
    try:
        return build(cls, checkpoint.get(key) or {}, prefix=f"{key}.")
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
