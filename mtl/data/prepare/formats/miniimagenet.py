"""miniImageNet (Vinyals et al. 2016, Ravi & Larochelle's split): 100 classes in 64/16/20, 84×84.

``--source`` is the folder holding one of the layouts below. Also accepted: a file inside that
folder, and a folder whose only sub-folder holds the layout (an archive's wrapper folder).

``ravi-csv``
    ``train.csv``, ``val.csv``, ``test.csv`` (header ``filename,label``, rows like
    ``n0153282900000005.jpg,n01532829``) next to a flat ``images/`` folder with every listed file.
``class-folders``
    ``train/``, ``val/`` (or ``validation/``) and ``test/``, each holding ``<wnid>/*.jpg``.
``pickle-cache``
    ``mini-imagenet-cache-{train,val,test}.pkl`` (``...-validation.pkl`` also accepted for val),
    each ``{'image_data': uint8 (N, 84, 84, 3), 'class_dict': {wnid: [row indices]}}``.
``category-split-pickle``
    ``miniImageNet_category_split_{train_phase_train,val,test}.pickle`` (MetaOptNet's), each
    ``{'data': uint8 (N, 84, 84, 3), 'labels': [int], 'catname2label': {wnid: int}}``; without
    ``catname2label`` a class is named by its number.

Label ``i`` is the ``i``-th class in sorted-wnid order, except in the category-split pickles, whose
integer labels already order the classes (numerically). Pickles, from Python 2 or 3, are read with
:mod:`mtl.data.prepare.safe_pickle`, so they cannot run code.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from mtl.data.prepare import safe_pickle
from mtl.data.prepare.formats.common import (
    SPLITS,
    SplitSource,
    class_dirs,
    from_arrays,
    from_class_folders,
    from_files,
    has_class_folders,
    listing,
    split_folders,
    unknown_layout,
)
from mtl.errors import MtlError

EXPECTED = (
    "train.csv, val.csv, test.csv + images/",
    "train/, val/, test/ with <wnid>/*.jpg",
    "mini-imagenet-cache-{train,val,test}.pkl",
    "miniImageNet_category_split_{train_phase_train,val,test}.pickle",
)
_CACHE = {s: (f"mini-imagenet-cache-{s}.pkl",) for s in SPLITS} | {
    "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl")
}
_CATEGORY = {s: f"miniImageNet_category_split_{s}.pickle" for s in SPLITS} | {
    "train": "miniImageNet_category_split_train_phase_train.pickle"
}


def read(source: Path, **_) -> tuple[str, dict[str, SplitSource]]:
    for root in search_roots(source):
        if any((root / f"{s}.csv").is_file() for s in SPLITS):
            return "ravi-csv", _ravi_csv(root)
        if any(root.glob("mini-imagenet-cache-*.pkl")):
            return "pickle-cache", {s: _pickle_cache(need(root, *_CACHE[s])) for s in SPLITS}
        if any(root.glob("miniImageNet_category_split_*.pickle")):
            return "category-split-pickle", {s: _category_split(need(root, _CATEGORY[s])) for s in SPLITS}
        if splits := split_class_folders(root):
            return "class-folders", splits
    raise unknown_layout("miniImageNet", source, EXPECTED)


# Helpers the tieredImageNet reader shares.


def search_roots(source: Path) -> list[Path]:
    """Folders to look for a layout in: ``source`` (its folder, if a file), then its only sub-folder."""
    root = source.parent if source.is_file() else source
    subs = class_dirs(root) if root.is_dir() else []
    # Archives often unpack into one wrapper folder; looking one level down spares users a retry.
    return [root, subs[0]] if len(subs) == 1 else [root]


def split_class_folders(root: Path) -> dict[str, SplitSource] | None:
    """``root/{train,val,test}/<class>/*``; None without any, an error if only some splits are there."""
    if folders := split_folders(root):
        return {name: from_class_folders(path) for name, path in folders.items()}
    aliases = {"val": ("val", "validation")}
    present = [s for s in SPLITS if any(has_class_folders(root / n) for n in aliases.get(s, (s,)))]
    if present:
        missing = next(s for s in SPLITS if s not in present)
        raise MtlError(f"{root / missing}: no such folder of class folders (found {', '.join(present)})")
    return None


def need(root: Path, name: str, *alternatives: str) -> Path:
    """``root/name`` (or the first alternative that exists); an error naming it if none does."""
    for n in (name, *alternatives):
        if (root / n).is_file():
            return root / n
    also = f" (or {', '.join(alternatives)})" if alternatives else ""
    raise MtlError(f"{root / name}{also}: file not found")


def fields(obj: Any, path: Path, *keys: str) -> list[Any]:
    """``obj[key]`` for each key of the dict a pickle held; an error naming the file otherwise."""
    if not isinstance(obj, dict):
        raise MtlError(f"{path}: expected a dict with keys {', '.join(keys)}, got {type(obj).__name__}")
    for key in keys:
        if key not in obj:
            raise MtlError(f"{path}: no key {key!r} (it has: {', '.join(map(str, obj))})")
    return [obj[key] for key in keys]


def int_labels(labels: Any, path: Path, key: str) -> np.ndarray:
    try:
        labels = np.asarray(labels).reshape(-1)
    except (ValueError, TypeError):  # ragged nested lists
        raise MtlError(f"{path}: {key!r} must hold integer labels, one per image") from None
    if not np.issubdtype(labels.dtype, np.integer):
        raise MtlError(f"{path}: {key!r} must hold integer labels, got {labels.dtype}")
    return labels


# The four layouts.


def _ravi_csv(root: Path) -> dict[str, SplitSource]:
    csvs = {s: need(root, f"{s}.csv") for s in SPLITS}
    images = root / "images"
    if not images.is_dir():
        raise MtlError(f"{images}: folder not found (it should hold the images the CSV files list)")
    # One listing instead of 60,000 stat calls; it also keeps rows from naming files outside images/.
    present = {entry.name for entry in listing(images)}
    return {s: _csv_split(path, images, present) for s, path in csvs.items()}


def _csv_split(path: Path, images: Path, present: set[str]) -> SplitSource:
    by_class: dict[str, list[Path]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.reader(f), 1):
                row = [cell.strip() for cell in row]
                if not any(row) or (line == 1 and [c.lower() for c in row] == ["filename", "label"]):
                    continue
                if len(row) != 2:
                    raise MtlError(f"{path}:{line}: expected 'filename,label', got {','.join(row)!r}")
                name, label = row
                if name not in present:
                    raise MtlError(f"{images / name}: file not found (listed in {path}:{line})")
                by_class.setdefault(label, []).append(images / name)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MtlError(f"{path} is not a readable CSV file ({exc})") from None
    if not by_class:
        raise MtlError(f"{path}: no images listed")
    return from_files({label: by_class[label] for label in sorted(by_class)})


def _pickle_cache(path: Path) -> SplitSource:
    images, class_dict = fields(safe_pickle.load(path), path, "image_data", "class_dict")
    images = np.asarray(images)
    if not isinstance(class_dict, dict) or images.ndim < 1:
        raise MtlError(f"{path}: expected 'image_data' (N, H, W, C) and a 'class_dict' dict")
    n = len(images)
    wnids = sorted(str(k) for k in class_dict)
    rows_of = {str(k): v for k, v in class_dict.items()}
    labels = np.full(n, -1, dtype=np.int64)
    for label, wnid in enumerate(wnids):
        try:
            rows = np.asarray(rows_of[wnid], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise MtlError(f"{path}: class_dict[{wnid!r}] is not a list of row indices") from None
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise MtlError(f"{path}: class_dict[{wnid!r}] has row indices outside 0..{n - 1}")
        if (labels[rows] >= 0).any():
            raise MtlError(f"{path}: class_dict[{wnid!r}] lists rows that another class also lists")
        labels[rows] = label
    if (unlisted := int((labels < 0).sum())) > 0:
        raise MtlError(f"{path}: {unlisted} of the {n} images are in no class of class_dict")
    return from_arrays(images, labels, str(path), names=dict(enumerate(wnids)))


def _category_split(path: Path) -> SplitSource:
    obj = safe_pickle.load(path)
    data, labels = fields(obj, path, "data", "labels")
    names = {}
    if isinstance(catname2label := obj.get("catname2label"), dict):
        try:
            names = {int(label): str(name) for name, label in catname2label.items()}
        except (TypeError, ValueError):
            raise MtlError(f"{path}: 'catname2label' must map class names to integer labels") from None
    return from_arrays(data, int_labels(labels, path, "labels"), str(path), names)
