"""FC100 (Oreshkin et al. 2018, TADAM): CIFAR-100 split by superclass into 60/20/20 classes, 32×32.

``--source`` is one of the layouts below, or a folder holding it (directly, in its only sub-folder,
or in ``cifar-100-python/``); a file inside an unpacked layout also does.

``cifar100-python``
    The CIFAR-100 "python version": a ``cifar-100-python/`` folder with the pickles ``train``
    (50,000 images), ``test`` (10,000) and ``meta``. ``train`` and ``test`` hold ``data``, uint8
    (N, 3072) rows of planar RGB (1024 R, 1024 G, 1024 B values, each plane row-major), with
    ``fine_labels`` and ``coarse_labels``; ``meta`` holds ``fine_label_names`` and
    ``coarse_label_names``.
``cifar100-tar``
    The archive as downloaded, ``cifar-100-python.tar.gz``: the same three pickles are read straight
    out of it, without unpacking it to disk.
``fc100-pickle``
    Derived files ``FC100_{train,val,test}.pickle``, each ``{'data': uint8 (N, 32, 32, 3),
    'labels': [int]}``; the labels (often CIFAR's global fine-label ids) are renumbered ``0..K-1`` in
    numeric order and, as these files carry no names, also name their classes.

From CIFAR, the train and test images are pooled (600 per fine class) and each fine class goes to the
split of its superclass (coarse label), as in TADAM:

- train, 12 superclasses (coarse ids 1 2 3 4 5 6 9 10 15 17 18 19), 60 fine classes
- val, 4 superclasses (8 11 13 16), 20 fine classes
- test, 4 superclasses (0 7 12 14), 20 fine classes

Within a split, label ``i`` is the split's ``i``-th fine class in CIFAR's fine-label order (which is
alphabetical) and is named by ``fine_label_names``; its images are the ``train`` ones, then the ``test``
ones, each in file order. Pickles, from Python 2 or 3, are read with the restricted unpickler of
:mod:`mtl.data.prepare.safe_pickle`, so they cannot run code.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from mtl.data.prepare import safe_pickle
from mtl.data.prepare.archives import Budget
from mtl.data.prepare.formats.common import SPLITS, SplitSource, from_arrays, unknown_layout
from mtl.data.prepare.formats.miniimagenet import fields, int_labels, need, search_roots
from mtl.errors import MtlError

FOLDER = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"
EXPECTED = (
    f"{FOLDER}/ with train, test, meta",
    ARCHIVE,
    "FC100_{train,val,test}.pickle",
)
_MEMBERS = ("train", "test", "meta")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")

# TADAM's split, by CIFAR-100 coarse label; the names guard against a file that numbers them otherwise.
SUPERCLASSES: dict[str, dict[int, str]] = {
    "train": {
        1: "fish",
        2: "flowers",
        3: "food_containers",
        4: "fruit_and_vegetables",
        5: "household_electrical_devices",
        6: "household_furniture",
        9: "large_man-made_outdoor_things",
        10: "large_natural_outdoor_scenes",
        15: "reptiles",
        17: "trees",
        18: "vehicles_1",
        19: "vehicles_2",
    },
    "val": {
        8: "large_carnivores",
        11: "large_omnivores_and_herbivores",
        13: "non-insect_invertebrates",
        16: "small_mammals",
    },
    "test": {0: "aquatic_mammals", 7: "insects", 12: "medium_mammals", 14: "people"},
}

Loaded = tuple[Any, str]  # an unpickled object and where it came from, for messages


def read(source: Path, **_) -> tuple[str, dict[str, SplitSource]]:
    if source.is_file() and (source.name.endswith(_ARCHIVE_SUFFIXES) or tarfile.is_tarfile(source)):
        return "cifar100-tar", _cifar(*_archive_pickles(source))
    roots = search_roots(source)
    if (source / FOLDER).is_dir():
        roots.append(source / FOLDER)
    for root in roots:
        if any((root / m).is_file() for m in _MEMBERS):
            pickles = [need(root, m) for m in _MEMBERS]
            return "cifar100-python", _cifar(*[(safe_pickle.load(p), str(p)) for p in pickles])
        if any(root.glob("FC100_*.pickle")):
            return "fc100-pickle", {s: _fc100_pickle(need(root, f"FC100_{s}.pickle")) for s in SPLITS}
    # Only after every root: an unpacked folder next to its archive is faster to read than the archive.
    for root in roots:
        if (root / ARCHIVE).is_file():
            return "cifar100-tar", _cifar(*_archive_pickles(root / ARCHIVE))
    raise unknown_layout("FC100", source, EXPECTED)


def _fc100_pickle(path: Path) -> SplitSource:
    data, labels = fields(safe_pickle.load(path), path, "data", "labels")
    return from_arrays(data, int_labels(labels, path, "labels"), str(path))


# CIFAR-100 -> FC100.


def _cifar(train: Loaded, test: Loaded, meta: Loaded) -> dict[str, SplitSource]:
    meta_obj, meta_at = meta
    (fine_names,) = fields(meta_obj, meta_at, "fine_label_names")
    if not isinstance(fine_names, (list, tuple)) or not fine_names:
        raise MtlError(f"{meta_at}: 'fine_label_names' must be a list of class names")
    names = {i: str(n) for i, n in enumerate(fine_names)}
    _check_superclass_names(meta_obj.get("coarse_label_names"), meta_at)
    parts = [_cifar_part(obj, at, len(names)) for obj, at in (train, test)]
    _check_one_superclass_per_class(parts, names, f"{train[1]}, {test[1]}")
    out = {}
    for split, superclasses in SUPERCLASSES.items():
        ids = list(superclasses)
        chosen = [np.isin(coarse, ids) for _, _, coarse in parts]
        images = np.concatenate([pixels[keep] for (pixels, _, _), keep in zip(parts, chosen, strict=True)])
        labels = np.concatenate([fine[keep] for (_, fine, _), keep in zip(parts, chosen, strict=True)])
        out[split] = from_arrays(images, labels, f"{train[1]} + {test[1]} ({split})", names)
    return out


def _cifar_part(obj: Any, at: str, n_fine: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``train`` or ``test``: ``(N, 32, 32, 3)`` pixels, fine and coarse labels, checked."""
    data, fine, coarse = fields(obj, at, "data", "fine_labels", "coarse_labels")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise MtlError(f"{at}: 'data' must be uint8 (N, 3072) planar RGB rows, got {data.dtype} {data.shape}")
    fine, coarse = int_labels(fine, at, "fine_labels"), int_labels(coarse, at, "coarse_labels")
    if not len(fine) == len(coarse) == len(data):
        raise MtlError(f"{at}: {len(data)} images but {len(fine)} fine and {len(coarse)} coarse labels")
    if len(fine) and (fine.min() < 0 or fine.max() >= n_fine):
        raise MtlError(f"{at}: fine labels must lie in 0..{n_fine - 1} (the meta file names {n_fine})")
    if len(coarse) and (coarse.min() < 0 or coarse.max() > 19):
        raise MtlError(f"{at}: coarse labels must lie in 0..19 (CIFAR-100's 20 superclasses)")
    # Each row is the R plane, then G, then B; a view, so no copy of the whole set is made here.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), fine, coarse


