"""What every dataset reader returns, and the layouts several datasets share.

A reader turns a source folder (in one of the formats circulating for its dataset) into one
:class:`SplitSource` per split. Images are not decoded or resized here: ``items`` holds, per image,
the file to decode, its encoded bytes, or its pixels, and :mod:`mtl.data.prepare.preparation` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl.errors import MtlError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class SplitSource:
    """One split as found in the source.

    Attributes:
        class_names: ``K`` class names; index = label.
        labels: ``(N,)`` int64 labels in ``0..K-1``.
        items: ``N`` images, each a ``Path`` (an image file), ``bytes`` (an encoded image) or an
            ``(H, W, C)`` uint8 RGB array; an ``(N, H, W, C)`` uint8 array is a valid ``items``.
        where: ``where(i)`` names image ``i``'s origin in error messages (a file, or ``file[entry]``).
    """

    class_names: list[str]
    labels: np.ndarray
    items: Sequence
    where: Callable[[int], str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.class_names = [str(n) for n in self.class_names]
        if len(self.labels) != len(self.items):
            raise ValueError(f"{len(self.labels)} labels for {len(self.items)} images")

    def __len__(self) -> int:
        return len(self.labels)


def from_arrays(
    images: np.ndarray, labels: Sequence[int], origin: str, names: dict[int, str] | None = None
) -> SplitSource:
    """A split from pixels ``(N, H, W, C)`` and arbitrary integer labels, relabelled ``0..K-1``.

    Labels keep their numeric order (so ``names``, keyed by the original label, stay attached to
    their images); without ``names`` a class is called by its original label.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise MtlError(f"{origin}: expected (N, H, W, C) uint8 images, got {images.dtype} {images.shape}")
    raw = np.asarray(labels).reshape(-1)
    if len(raw) != len(images):
        raise MtlError(f"{origin}: {len(raw)} labels for {len(images)} images")
    classes, relabelled = np.unique(raw, return_inverse=True)
    names = names or {}
    return SplitSource(
        class_names=[str(names.get(int(c), int(c))) for c in classes],
        labels=relabelled,
        items=images,
        where=lambda i: f"{origin}[{i}]",
    )


def listing(folder: Path) -> list[Path]:
    """The entries of ``folder``; one that cannot be read (no permission, gone) is an :class:`MtlError`
    naming it, not a traceback."""
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise MtlError(f"{folder}: cannot read the folder ({exc.strerror or exc})") from None


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name (hidden files skipped). Anything with an
    image suffix is listed, so that a folder or FIFO named ``x.png`` is reported, not silently left out."""
    return sorted(
        p for p in listing(folder) if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def class_dirs(folder: Path) -> list[Path]:
    """The sub-folders of ``folder``, sorted by name: ``os.listdir`` order is arbitrary."""
    return sorted(p for p in listing(folder) if p.is_dir() and not p.name.startswith("."))


def from_class_folders(folder: Path, names: Callable[[Path], str] | None = None) -> SplitSource:
    """``folder/<class>/*.<image>``: one class per sub-folder, classes in sorted order."""
    dirs = [d for d in class_dirs(folder) if image_files(d)]
    if not dirs:
        raise MtlError(f"{folder}: no class folders with images (expected {folder}/<class>/*.jpg)")
    return from_files({(names or (lambda d: d.name))(d): image_files(d) for d in dirs})


def from_files(files_by_class: dict[str, list[Path]]) -> SplitSource:
    """A split from ``{class name: image files}``; labels follow the mapping's order."""
    files = [f for fs in files_by_class.values() for f in fs]
    labels = np.repeat(np.arange(len(files_by_class)), [len(fs) for fs in files_by_class.values()])
    return SplitSource(list(files_by_class), labels, files, lambda i: str(files[i]))


def has_class_folders(folder: Path) -> bool:
    """Whether ``folder`` holds at least one ``<class>/<image>`` sub-folder."""
    return folder.is_dir() and any(image_files(d) for d in class_dirs(folder))


def split_folders(root: Path, aliases: dict[str, tuple[str, ...]] | None = None) -> dict[str, Path] | None:
    """``root/{train,val,test}/`` (each split also under an alias, e.g. ``validation``), or None."""
    aliases = aliases or {"val": ("validation",)}
    found = {}
    for split in SPLITS:
        for name in (split, *aliases.get(split, ())):
            if has_class_folders(root / name):
                found[split] = root / name
                break
    return found if len(found) == len(SPLITS) else None


def unknown_layout(dataset: str, source: Path, expected: Sequence[str]) -> MtlError:
    listing = "; ".join(expected)
    return MtlError(f"{source}: unknown {dataset} layout (expected one of: {listing})")
