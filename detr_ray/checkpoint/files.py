"""Checkpoint files: detr-ray's format, safe reading, and the run folder's checkpoint names.

A detr-ray checkpoint is a ``torch.save``d dict::

    format        "detr-ray/1"
    model         the DETR state_dict (our key names)
    model_config  ModelConfig as a dict
    label_map     LabelMap as a dict (category ids and names)
    augmentation  AugmentationConfig as a dict (the validation scale lives there)
    ...           training state added by the trainer (optimizer, epoch, ...)

Everything in it is a tensor or a plain container, so it is read with
``torch.load(weights_only=True)``. A directory (a Ray Train checkpoint) is
read through its ``checkpoint.pt``. In a run's folder each checkpoint is a
directory named by :func:`checkpoint_folder_name`.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from detr_ray import storage
from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.config.model import ModelConfig
from detr_ray.data.labels import LabelMap
from detr_ray.errors import CheckpointError
from detr_ray.model.official import is_official_checkpoint
from detr_ray.model.official_deformable import is_official_deformable_checkpoint
from detr_ray.model.pretrained import is_torchvision_resnet
from detr_ray.ops.dist import unwrap
from detr_ray.schema import plain_data
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions, is_uri, without_query

FORMAT = "detr-ray/1"
CHECKPOINT_FILE = "checkpoint.pt"
FOLDER_PATTERN = re.compile(r"epoch(\d{4,})_step(\d{7,})")


def checkpoint_folder_name(epoch: int, global_step: int) -> str:
    """The folder a run writes its checkpoint at ``epoch``/``global_step`` to:
    ``epoch0003_step0001536``. The names sort in training order."""
    return f"epoch{epoch:04d}_step{global_step:07d}"


def checkpoint_folders(names: Iterable[str]) -> list[str]:
    """The checkpoint folders among a run folder's ``names``, oldest first."""
    return sorted(n for n in names if FOLDER_PATTERN.fullmatch(n))


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
    """``"detr-ray"``, ``"official"`` (DETR), ``"official-deformable"``
    (Deformable-DETR), ``"torchvision"`` (a ResNet) or ``"unknown"``."""
    if checkpoint.get("format") == FORMAT:
        return "detr-ray"
    if is_official_checkpoint(checkpoint):
        return "official"
    if is_official_deformable_checkpoint(checkpoint):
        return "official-deformable"
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
