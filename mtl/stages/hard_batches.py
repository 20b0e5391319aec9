"""Hard tasks inside metatrain's meta-batches: draw fresh hard tasks, feed the pool, log what happens."""

from __future__ import annotations

import json

import numpy as np
import torch

from mtl.config import Config
from mtl.data.cache import Split
from mtl.data.episodes import EpisodeSampler
from mtl.data.store import ImageStore
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

    def draw(self, tasks: np.ndarray) -> np.ndarray:
        """``per_batch`` hard tasks ``(per_batch, way, shot + query)`` from the pool as it stands.

        Drawn before the meta-batch is encoded, so that normal and hard tasks share one encoder
        forward: the pool holds the failure classes of every earlier meta-batch. Their images avoid
        ``tasks`` (this meta-batch's normal tasks), so a hard task never reuses an image of this step.
        """
        used = np.unique(tasks)
        return np.stack(
            [self.sampler.sample(self.pool.sample(), exclude=used) for _ in range(self.per_batch)]
        )

    def add(self, labels: np.ndarray, tasks: np.ndarray, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Put each normal task's failure class into the pool.

        tasks: ``(T, way, shot + query)`` image indices; logits: their ``(T, way * query, way)`` scores.
        """
        acc, loss = per_class_scores(logits, targets, self.way)
        self.pool.add(labels[tasks[:, :, 0]], acc.cpu().numpy(), loss.cpu().numpy())

    def log(
        self,
        monitor: Monitor,
        step: int,
        acc: torch.Tensor,
        hard_acc: torch.Tensor,
        images: torch.Tensor | ImageStore,
        hard_tasks: np.ndarray,
    ) -> None:
        monitor.scalars(step, **{"hard/normal_query_acc": acc, "hard/hard_query_acc": hard_acc})
        monitor.scalars(step, **{"hard/pool_size": len(self.pool)})
        if step == 0:
            grid = images[torch.from_numpy(hard_tasks[0]).flatten()]
            monitor.images("hard/task", grid, 0, nrow=hard_tasks.shape[2])

    def log_epoch(self, monitor: Monitor, step: int, class_names: list[str]) -> None:
        chosen = np.repeat(np.arange(len(self.pool.chosen)), self.pool.chosen)
        if len(chosen):
            monitor.histogram("hard/chosen_class", torch.from_numpy(chosen), step)
        rows = [f"| {class_names[c]} | {100 * a:.1f} |" for c, a in self.pool.hardest(10)]
        monitor.text(
            "hard/hardest_classes", "\n".join(["| class | accuracy (%) |", "|---|---:|", *rows]), step
        )

    def summary_json(self, class_names: list[str]) -> str:
        """The pool's state for ``hard_tasks.json``."""
        return json.dumps(self.pool.summary(class_names), indent=2) + "\n"
