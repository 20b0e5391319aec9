"""Pipeline configuration: YAML files with ``extends:``, ``--set key=value`` overrides, strict validation.

A pipeline file is a nested mapping whose keys mirror the dataclasses of :mod:`mtl.config.schema`.
Every key is checked: an unknown key, a value of the wrong type or a value outside its allowed range
raises :class:`MtlError` with the dotted key name (``meta.shot: expected int, got 'five'``), then the
constraints across keys (:mod:`mtl.config.constraints`). The resolved config (defaults filled in, overrides
applied) is what every stage receives and what it saves beside its outputs.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from mtl.config import pipeline_file, sections
from mtl.config.constraints import check
from mtl.config.limits import *  # noqa: F403  (the limits are part of the config's public face)
from mtl.config.schema import *  # noqa: F403
from mtl.config.schema import Config
from mtl.config.validation import build
from mtl.errors import MtlError


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a pipeline file (following ``extends:``), apply ``key=value`` overrides, validate. A key of
    the shared sections that the chosen method does not read, or that an earlier version had there and
    a method now owns, is refused naming the key to set instead."""
    raw = pipeline_file.read(path, overrides, top_level_keys())
    former = _former_keys()
    rest = copy.deepcopy(raw)
    for key in former:  # set aside until the method is known: what to say depends on it
        _pop(rest, key)
    cfg = from_dict(rest)
    _refuse_unread(cfg, _dotted(raw), former)
    return cfg


def _refuse_unread(cfg: Config, given: list[str], former: dict[str, str]) -> None:
    """One line for the first of the ``given`` dotted keys that ``cfg``'s method does not read."""
    unread = sections.registered()[cfg.method].unread(cfg)
    for key in given:
        instead = next((v for k, v in unread.items() if key == k or key.startswith(k + ".")), None)
        if instead is not None:
            raise MtlError(f"{key}: method '{cfg.method}' does not read it; it reads {instead}")
        if key in former:
            owner = former[key].split(".")[0]
            whose = "" if owner == cfg.method else f": method '{owner}' reads it, '{cfg.method}' does not"
            raise MtlError(f"{key}: no longer a key, replaced by {former[key]}{whose}")


def from_dict(raw: dict) -> Config:
    """Build and validate a :class:`Config` from a nested mapping (e.g. the one saved in a checkpoint,
    read in today's keys: :func:`upgrade`)."""
    methods = sections.methods()
    raw = upgrade(raw)
    cfg = build(Config, raw, renamed=RENAMED, sections={k: v for k, v in methods.items() if v is not None})
    if cfg.method not in methods:
        raise MtlError(f"method: unknown method '{cfg.method}' (known: {', '.join(methods)})")
    check(cfg)
    return cfg


def upgrade(raw: dict) -> dict:
    """A resolved config saved by an earlier version (a checkpoint's) in today's keys: the keys of the
    shared sections that a method now owns moved into its section. Today's configs pass unchanged."""
    former = _former_keys()
    if not any(key in former for key in _dotted(raw)):
        return raw
    out = copy.deepcopy(raw)
    for key, new in former.items():
        found, value = _pop(out, key)
        section, field = new.split(".", 1)
        if found and (value is not None or field not in out.get(section, {})):
            out.setdefault(section, {})[field] = value
    return out


def _former_keys() -> dict[str, str]:
    """``{key of an earlier version's shared section: the method key it became}``."""
    return {
        old: f"{name}.{new}"
        for name, section in sections.registered().items()
        for old, new in section.former.items()
    }


def _dotted(raw: dict, prefix: str = "") -> list[str]:
    """The dotted keys of the leaves of a raw nested mapping."""
    out = []
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            out += _dotted(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def _pop(raw: dict, key: str) -> tuple[bool, object]:
    """Remove the dotted ``key`` from a raw nested mapping: ``(whether it was there, its value)``."""
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and leaf in node:
        return True, node.pop(leaf)
    return False, None


def top_level_keys() -> list[str]:
    """The sections and keys a pipeline file may have at its top level, the methods' sections last."""
    core = [f.name for f in dataclasses.fields(Config) if f.name != "sections"]
    return core + [name for name, settings in sections.methods().items() if settings is not None]


# Keys of earlier versions, and what replaced them (the keys methods took into their own sections are
# theirs to say: mtl.config.sections).
RENAMED = {
    "meta.episodes_per_epoch": "meta.updates_per_epoch (meta-updates per epoch, of meta.meta_batch tasks)",
    "meta.hard_tasks.capacity": "meta.hard_tasks.window (the pool holds the failures of that many recent "
    "meta-batches)",
}
