"""Pipeline configuration: YAML files with ``extends:``, ``--set key=value`` overrides, strict validation.

A pipeline file is a nested mapping whose keys mirror the dataclasses of :mod:`mtl.config.schema`.
Every key is checked: an unknown key, a value of the wrong type or a value outside its allowed range
raises :class:`MtlError` with the dotted key name (``meta.shot: expected int, got 'five'``), then the
constraints across keys (:mod:`mtl.config.limits`). The resolved config (defaults filled in, overrides
applied) is what every stage receives and what it saves beside its outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mtl.config import pipeline_file, sections
from mtl.config.limits import *  # noqa: F403  (the limits are part of the config's public face)
from mtl.config.limits import check
from mtl.config.schema import *  # noqa: F403
from mtl.config.schema import Config
from mtl.config.validation import build
from mtl.errors import MtlError


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a pipeline file (following ``extends:``), apply ``key=value`` overrides, validate."""
    return from_dict(pipeline_file.read(path, overrides, top_level_keys()))


def from_dict(raw: dict) -> Config:
    """Build and validate a :class:`Config` from a nested mapping (e.g. the one saved in a checkpoint)."""
    methods = sections.methods()
    cfg = build(Config, raw, renamed=RENAMED, sections={k: v for k, v in methods.items() if v is not None})
    if cfg.method not in methods:
        raise MtlError(f"method: unknown method '{cfg.method}' (known: {', '.join(methods)})")
    check(cfg)
    return cfg


def top_level_keys() -> list[str]:
    """The sections and keys a pipeline file may have at its top level, the methods' sections last."""
    core = [f.name for f in dataclasses.fields(Config) if f.name != "sections"]
    return core + [name for name, settings in sections.methods().items() if settings is not None]


# Keys of earlier versions, and what replaced them.
RENAMED = {
    "meta.episodes_per_epoch": "meta.updates_per_epoch (meta-updates per epoch, of meta.meta_batch tasks)",
    "meta.hard_tasks.capacity": "meta.hard_tasks.window (the pool holds the failures of that many recent "
    "meta-batches)",
}
