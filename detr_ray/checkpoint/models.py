"""Models built from checkpoints: for inference, and to start a training run from.

What loads into a detector (:func:`read_source` tells them apart):

- a detr-ray checkpoint (a file, or a run's checkpoint folder);
- an official DETR checkpoint (``{"model", "args"}``, e.g. ``detr-r50-e632da11.pth``);
- an official Deformable-DETR checkpoint (``r50_deformable_detr-checkpoint.pth``);
- a Hugging Face folder (``config.json`` + ``model.safetensors``) of
  ``DetrForObjectDetection`` or ``DeformableDetrForObjectDetection``, as the
  hub ships it or ``save_pretrained`` writes it;
- for fine-tuning only, a torchvision ResNet ``state_dict`` (the backbone).

The model package knows state dicts only; reading files is done here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from detr_ray.checkpoint.files import checkpoint_kind, load_checkpoint
from detr_ray.checkpoint.hf_folder import is_hf_folder, read_hf_folder
from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.config.model import ModelConfig
from detr_ray.data.labels import LabelMap
from detr_ray.errors import CheckpointError, ConfigError
from detr_ray.model.backbone import load_torchvision_state_dict
from detr_ray.model.build import Detector, build_model
from detr_ray.model.hf_config import hf_augmentation, hf_label_map, hf_model_config
from detr_ray.model.hf_names import deformable_heads, hf_deformable_detr_names, hf_detr_names
from detr_ray.model.official import from_official_state_dict, official_config, official_label_map
from detr_ray.model.official_deformable import (
    from_official_deformable_state_dict,
    official_deformable_config,
)
from detr_ray.model.pretrained import load_pretrained_state_dict
from detr_ray.schema import build
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions, without_query

ACCEPTED = (
    "a detr-ray checkpoint (file or run checkpoint folder), an official DETR or "
    "Deformable-DETR checkpoint (.pth), or a Hugging Face folder (config.json + "
    "model.safetensors) of DetrForObjectDetection or DeformableDetrForObjectDetection"
)


@dataclass
class LoadedModel:
    model: Detector
    model_config: ModelConfig
    label_map: LabelMap
    augmentation: AugmentationConfig


@dataclass
class ModelSource:
    """A checkpoint's weights in our names, with what it says about them.

    ``config`` and ``label_map`` are ``None`` for a torchvision ResNet
    (backbone weights only); ``description`` names the kind and the path.
    """

    description: str
    state_dict: dict[str, torch.Tensor]
    config: ModelConfig | None
    label_map: LabelMap | None
    augmentation: AugmentationConfig


def read_source(path: str | os.PathLike, options: StorageOptions = DEFAULT_OPTIONS) -> ModelSource:
    """Read any of the accepted checkpoints (see the module doc).

    Raises:
        CheckpointError: unreadable, or none of the accepted kinds (the message
            names the path and the kinds).
    """
    location = str(path)
    if is_hf_folder(location, options):
        return _hf_source(location, options)
    checkpoint = load_checkpoint(location, options)
    kind = checkpoint_kind(checkpoint)
    shown = without_query(location)
    if kind == "detr-ray":
        if not isinstance(checkpoint.get("model_config"), dict):
            raise CheckpointError(f"detr-ray checkpoint {shown} has no model_config")
        return ModelSource(
            f"detr-ray checkpoint {shown}",
            dict(checkpoint["model"]),
            _settings(ModelConfig, checkpoint, "model_config", shown),
            LabelMap.from_dict(checkpoint["label_map"]),
            _settings(AugmentationConfig, checkpoint, "augmentation", shown),
        )
    if kind in ("official", "official-deformable"):
        deformable = kind == "official-deformable"
        state = checkpoint["model"]
        config = (official_deformable_config if deformable else official_config)(
            state, checkpoint.get("args")
        )
        convert = from_official_deformable_state_dict if deformable else from_official_state_dict
        return ModelSource(
            f"official {'Deformable-DETR' if deformable else 'DETR'} checkpoint {shown}",
            convert(state),
            config,
            official_label_map(config.num_classes or 91),
            AugmentationConfig(),
        )
    if kind == "torchvision":
        return ModelSource(
            f"torchvision ResNet weights {shown}",
            dict(checkpoint),
            None,
            None,
            AugmentationConfig(),
        )
    keys = sorted(map(str, checkpoint))[:8]
    raise CheckpointError(
        f"{shown} is none of the checkpoints detr-ray reads (top-level keys "
        f"{keys}); it reads {ACCEPTED}"
    )


def _hf_source(location: str, options: StorageOptions) -> ModelSource:
    folder = read_hf_folder(location, options)
    kind = folder.config.get("model_type")
    rename = hf_deformable_detr_names if kind == "deformable_detr" else hf_detr_names
    state = rename(folder.state_dict)
    where = f"Hugging Face folder {folder.location}"
    config = hf_model_config(folder.config, state, where)
    if config.deformable:
        heads = config.num_decoder_layers + (1 if config.two_stage else 0)
        state = deformable_heads(state, heads, config.with_box_refine)
    return ModelSource(
        f"Hugging Face {kind} folder {folder.location}",
        state,
        config,
        hf_label_map(folder.config, config.num_classes or 0),
        hf_augmentation(folder.preprocessor, where),
    )


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    options: StorageOptions = DEFAULT_OPTIONS,
) -> LoadedModel:
    """A model ready for inference (eval mode) from any checkpoint with a detector in it."""
    source = read_source(path, options)
    if source.config is None or source.label_map is None:
        raise CheckpointError(
            f"{without_query(str(path))} is a torchvision ResNet state_dict (backbone weights "
            "only): it can start a training run (model.init_from) but holds no detector to run"
        )
    model = build_model(source.config)
    state = _with_own_buffers(model, source.state_dict)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source.description} does not fit the model its own settings describe: missing "
            f"{missing[:8]}, unexpected {unexpected[:8]}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source.description} does not fit its own settings: {e}") from None
    return LoadedModel(
        model.to(device).eval(), source.config, source.label_map, source.augmentation
    )


def initialise_from(
    model: Detector,
    path: str | os.PathLike,
    label_map: LabelMap,
    class_head: str = "keep",
    options: StorageOptions = DEFAULT_OPTIONS,
) -> str:
    """Load pretrained weights from any accepted checkpoint into ``model`` in
    place; returns what was loaded.

    Args:
        label_map: the labels ``model`` is being trained for.
        class_head: ``"keep"`` the checkpoint's rows of ``label_map``'s
            categories, or ``"reinit"`` them (DETR's no-object row is kept).
    """
    source = read_source(path, options)
    if source.config is None or source.label_map is None:
        load_torchvision_state_dict(model.backbone, source.state_dict)
        return f"backbone from {source.description}"
    load_pretrained_state_dict(
        model,
        _with_own_buffers(model, source.state_dict),
        source.label_map,
        label_map,
        class_head=class_head,
        source_name=source.description,
    )
    return f"all weights from {source.description} (class head: {class_head})"


def _with_own_buffers(model: Detector, state: dict[str, torch.Tensor]) -> dict:
    """``state`` plus the model's own values of the buffers some files leave
    out (frozen batch norms' ``num_batches_tracked`` are never stored by HF)."""
    own = model.state_dict()
    extra = {k: own[k] for k in own if k not in state and k.endswith("num_batches_tracked")}
    return {**state, **extra}


def _settings(cls, checkpoint: dict, key: str, path):
    """A settings dataclass stored in a checkpoint, read through the config loader."""
    try:
        return build(cls, checkpoint.get(key) or {}, prefix=f"{key}.")
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
