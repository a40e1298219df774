"""Checkpoint files: detr-ray's format, safe reading, and models built from them.

A detr-ray checkpoint is a ``torch.save``d dict::

    format        "detr-ray/1"
    model         the DETR state_dict (our key names)
    model_config  ModelConfig as a dict
    label_map     LabelMap as a dict (category ids and names)
    augmentation  AugmentationConfig as a dict (the validation scale lives there)
    ...           training state added by the trainer (optimizer, epoch, ...)

Everything in it is a tensor or a plain container, so it is read with
``torch.load(weights_only=True)``. A directory (a Ray Train checkpoint) is
read through its ``checkpoint.pt``. Three kinds of file load into a model:
detr-ray checkpoints, official DETR checkpoints (``{"model", "args"}``) and,
for fine-tuning only, torchvision ResNet ``state_dict`` files (the backbone).

The model package knows state dicts only; reading files is done here.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from detr_ray import storage
from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.config.model import ModelConfig
from detr_ray.data.labels import LabelMap
from detr_ray.errors import CheckpointError, ConfigError
from detr_ray.model.backbone import load_torchvision_state_dict
from detr_ray.model.build import build_model
from detr_ray.model.detr import DETR
from detr_ray.model.official import (
    from_official_state_dict,
    is_official_checkpoint,
    load_official_state_dict,
    official_config,
    official_label_map,
)
from detr_ray.model.pretrained import is_torchvision_resnet, load_pretrained_state_dict
from detr_ray.ops.dist import unwrap
from detr_ray.schema import build, plain_data
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions, is_uri, without_query

FORMAT = "detr-ray/1"
CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_dict(
    model: torch.nn.Module,
    model_config: ModelConfig,
    label_map: LabelMap,
    augmentation: AugmentationConfig | None = None,
    **training_state,
) -> dict:
    """The dict to ``torch.save`` (``model`` may be DDP-wrapped)."""
    return {
        "format": FORMAT,
        "model": unwrap(model).state_dict(),
        "model_config": plain_data(model_config),
        "label_map": label_map.to_dict(),
        "augmentation": plain_data(augmentation or AugmentationConfig()),
        **training_state,
    }


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> Path:
    """Write atomically (a temporary file, then a rename), so a crash mid-write
    never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, path)
    return path


def resolve_checkpoint_path(
    path: str | os.PathLike, options: StorageOptions = DEFAULT_OPTIONS
) -> str:
    """A file, or a checkpoint directory holding ``checkpoint.pt``: local, or in
    object storage (``s3://...``, see :mod:`detr_ray.storage`)."""
    location = str(path)
    shown = without_query(location)
    try:
        found = storage.kind(location, options)
    except (OSError, ValueError) as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot reach checkpoint {shown}: {first_line[:300]}") from None
    if found == "folder":
        inner = storage.join(location, CHECKPOINT_FILE)
        if storage.kind(inner, options) != "file":
            raise CheckpointError(f"checkpoint directory {shown} has no {CHECKPOINT_FILE}")
        return inner
    if found == "missing":
        raise CheckpointError(f"checkpoint {shown} does not exist")
    return location


def load_checkpoint(path: str | os.PathLike, options: StorageOptions = DEFAULT_OPTIONS) -> dict:
    """Read a checkpoint file or directory safely (local or object storage):
    tensors, plain containers, and the ``argparse.Namespace`` official
    checkpoints keep their ``args`` in. Nothing else is unpickled.

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a PyTorch
            file, or holds other Python objects (refused: unpickling them could
            run code); the message says which and what to do.
    """
    location = resolve_checkpoint_path(path, options)
    file = without_query(location)
    source: str | io.BytesIO = location
    if is_uri(location):  # torch reads a file object; one download, into memory
        source = io.BytesIO(storage.read_bytes(location, options))
    problem = _file_problem(source)
    if problem:
        raise CheckpointError(f"checkpoint {file} {problem}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _UNSAFE_GLOBAL.search(str(e))
        if found is None:  # the weights-only unpickler met bytes that are no pickle
            raise CheckpointError(
                f"checkpoint {file} is not a PyTorch file (or is damaged): it does not unpickle"
            ) from None
        raise CheckpointError(
            f"refused checkpoint {file}: it holds Python objects beyond tensors "
            f"({found.group(1)}), and loading it could run code. Re-save it with "
            "torch.save(model.state_dict(), PATH) (or a dict of tensors) where it was made."
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds here
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"cannot load checkpoint {file}: {type(e).__name__}: {first_line[:200]}; it is "
            "damaged or not a PyTorch file"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {file} holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


def checkpoint_kind(checkpoint: Mapping) -> str:
    """``"detr-ray"``, ``"official"`` (DETR), ``"torchvision"`` (a ResNet) or ``"unknown"``."""
    if checkpoint.get("format") == FORMAT:
        return "detr-ray"
    if is_official_checkpoint(checkpoint):
        return "official"
    if is_torchvision_resnet(checkpoint):
        return "torchvision"
    return "unknown"


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _file_problem(source: str | io.BytesIO) -> str | None:
    """What is wrong with the bytes of a checkpoint before torch sees them, if anything."""
    if isinstance(source, io.BytesIO):
        size, head = len(source.getbuffer()), source.getvalue()[:4]
    else:
        size = Path(source).stat().st_size
        with open(source, "rb") as f:
            head = f.read(4)
    if size == 0:
        return "is empty (0 bytes): it was never written completely; use an earlier checkpoint"
    if head == b"PK\x03\x04":  # torch.save's zip container
        if not zipfile.is_zipfile(source):
            return (
                f"is truncated or damaged ({size} bytes, its zip directory is missing): it was "
                "not written or copied completely; use an earlier checkpoint"
            )
        if isinstance(source, io.BytesIO):
            source.seek(0)
        return None
    if head[:1] != b"\x80":  # torch's legacy format is a pickle (protocol 2+)
        return "is not a PyTorch file (torch.save writes a zip archive or a pickle)"
    return None


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
