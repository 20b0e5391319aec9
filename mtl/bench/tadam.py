"""``mtl bench``'s TADAM row: meta-train tasks/s of :class:`~mtl.methods.tadam.TADAM` (the tasks of a
meta-batch in one FiLM-free support forward, then one support and one query forward, each image with
its task's FiLM) against a plain per-task loop of the same maths (per task: its support set without
FiLM, the task embedding, FiLM, support and query again, the loss; the losses averaged). Both fp32,
ResNet-12 of the bench's widths, the same weights and tasks; their first-step losses must agree.

Batch norm runs on running statistics in both paths (calibrated once on the meta-batch's images):
in training it pools the statistics of all the tasks of a forward, as TADAM's code does, which no
per-task loop reproduces. The work per step is the same either way.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from mtl.bench.per_task import batched_vs_per_task, meta_batch
from mtl.config import Config, MetaConfig
from mtl.data.episodes import episode_targets
from mtl.methods.tadam import TADAM, TADAMSettings
from mtl.models.backbone import build_backbone

__all__ = ["bench_tadam"]


def _tadam(s, dev: torch.device) -> TADAM:
    """The same random ResNet-12 TADAM every call, in eval mode (running statistics)."""
    torch.manual_seed(0)
    encoder = build_backbone("resnet12", widths=s.widths, image_size=s.image_size)
    cfg = replace(
        Config(),
        precision="fp32",
        meta=MetaConfig(way=s.way, shot=s.shot),
        sections={"tadam": TADAMSettings()},
    )
    cfg = replace(cfg, data=replace(cfg.data, image_size=s.image_size))
    return TADAM(encoder, cfg).to(dev).eval()


@torch.no_grad()
def _calibrate(method: TADAM, x: torch.Tensor) -> None:
    """Running statistics of batch norm = the cumulative average over ``x`` ``(B, C, H, W)``, so that
    the eval-mode network normalises like a trained one."""
    norms = [m for m in method.encoder.modules() if isinstance(m, _BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    method.train()
    method.encoder(x)
    for m in norms:
        m.momentum = method.opts.bn_momentum
    method.eval()


def _per_task_loss(method: TADAM, x: torch.Tensor, way: int, shot: int) -> torch.Tensor:
    """x ``(T, way, n, C, H, W)``: the mean query loss, one task at a time."""
    y_s = episode_targets(way, shot, device=x.device)
    y_q = episode_targets(way, x.shape[2] - shot, device=x.device)
    total = 0.0
    for task in x:
        support, query = task[:, :shot].flatten(0, 1), task[:, shot:].flatten(0, 1)
        logits = method.episode_logits(support, y_s, query, 1, way)[0]
        total = total + F.cross_entropy(logits, y_q)
    return total / len(x)


def bench_tadam(s, images: np.ndarray, labels: np.ndarray, dev: torch.device) -> dict:
    """Tasks/s, peak memory and first-step loss of both paths on one meta-batch of ``s.meta_batch``."""
    batch = meta_batch(s, images, labels, dev)
    way = batch.tasks.shape[1]
    fast = _tadam(s, dev)
    _calibrate(fast, batch.x.flatten(0, 2))
    slow = _tadam(s, dev)
    slow.load_state(fast.state())
    # TADAM takes no gradient steps on a support set: inner_steps 0.
    return batched_vs_per_task(
        fast, slow, lambda: _per_task_loss(slow, batch.x, way, s.shot), batch,
        dev=dev, min_seconds=s.min_seconds, inner_steps=0,
    )  # fmt: skip
