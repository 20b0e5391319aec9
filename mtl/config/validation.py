"""Strict validation of a nested mapping against dataclasses: unknown keys (with a close match
suggested), wrong types and values out of range end in one :class:`~mtl.errors.MtlError` naming the
dotted key. Fields carry their limits in their metadata (:func:`option`); a float is never NaN or
infinite, whatever its limits (``float("nan")`` passes every ``<`` check, so it is refused first).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any

from mtl.errors import MtlError

__all__ = ["build", "folder_name", "option", "size_text"]


def option(
    default: Any = None,
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
    doc: str = "",
    why: str = "",
):
    """A dataclass field with validation metadata: ``choices``, or bounds (``min`` <= value <= ``max``,
    ``above`` < value < ``below``). The bounds of a list field apply to each of its values. ``why``:
    what the bounds protect; a value out of them is then refused naming the whole range and saying why
    (``data.std[0]: must be within [0.001, 10.0], got 1e-320 (...)``)."""
    meta = {
        "choices": choices,
        "min": min,
        "max": max,
        "above": above,
        "below": below,
        "doc": doc,
        "why": why,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    if dataclasses.is_dataclass(default):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


def build(
    cls: type,
    raw: Any,
    prefix: str = "",
    renamed: dict[str, str] | None = None,
    sections: dict[str, type] | None = None,
) -> Any:
    """An instance of dataclass ``cls`` from the nested mapping ``raw``, every key checked; ``renamed``
    maps keys of earlier versions to what replaced them. ``sections``: further sections of ``raw``
    (``{key: dataclass}``), built into ``cls``'s field ``sections`` as ``{key: instance}``, every one
    of them present (defaults where ``raw`` has none)."""
    renamed = renamed or {}
    where = prefix.rstrip(".") or "pipeline"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MtlError(f"{where}: expected a section (mapping), got {_shown(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if sections is None or f.name != "sections"}
    hints = typing.get_type_hints(cls)
    known = [*fields, *(sections or {})]
    for key in raw:
        if f"{prefix}{key}" in renamed:
            raise MtlError(f"{prefix}{key}: no longer a key, replaced by {renamed[f'{prefix}{key}']}")
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise MtlError(f"{prefix}{_cut(str(key))}: unknown key{hint}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = build(kind, raw[name], f"{prefix}{name}.", renamed)
        else:
            values[name] = _check(f"{prefix}{name}", raw[name], kind, f.metadata)
    if sections is not None:
        values["sections"] = {
            name: build(kind, raw.get(name), f"{prefix}{name}.", renamed) for name, kind in sections.items()
        }
    return cls(**values)


def _check(key: str, value: Any, kind: Any, meta: typing.Mapping) -> Any:
    value = _coerce(key, value, kind)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise MtlError(f"{key}: {_shown(value)} is not one of {', '.join(map(str, choices))}")
    for i, v in enumerate(value if isinstance(value, list) else [value]):
        _in_range(f"{key}[{i}]" if isinstance(value, list) else key, v, meta)
    return value


def _in_range(key: str, value: Any, meta: typing.Mapping) -> None:
    """One number against the field's bounds; NaN and infinity are refused for every float."""
    if isinstance(value, float) and not math.isfinite(value):
        raise MtlError(f"{key}: must be a finite number, got {value}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    bounds = tuple(meta.get(k) for k in ("min", "max", "above", "below"))
    if (broken := _broken(value, *bounds)) is None:
        return
    if meta.get("why"):  # the whole range, and what it protects
        broken = f"must be within {_range(*bounds)}, got {value!r} ({meta['why']})"
    raise MtlError(f"{key}: {broken}")


def _broken(
    value: float, low: float | None, high: float | None, above: float | None, below: float | None
) -> str | None:
    """The first bound ``value`` breaks, as ``"must be >= 1, got 0"`` (``None``: no such bound)."""
    if low is not None and value < low:
        return f"must be >= {low}, got {value!r}"
    if high is not None and value > high:
        return f"must be <= {high:,}, got {value:,}"
    if above is not None and value <= above:
        return f"must be > {above}, got {value!r}"
    if below is not None and value >= below:
        return f"must be < {below}, got {value!r}"
    return None


def _range(low: float | None, high: float | None, above: float | None, below: float | None) -> str:
    """The bounds as a range: ``[0.001, 10.0]``, ``(0.0, 1.0)``, ``[0, ∞)``."""
    left = f"[{low}" if low is not None else f"({above}" if above is not None else "(-∞"
    right = f"{high}]" if high is not None else f"{below})" if below is not None else "∞)"
    return f"{left}, {right}"


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: a value from a file that is no pipeline can be a page long."""
    return _cut(repr(value))


def _cut(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _coerce(key: str, value: Any, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is list:
        if not isinstance(value, list):
            raise MtlError(f"{key}: expected a list, got {_shown(value)}")
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
        raise MtlError(f"{key}: expected {kind.__name__}, got {_shown(value)}")
    return value


def folder_name(key: str, name: str, longest: int) -> None:
    """``name`` names one folder (a run's, under the checkpoints folder): nothing that climbs out of it
    or is not a name at all, and at most ``longest`` characters."""
    if name in ("", ".", "..") or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name):
        raise MtlError(
            f"{key}: {_cut(repr(name), 40)} is not a folder name (it names the run's folder under the "
            "checkpoints folder: no '/', '\\' or control characters, not '.' or '..')"
        )
    if len(name) > longest:
        raise MtlError(f"{key}: {len(name)} characters; a run name has at most {longest} (it names a folder)")


def size_text(n: float) -> str:
    """A byte count for people: ``12.5 GiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""
