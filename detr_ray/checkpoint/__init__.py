"""Checkpoints: the file format and safe reading (``files.py``), Hugging Face
folders (``hf_folder.py``), and models built from any of them (``models.py``).
The names below are the package's public face.
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
from detr_ray.checkpoint.models import (
    LoadedModel,
    ModelSource,
    initialise_from,
    load_model,
    read_source,
)

__all__ = [
    "CHECKPOINT_FILE",
    "FORMAT",
    "LoadedModel",
    "ModelSource",
    "checkpoint_dict",
    "checkpoint_folder_name",
    "checkpoint_folders",
    "checkpoint_kind",
    "initialise_from",
    "load_checkpoint",
    "load_model",
    "read_source",
    "resolve_checkpoint_path",
    "save_checkpoint",
]
