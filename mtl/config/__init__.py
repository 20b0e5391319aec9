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

from mtl.config import pipeline_file
from mtl.config.limits import *  # noqa: F403  (the limits are part of the config's public face)
from mtl.config.limits import check
from mtl.config.method_settings import *  # noqa: F403
from mtl.config.schema import *  # noqa: F403
from mtl.config.schema import Config
from mtl.config.validation import build


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a pipeline file (following ``extends:``), apply ``key=value`` overrides, validate."""
    known = [f.name for f in dataclasses.fields(Config)]
    return from_dict(pipeline_file.read(path, overrides, known))


def from_dict(raw: dict) -> Config:
    """Build and validate a :class:`Config` from a nested mapping (e.g. the one saved in a checkpoint)."""
    cfg = build(Config, raw, renamed=RENAMED)
    check(cfg)
    return cfg


# Keys of earlier versions, and what replaced them.
RENAMED = {
    "meta.episodes_per_epoch": "meta.updates_per_epoch (meta-updates per epoch, of meta.meta_batch tasks)",
    "meta.hard_tasks.capacity": "meta.hard_tasks.window (the pool holds the failures of that many recent "
    "meta-batches)",
}
