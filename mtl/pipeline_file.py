"""Pipeline files: a YAML mapping, optionally ``extends: other.yaml`` (merged key by key, the file
itself winning), plus ``--set dotted.key=value`` overrides, read into one raw nested mapping that
:mod:`mtl.config` then validates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mtl.errors import MtlError

__all__ = ["read", "set_key"]


def read(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The raw mapping of ``path`` (following ``extends:``; ``{}`` for None) with ``overrides`` applied."""
    raw: dict = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        key, value = _parse_override(item)
        set_key(raw, key, value)
    return raw


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.expanduser()
    if not path.is_file():
        raise MtlError(f"pipeline file not found: {path}")
    if path.resolve() in seen:
        raise MtlError(f"{path}: 'extends' forms a cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise MtlError(f"{path}: not valid YAML{line}") from None
    if not isinstance(data, dict):
        raise MtlError(f"{path}: a pipeline must be a mapping of keys to values")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise MtlError(f"{path}: 'extends' must be a file path")
    base = _read_yaml(path.parent / parent, (*seen, path.resolve()))
    return _merge(base, data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise MtlError(f"bad --set '{item}': expected key=value, e.g. --set meta.shot=5")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key, value


def set_key(raw: dict, key: str, value: Any) -> None:
    """Set the dotted ``key`` of a raw nested mapping (creating sections on the way)."""
    node = raw
    *parents, leaf = key.split(".")
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MtlError(f"--set {key}: '{'.'.join(parents[: i + 1])}' is not a section")
        node = child
    node[leaf] = value
