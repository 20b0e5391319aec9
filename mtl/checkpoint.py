"""Stage checkpoints: atomic writes, safe loads (``weights_only=True``), and clear errors.

A checkpoint is a plain dict of tensors and Python builtins::

    {"format": 1, "version": "0.2.0", "stage": "pretrain", "config": {...resolved config...},
     "class_names": [...], "metric": {"val_acc": ..., "val_ci95": ..., "epoch": ...}, ...stage state...}

Each stage keeps ``best.pt`` (chosen on validation classes) and ``last.pt`` in
``<checkpoints>/<name>/<stage>/``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from mtl import __version__
from mtl.atomic import atomic_write
from mtl.errors import MtlError

FORMAT = 1
# What a user runs to produce each stage's checkpoint.
MAKE = {"pretrain": "make pretrain", "metatrain": "make metatrain"}


class MissingCheckpoint(MtlError):
    """No checkpoint of ``stage`` at ``path``; the command line rewords it with the exact command."""

    def __init__(self, path: Path, stage: str, command: str | None = None) -> None:
        self.path, self.stage = path, stage
        command = command or MAKE.get(stage)
        super().__init__(f"no {stage} checkpoint at {path}" + (f"; run `{command}` first" if command else ""))


def stage_dir(checkpoints: str | Path, name: str, stage: str) -> Path:
    return Path(checkpoints).expanduser() / name / stage


def save(path: Path, payload: dict[str, Any], *, keep_previous: bool = False) -> None:
    """Write ``payload`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A crash or a full disk leaves the previous file untouched. ``keep_previous`` also keeps the file it
    replaces as ``<stem>.prev.pt``, the fallback when ``path`` turns out unreadable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": __version__, **payload}
    previous = path.with_suffix(".prev.pt") if keep_previous else None
    with atomic_write(path, "wb", keep_previous=previous, what="checkpoint ") as f:
        torch.save(payload, f)


def load(path: Path, *, stage: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a stage checkpoint, or fail with one line that says what is wrong and what to run."""
    if path.is_dir():
        raise MtlError(f"{path} is a folder, not a {stage} checkpoint (best.pt or last.pt in it?)")
    if not path.is_file():
        raise MissingCheckpoint(path, stage)
    _check_header(path, stage)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses anything but tensors and builtins; its message is a page long.
        raise MtlError(
            f"{path} is not a readable mtl checkpoint (it holds Python objects mtl never saves)"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError):
        raise MtlError(f"{path} is not a readable mtl checkpoint (truncated or corrupt)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "stage" not in ckpt:
        raise MtlError(f"{path} is not an mtl checkpoint (format {FORMAT})")
    theirs = str(ckpt.get("version", "?"))
    if theirs.split(".")[:2] != __version__.split(".")[:2]:
        raise MtlError(
            f"{path} was written by mtl {theirs}; this is mtl {__version__}, whose checkpoints differ "
            f"from {theirs.rsplit('.', 1)[0]}.x: run the stage again with this version"
        )
    if ckpt["stage"] != stage:
        raise MtlError(f"{path} is a {ckpt['stage']} checkpoint, expected {stage}")
    return ckpt


def _check_header(path: Path, stage: str) -> None:
    """A file that is not even a PyTorch file (a pipeline, an image, text) is named as such."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise MtlError(f"{path} is empty, not a {stage} checkpoint")
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save's zip, or a legacy pickle
        kind = "a pipeline (YAML) file" if path.suffix in (".yaml", ".yml") else "not a PyTorch file"
        raise MtlError(f"{path} is not a {stage} checkpoint ({kind})")


def check_compatible(ckpt: dict[str, Any], config: dict[str, Any], path: Path, keys: tuple[str, ...]) -> None:
    """Refuse a checkpoint made for another dataset or backbone, naming the differing keys."""
    diffs = []
    for dotted in keys:
        ours, theirs = config, ckpt.get("config", {})
        for part in dotted.split("."):
            ours = ours.get(part) if isinstance(ours, dict) else None
            theirs = theirs.get(part) if isinstance(theirs, dict) else None
        if ours != theirs:
            diffs.append(f"{dotted}: checkpoint {theirs!r} vs pipeline {ours!r}")
    if diffs:
        raise MtlError(f"{path} was made with a different setup ({'; '.join(diffs)})")
