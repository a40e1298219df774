"""Hugging Face checkpoint folders, as the hub ships them and ``save_pretrained`` writes them.

A folder (local or in object storage) with ``config.json`` and the weights in
``model.safetensors`` (or, in older folders, ``pytorch_model.bin``), and
optionally ``preprocessor_config.json``. It is read as plain data: JSON,
safetensors' tensors, or a weights-only ``torch.load``; nothing in it runs.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors

from detr_ray import storage
from detr_ray.errors import CheckpointError
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions, without_query

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass
class HFFolder:
    """What an HF folder holds: ``config`` (config.json), ``state_dict`` (HF's
    names), ``preprocessor`` (preprocessor_config.json, if present)."""

    location: str
    config: dict
    state_dict: dict[str, torch.Tensor]
    preprocessor: dict | None


def is_hf_folder(location: str, options: StorageOptions = DEFAULT_OPTIONS) -> bool:
    """Whether ``location`` is a folder holding ``config.json``."""
    try:
        return (
            storage.kind(location, options) == "folder"
            and storage.kind(storage.join(location, CONFIG_FILE), options) == "file"
        )
    except (OSError, ValueError):
        return False


def read_hf_folder(location: str, options: StorageOptions = DEFAULT_OPTIONS) -> HFFolder:
    """The folder's config, weights and preprocessor settings.

    Raises:
        CheckpointError: no weights file, or a file that is not what its name says.
    """
    shown = without_query(location)
    config = _json(storage.join(location, CONFIG_FILE), options, shown)
    for name in WEIGHT_FILES:
        path = storage.join(location, name)
        if storage.kind(path, options) == "file":
            state_dict = _weights(path, name, options, shown)
            break
    else:
        raise CheckpointError(
            f"Hugging Face folder {shown} has {CONFIG_FILE} but no weights "
            f"({' or '.join(WEIGHT_FILES)})"
        )
    preprocessor_path = storage.join(location, PREPROCESSOR_FILE)
    preprocessor = (
        _json(preprocessor_path, options, shown)
        if storage.kind(preprocessor_path, options) == "file"
        else None
    )
    return HFFolder(shown, config, state_dict, preprocessor)


def _json(path: str, options: StorageOptions, shown: str) -> dict:
    name = path.rsplit("/", 1)[-1]
    try:
        data = json.loads(storage.read_bytes(path, options))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{shown}/{name} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{shown}/{name} must hold a JSON object")
    return data


def _weights(path: str, name: str, options: StorageOptions, shown: str) -> dict:
    data = storage.read_bytes(path, options)
    try:
        if name.endswith(".safetensors"):
            return dict(load_safetensors(data))
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors and torch raise many kinds
        raise CheckpointError(
            f"cannot read {shown}/{name}: {type(e).__name__}: {str(e)[:200]}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{shown}/{name} holds a {type(state).__name__}, not a state dict")
    return state
