"""The few-shot methods: one file each on :class:`~mtl.methods.base.Method`, one registry.

Importing this package registers the built-in methods, in the order of the results tables. Adding a
method is one file (its class, its settings, ``@register``) and, for a built-in one, its import here.
"""

from __future__ import annotations

from mtl.methods.base import FeatureMethod, Method, meta_update
from mtl.methods.registry import METHODS, build, get, method_of, register, unregister

# The built-in methods register on import, in the results tables' row order.
# isort: off
from mtl.methods import mtl, finetune, nearest_centroid, protonet, matchingnet  # noqa: F401
from mtl.methods import siamese, maml, meta_lstm, tadam, mann  # noqa: F401
# isort: on

__all__ = [
    "METHODS",
    "FeatureMethod",
    "Method",
    "build",
    "get",
    "meta_update",
    "method_of",
    "register",
    "unregister",
]
