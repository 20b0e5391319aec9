"""Hard tasks inside metatrain's meta-batches: draw fresh hard tasks, feed the pool, log what happens.

``meta.hard_tasks.mode: random`` is the control: as many extra tasks, of random base classes, drawn
the same way (fresh images, their own random generators), so that a gain of hard tasks can be told
apart from the gain of more tasks per meta-update.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from mtl.config import Config
from mtl.data.episodes import EpisodeSampler
from mtl.data.prepared import Split
from mtl.data.store import ImageStore
from mtl.hard_tasks.pool import HardTaskPool, per_class_scores
from mtl.runtime.monitor import Monitor
from mtl.runtime.tb_layout import HARD_TASKS


class HardTasks:
    """The pool plus its own image sampler, so plain tasks draw exactly what they draw without HT."""

    def __init__(self, cfg: Config, train: Split, way: int | None = None) -> None:
        """``way``: classes per task (default ``meta.way``; a method may train with more)."""
        m, ht = cfg.meta, cfg.meta.hard_tasks
        self.way, self.per_batch, self.random = way or m.way, ht.per_batch, ht.mode == "random"
        # Separate generators: enabling HT must not shift the plain tasks' random stream.
        rng_pool, rng_images = (
            np.random.default_rng([cfg.seed, 7, 1]),
            np.random.default_rng([cfg.seed, 7, 2]),
        )
        self.pool = HardTaskPool(
            train.num_classes,
            self.way,
            window=ht.window_for(self.way, m.meta_batch),
            temperature=ht.temperature,
            mode="uniform" if self.random else ht.mode,
            seed=rng_pool,
        )
        self.sampler = EpisodeSampler(train.labels, self.way, m.shot, m.query, seed=rng_images)
        self.shot = m.shot
        self.history: list[dict[str, float]] = []  # per epoch: query accuracy of normal and extra tasks

    def draw(self, tasks: np.ndarray) -> np.ndarray:
        """``per_batch`` hard tasks ``(per_batch, way, shot + query)`` from the pool as it stands.

        Drawn before the meta-batch is encoded, so that normal and hard tasks share one encoder
        forward: the pool holds the failure classes of the last ``window`` meta-batches. Their images
        avoid ``tasks`` (this meta-batch's normal tasks) and the images each pool class failed on, so a
        hard task re-samples its classes with new images. In the ``random`` control the classes are
        random base classes instead.
        """
        drawn = []
        for _ in range(self.per_batch):
            if self.random:
                classes = self.pool.rng.choice(self.pool.num_classes, self.way, replace=False)
                self.pool.chosen[classes] += 1
                self.pool.updates += 1
            else:
                classes = self.pool.sample()
            used = np.union1d(tasks.ravel(), self.pool.failed_images(classes))
            drawn.append(self.sampler.sample(classes, exclude=used))
        return np.stack(drawn)

    def add(self, labels: np.ndarray, tasks: np.ndarray, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Put each normal task's failure class into the pool.

        tasks: ``(T, way, shot + query)`` image indices; logits: their ``(T, way * query, way)`` scores.
        """
        acc, loss = per_class_scores(logits, targets, self.way)
        self.pool.add(labels[tasks[:, :, 0]], acc.cpu().numpy(), loss.cpu().numpy(), tasks)

    def log(
        self,
        monitor: Monitor,
        step: int,
        acc: torch.Tensor,
        hard_acc: torch.Tensor,
        images: torch.Tensor | ImageStore,
        hard_tasks: np.ndarray,
    ) -> None:
        accs = {"query accuracy, normal tasks": 100 * acc, "query accuracy, extra tasks": 100 * hard_acc}
        monitor.scalars(step, section=HARD_TASKS, **accs, **{"pool size": len(self.pool)})
        if step == 0:
            task = images[torch.from_numpy(hard_tasks[0])]
            monitor.task("an extra task", task, self.shot, 0, section=HARD_TASKS)

    def log_epoch(self, monitor: Monitor, step: int, class_names: list[str]) -> None:
        share = 100 * len(self.pool) / self.pool.num_classes
        monitor.scalars(step, section=HARD_TASKS, **{"pool share of base classes (%)": share})
        chosen = np.repeat(np.arange(len(self.pool.chosen)), self.pool.chosen)
        if len(chosen):
            monitor.histogram("chosen class", torch.from_numpy(chosen), step, section=HARD_TASKS)
        rows = [f"| {class_names[c]} | {100 * a:.1f} |" for c, a in self.pool.hardest(10)]
        table = "\n".join(["| class | accuracy (%) |", "|---|---:|", *rows])
        monitor.text("hardest classes", table, step, section=HARD_TASKS)

    def record_epoch(self, epoch: int, normal_acc: float, extra_acc: float) -> None:
        """Keep an epoch's mean query accuracies (%) of the normal and the extra tasks."""
        self.history.append(
            {"epoch": epoch, "normal_query_acc": round(normal_acc, 2), "extra_query_acc": round(extra_acc, 2)}
        )

    def summary_json(self, class_names: list[str]) -> str:
        """The pool's state and the per-epoch accuracies for ``hard_tasks.json``."""
        summary = {"extra_tasks": "random" if self.random else "hard", **self.pool.summary(class_names)}
        return json.dumps({**summary, "epochs": self.history}, indent=2) + "\n"

    def state_dict(self) -> dict:
        return {"pool": self.pool.state_dict(), "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.pool.load_state_dict(state["pool"])
        self.history = [dict(h) for h in state["history"]]
