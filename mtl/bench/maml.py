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

from mtl.config import Config, MetaConfig
from mtl.data.augment import Preprocess
from mtl.data.episodes import EpisodeSampler, episode_targets
from mtl.methods import meta_update
from mtl.methods.maml import MAML, MAMLSettings
from mtl.models.backbone import build_backbone
from mtl.runtime.timing import PeakMemory, timed

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
    pre = Preprocess(s.image_size, 3)
    on_device = torch.from_numpy(images).to(dev)
    sampler = EpisodeSampler(labels, s.way, s.shot, s.query, seed=0)
    tasks = np.stack([sampler.sample() for _ in range(s.meta_batch)])
    T, way, n = tasks.shape
    x = pre(on_device[torch.from_numpy(tasks).reshape(-1)]).view(T, way, n, 3, s.image_size, s.image_size)
    result = {}
    fast = _maml(way, s.shot, s.image_size, dev)
    fast_opt = torch.optim.Adam(fast.param_groups())
    slow = _maml(way, s.shot, s.image_size, dev)
    slow_opt = torch.optim.Adam(slow.param_groups())

    def slow_step() -> torch.Tensor:
        loss = _per_task_loss(slow, x, way, s.shot)
        slow_opt.zero_grad(set_to_none=True)
        loss.backward()
        slow_opt.step()
        return loss.detach()

    paths = {"batched": lambda: meta_update(fast, fast_opt, on_device, tasks, pre)[0], "per_task": slow_step}
    for name, step in paths.items():
        first: list[torch.Tensor] = []
        with PeakMemory(dev) as mem:
            seconds, calls = timed(
                lambda step=step, first=first: first.append(step()) if not first else step(),
                dev,
                s.min_seconds,
            )
        result[name] = {"tasks_per_s": calls * T / seconds, "peak_mb": mem.mb, "loss": float(first[0])}
    b, p = result["batched"], result["per_task"]
    return {
        "batched_tasks_per_s": b["tasks_per_s"],
        "per_task_tasks_per_s": p["tasks_per_s"],
        "speedup": b["tasks_per_s"] / p["tasks_per_s"],
        "batched_peak_mb": b["peak_mb"],
        "per_task_peak_mb": p["peak_mb"],
        "first_step_loss_batched": b["loss"],
        "first_step_loss_per_task": p["loss"],
        "inner_steps": INNER_STEPS,
    }
