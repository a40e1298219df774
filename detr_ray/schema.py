"""Typed settings: plain data (YAML, a checkpoint's dicts) <-> frozen dataclasses.

The one path from a nested dict to a settings dataclass (the experiment
config, a checkpoint's model config and augmentation) is :func:`build`; the
one way a dataclass checks its values is :func:`require` (ranges, in
``__post_init__``) and ``Literal`` field types (the allowed words, checked
by :func:`check_choices`). Every problem is a :class:`ConfigError` that names
the dotted key and the value. Pure: no torch, no YAML.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from detr_ray.errors import ConfigError

T = TypeVar("T")


def require(ok: bool, key: str, value: Any, requirement: str) -> None:
    """Raise ``ConfigError("<key> must be <requirement>, got <value>")`` unless ``ok``.

    ``key`` is the field's name; :func:`build` prefixes the section.
    """
    if not ok:
        raise ConfigError(f"{key} must be {requirement}, got {value!r}")


def check_choices(obj: Any) -> None:
    """Check every ``Literal[...]`` field of dataclass ``obj`` holds one of its words."""
    for name, choices in _literal_fields(type(obj)).items():
        value = getattr(obj, name)
        require(value in choices, name, value, f"one of {list(choices)}")


def build(cls: type[T], raw: Any, prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from nested plain data, checking keys and types.

    ``prefix`` is the dotted section (``"data.augmentation."``) that messages
    put before each key. Lists become tuples where the field is a tuple; YAML's
    ``1e-4`` (read as a string) becomes a float; ``None`` is ``{}`` for a section.
    """
    where = prefix.rstrip(".") or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    hints = _hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in raw if k not in known]
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; {where} has keys {known}")
    values = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in raw.items()}
    try:
        return cls(**values)
    except ConfigError as e:  # the dataclass's own check names the bare field
        raise ConfigError(f"{prefix}{e}") from None


def plain_data(value: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, recursively: YAML- and JSON-ready."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_data(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (e.g. for a CLI flag)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            break
    raise KeyError(f"{cls.__name__} has no field {name!r} with a default")


def choices_of(cls: type, name: str) -> tuple:
    """The words of ``Literal[...]`` field ``name`` of dataclass ``cls`` (e.g. for a CLI flag)."""
    return _literal_fields(cls)[name]


# ---------------------------------------------------------------------- internals
_HINTS: dict[type, dict[str, Any]] = {}  # resolved once per class


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _literal_fields(cls: type) -> dict[str, tuple]:
    return {
        name: typing.get_args(hint)
        for name, hint in _hints(cls).items()
        if typing.get_origin(hint) is typing.Literal
    }


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        require(value in choices, key, value, f"one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):  # type: ignore[arg-type]
            return value  # built already (e.g. a section spelled elsewhere in YAML)
        return build(hint, value, f"{key}.")  # type: ignore[arg-type]
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        return _number(value, hint, key)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def _number(value: Any, hint: type, key: str) -> int | float:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if isinstance(value, str):  # YAML reads 1e-4 as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is int:
        if not math.isfinite(value) or float(value) != int(value):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    return float(value)
