"""The key reference (``mtl config --keys``): every key a pipeline may set, with its type, default,
allowed values and documentation, read off the schema, the registered methods' settings and timm's
registry of mtl's backbones, never written by hand."""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from typing import Any

import mtl.methods  # noqa: F401  (registering the built-in methods hands their sections over)
from mtl.config import sections
from mtl.config.schema import Config
from mtl.models.backbone import own_backbones

__all__ = ["Key", "key_groups", "key_reference"]


@dataclasses.dataclass(frozen=True)
class Key:
    """One settable key: ``meta.way``, its type, default, allowed values and documentation."""

    name: str
    kind: str
    default: Any
    allowed: str
    doc: str


def key_groups() -> list[tuple[str, list[Key]]]:
    """``[(heading, keys)]``: the core sections (one heading), then each method's own section. The
    values of ``method`` and ``backbone.name`` are read off their registries."""
    registry = sections.methods()
    registries = {
        "method": " | ".join(registry),
        "backbone.name": " | ".join([*own_backbones(), "timm:<model>"]),
    }
    core = [
        dataclasses.replace(k, allowed=registries.get(k.name, k.allowed))
        for k in _walk(Config, "", skip={"sections"})
    ]
    out = [("pipeline", core)]
    for name, settings in registry.items():
        if settings is not None:
            out.append((f"{name}: settings of method '{name}'", list(_walk(settings, f"{name}."))))
    return out


def key_reference() -> str:
    """The reference as text: a heading per section, then one line per key and its documentation."""
    lines = []
    for heading, group in key_groups():
        lines.append(f"# {heading}")
        width = max(len(k.name) for k in group)
        for k in group:
            allowed = f"  ({k.allowed})" if k.allowed else ""
            lines.append(f"{k.name:<{width}}  {k.kind} = {_shown(k.default)}{allowed}")
            if k.doc:
                lines += textwrap.wrap(k.doc, 100, initial_indent=" " * 4, subsequent_indent=" " * 4)
        lines.append("")
    return "\n".join(lines).rstrip()


def _walk(cls: type, prefix: str, skip: set[str] = frozenset()) -> typing.Iterator[Key]:
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from _walk(kind, f"{prefix}{f.name}.")
            continue
        meta = f.metadata
        yield Key(
            f"{prefix}{f.name}",
            _type_name(kind),
            getattr(defaults, f.name),
            _allowed(meta),
            meta.get("doc", ""),
        )


def _type_name(kind: Any) -> str:
    text = kind.__name__ if isinstance(kind, type) else str(kind)
    return text.replace("typing.", "").replace("NoneType", "None")


def _allowed(meta: typing.Mapping) -> str:
    if meta.get("choices") is not None:
        return " | ".join(map(str, meta["choices"]))
    bounds = [(">=", "min"), ("<=", "max"), (">", "above"), ("<", "below")]
    return ", ".join(
        f"{op} {meta[k]:,}" if isinstance(meta[k], int) else f"{op} {meta[k]}"
        for op, k in bounds
        if meta.get(k) is not None
    )


def _shown(value: Any) -> str:
    return (
        "null"
        if value is None
        else repr(value)
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )
