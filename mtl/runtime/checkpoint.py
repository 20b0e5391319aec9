"""Stage checkpoints: atomic writes, safe loads (``weights_only=True``), and clear errors.

A checkpoint is a plain dict of tensors and Python builtins::

    {"format": 1, "version": "0.2.0", "stage": "pretrain", "config": {...resolved config...},
     "class_names": [...], "metric": {"val_acc": ..., "val_ci95": ..., "epoch": ...}, ...stage state...}

Each stage keeps ``best.pt`` (chosen on validation classes) and ``last.pt`` in
``<checkpoints>/<name>/<stage>/``.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtl.errors import MtlError
from mtl.runtime.atomic import atomic_write
from mtl.runtime.stage_folders import MissingCheckpoint
from mtl.version import __version__

FORMAT = 1


# What a user runs to produce each stage's checkpoint (the Makefile target is the folder's name).
def stage_dir(checkpoints: str | Path, name: str, stage: str) -> Path:
    return Path(checkpoints).expanduser() / name / stage


def save(path: Path, payload: dict[str, Any], *, keep_previous: bool = False) -> None:
    """Write ``payload`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A crash or a full disk leaves the previous file untouched (one line names the file and says so;
    what ``torch.save`` raises for a failed write is caught as well). ``keep_previous`` also keeps the
    file it replaces as ``<stem>.prev.pt``, the fallback when ``path`` turns out unreadable.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MtlError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
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
    if not isinstance(ckpt.get("config", {}), dict):
        raise MtlError(f"{path} is not a readable mtl checkpoint (its config is not a mapping)")
    check_finite(ckpt, path)
    return ckpt


def check_finite(ckpt: dict[str, Any], path: Path) -> None:
    """Refuse weights that hold NaN or inf: such a model predicts one class for every image, and would
    be scored at chance level without a word. The resume state (optimiser moments) is not weights."""
    try:
        bad = next(
            (key for key, t in _tensors({k: v for k, v in ckpt.items() if k != "resume"})
             if t.is_floating_point() and not bool(torch.isfinite(t).all())),
            None,
        )  # fmt: skip
    except RecursionError:
        raise MtlError(f"{path} is not a readable mtl checkpoint (nested too deeply)") from None
    if bad is not None:
        raise MtlError(
            f"{path} holds NaN or infinite weights ({bad}): it comes from a diverged run and would "
            "score at chance; train that stage again (--fresh)"
        )


def _tensors(tree: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(dotted key, tensor)`` of every tensor in nested dicts and lists."""
    if isinstance(tree, torch.Tensor):
        yield prefix.rstrip("."), tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _tensors(v, f"{prefix}{k}.")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _tensors(v, f"{prefix}{i}.")


def load_weights(module: nn.Module, state: Any, entry: str) -> None:
    """``module.load_state_dict(state)``, or one :class:`MtlError` naming the first missing, unexpected
    and wrongly shaped keys of entry ``entry`` (PyTorch's own message is a page of every key)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MtlError(f"'{entry}' is not a state dict of tensors")
    ours = module.state_dict()
    problems = []
    if missing := [k for k in ours if k not in state]:
        problems.append(f"missing {_first(missing)}")
    if unexpected := [k for k in state if k not in ours]:
        problems.append(f"unexpected {_first(unexpected)}")
    if shapes := [k for k in ours if k in state and state[k].shape != ours[k].shape]:
        k = shapes[0]
        more = f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""
        problems.append(
            f"wrong shape {entry}.{k}: {list(state[k].shape)} where the model has {list(ours[k].shape)}{more}"
        )
    if problems:
        raise MtlError(f"'{entry}' does not fit the model: {'; '.join(problems)}")
    module.load_state_dict(state)


def load_tensor(target: torch.Tensor, value: Any, entry: str) -> None:
    """Copy ``value`` into ``target`` (no grad), or one :class:`MtlError` if it is not a tensor of that
    shape."""
    if not isinstance(value, torch.Tensor) or value.shape != target.shape:
        got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise MtlError(f"'{entry}' is {got} where the model has {list(target.shape)}")
    with torch.no_grad():
        target.copy_(value)


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


@contextmanager
def fitting(path: Path, what: str = "this pipeline's model") -> Iterator[None]:
    """Around loading a checkpoint's entries into a model: a missing entry, or one of another shape, is
    one line naming ``path`` and the first keys that differ."""
    try:
        yield
    except MtlError as exc:
        raise MtlError(f"{path} does not fit {what}: {exc}") from None
    except KeyError as exc:
        raise MtlError(f"{path} does not fit {what}: it has no '{exc.args[0]}' entry") from None
    except (TypeError, ValueError, AttributeError, IndexError, RuntimeError):
        raise MtlError(f"{path} does not fit {what}: its entries are not what mtl saves") from None


def stage_of(path: Path) -> str | None:
    """The ``stage`` entry of an mtl checkpoint file, or None for anything else (a peek: the tensors
    are memory-mapped, not read)."""
    try:
        if not path.is_file():  # a FIFO is not opened: that would wait for a writer
            return None
        with open(path, "rb") as f:
            if f.read(2) != b"PK":
                return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - anything unreadable is simply not a checkpoint
        return None
    stage = ckpt.get("stage") if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT else None
    return stage if isinstance(stage, str) else None


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
