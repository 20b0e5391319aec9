"""How the glyphs dataset divides its class ids into train / val / test: lowest ids first, in about
miniImageNet's shares (64 / 16 / 20 %). :mod:`mtl.data.glyphs.dataset` splits class by class
(:func:`split_class_ids`), :mod:`mtl.data.glyphs.families` whole families at a time; both read the
shares here.
"""

from __future__ import annotations

import math

import numpy as np

from mtl.errors import MtlError

__all__ = ["FRACTIONS", "SPLITS", "split_class_ids"]

SPLITS = ("train", "val", "test")
FRACTIONS = (0.64, 0.16)  # train / val share of the classes, the rest is test (miniImageNet: 64/16/20)


def split_class_ids(num_classes: int) -> dict[str, np.ndarray]:
    """Class ids of each split: lowest ids train, then val, then test, about 64/16/20 % (>= 1 each)."""
    if not isinstance(num_classes, int) or num_classes < len(SPLITS):
        raise MtlError(f"glyphs classes must be an integer >= {len(SPLITS)}, got {num_classes!r}")
    sizes = [max(1, math.floor(f * num_classes + 0.5)) for f in FRACTIONS]
    while sum(sizes) >= num_classes:  # keep at least one test class, taken from the larger split
        sizes[int(np.argmax(sizes))] -= 1
    bounds = np.cumsum([0, *sizes, num_classes - sum(sizes)])
    return {name: np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i, name in enumerate(SPLITS)}
