"""The prepared dataset: one folder of ``.npy`` arrays per dataset, written atomically, read memory-mapped.

Layout of a prepared folder::

    manifest.json             format version, source format, image shape, per-split sizes, fingerprint
    {split}_images.npy        (N, H, W, C) uint8, RGB (C=3) or grey (C=1)
    {split}_labels.npy        (N,) int64, values 0..K-1
    {split}_classes.json      K class names, index = label

Every stage reads this layout. The folder appears under its name only when complete (:func:`swap_in`);
:mod:`mtl.data.prepare.manifest` reads and writes the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtl.data.prepare import disk
from mtl.data.prepare.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    SPLIT_NAME,
    build,
    json_bytes,
    load_manifest,
    read_json,
)
from mtl.errors import MtlError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "Split",
    "check_replaceable",
    "dataset_fingerprint",
    "file_sizes",
    "load_manifest",
    "load_split",
    "save_dataset",
    "swap_in",
    "write_manifest",
]

_OWN_FILE = re.compile(r"^(manifest\.json|[A-Za-z0-9_-]+_(images\.npy|labels\.npy|classes\.json))$")
_HASH_CHUNK = 64 << 20  # bytes of images hashed at a time, so GB-sized memmaps never load whole
_RESERVED = ("format_version", "source_format", "image_shape", "splits", "fingerprint")


@dataclass(eq=False)
class Split:
    """The images of one split with their labels and class names.

    Attributes:
        images: ``(N, H, W, C)`` uint8, C = 3 (RGB) or 1 (grey); may be a read-only ``np.memmap``.
        labels: ``(N,)`` int64 class index of every image, values ``0..K-1``.
        class_names: ``K`` names, index = label.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be a (N, H, W, C) uint8 array, got {_describe(self.images)}")
        if self.images.shape[-1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels (last axis), got shape {self.images.shape}")
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a (N,) integer array, got {_describe(labels)}")
        if len(labels) != len(self.images):
            raise ValueError(f"{len(labels)} labels for {len(self.images)} images")
        self.labels = labels.astype(np.int64, copy=False)
        self.class_names = [str(name) for name in self.class_names]
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in 0..{len(self.class_names) - 1} (one per class name)")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
        h, w, c = self.images.shape[1:]
        return int(h), int(w), int(c)

    def __len__(self) -> int:
        return len(self.labels)


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def dataset_fingerprint(splits: dict[str, Split]) -> str:
    """First 16 hex digits of a sha256 over every split's name, image bytes, labels and class names."""
    h = hashlib.sha256()
    for name in sorted(splits):
        split = splits[name]
        h.update(json.dumps([name, list(split.images.shape)]).encode())
        rows = max(1, _HASH_CHUNK // int(np.prod(split.image_shape)))
        for start in range(0, len(split), rows):
            h.update(np.ascontiguousarray(split.images[start : start + rows]).data)
        h.update(split.labels.astype("<i8").tobytes())
        h.update(json.dumps(split.class_names).encode())
    return h.hexdigest()[:16]


def _fsync_dir(path: Path) -> None:
    # Makes renames / new entries durable; some platforms cannot open directories, which is harmless.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with disk.naming(path), open(path, "wb") as f:
        f.write(json_bytes(obj))
        f.flush()
        os.fsync(f.fileno())


def save_dataset(
    dest: Path, splits: dict[str, Split], *, source_format: str, extra: dict | None = None
) -> Path:
    """Write ``splits`` as a prepared dataset at ``dest`` atomically; returns ``dest``.

    Everything goes to a hidden sibling folder first, which replaces ``dest`` (if any) only once it is
    complete, so an interrupted write never leaves a ``dest`` that :func:`load_split` accepts.
    """
    dest = Path(dest).expanduser()
    if not splits:
        raise ValueError("no splits to save")
    for name, split in splits.items():
        if not SPLIT_NAME.match(name):
            raise ValueError(f"split name {name!r} must match {SPLIT_NAME.pattern}")
        if not isinstance(split, Split):
            raise ValueError(f"split {name!r} is a {type(split).__name__}, not a Split")
    if len(shapes := {split.image_shape for split in splits.values()}) != 1:
        raise ValueError(f"all splits must share one image shape, got {sorted(shapes)}")
    if clash := sorted(set(extra or {}) & set(_RESERVED)):
        raise ValueError(f"extra manifest keys {clash} clash with reserved keys")

    dest.parent.mkdir(parents=True, exist_ok=True)
    counts = {name: (s.class_names, len(s)) for name, s in splits.items()}
    sizes = file_sizes(counts, next(iter(shapes)), source_format, extra)
    disk.check_space(dest.parent, disk.on_disk(sizes, dest.parent), dest if dest.is_dir() else None)
    # The host too: nodes sharing the disk may run processes of one id.
    tmp = dest.parent / f".{dest.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, split in splits.items():
            for kind, array in (("images", split.images), ("labels", split.labels)):
                with disk.naming(tmp / f"{name}_{kind}.npy"):
                    np.save(tmp / f"{name}_{kind}.npy", array)
        write_manifest(tmp, splits, source_format=source_format, extra=extra)
        swap_in(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def write_manifest(
    folder: Path, splits: dict[str, Split], *, source_format: str, extra: dict | None = None
) -> None:
    """Write the class-name files and, last, ``manifest.json`` into ``folder``, whose ``.npy`` arrays
    already hold ``splits``; fsyncs everything so the folder can be swapped in."""
    extra = dict(extra or {})
    if clash := sorted(set(extra) & set(_RESERVED)):
        raise ValueError(f"extra manifest keys {clash} clash with reserved keys")
    for name, split in splits.items():
        _write_json(folder / f"{name}_classes.json", split.class_names)
    for path in folder.glob("*.npy"):
        with disk.naming(path), open(path, "rb+") as f:
            os.fsync(f.fileno())
    (shape,) = {split.image_shape for split in splits.values()}
    counts = {name: (s.num_classes, len(s)) for name, s in splits.items()}
    _write_json(folder / MANIFEST, build(counts, shape, source_format, extra, dataset_fingerprint(splits)))
    _fsync_dir(folder)


def file_sizes(
    splits: dict[str, tuple[list[str], int]], shape: tuple, source_format: str, extra: dict | None
) -> list[int]:
    """Bytes of every file of a prepared dataset of splits ``{name: (class names, images)}``, images of
    ``shape`` ``(H, W, C)``: what the space check adds up before anything is written."""
    counts = {name: (len(names), n) for name, (names, n) in splits.items()}
    sizes = [len(json_bytes(build(counts, shape, source_format, extra, "0" * 16)))]  # fixed length
    for names, n in splits.values():
        sizes.append(len(disk.npy_header((n, *shape))) + n * math.prod(shape))
        sizes.append(len(disk.npy_header((n,), "<i8")) + 8 * n)
        sizes.append(len(json_bytes(names)))
    return sizes


def check_replaceable(dest: Path) -> None:
    """Refuse a ``dest`` that a prepared dataset may not replace: a file, or a folder that holds anything
    but a prepared dataset's files (the user's own data, or the very source being prepared)."""
    if dest.exists() and not dest.is_dir():
        raise MtlError(f"{dest} is a file, not a dataset folder; choose a new or empty folder")
    try:
        names = [p.name for p in dest.iterdir()] if dest.is_dir() else []
    except OSError as exc:
        raise MtlError(f"cannot read {dest} ({exc.strerror or exc}); it is left alone") from None
    if foreign := sorted(n for n in names if not _OWN_FILE.match(n)):
        raise MtlError(
            f"{dest} is not empty and not a prepared dataset (it holds {foreign[0]!r}); "
            "it is left alone: choose a new or empty folder"
        )


def swap_in(new: Path, dest: Path) -> None:
    """Move the complete folder ``new`` to ``dest``, replacing a previous prepared dataset there (it
    moves aside first, since a folder cannot be renamed over another, and comes back on failure)."""
    check_replaceable(dest)
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    replacing = dest.exists()
    if replacing:
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        if replacing:
            os.replace(old, dest)
        raise
    _fsync_dir(dest.parent)
    if replacing:
        shutil.rmtree(old, ignore_errors=True)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise MtlError(f"{path} is missing; prepare the dataset again")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise MtlError(f"{path} is corrupt: {e}") from None


def _load_classes(path: Path, expected: int) -> list[str]:
    if not path.is_file():
        raise MtlError(f"{path} is missing; prepare the dataset again")
    names = read_json(path)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise MtlError(f"{path} is corrupt: expected a list of class names")
    if len(names) != expected:
        raise MtlError(f"{path} is corrupt: {len(names)} class names, manifest says {expected}")
    return names


def load_split(root: Path, split: str, *, mmap: bool = True) -> Split:
    """Load and validate one split of the prepared dataset at ``root``.

    With ``mmap`` the images stay on disk as a read-only ``np.memmap`` (labels are always read).
    Every problem (missing folder, unlisted split, corrupt or inconsistent array) raises :class:`MtlError`.
    """
    root = Path(root).expanduser()
    manifest = load_manifest(root)
    info = manifest["splits"].get(split)
    if not isinstance(info, dict):
        listed = ", ".join(manifest["splits"]) or "none"
        raise MtlError(f"{root} has no split {split!r} (it has: {listed})")
    try:
        n, k, shape = int(info["images"]), int(info["classes"]), tuple(int(d) for d in info["image_shape"])
    except (KeyError, TypeError, ValueError):
        raise MtlError(f"{root / MANIFEST} is corrupt: bad entry for split {split!r}") from None

    images_path, labels_path = root / f"{split}_images.npy", root / f"{split}_labels.npy"
    images = _load_npy(images_path, mmap)
    if images.dtype != np.uint8 or images.shape != (n, *shape):
        raise MtlError(
            f"{images_path} is corrupt: {_describe(images)}, manifest says uint8 of shape {(n, *shape)}"
        )
    labels = _load_npy(labels_path, mmap=False)
    if labels.dtype != np.int64 or labels.shape != (n,):
        raise MtlError(f"{labels_path} is corrupt: {_describe(labels)}, manifest says int64 of shape {(n,)}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise MtlError(f"{labels_path} is corrupt: labels outside 0..{k - 1}")
    names = _load_classes(root / f"{split}_classes.json", k)
    return Split(images=images, labels=labels, class_names=names)