def _check_superclass_names(coarse_names: Any, at: str) -> None:
    if not isinstance(coarse_names, (list, tuple)):
        return  # the split is defined by coarse id; the names only double-check it
    expected = {i: name for superclasses in SUPERCLASSES.values() for i, name in superclasses.items()}
    for i, name in sorted(expected.items()):
        got = str(coarse_names[i]) if i < len(coarse_names) else None
        if got != name:
            raise MtlError(
                f"{at}: coarse label {i} is {got!r}, not {name!r}: not CIFAR-100's superclass numbering"
            )


def _check_one_superclass_per_class(parts: list, names: dict[int, str], at: str) -> None:
    # A fine class split across superclasses would land in two splits: the split would leak classes.
    pairs = np.unique(np.concatenate([np.stack([fine, coarse], 1) for _, fine, coarse in parts]), axis=0)
    fine_ids, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        bad = int(fine_ids[np.argmax(counts > 1)])
        supers = ", ".join(map(str, pairs[pairs[:, 0] == bad, 1]))
        raise MtlError(f"{at}: fine class {bad} ({names[bad]}) has images under coarse labels {supers}")


# Reading the pickles out of the archive.


def _archive_pickles(archive: Path) -> tuple[Loaded, Loaded, Loaded]:
    found: dict[str, Loaded] = {}
    budget = Budget(archive)  # members unpack as they are read or passed over: bounded either way
    try:
        with tarfile.open(archive, "r:*") as tar:
            # In member order, so a .gz is decompressed once instead of once per seek back.
            for number, member in enumerate(tar, 1):
                name = PurePosixPath(member.name).name
                wanted = member.isfile() and name in _MEMBERS and name not in found
                budget.charge(number, member.size if member.isfile() else 0, read=wanted)
                if wanted:
                    at = f"{archive}[{member.name}]"
                    found[name] = (_unpickle(tar.extractfile(member), at, member.size), at)
                    if len(found) == len(_MEMBERS):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise MtlError(f"{archive} is not a readable tar archive ({type(exc).__name__}: {exc})") from None
    for m in _MEMBERS:
        if m not in found:
            raise MtlError(f"{archive}: no member {FOLDER}/{m} in the archive")
    return found["train"], found["test"], found["meta"]


def _unpickle(stream: IO[bytes] | None, at: str, size: int) -> Any:
    """:func:`safe_pickle.load` for a stream of ``size`` bytes: the same restricted unpickler, limits
    and messages."""
    if stream is None:
        raise MtlError(f"{at} is not a readable pickle (not a regular file)")
    return safe_pickle._decode(safe_pickle.read(stream, at, size=size))
