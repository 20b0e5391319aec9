"""Seeded N-way K-shot Q-query episode sampling over one split's label array.

An episode is an int64 array of image indices of shape ``(way, shot + query)``: row ``i`` holds the
images of the task's class ``i``; the first ``shot`` columns are the support set, the rest the query
set. Class ``i`` of the task gets target ``i`` (see :func:`episode_targets`), so the split-level class
ids never reach the base-learner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mtl.errors import MtlError

__all__ = [
    "EpisodeSampler",
    "ImageRows",
    "check_episode_shape",
    "episode_images",
    "episode_targets",
    "fixed_episodes",
]


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got shape {labels.shape} and dtype {labels.dtype}"
        )
    return labels


def check_episode_shape(
    labels: np.ndarray,
    way: int,
    shot: int,
    query: int,
    *,
    split: str = "split",
    class_names: Sequence[str] | None = None,
) -> None:
    """Raise :class:`MtlError` unless every ``way``-way ``shot``-shot ``query``-query task can be drawn.

    Args:
        labels: ``(num_images,)`` integer class id of every image of the split.
        way, shot, query: the episode shape; each must be at least 1.
        split: the split's name, used in messages.
        class_names: ``class_names[c]`` names class id ``c`` in messages (the id itself otherwise).
    """
    for name, value in (("way", way), ("shot", shot), ("query", query)):
        if int(value) < 1:
            raise MtlError(f"{name} must be at least 1, got {value}")
    classes, counts = np.unique(_as_labels(labels), return_counts=True)
    if way > len(classes):
        raise MtlError(f"way={way} but the {split} split has only {len(classes)} classes")
    need = shot + query
    short = np.flatnonzero(counts < need)
    if len(short):
        c = int(classes[short[0]])
        name = class_names[c] if class_names is not None else str(c)
        raise MtlError(
            f"class '{name}' in {split} has {int(counts[short[0]])} images; "
            f"shot+query = {shot}+{query} = {need} needed"
        )


class EpisodeSampler:
    """Draws episodes from one split with its own random generator, so a run can resume exactly.

    Args:
        labels: ``(num_images,)`` integer class id of every image of the split.
        way, shot, query: the episode shape.
        seed: an integer seed, or a ``numpy.random.Generator`` that is used (and advanced) as is.
    """

    def __init__(self, labels: np.ndarray, way: int, shot: int, query: int, seed: int | np.random.Generator):
        labels = _as_labels(labels)
        check_episode_shape(labels, way, shot, query)
        self.way, self.shot, self.query = int(way), int(shot), int(query)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        # A stable sort groups each class's image indices in ascending order, once.
        order = np.argsort(labels, kind="stable")
        self.classes, starts = np.unique(labels[order], return_index=True)
        self.members: list[np.ndarray] = np.split(order.astype(np.int64), starts[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _class_positions(self, classes: np.ndarray) -> np.ndarray:
        classes = np.asarray(classes).reshape(-1)
        if len(classes) != self.way or len(np.unique(classes)) != self.way:
            raise ValueError(f"classes must hold {self.way} distinct class ids, got {classes.tolist()}")
        if not np.isin(classes, self.classes).all():
            raise ValueError(f"classes {classes.tolist()} are not all class ids of this split")
        return np.searchsorted(self.classes, classes)

    def sample(self, classes: np.ndarray | None = None, exclude: np.ndarray | None = None) -> np.ndarray:
        """Draw one episode.

        Args:
            classes: optional ``(way,)`` distinct split-level class ids, in task order; drawn uniformly
                without replacement when omitted.
            exclude: optional image indices not to draw (e.g. the images a hard task's failure was
                measured on), honoured for every class that has enough other images.

        Returns:
            ``(way, shot + query)`` int64 image indices; support and query are disjoint because each
            class's images are drawn without replacement.
        """
        if classes is None:
            pos = self.rng.choice(self.num_classes, self.way, replace=False)
        else:
            pos = self._class_positions(classes)
        k = self.shot + self.query
        pools = [self.members[p] for p in pos]
        if exclude is not None:
            fresh = [np.setdiff1d(m, exclude, assume_unique=True) for m in pools]
            pools = [f if len(f) >= k else m for f, m in zip(fresh, pools, strict=True)]
        return np.stack([self.rng.choice(m, k, replace=False) for m in pools])

    def state_dict(self) -> dict[str, Any]:
        """The generator's state (plain Python containers, safe for ``torch.save``/``json``)."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def fixed_episodes(
    labels: np.ndarray, way: int, shot: int, query: int, episodes: int, seed: int
) -> np.ndarray:
    """A fixed evaluation set, a pure function of its arguments.

    Returns:
        ``(episodes, way, shot + query)`` int64 image indices.
    """
    if episodes < 1:
        raise MtlError(f"episodes must be at least 1, got {episodes}")
    sampler = EpisodeSampler(labels, way, shot, query, seed)
    return np.stack([sampler.sample() for _ in range(episodes)])


def episode_targets(way: int, per_class: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Targets of a class-major set: ``(way * per_class,)`` int64 ``[0, .., 0, 1, .., 1, ...]``."""
    return torch.arange(way, device=device).repeat_interleave(per_class)


class ImageRows:
    """Rows ``ids`` of an ``(N, H, W, C)`` image array as an array-like ``(len(ids), H, W, C)``, read a
    slice at a time (a memory-mapped split stays on disk)."""

    def __init__(self, images: np.ndarray, ids: np.ndarray) -> None:
        self.images, self.ids = images, ids
        self.shape = (len(ids), *images.shape[1:])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.asarray(self.images[self.ids[rows]])


def episode_images(images: np.ndarray, episodes: np.ndarray) -> tuple[ImageRows, np.ndarray]:
    """The images that ``episodes`` use, and the episodes re-indexed into them.

    Evaluation encodes each image once, and only those an episode draws: 600 5-way episodes with
    16 images per class touch at most 48,000 images, under a third of tieredImageNet's test split.
    """
    ids, local = np.unique(episodes, return_inverse=True)
    return ImageRows(images, ids), local.reshape(np.shape(episodes)).astype(np.int64)
