"""The sections that methods add to a pipeline (``protonet:``, ``maml:``, ...).

A method declares its settings as a dataclass beside its class, in its own file (``settings =
ProtoNetSettings``); the method registry (:data:`mtl.methods.METHODS`) is the one list of methods,
and the schema, the key reference (``mtl config --keys``), ``method:``'s choices and every error
message are read off it here. The core sections (``data:``, ``meta:``, ...) are
:mod:`mtl.config.schema`'s.

The registry is found the first time a pipeline is read, by importing :mod:`mtl.methods` (as
``import timm`` fills timm's model registry): the config depends on no method at import time.
"""

from __future__ import annotations

import importlib

__all__ = ["methods"]


def methods() -> dict[str, type | None]:
    """``{method name: its settings dataclass, or None}`` of every registered method, in order."""
    registry = importlib.import_module("mtl.methods").METHODS  # see the module's docstring
    return {name: cls.settings for name, cls in registry.items()}
