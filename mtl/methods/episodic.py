"""Episodic evaluation on precomputed features.

The encoder is fixed during evaluation, so every image the episodes use is encoded once
(:func:`extract_features`, with :func:`mtl.data.episodes.episode_images` choosing the images) and each
episode only indexes that ``(num_images, D)`` matrix. The classifiers (:func:`nearest_centroid`,
:func:`finetune_theta`, any method's logits through :func:`episode_accuracy`) then process a chunk of
episodes at once with batched matmuls and keep no autograd graph. :func:`chunked_accuracy` is the one
loop over chunks of episodes, also for the methods that encode each episode on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.data.episodes import episode_targets
from mtl.errors import MtlError
from mtl.models import base_learner
from mtl.results import paired
from mtl.runtime.progress import progress

__all__ = [
    "chunked_accuracy",
    "episode_accuracy",
    "extract_features",
    "finetune_theta",
    "mean_ci",
    "nearest_centroid",
    "prototype_logits",
    "raw_pixels",
]

# Cap on the gathered features of one chunk (float32 elements, 256 MB), so wide features such as raw
# pixels do not need a hand-tuned chunk size.
_MAX_CHUNK_ELEMENTS = 1 << 26


@torch.no_grad()
def extract_features(
    encode: Callable[[Tensor], Tensor],
    images: np.ndarray | Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Encode every image of ``images`` (a split, or the rows of it that episodes use).

    Args:
        encode: maps a uint8 batch ``(B, H, W, C)`` already on ``device`` to ``(B, D)`` features; it owns
            preprocessing, ``model.eval()`` and autocast.
        images: ``(N, H, W, C)`` uint8, an array or :class:`~mtl.data.episodes.ImageRows` (a memmap is
            read one batch at a time).
        batch_size: images per ``encode`` call.
        device: where batches and the result live.

    Returns:
        ``(N, D)`` float32 features on ``device``.
    """
    if len(images) == 0:
        raise MtlError("no images to encode: the split is empty")
    device = torch.device(device)
    out: list[Tensor] = []
    starts = range(0, len(images), batch_size)
    for start in progress(starts, length=len(starts), label=f"  encoding {len(images)} images"):
        batch = images[start : start + batch_size]
        if isinstance(batch, np.ndarray):
            # A copy: memmap slices are read-only, and `encode` may work in place.
            batch = torch.from_numpy(np.array(batch))
            if device.type == "cuda":
                batch = batch.pin_memory()
        # Inference mode skips autograd's version counters and views; the concatenation below runs
        # outside it, so what callers get is an ordinary tensor (MAML's adapt differentiates through it).
        with torch.inference_mode():
            out.append(encode(batch.to(device, non_blocking=True)).float())
    return torch.cat(out)


