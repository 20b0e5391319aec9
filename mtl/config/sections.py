"""The sections that methods add to a pipeline (``mtl:``, ``protonet:``, ``maml:``, ...).

A method declares its settings as a dataclass beside its class, in its own file; registering the
method (:func:`mtl.methods.register`) hands its section to the configuration here, as importing a
model file fills timm's registry. The configuration imports no method: a program that reads pipelines
imports the methods first (``import mtl.methods``, which registers the built-in ones;
:func:`mtl.load_config` does it). ``method:``'s choices, the schema, ``mtl config --keys`` and every
error message are then read off this one list, in the order the methods registered.

Besides its settings, a section says which keys of the shared sections (``meta:``, ``test:``) its
method does not read, and which keys of earlier versions' shared sections are now its own: a pipeline
that sets one of them for that method is refused in one line naming the key to set instead
(:func:`mtl.config.load`), and a saved config of an earlier version is read in today's keys
(:func:`mtl.config.upgrade`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Section", "add", "methods", "registered", "remove"]


def _reads_every_key(cfg: Any) -> Mapping[str, str]:
    return {}


@dataclass(frozen=True)
class Section:
    """What one method adds to the configuration.

    ``settings``: the dataclass of its pipeline section, named like the method (None: it has none).
    ``unread(cfg)``: the dotted keys of the shared sections that the method, configured as ``cfg``,
    does not read, each with the key it reads instead (and why, in a few words).
    ``former``: ``{key of an earlier version's shared section: the field of settings it became}``.
    ``borrows``: the other methods' sections it reads (FT takes MTL's inner loop).
    """

    settings: type | None = None
    unread: Callable[[Any], Mapping[str, str]] = _reads_every_key
    former: Mapping[str, str] = field(default_factory=dict)
    borrows: tuple[str, ...] = ()


_SECTIONS: dict[str, Section] = {}


def add(name: str, section: Section) -> None:
    """Register method ``name``'s section (its settings must be a dataclass of
    :func:`mtl.config.validation.option` fields); a method registered again replaces its section."""
    if section.settings is not None and not dataclasses.is_dataclass(section.settings):
        raise ValueError(f"{name}: settings must be a dataclass (mtl.config.validation.option fields)")
    unknown = [k for k in section.former.values() if section.settings is None or k not in _fields(section)]
    if unknown:
        raise ValueError(f"{name}: former keys name no field of its settings: {', '.join(unknown)}")
    _SECTIONS[name] = section


def remove(name: str) -> None:
    """Forget method ``name``'s section (a method unregistered)."""
    _SECTIONS.pop(name, None)


def _fields(section: Section) -> set[str]:
    return {f.name for f in dataclasses.fields(section.settings)}


def registered(*, required: bool = True) -> dict[str, Section]:
    """``{method name: its section}`` of every registered method, in the order they registered. With
    ``required``, none is an error: the caller reads a pipeline before importing the methods (see the
    module's docstring)."""
    if required and not _SECTIONS:
        raise RuntimeError(
            "no method is registered: import mtl.methods (it registers the built-in methods) before "
            "reading a pipeline, or use mtl.load_config"
        )
    return dict(_SECTIONS)


def methods() -> dict[str, type | None]:
    """``{method name: its settings dataclass, or None}`` of every registered method, in order."""
    return {name: section.settings for name, section in registered().items()}
