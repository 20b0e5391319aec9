"""``mtl bench``'s MANN row: meta-train tasks/s of :class:`~mtl.methods.mann.MANN` (every task of a
meta-batch in one recurrence, a Python loop over time steps only) against a plain per-task loop of the
same maths (one sequence at a time, as the reference ports run a batch of one). Both fp32, the
paper's model (LSTM of 200 units, memory 128 × 40, 4 read heads) on flattened pixels, the same
weights, tasks, support orders and label slots; their first-step losses must agree.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from mtl.bench.per_task import batched_vs_per_task, meta_batch
from mtl.config import Config, MetaConfig
from mtl.data.episodes import episode_targets
from mtl.methods.mann import MANN, MANNSettings
from mtl.models.backbone import build_backbone

__all__ = ["bench_mann"]


def _mann(way: int, shot: int, image_size: int, dev: torch.device) -> MANN:
    """The same random MANN (the paper's sizes, at least ``way`` output classes) every call."""
    torch.manual_seed(0)
    encoder = build_backbone("conv4", widths=[8, 8, 8, 8], image_size=image_size)  # unused: pixels
    cfg = replace(
        Config(),
        precision="fp32",
        meta=MetaConfig(way=way, shot=shot),
        sections={"mann": MANNSettings(classes=max(5, way))},
    )
    cfg = replace(cfg, data=replace(cfg.data, image_size=image_size))
    return MANN(encoder, cfg).to(dev).train()


def _per_task_loss(mann: MANN, x: torch.Tensor, way: int, shot: int) -> torch.Tensor:
    """x ``(T, way, n, F)`` flattened images: the mean loss of every support step and query, one
    sequence at a time, with the slots and orders the batched path draws first."""
    T, _, n, _ = x.shape
    slots, order = mann.draw(T, way, way * shot, mann.rng)
    y_s = episode_targets(way, shot, device=x.device)
    y_q = episode_targets(way, n - shot, device=x.device)
    total = 0.0
    for t in range(T):
        support, query = x[t, :, :shot].flatten(0, 1), x[t, :, shot:].flatten(0, 1)
        s_logits, labels, q_logits = mann.episode_logits(
            support[None], y_s, query[None], slots[t : t + 1], order[t : t + 1]
        )
        slot = slots[t].to(x.device)
        logits = torch.cat([s_logits[0], q_logits[0]])
        total = total + F.cross_entropy(logits, slot[torch.cat([labels[0], y_q])])
    return total / T


def bench_mann(s, images: np.ndarray, labels: np.ndarray, dev: torch.device) -> dict:
    """Tasks/s, peak memory and first-step loss of both paths on one meta-batch of ``s.meta_batch``."""
    batch = meta_batch(s, images, labels, dev)
    way = batch.tasks.shape[1]
    x = batch.x.flatten(3)
    fast = _mann(way, s.shot, s.image_size, dev)
    slow = _mann(way, s.shot, s.image_size, dev)
    # inner_steps: the recurrence's time steps: the support sequence, the last label's, the queries'.
    return batched_vs_per_task(
        fast, slow, lambda: _per_task_loss(slow, x, way, s.shot), batch,
        dev=dev, min_seconds=s.min_seconds, inner_steps=way * s.shot + 2,
    )  # fmt: skip
