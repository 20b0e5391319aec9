"""Hard tasks inside metatrain's meta-batches: feed the pool, draw fresh hard tasks, log what happens."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from mtl.config import Config
from mtl.data.cache import Split
from mtl.data.episodes import EpisodeSampler
from mtl.hard_tasks import HardTaskPool, per_class_scores
from mtl.monitor import Monitor


class HardTasks:
    """The pool plus its own image sampler, so plain tasks draw exactly what they draw without HT."""

    def __init__(self, cfg: Config, train: Split) -> None:
        m, ht = cfg.meta, cfg.meta.hard_tasks
        self.way, self.per_batch = m.way, ht.per_batch
        # Separate generators: enabling HT must not shift the plain tasks' random stream.
        rng_pool, rng_images = (
            np.random.default_rng([cfg.seed, 7, 1]),
            np.random.default_rng([cfg.seed, 7, 2]),
        )
        self.pool = HardTaskPool(
            train.num_classes,
            m.way,
            capacity=ht.capacity,
            temperature=ht.temperature,
            mode=ht.mode,
            seed=rng_pool,
        )
        self.sampler = EpisodeSampler(train.labels, m.way, m.shot, m.query, seed=rng_images)

    def step(
        self, labels: np.ndarray, tasks: np.ndarray, logits: torch.Tensor, targets: torch.Tensor
    ) -> np.ndarray:
        """Add this meta-batch's failure classes, then draw ``per_batch`` hard tasks.

        tasks: ``(T, way, shot + query)`` image indices; logits: ``(T, way * query, way)``.
        Returns hard tasks ``(per_batch, way, shot + query)`` whose images avoid this meta-batch's.
        """
        acc, loss = per_class_scores(logits, targets, self.way)
        classes = labels[tasks[:, :, 0]]
        self.pool.add(classes, acc.cpu().numpy(), loss.cpu().numpy())
        used = np.unique(tasks)
        return np.stack(
            [self.sampler.sample(self.pool.sample(), exclude=used) for _ in range(self.per_batch)]
        )

    def log(
        self,
        monitor: Monitor,
        step: int,
        acc: torch.Tensor,
        hard_acc: torch.Tensor,
        images: torch.Tensor,
        hard_tasks: np.ndarray,
    ) -> None:
        monitor.scalars(step, **{"hard/normal_query_acc": acc, "hard/hard_query_acc": hard_acc})
        monitor.scalars(step, **{"hard/pool_size": len(self.pool)})
        if step == 0:
            grid = images[torch.from_numpy(hard_tasks[0]).flatten().to(images.device)]
            monitor.images("hard/task", grid, 0, nrow=hard_tasks.shape[2])

    def log_epoch(self, monitor: Monitor, step: int, class_names: list[str]) -> None:
        chosen = np.repeat(np.arange(len(self.pool.chosen)), self.pool.chosen)
        if len(chosen):
            monitor.histogram("hard/chosen_class", torch.from_numpy(chosen), step)
        rows = [f"| {class_names[c]} | {100 * a:.1f} |" for c, a in self.pool.hardest(10)]
        monitor.text(
            "hard/hardest_classes", "\n".join(["| class | accuracy (%) |", "|---|---:|", *rows]), step
        )

    def write_summary(self, path: Path, class_names: list[str]) -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.pool.summary(class_names), indent=2) + "\n")
        os.replace(tmp, path)
