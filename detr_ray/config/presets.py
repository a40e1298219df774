"""The conveniences that exist only in YAML, expanded before the sections are built.

- ``model.preset: NAME`` starts the model section from a named preset
  (:data:`detr_ray.config.model.PRESETS`); the section's other keys override it.
- A model family's own defaults: ``model.family: deformable_detr`` (or a
  Deformable preset) makes the classification cost and weight default to
  the official Deformable DETR's 2 (:data:`FAMILY_DEFAULTS`); keys the file
  sets are kept.
- ``data.augmentation.scaled_to: N`` starts the augmentation from the official
  recipe scaled to validation size ``N`` (:meth:`AugmentationConfig.scaled`).
"""

from __future__ import annotations

import dataclasses

from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.config.model import ModelConfig, preset_config
from detr_ray.errors import ConfigError

# section -> key -> value, where a family's reference differs from the sections'
# defaults (DETR's): Deformable DETR's focal costs and weights are 2 / 5 / 2.
FAMILY_DEFAULTS: dict[str, dict[str, dict[str, float]]] = {
    "deformable_detr": {"matcher": {"cls_cost": 2.0}, "loss": {"cls_weight": 2.0}},
}


def expand_conveniences(raw: dict) -> dict:
    """``raw`` (a nested dict, changed in place and returned) with the conveniences expanded."""
    model = raw.get("model")
    if isinstance(model, dict) and "preset" in model:
        model = dict(model)
        name = model.pop("preset")
        arch_keys = {f.name for f in dataclasses.fields(ModelConfig)}
        arch = {k: v for k, v in model.items() if k in arch_keys}
        try:
            base = dataclasses.asdict(preset_config(str(name)))
        except ConfigError as e:
            raise ConfigError(f"model.preset: {e}") from None
        base.update(arch)
        model.update(base)
        raw["model"] = model
    family = model.get("family") if isinstance(model, dict) else None
    for section, defaults in FAMILY_DEFAULTS.get(str(family), {}).items():
        given = raw.get(section)
        if given is None or isinstance(given, dict):  # (a wrong type is the loader's to name)
            raw[section] = {**defaults, **(given or {})}
    data = raw.get("data")
    augmentation = data.get("augmentation") if isinstance(data, dict) else None
    if isinstance(data, dict) and isinstance(augmentation, dict) and "scaled_to" in augmentation:
        augmentation = dict(augmentation)
        scale = augmentation.pop("scaled_to")
        if not isinstance(scale, int) or scale < 8:
            raise ConfigError(f"data.augmentation.scaled_to must be an integer >= 8, got {scale!r}")
        base = dataclasses.asdict(AugmentationConfig.scaled(scale))
        base.update(augmentation)
        data["augmentation"] = base
    return raw
