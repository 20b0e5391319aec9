"""Your own images: ``<root>/<class>/*.jpg``, with or without ``train/val/test`` sub-folders.

With ``train/``, ``val/`` (or ``validation/``) and ``test/`` each holding class folders, those are the
splits. Otherwise every class folder of ``root`` is assigned to one split: the sorted class names are
shuffled with ``seed`` and cut by the ``split`` fractions (default 0.64/0.16/0.2, miniImageNet's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtl.data.prepare.formats.common import (
    SPLITS,
    SplitSource,
    class_dirs,
    from_class_folders,
    from_files,
    image_files,
    split_folders,
)
from mtl.errors import MtlError

DEFAULT_SPLIT = (0.64, 0.16, 0.2)


def read(
    source: Path, *, split: tuple[float, ...] | None = None, seed: int = 0, **_
) -> tuple[str, dict[str, SplitSource]]:
    if not source.is_dir():
        raise MtlError(f"{source}: expected a folder of class folders (<class>/*.jpg)")
    if folders := split_folders(source):
        if split is not None:
            raise MtlError(f"{source} has train/val/test folders; --split applies to flat class folders")
        return "folder-splits", {name: from_class_folders(path) for name, path in folders.items()}
    classes = {d.name: files for d in class_dirs(source) if (files := image_files(d))}
    if not classes:
        raise MtlError(
            f"{source}: no class folders with images "
            f"(expected {source}/<class>/*.jpg, or train/, val/ and test/ folders of those)"
        )
    return "folder-classes", _split_classes(source, classes, split or DEFAULT_SPLIT, seed)


def _split_classes(
    source: Path, classes: dict[str, list[Path]], split: tuple[float, ...], seed: int
) -> dict[str, SplitSource]:
    if len(split) != 3 or min(split) < 0 or not 0.999 < sum(split) < 1.001:
        raise MtlError(f"--split must be three fractions summing to 1 (train,val,test), got {split}")
    names = sorted(classes)
    order = np.random.default_rng(seed).permutation(len(names))
    cuts = np.round(np.cumsum(split)[:2] * len(names)).astype(int)
    parts = np.split(order, cuts)
    out = {}
    for name, part in zip(SPLITS, parts, strict=True):
        if len(part) < 2:
            fractions = ",".join(f"{f:g}" for f in split)
            raise MtlError(
                f"{source}: --split {fractions} leaves {len(part)} of the {len(names)} classes for the "
                f"{name} split; each split needs at least 2"
            )
        chosen = sorted(names[i] for i in part)
        out[name] = from_files({c: classes[c] for c in chosen})
    return out
