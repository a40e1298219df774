"""Declarative search spaces over dotted experiment-config keys.

A space file (``tune_spaces/*.yaml``)::

    loss_weights: follow_costs      # or: independent (the default)
    params:
      matcher.cls_cost: {loguniform: [0.5, 4.0]}
      matcher.bbox_cost: {quniform: [1.0, 8.0, 0.5]}
      loss.bg_cls_weight: {uniform: [0.02, 0.3]}
      train.batch_size: {choice: [4, 8]}

Distributions: ``uniform [low, high]``, ``loguniform [low, high]`` (low > 0),
``quniform [low, high, q]``, ``randint [low, high]`` (integers, high
exclusive, as Ray Tune's), ``choice [values...]`` (sampled) and ``grid
[values...]`` (every value, crossed with the samples).

``loss_weights: follow_costs`` sets each loss weight to its matching cost in
every trial (``loss.cls_weight = matcher.cls_cost``, bbox and iou likewise),
as mmdetection 2.11 does; ``independent`` leaves the loss weights to the base
config or to their own entries in ``params``.

This module is pure (no Ray): it parses and checks a space, and applies a
trial's sampled values to a config. :mod:`detr_ray.tune.sweep` turns it into
Ray Tune distributions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import yaml

from detr_ray.config import ExperimentConfig, apply_overrides, read_yaml_file
from detr_ray.errors import ConfigError

RANGES = {"uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2}
LISTS = ("choice", "grid")
DISTRIBUTIONS = tuple(RANGES) + LISTS
LOSS_WEIGHT_MODES = ("independent", "follow_costs")
FOLLOWS = {  # loss weight <- matching cost, under loss_weights: follow_costs
    "loss.cls_weight": "matcher.cls_cost",
    "loss.bbox_weight": "matcher.bbox_cost",
    "loss.iou_weight": "matcher.iou_cost",
}


@dataclass(frozen=True)
class Param:
    """One swept key: ``kind`` in :data:`DISTRIBUTIONS`, ``args`` its numbers or values."""

    key: str
    kind: str
    args: tuple

    def describe(self) -> str:
        return f"{self.kind}{list(self.args)}"


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    loss_weights: str = "independent"
    source: str = "<space>"

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def resolved_values(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Every key a trial sets: the sampled values, plus the followed loss weights."""
        values = {key: sampled[key] for key in self.keys}
        if self.loss_weights == "follow_costs":
            base = {weight: values[cost] for weight, cost in FOLLOWS.items() if cost in values}
            values.update(base)
        return values

    def apply(self, base: dict, sampled: dict[str, Any]) -> ExperimentConfig:
        """``base`` (a config dict) with a trial's sampled values, validated."""
        overrides = [
            f"{k}={yaml.safe_dump(v).strip().removesuffix('...').strip()}"
            for k, v in self.resolved_values(sampled).items()
        ]
        try:
            return ExperimentConfig.from_dict(apply_overrides(base, overrides))
        except ConfigError as e:
            raise ConfigError(f"{self.source}: a sampled value is invalid: {e}") from None


def load_space(path: str | os.PathLike, base: dict | None = None) -> SearchSpace:
    """Read and check a space file; errors name the file and the key.

    ``base`` (a config dict, default: the default config) is used to check
    that the extremes of every distribution make a valid config.
    """
    raw = read_yaml_file(path, "search space")
    return parse_space(raw, source=str(path), base=base)


def parse_space(raw: Any, source: str = "<space>", base: dict | None = None) -> SearchSpace:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a search space is a mapping with 'params'")
    unknown = sorted(set(raw) - {"params", "loss_weights"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level keys {unknown}; known: loss_weights, params"
        )
    mode = raw.get("loss_weights", "independent")
    if mode not in LOSS_WEIGHT_MODES:
        raise ConfigError(
            f"{source}: loss_weights must be one of {LOSS_WEIGHT_MODES}, got {mode!r}"
        )
    entries = raw.get("params")
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{source}: 'params' must map config keys to distributions")
    known = set(ExperimentConfig().flat())
    params = []
    for key, spec in entries.items():
        where = f"{source}: params.{key}"
        if key not in known:
            close = sorted(k for k in known if k.split(".")[-1] == str(key).split(".")[-1])
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{where}: not a config key{hint}")
        params.append(_parse_param(key, spec, where))
    space = SearchSpace(tuple(params), mode, source)
    if mode == "follow_costs":
        clash = sorted(set(FOLLOWS) & set(space.keys))
        if clash:
            raise ConfigError(
                f"{source}: {clash} follow the matching costs under loss_weights: follow_costs; "
                "remove them from params or set loss_weights: independent"
            )
    _check_extremes(space, base or ExperimentConfig().to_dict())
    return space


def _parse_param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one distribution, e.g. {{uniform: [0.1, 1.0]}}")
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; known: {list(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} takes a non-empty list, got {args!r}")
    if kind in LISTS:
        return Param(key, kind, tuple(args))
    if len(args) != RANGES[kind] or not all(_is_number(a) for a in args):
        shape = "[low, high, q]" if kind == "quniform" else "[low, high]"
        raise ConfigError(f"{where}: {kind} takes {shape} numbers, got {args!r}")
    low, high = args[0], args[1]
    if low > high or (kind == "randint" and low == high):
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "quniform" and args[2] <= 0:
        raise ConfigError(f"{where}: quniform needs q > 0, got {args[2]}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint takes integers, got {args!r}")
    return Param(key, kind, tuple(args))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _extremes(param: Param) -> list:
    if param.kind in LISTS:
        return list(param.args)
    if param.kind == "randint":
        return [param.args[0], param.args[1] - 1]
    return [param.args[0], param.args[1]]


def _check_extremes(space: SearchSpace, base: dict) -> None:
    """Every distribution's extremes, one key at a time, make a valid config."""
    defaults = ExperimentConfig.from_dict(base).flat()
    for param in space.params:
        for value in _extremes(param):
            sampled = {k: defaults[k] for k in space.keys} | {param.key: value}
            try:
                space.apply(base, sampled)
            except ConfigError as e:
                raise ConfigError(f"{space.source}: params.{param.key} = {value!r}: {e}") from None


__all__ = ["DISTRIBUTIONS", "FOLLOWS", "Param", "SearchSpace", "load_space", "parse_space"]
