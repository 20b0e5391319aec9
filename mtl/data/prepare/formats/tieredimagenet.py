"""tieredImageNet (Ren et al. 2018): 608 classes in 351/97/160 (34 super-categories), 84×84.

``--source`` is the folder holding one of the layouts below. Also accepted: a file inside that
folder, and a folder whose only sub-folder holds the layout (an archive's wrapper folder).

``png-pickle``
    ``{train,val,test}_images_png.pkl``, each a list of PNG-encoded images (``bytes``, or the uint8
    arrays ``cv2.imencode`` returns), with ``{split}_labels.pkl`` holding ``label_specific`` (one int
    per image) and ``label_specific_str`` (the class names, indexed by label), plus
    ``label_general`` & co., which are not used.
``npz-bgr``
    ``{train,val,test}_images.npz`` (key ``images``, uint8 (N, 84, 84, 3) in **BGR** order, as
    ``cv2.imdecode`` gives) with the same ``{split}_labels.pkl``, whose labels may be under
    ``label_specific`` or ``labels``; names come from ``label_specific_str`` if present.
``class-folders``
    ``train/``, ``val/`` (or ``validation/``) and ``test/``, each holding ``<wnid>/*.jpg``.

The labels files' integers order the classes (numerically) and ``label_specific_str`` names them
(classes without a name are called by their number); class folders are ordered by sorted name.
Pickles, from Python 2 or 3, are read with :mod:`mtl.data.prepare.safe_pickle`, so they cannot run code.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtl.data.prepare import safe_pickle
from mtl.data.prepare.archives import UNPACK_ERRORS, check_npz_array, reason
from mtl.data.prepare.formats.common import SPLITS, SplitSource, from_arrays, unknown_layout
from mtl.data.prepare.formats.miniimagenet import int_labels, need, search_roots, split_class_folders
from mtl.data.prepare.limits import open_regular
from mtl.errors import MtlError

EXPECTED = (
    "{train,val,test}_images_png.pkl + {train,val,test}_labels.pkl",
    "{train,val,test}_images.npz + {train,val,test}_labels.pkl",
    "train/, val/, test/ with <wnid>/*.jpg",
)


def read(source: Path, **_) -> tuple[str, dict[str, SplitSource]]:
    for root in search_roots(source):
        if any(root.glob("*_images_png.pkl")):
            return "png-pickle", {s: _png_pickle(root, s) for s in SPLITS}
        if any(root.glob("*_images.npz")):
            return "npz-bgr", {s: _npz(root, s) for s in SPLITS}
        if splits := split_class_folders(root):
            return "class-folders", splits
    raise unknown_layout("tieredImageNet", source, EXPECTED)


def _png_pickle(root: Path, split: str) -> SplitSource:
    path = need(root, f"{split}_images_png.pkl")
    labels, names, labels_path = _labels(root, split)
    # decode_bytes=False: the values are the PNG files themselves, not text.
    encoded = safe_pickle.load(path, decode_bytes=False)
    if not isinstance(encoded, (list, tuple)) and not (isinstance(encoded, np.ndarray) and encoded.ndim == 1):
        raise MtlError(f"{path}: expected a list of PNG-encoded images, got {type(encoded).__name__}")
    if len(encoded) != len(labels):
        raise MtlError(f"{path} holds {len(encoded)} images but {labels_path} {len(labels)} labels")
    classes, relabelled = np.unique(labels, return_inverse=True)
    return SplitSource(
        class_names=[names.get(int(c), str(int(c))) for c in classes],
        labels=relabelled,
        items=_Encoded(encoded),
        where=lambda i: f"{path}[{i}]",
    )


def _npz(root: Path, split: str) -> SplitSource:
    path = need(root, f"{split}_images.npz")
    labels, names, labels_path = _labels(root, split)
    images = _npz_images(path)
    if (n := len(images) if images.ndim else 0) != len(labels):
        raise MtlError(f"{path} holds {n} images but {labels_path} {len(labels)} labels")
    split_source = from_arrays(images, labels, str(path), names)
    # BGR -> RGB as a view: a copy of the train split would need another ~9 GB.
    split_source.items = split_source.items[..., ::-1]
    return split_source


def _npz_images(path: Path) -> np.ndarray:
    """The ``images`` array of an ``.npz`` file, read whole, once its entry is checked
    (:func:`~mtl.data.prepare.archives.check_npz_array`)."""
    expected = f"{path}: expected an .npz archive with an 'images' array"
    try:
        with open_regular(path) as f:
            if not zipfile.is_zipfile(f):
                raise MtlError(expected)
            with zipfile.ZipFile(f) as z:
                if "images.npy" not in z.namelist():
                    raise MtlError(f"{expected} (it has {len(z.namelist())} other entries)")
                check_npz_array(path, z, "images")
            f.seek(0)
            with np.load(f) as archive:  # allow_pickle stays False: an .npz cannot run code either
                return archive["images"]
    except MemoryError:
        raise MtlError(f"{path}: not enough memory to load its images") from None
    except (ValueError, *UNPACK_ERRORS) as exc:
        raise MtlError(f"{path} is not a readable .npz file ({reason(exc)})") from None


def _labels(root: Path, split: str) -> tuple[np.ndarray, dict[int, str], Path]:
    """``{split}_labels.pkl``: the per-image labels, ``{label: name}`` and the file's path."""
    path = need(root, f"{split}_labels.pkl")
    obj = safe_pickle.load(path)
    key = next((k for k in ("label_specific", "labels") if isinstance(obj, dict) and k in obj), None)
    if key is None:
        has = f"it has: {', '.join(map(str, obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise MtlError(f"{path}: no key 'label_specific' or 'labels' ({has})")
    strs = obj.get("label_specific_str")
    names = {i: _text(s) for i, s in enumerate(strs)} if isinstance(strs, (list, tuple, np.ndarray)) else {}
    return int_labels(obj[key], path, key), names, path


def _text(name: Any) -> str:
    return name.decode("latin1") if isinstance(name, bytes) else str(name)


class _Encoded(Sequence):
    """The pickled images as PNG ``bytes``, converted one at a time so no second copy is held.

    A Python 2 pickle's byte strings load as latin-1 ``str``; ``cv2.imencode`` made uint8 arrays.
    """

    def __init__(self, items: Sequence) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> bytes:
        item = self.items[i]
        if isinstance(item, str):
            return item.encode("latin1")
        if isinstance(item, np.ndarray):
            return item.tobytes()
        # Anything else is not an image: empty bytes make prepare report it as undecodable.
        return bytes(item) if isinstance(item, (bytes, bytearray)) else b""
