"""A method's meta-update batched over a meta-batch against a plain per-task loop of the same maths:
the measurement every method row of ``mtl bench`` makes (:data:`mtl.bench.benchmark.METHOD_ROWS`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from mtl.data.augment import Preprocess
from mtl.data.episodes import EpisodeSampler
from mtl.methods import Method, meta_update
from mtl.runtime.timing import PeakMemory, timed

__all__ = ["MetaBatch", "batched_vs_per_task", "meta_batch"]


class MetaBatch(NamedTuple):
    """One meta-batch as both paths see it."""

    pre: Preprocess
    images: torch.Tensor  # (N, H, W, 3) uint8 on the device: what meta_update gathers from
    tasks: np.ndarray  # (T, way, shot + query) ids into images
    x: torch.Tensor  # (T, way, shot + query, 3, H, W): the tasks' model input, for the per-task loop


def meta_batch(s, images: np.ndarray, labels: np.ndarray, dev: torch.device) -> MetaBatch:
    """``s.meta_batch`` tasks of ``s.way`` × (``s.shot`` + ``s.query``) drawn with seed 0."""
    pre = Preprocess(s.image_size, 3)
    on_device = torch.from_numpy(images).to(dev)
    sampler = EpisodeSampler(labels, s.way, s.shot, s.query, seed=0)
    tasks = np.stack([sampler.sample() for _ in range(s.meta_batch)])
    T, way, n = tasks.shape
    x = pre(on_device[torch.from_numpy(tasks).reshape(-1)]).view(T, way, n, 3, s.image_size, s.image_size)
    return MetaBatch(pre, on_device, tasks, x)


def batched_vs_per_task(
    fast: Method,
    slow: Method,
    per_task_loss: Callable[[], torch.Tensor],
    batch: MetaBatch,
    *,
    dev: torch.device,
    min_seconds: float,
    inner_steps: int,
) -> dict:
    """Tasks/s, peak memory and first-step loss of :func:`~mtl.methods.meta_update` of ``fast`` on
    ``batch`` and of an optimiser step of ``slow`` (the same weights) on ``per_task_loss()``, the
    mean query loss of the same tasks one at a time; both clip as the method does, and their first
    losses must agree. ``inner_steps``: what the row's label counts (gradient, LSTM-learner or time
    steps)."""
    fast_opt, slow_opt = fast.optimizer(), slow.optimizer()

    def batched() -> torch.Tensor:
        return meta_update(fast, fast_opt, batch.images, batch.tasks, batch.pre)[0]

    def per_task() -> torch.Tensor:
        loss = per_task_loss()
        slow_opt.zero_grad(set_to_none=True)
        loss.backward()
        if slow.max_grad_norm is not None:
            params = [p for group in slow_opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, slow.max_grad_norm)
        slow_opt.step()
        return loss.detach()

    result = {}
    for name, step in {"batched": batched, "per_task": per_task}.items():
        first: list[torch.Tensor] = []
        with PeakMemory(dev) as mem:
            seconds, calls = timed(
                lambda step=step, first=first: first.append(step()) if not first else step(), dev, min_seconds
            )
        tasks_per_s = calls * len(batch.tasks) / seconds
        result[name] = {"tasks_per_s": tasks_per_s, "peak_mb": mem.mb, "loss": float(first[0])}
    b, p = result["batched"], result["per_task"]
    return {
        "batched_tasks_per_s": b["tasks_per_s"],
        "per_task_tasks_per_s": p["tasks_per_s"],
        "speedup": b["tasks_per_s"] / p["tasks_per_s"],
        "batched_peak_mb": b["peak_mb"],
        "per_task_peak_mb": p["peak_mb"],
        "first_step_loss_batched": b["loss"],
        "first_step_loss_per_task": p["loss"],
        "inner_steps": inner_steps,
    }