def chunked_accuracy(
    episodes: Tensor | np.ndarray,
    scores: Callable[[Tensor], Tensor],
    *,
    chunk: int,
    width: int = 0,
    device: torch.device | None = None,
) -> Tensor:
    """The one loop over episodes, a chunk at a time: per-episode query accuracy ``(E,)`` in ``[0, 1]``.

    Args:
        episodes: ``(E, way, shot + query)`` image ids.
        scores: an int64 chunk of them ``(e, way, shot + query)`` -> query scores ``(e, way * query,
            way)`` of the class-major queries.
        chunk: most episodes at once; fewer where ``width``-wide features of a chunk's images would
            pass 256 MB (raw pixels need no hand-tuned chunk size).
        device: where the chunks go (None: they stay on the host, as ids for image gathers).
    """
    episodes = torch.as_tensor(episodes, dtype=torch.long)
    if episodes.ndim != 3:
        raise ValueError(f"episodes must be (E, way, shot + query), got shape {tuple(episodes.shape)}")
    way = episodes.shape[1]
    step = max(1, min(chunk, _MAX_CHUNK_ELEMENTS // max(episodes[0].numel() * width, 1)))
    starts = range(0, len(episodes), step)
    acc = []
    for start in progress(starts, length=len(starts), label=f"  {len(episodes)} episodes"):
        idx = episodes[start : start + step]
        s = scores(idx if device is None else idx.to(device, non_blocking=True))
        targets = episode_targets(way, s.shape[1] // way, device=s.device)
        acc.append((s.argmax(dim=-1) == targets).float().mean(dim=-1))
    return torch.cat(acc)


def prototype_logits(support: Tensor, y_support: Tensor, query: Tensor, way: int) -> Tensor:
    """support ``(E, n_s, D)`` with labels ``(n_s,)``, query ``(E, n_q, D)`` -> ``-‖q − c_k‖²``
    ``(E, n_q, way)``, where ``c_k`` is the mean of class ``k``'s support rows (any shot per class)."""
    onehot = (y_support.unsqueeze(-1) == torch.arange(way, device=y_support.device)).to(support.dtype)
    protos = torch.matmul(onehot.T, support) / onehot.sum(0).unsqueeze(-1)  # (E, way, D)
    return -torch.cdist(query, protos).square()


def _check_shot(episodes: Tensor | np.ndarray, shot: int) -> None:
    if not 1 <= shot < episodes.shape[-1]:
        raise ValueError(
            f"shot={shot} must be in [1, {episodes.shape[-1]}) for episodes of shape {tuple(episodes.shape)}"
        )


@torch.no_grad()
def episode_accuracy(
    logits_fn: Callable[[Tensor, Tensor, Tensor, int], Tensor],
    features: Tensor,
    episodes: Tensor | np.ndarray,
    shot: int,
    *,
    chunk: int = 256,
) -> Tensor:
    """Any classifier of episodes on fixed features, a chunk of episodes at once.

    Args:
        logits_fn: ``(support (e, way * shot, D), y_support (way * shot,), query (e, way * query, D),
            way) -> (e, way * query, way)`` scores.
        features: ``(N, D)`` features of the split.
        episodes: ``(E, way, shot + query)`` indices into ``features``.

    Returns:
        ``(E,)`` float32 query accuracy per episode, on ``features.device``.
    """
    _check_shot(episodes, shot)
    way = episodes.shape[1]
    features = features.float()
    y_support = episode_targets(way, shot, device=features.device)

    def scores(idx: Tensor) -> Tensor:
        e = idx.shape[0]
        support = features[idx[:, :, :shot].reshape(e, -1)]  # (e, way * shot, D)
        query = features[idx[:, :, shot:].reshape(e, -1)]  # (e, way * query, D)
        return logits_fn(support, y_support, query, way)

    return chunked_accuracy(episodes, scores, chunk=chunk, width=features.shape[1], device=features.device)


def nearest_centroid(
    features: Tensor, episodes: Tensor | np.ndarray, shot: int, *, chunk: int = 256
) -> Tensor:
    """Prototype classifier: each query goes to the nearest support mean (squared Euclidean distance).

    Args:
        features: ``(N, D)`` features of the split.
        episodes: ``(E, way, shot + query)`` indices into ``features``.
        shot: support images per class.
        chunk: maximum episodes processed at once.

    Returns:
        ``(E,)`` float32 query accuracy per episode, in ``[0, 1]``, on ``features.device``.
    """
    return episode_accuracy(prototype_logits, features, episodes, shot, chunk=chunk)


def finetune_theta(
    features: Tensor,
    episodes: Tensor | np.ndarray,
    shot: int,
    W0: Tensor,
    b0: Tensor,
    *,
    steps: int,
    lr: float,
    chunk: int = 256,
) -> Tensor:
    """The base learner's meta-test (MTL's, and FT's from θ = 0): adapt θ from ``(W0, b0)`` on each
    support set, then classify the queries.

    Args:
        features: ``(N, D)`` features of the split.
        episodes: ``(E, way, shot + query)`` indices into ``features``.
        shot: support images per class.
        W0: ``(way, D)``; b0: ``(way,)`` — the (meta-learned) initialisation, shared by all episodes.
        steps, lr: inner-loop gradient steps and learning rate (:func:`mtl.models.base_learner.adapt_theta`).
        chunk: maximum episodes adapted at once.

    Returns:
        ``(E,)`` float32 query accuracy per episode, on ``features.device``; no graph is kept even if
        ``W0`` requires grad.
    """
    _check_shot(episodes, shot)
    way = episodes.shape[1]
    if W0.shape != (way, features.shape[1]) or b0.shape != (way,):
        raise MtlError(
            f"the base-learner has shape {tuple(W0.shape)} but episodes are {way}-way "
            f"on {features.shape[1]}-d features"
        )
    W0 = W0.detach().to(features.device, torch.float32)
    b0 = b0.detach().to(features.device, torch.float32)

    def logits(support: Tensor, y_support: Tensor, query: Tensor, way: int) -> Tensor:
        W, b = base_learner.adapt_theta(support, y_support, W0, b0, steps=steps, lr=lr)
        return base_learner.logits(query, W, b)

    return episode_accuracy(logits, features, episodes, shot, chunk=chunk)


def mean_ci(acc: Tensor | np.ndarray) -> tuple[float, float]:
    """Mean accuracy and its 95% confidence half-width, both in percent: a tensor's values by
    :func:`mtl.results.paired.mean_ci` (``1.96 · std(acc) / sqrt(E)``, population std, in float64).

    Args:
        acc: ``(E,)`` per-episode accuracies in ``[0, 1]``.
    """
    if isinstance(acc, Tensor):
        acc = acc.detach().cpu().numpy()
    return paired.mean_ci(acc)


@torch.no_grad()
def raw_pixels(images: np.ndarray, size: int | None = None, *, batch_size: int = 1024) -> Tensor:
    """Flattened pixel features in ``[0, 1]`` for the pixel baseline.

    Args:
        images: ``(N, H, W, C)`` uint8.
        size: resize to ``size × size`` first (area resampling, i.e. pixel averaging when shrinking) —
            raw 84×84 pixels are 21,168-d.
        batch_size: images resized at once (bounds memory for large splits).

    Returns:
        ``(N, size * size * C)`` (or ``(N, H * W * C)``) float32 CPU tensor, channels-last order.
    """
    n, h, w, c = images.shape
    side = (h, w) if size is None else (size, size)
    out = torch.empty(n, side[0] * side[1] * c)
    for start in range(0, n, batch_size):
        x = torch.from_numpy(np.array(images[start : start + batch_size])).float().div_(255)
        if (h, w) != side:
            x = F.interpolate(x.permute(0, 3, 1, 2), size=side, mode="area").permute(0, 2, 3, 1)
        out[start : start + len(x)] = x.reshape(len(x), -1)
    return out
