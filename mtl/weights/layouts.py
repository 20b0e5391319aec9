"""Every weights layout mtl imports, in one registry: ``--format`` values, recognition order and the
messages that list them all come from :data:`LAYOUTS`.

Recognition goes down the list and takes the first layout whose keys a file has; ``timm`` comes last,
because for a ``timm:<model>`` pipeline it takes any dict of tensors the others did not claim.
"""

from __future__ import annotations

from mtl.config import Config
from mtl.errors import MtlError
from mtl.weights import official, resnet12, tensorflow, timm
from mtl.weights.convert import Layout, few, state_dict_of
from mtl.weights.exported import EXPORT
from mtl.weights.files import Source

__all__ = ["LAYOUTS", "by_name", "names", "recognise"]

LAYOUTS: tuple[Layout, ...] = (
    EXPORT,
    official.META,
    official.PRETRAIN,
    tensorflow.TENSORFLOW,
    resnet12.FEAT,
    resnet12.RFS,
    timm.TIMM,
)


def names() -> list[str]:
    """The ``--format`` values."""
    return [layout.name for layout in LAYOUTS]


def by_name(name: str) -> Layout:
    """The layout ``--format name`` forces; an unknown name is one line listing the known ones."""
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    raise MtlError(f"--format: unknown layout '{name}' (known: {', '.join(names())})")


def recognise(source: Source, cfg: Config) -> Layout:
    """The layout of ``source``, from its keys; none is one line naming a few of them."""
    obj = source.obj
    if isinstance(obj, dict) and {"format", "stage", "config"} <= set(obj):
        raise MtlError(
            f"{source.label} is an mtl {obj['stage']} checkpoint, not weights to import: use it where it is, "
            "or `mtl export` it and import the folder"
        )
    for layout in LAYOUTS:
        if layout.recognise(source, cfg):
            return layout
    if source.kind in ("torch", "safetensors"):
        state_dict_of(source)  # a file without a dict of tensors says so in its own words
    raise MtlError(
        f"{source.label}: unrecognised layout ({_sample(source)}); mtl imports {', '.join(names())} "
        "(--format names one)"
    )


def _sample(source: Source) -> str:
    """A few of the file's keys, for the message."""
    obj = source.obj
    if source.kind in ("torch", "safetensors"):
        try:
            keys = list(state_dict_of(source)[0])
        except MtlError:
            keys = [str(k) for k in obj] if isinstance(obj, dict) else []
    else:
        keys = [str(k) for k in obj] if isinstance(obj, dict) else []
    return f"keys {few(keys)}" if keys else f"a {type(obj).__name__}"
