"""Checkpoints: the file format and safe reading (``files.py``), and models built
from checkpoint files (``models.py``). The names below are the package's public face.
"""

from detr_ray.checkpoint.files import (
    CHECKPOINT_FILE,
    FORMAT,
    checkpoint_dict,
    checkpoint_folder_name,
    checkpoint_folders,
    checkpoint_kind,
    load_checkpoint,
    resolve_checkpoint_path,
    save_checkpoint,
)
from detr_ray.checkpoint.models import LoadedModel, initialise_from, load_model

__all__ = [
    "CHECKPOINT_FILE",
    "FORMAT",
    "LoadedModel",
    "checkpoint_dict",
    "checkpoint_folder_name",
    "checkpoint_folders",
    "checkpoint_kind",
    "initialise_from",
    "load_checkpoint",
    "load_model",
    "resolve_checkpoint_path",
    "save_checkpoint",
]
