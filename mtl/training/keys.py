"""Which config keys a stage's result depends on, in one place.

Three checks read these lists: a later stage refuses a checkpoint of another model
(:data:`MODEL_KEYS`), a resume refuses a ``last.pt`` whose config differs in a key training reads
(everything but :data:`NOT_TRAINING`; for pretrain, only :func:`pretrain_reads`), and pipelines that
name one ``pretrain.name`` share a finished pretrain when their :func:`setting` is equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MODEL_KEYS", "NOT_TRAINING", "flatten", "pretrain_reads", "setting"]

# What a later stage must share with the checkpoint it builds on.
MODEL_KEYS = (
    "data.dataset",
    "data.image_size",
    "data.channels",
    "data.resize",
    "data.glyphs",
    "backbone.name",
    "backbone.widths",
)

# Prefixes of keys no training reads: they may change between a run and its resumption.
NOT_TRAINING = (
    "device", "compile", "checkpoint_every", "paper.", "ablation.", "compare.", "test.episodes",
    "test.seed", "test.batch_size", "test.baselines",
)  # fmt: skip


def pretrain_reads(config: dict) -> Callable[[str], bool]:
    """Whether pretraining reads a dotted key of ``config`` (a resolved config as a dict)."""
    keys = ("seed", "precision", "data.", "backbone.", "pretrain.", "meta.way", "test.query")
    keys += ("meta.shot",) if config["pretrain"]["val_shot"] is None else ()
    return lambda key: key.startswith(keys) and key != "pretrain.name" and not key.startswith(NOT_TRAINING)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"meta.shot": 1, ...}`` of a nested mapping."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def setting(config: dict, reads: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """The values of the keys a stage reads (default: pretraining's); equal settings, equal results."""
    reads = reads or pretrain_reads(config)
    return {k: v for k, v in flatten(config).items() if reads(k)}
