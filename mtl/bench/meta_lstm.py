"""``mtl bench``'s Meta-LSTM row: meta-train tasks/s of :class:`~mtl.methods.meta_lstm.MetaLSTM`
(``torch.func``, tasks batched with ``vmap``) against a plain per-task loop of the same maths (the
structure of the official code and its PyTorch port: per task, per inner step, the learner's gradient
by ``autograd.grad`` on a detached copy of θ, then the meta-learner's update; then the query loss).
Both fp32, Conv-4 with 32 filters, the official inner steps for the shot (12 for 1-shot, 8 otherwise),
the same weights and tasks; their first-step losses must agree.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from mtl.bench.per_task import batched_vs_per_task, meta_batch
from mtl.config import Config, MetaConfig
from mtl.data.episodes import episode_targets
from mtl.methods.meta_lstm import MetaLSTM, MetaLSTMSettings
from mtl.models.backbone import build_backbone

__all__ = ["bench_meta_lstm"]


def _meta_lstm(way: int, shot: int, image_size: int, dev: torch.device) -> MetaLSTM:
    """The same random Conv-4 Meta-LSTM every call, with the official settings for ``shot``."""
    torch.manual_seed(0)
    encoder = build_backbone("conv4", widths=[32, 32, 32, 32], image_size=image_size)
    cfg = replace(
        Config(),
        precision="fp32",
        meta=MetaConfig(way=way, shot=shot),
        sections={MetaLSTM.name: MetaLSTMSettings()},
    )
    cfg = replace(cfg, data=replace(cfg.data, image_size=image_size))
    return MetaLSTM(encoder, cfg).to(dev).train()


def _per_task_loss(method: MetaLSTM, x: torch.Tensor, way: int, shot: int) -> torch.Tensor:
    """x ``(T, way, n, C, H, W)``: the mean query loss, one task at a time, autograd inner loop."""
    y_s = episode_targets(way, shot, device=x.device)
    y_q = episode_targets(way, x.shape[2] - shot, device=x.device)
    names = dict(method.net.named_parameters())
    total = 0.0
    for task in x:
        x_s, x_q = task[:, :shot].flatten(0, 1), task[:, shot:].flatten(0, 1)
        theta = torch.cat([p.reshape(-1) for p in names.values()])
        state = method.meta.initial_state(theta)
        for _ in range(method.train_steps):
            copy = theta.detach().requires_grad_()
            loss = F.cross_entropy(torch.func.functional_call(method.net, _split(copy, names), (x_s,)), y_s)
            (g,) = torch.autograd.grad(loss, copy)
            theta, state = method.meta(theta, g / len(y_s), loss.detach(), state)
        logits = torch.func.functional_call(method.net, _split(theta, names), (x_q,))
        total = total + F.cross_entropy(logits, y_q)
    return total / len(x)


def _split(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    parts = flat.split([p.numel() for p in like.values()])
    return {k: part.view(p.shape) for (k, p), part in zip(like.items(), parts, strict=True)}


def bench_meta_lstm(s, images: np.ndarray, labels: np.ndarray, dev: torch.device) -> dict:
    """Tasks/s, peak memory and first-step loss of both paths on one meta-batch of ``s.meta_batch``."""
    batch = meta_batch(s, images, labels, dev)
    way = batch.tasks.shape[1]
    x = batch.x
    fast = _meta_lstm(way, s.shot, s.image_size, dev)
    slow = _meta_lstm(way, s.shot, s.image_size, dev)
    return batched_vs_per_task(
        fast, slow, lambda: _per_task_loss(slow, x, way, s.shot), batch,
        dev=dev, min_seconds=s.min_seconds, inner_steps=fast.train_steps,
    )  # fmt: skip
