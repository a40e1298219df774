"""Reading a config: a YAML file, ``--set key=value`` overrides, then the sections.

Loading goes YAML -> nested dict -> overrides -> :class:`ExperimentConfig`,
and every problem (a missing or invalid file, an unknown key, a value of the
wrong type or out of range) raises :class:`ConfigError` naming the file and
the dotted key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from detr_ray.config.experiment import ExperimentConfig
from detr_ray.errors import ConfigError
from detr_ray.schema import plain_data
from detr_ray.storage import is_uri, read_bytes, without_query


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config and apply ``a.b=value`` overrides."""
    raw = read_yaml_file(path, "config file")
    if raw == {}:
        raise ConfigError(
            f"config file {path} is empty; start from configs/shapes_tiny.yaml or "
            "configs/coco_detr_r50.yaml (an empty file would train the defaults: 500 epochs)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    try:
        return ExperimentConfig.from_dict(apply_overrides(raw, overrides or []))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def read_yaml_file(path: str | os.PathLike, what: str) -> Any:
    """The YAML document in ``path`` (``{}`` if empty); errors name ``what`` and the file."""
    if is_uri(path):  # e.g. a sweep's best_config.yaml in object storage
        try:
            text = read_bytes(str(path)).decode()
        except (OSError, ValueError) as e:
            raise ConfigError(f"{what} {without_query(str(path))} cannot be read: {e}") from None
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{what} {path} does not exist")
        text = path.read_text()
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``["train.epochs=3", "data.synthetic=null"]`` applied to a nested dict (copied)."""
    raw = plain_data(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return raw
