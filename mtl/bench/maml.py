"""``mtl bench``'s MAML row: meta-train tasks/s of :class:`~mtl.methods.maml.MAML` (``torch.func``,
tasks batched with ``vmap``) against a plain per-task loop of the same maths (the structure of
learn2learn's ``clone()`` / ``adapt()`` examples: per task, ``autograd.grad`` steps with
``create_graph=True``, then the query loss). Both second order, fp32, Conv-4 with 32 filters, the
same weights and tasks; their first-step losses must agree.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from mtl.bench.per_task import batched_vs_per_task, meta_batch
from mtl.config import Config, MetaConfig
from mtl.data.episodes import episode_targets
from mtl.methods.maml import MAML, MAMLSettings
from mtl.models.backbone import build_backbone

__all__ = ["bench_maml"]

INNER_STEPS, INNER_LR = 5, 0.01  # the paper's miniImageNet inner loop


def _maml(way: int, shot: int, image_size: int, dev: torch.device) -> MAML:
    """The same random Conv-4 MAML every call."""
    torch.manual_seed(0)
    encoder = build_backbone("conv4", widths=[32, 32, 32, 32], image_size=image_size)
    cfg = replace(
        Config(),
        precision="fp32",
        meta=MetaConfig(way=way, shot=shot),
        sections={"maml": MAMLSettings(inner_steps=INNER_STEPS, inner_lr=INNER_LR)},
    )
    cfg = replace(cfg, data=replace(cfg.data, image_size=image_size))
    return MAML(encoder, cfg).to(dev).train()


def _per_task_loss(maml: MAML, x: torch.Tensor, way: int, shot: int) -> torch.Tensor:
    """x ``(T, way, n, C, H, W)``: the mean query loss, one task at a time, autograd inner loop."""
    y_s, y_q = (
        episode_targets(way, shot, device=x.device),
        episode_targets(way, x.shape[2] - shot, device=x.device),
    )
    total = 0.0
    for task in x:
        params = dict(maml.net.named_parameters())
        x_s, x_q = task[:, :shot].flatten(0, 1), task[:, shot:].flatten(0, 1)
        for _ in range(INNER_STEPS):
            loss = F.cross_entropy(torch.func.functional_call(maml.net, params, (x_s,)), y_s)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {k: v - INNER_LR * g for (k, v), g in zip(params.items(), grads, strict=True)}
        total = total + F.cross_entropy(torch.func.functional_call(maml.net, params, (x_q,)), y_q)
    return total / len(x)


def bench_maml(s, images: np.ndarray, labels: np.ndarray, dev: torch.device) -> dict:
    """Tasks/s, peak memory and first-step loss of both paths on one meta-batch of ``s.meta_batch``."""
    batch = meta_batch(s, images, labels, dev)
    way = batch.tasks.shape[1]
    x = batch.x
    fast = _maml(way, s.shot, s.image_size, dev)
    slow = _maml(way, s.shot, s.image_size, dev)
    return batched_vs_per_task(
        fast, slow, lambda: _per_task_loss(slow, x, way, s.shot), batch,
        dev=dev, min_seconds=s.min_seconds, inner_steps=INNER_STEPS,
    )  # fmt: skip
