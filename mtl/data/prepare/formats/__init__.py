"""Readers of the dataset formats in circulation, one module per dataset.

Each reader takes the source path and returns ``(source_format, {split: SplitSource})``, detecting
which of its dataset's layouts the source is in and failing with one line naming the path otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mtl.data.prepare.formats import fc100, folder, miniimagenet, omniglot, tieredimagenet


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's reader, its standard prepared image size and channel count, and the size of its
    standard train split (what ``mtl config`` counts pretraining steps from before it is prepared)."""

    read: Callable
    image_size: int
    channels: int = 3
    train_images: int | None = None


DATASETS: dict[str, DatasetSpec] = {
    "miniimagenet": DatasetSpec(miniimagenet.read, 84, train_images=64 * 600),
    "fc100": DatasetSpec(fc100.read, 32, train_images=60 * 600),
    "tieredimagenet": DatasetSpec(tieredimagenet.read, 84, train_images=448_695),
    "omniglot": DatasetSpec(omniglot.read, 28, channels=1, train_images=964 * 20),
    "folder": DatasetSpec(folder.read, 84),
}
