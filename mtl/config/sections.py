"""The sections that methods add to a pipeline (``protonet:``, ``maml:``, ...).

A method declares its settings as a dataclass beside its class, in its own file (``settings =
ProtoNetSettings``); the method registry (:data:`mtl.methods.METHODS`) is the one list of methods,
and the schema, the key reference (``mtl config --keys``), ``method:``'s choices and every error
message are read off it here. The core sections (``data:``, ``meta:``, ...) are
:mod:`mtl.config.schema`'s.

The registry is found the first time a pipeline is read, by importing :mod:`mtl.methods` (as
``import timm`` fills timm's model registry): the config depends on no method at import time.

Commands that only read and print a pipeline (``mtl config``) run inside
:func:`mtl.config.declared.from_files`: unless the methods are imported already (with any method
registered from outside the package), the built-in methods are then read from their files
(:mod:`mtl.config.declared`), torch not imported.
"""

from __future__ import annotations

import importlib

from mtl.config import declared

__all__ = ["methods"]


def methods() -> dict[str, type | None]:
    """``{method name: its settings dataclass, or None}`` of every registered method, in order."""
    return declared.either("mtl.methods", declared.methods, _registered)


def _registered() -> dict[str, type | None]:
    registry = importlib.import_module("mtl.methods").METHODS  # see the module's docstring
    return {name: cls.settings for name, cls in registry.items()}
