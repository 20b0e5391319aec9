"""Strict validation of a nested mapping against dataclasses: unknown keys (with a close match
suggested), wrong types and values out of range end in one :class:`~mtl.errors.MtlError` naming the
dotted key. Fields carry their limits in their metadata (:func:`option`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import field
from typing import Any

from mtl.errors import MtlError

__all__ = ["build", "option"]


def option(default: Any = None, *, choices: tuple | None = None, min: float | None = None, doc: str = ""):
    """A dataclass field with validation metadata (``choices`` or a lower bound ``min``)."""
    meta = {"choices": choices, "min": min, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    if dataclasses.is_dataclass(default):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


def build(cls: type, raw: Any, prefix: str = "", renamed: dict[str, str] | None = None) -> Any:
    """An instance of dataclass ``cls`` from the nested mapping ``raw``, every key checked; ``renamed``
    maps keys of earlier versions to what replaced them."""
    renamed = renamed or {}
    where = prefix.rstrip(".") or "pipeline"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MtlError(f"{where}: expected a section (mapping), got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if f"{prefix}{key}" in renamed:
            raise MtlError(f"{prefix}{key}: no longer a key, replaced by {renamed[f'{prefix}{key}']}")
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise MtlError(f"{prefix}{key}: unknown key{hint}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = build(kind, raw[name], f"{prefix}{name}.", renamed)
        else:
            values[name] = _check(f"{prefix}{name}", raw[name], kind, f.metadata)
    return cls(**values)


def _check(key: str, value: Any, kind: Any, meta: typing.Mapping) -> Any:
    value = _coerce(key, value, kind)
    choices, low = meta.get("choices"), meta.get("min")
    if choices is not None and value not in choices:
        raise MtlError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    if low is not None and value is not None and value < low:
        raise MtlError(f"{key}: must be >= {low}, got {value!r}")
    return value


def _coerce(key: str, value: Any, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is list:
        if not isinstance(value, list):
            raise MtlError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if (
        kind is bool
        and not isinstance(value, bool)
        or not isinstance(value, kind)
        or (kind is int and isinstance(value, bool))
    ):
        raise MtlError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value
