"""The one list of methods, and the one way to build a method.

``METHODS`` maps a method's name to its class. Registering a method hands its section to the
configuration (:mod:`mtl.config.sections`), from which the ``method:`` key and its error messages,
``mtl config --keys`` and the schema read; ``mtl compare``'s default rows and the results tables'
order follow it too. A method is one file: its class, its settings dataclass beside it
(``settings = ...``), and ``@register`` — inside the package or anywhere else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from mtl.config import Config, sections
from mtl.errors import MtlError
from mtl.methods.base import Method
from mtl.models.backbone import backbone_for
from mtl.runtime import checkpoint

__all__ = ["METHODS", "build", "get", "method_of", "register", "unregister"]

METHODS: dict[str, type[Method]] = {}

# A checkpoint written before methods had names holds MTL.
_UNNAMED = "mtl"


def register(cls: type[Method]) -> type[Method]:
    """Add a method class under its ``name`` (a class decorator). Its ``settings`` dataclass, if any,
    becomes the pipeline section of that name."""
    core = {f.name for f in dataclasses.fields(Config)}
    if not cls.name or "." in cls.name or cls.name in core:
        raise ValueError(f"{cls.__name__}.name = {cls.name!r}: a method needs a name of its own, no dots")
    sections.add(cls.name, sections.Section(cls.settings, cls.unread, cls.former_keys, cls.borrows))
    METHODS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Undo :func:`register` of method ``name``: its class and its pipeline section are forgotten."""
    METHODS.pop(name, None)
    sections.remove(name)


def get(name: str) -> type[Method]:
    """The method class called ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in METHODS:
        raise MtlError(f"method: unknown method '{name}' (known: {', '.join(METHODS)})")
    return METHODS[name]


def build(
    cfg: Config,
    encoder: nn.Module | None = None,
    *,
    name: str | None = None,
    state: dict | None = None,
    source: Path | None = None,
    fits: str = "the model its config describes",
) -> Method:
    """Method ``name`` (default ``cfg.method``) of pipeline ``cfg`` around ``encoder`` (default: the
    pipeline's backbone, freshly initialised), with a trained ``state`` loaded if given (what
    :meth:`Method.state` saved, read from ``source``): a state that does not fit (``fits``: the model
    ``cfg`` describes) is one line naming the file and the first keys that differ."""
    method = get(name or cfg.method)(encoder if encoder is not None else backbone_for(cfg), cfg)
    if state is not None:
        with checkpoint.fitting(source or Path("the checkpoint"), fits):
            method.load_state(state)
    return method


def method_of(ckpt: dict) -> str:
    """The method a metatrain checkpoint holds (one written before methods had names holds MTL)."""
    return ckpt.get("method", _UNNAMED)
