"""The few-shot methods: one module each on :class:`~mtl.methods.base.Method`, one registry.

``METHODS`` is the only list of methods: the ``method:`` key, ``mtl compare --methods`` and their
error messages are derived from it. Adding a method is one file and one line here.
"""

from __future__ import annotations

from torch import nn

from mtl.config import Config
from mtl.errors import MtlError
from mtl.methods.base import Method, meta_update
from mtl.methods.finetune import FineTune
from mtl.methods.maml import MAML
from mtl.methods.matchingnet import MatchingNet
from mtl.methods.mtl import MTL
from mtl.methods.nearest_centroid import NearestCentroid, PixelCentroid
from mtl.methods.protonet import ProtoNet
from mtl.methods.siamese import Siamese

__all__ = ["METHODS", "Method", "build", "get", "meta_update", "register", "variants"]

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add a method class under its ``name`` (usable as a decorator)."""
    METHODS[cls.name] = cls
    return cls


for _cls in (MTL, FineTune, NearestCentroid, PixelCentroid, ProtoNet, MatchingNet, Siamese, MAML):
    register(_cls)


def get(name: str) -> type[Method]:
    """The method class called ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in METHODS:
        raise MtlError(f"method: unknown method '{name}' (known: {', '.join(METHODS)})")
    return METHODS[name]


def build(cfg: Config, encoder: nn.Module) -> Method:
    """The pipeline's method (``cfg.method``) around ``encoder``."""
    return get(cfg.method)(encoder, cfg)


def variants() -> dict[str, tuple[str, str, dict]]:
    """Every ``mtl compare`` row: ``{row name: (method name, label, config overrides)}``."""
    return {
        row: (cls.name, label, sets)
        for cls in METHODS.values()
        for row, (label, sets) in cls.variants.items()
    }
