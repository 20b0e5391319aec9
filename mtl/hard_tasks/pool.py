"""The hard-task (HT) meta-batch: the failure classes of the recent meta-batches, re-sampled with new
images into extra tasks.

After each normal task, the class with the lowest query accuracy (ties broken by the higher query
loss) is that task's *failure class*; it enters the pool with its accuracy and the images it failed
on. The pool holds the failures of the last ``window`` meta-batches only: older entries leave, so
the pool stays a small set of classes that failed recently (a class that fails again is refreshed).
Each hard task takes ``way`` distinct pool classes, drawn with probability
``softmax(-accuracy / temperature)`` (``temperature`` 0: the lowest accuracies, ties at random) or
uniformly; if the pool holds fewer than ``way`` classes, the rest come uniformly from the other base
classes. Its support and query images are drawn afresh, none of them an image its class failed on.

The papers re-compose the failure classes of a meta-batch. With fewer normal tasks per meta-batch
than ``way`` (one, in the official PyTorch setting) one meta-batch cannot fill an N-way task, so the
window spans the fewest meta-batches that can: ``ceil(way / tasks per meta-batch)`` by default. See
the hard-task meta-batch of Sun et al. (CVPR 2019; TPAMI 2020) and the README's section on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def failure_classes(per_class_acc: torch.Tensor, per_class_loss: torch.Tensor) -> torch.Tensor:
    """Each task's lowest-accuracy class, ties broken by the higher loss.

    per_class_acc, per_class_loss: ``(T, way)`` -> ``(T,)`` positions in ``0..way-1``.
    """
    # Accuracies within a task differ by at least 1/query, so a loss term this small only breaks ties.
    loss = per_class_loss.float()
    spread = (loss - loss.amin(1, keepdim=True)) / (
        loss.amax(1, keepdim=True) - loss.amin(1, keepdim=True) + 1e-12
    )
    return (per_class_acc.float() - 1e-3 * spread).argmin(1)


def per_class_scores(
    logits: torch.Tensor, targets: torch.Tensor, way: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class query accuracy and cross-entropy of each task.

    logits: ``(T, way * query, way)``; targets: ``(way * query,)`` class-major -> two ``(T, way)`` tensors.
    """
    T = logits.shape[0]
    correct = (logits.argmax(-1) == targets).float().view(T, way, -1)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.repeat(T), reduction="none")
    return correct.mean(-1), loss.view(T, way, -1).mean(-1)


def _weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Unnormalised ``softmax(-scores / temperature)``, its largest entry 1 (so never all zero);
    ``temperature`` 0: 1 for the lowest scores, 0 elsewhere."""
    if temperature == 0:
        return (scores == scores.min()).astype(np.float64)
    return np.exp(-(scores - scores.min()) / temperature)


def draw_without_replacement(
    rng: np.random.Generator, scores: np.ndarray, k: int, temperature: float
) -> np.ndarray:
    """``k`` distinct positions of ``scores`` (lower is likelier), drawn one at a time with probability
    ``softmax(-score / temperature)`` over those not yet drawn; ``temperature`` 0 takes the lowest
    scores, ties broken at random.

    Each draw renormalises over the remaining scores relative to their own minimum, so a tiny
    temperature cannot underflow every probability to zero.
    """
    left = np.arange(len(scores))
    picked = []
    for _ in range(k):
        p = _weights(scores[left], temperature)
        j = rng.choice(len(left), p=p / p.sum())
        picked.append(left[j])
        left = np.delete(left, j)
    return np.asarray(picked, np.int64)


@dataclass
class Failure:
    """One normal task's failure class: split-level class id, its query accuracy, the meta-batch it
    failed in (1-based count), and the ``(shot + query,)`` image indices it failed on."""

    cls: int
    acc: float
    batch: int
    images: np.ndarray


class HardTaskPool:
    """The failure classes (split-level class ids) of the last ``window`` meta-batches."""

    def __init__(
        self,
        num_classes: int,
        way: int,
        *,
        window: int = 1,
        temperature: float = 0.1,
        mode: str = "softmax",
        seed: int | np.random.Generator = 0,
    ) -> None:
        if mode not in ("softmax", "uniform"):
            raise ValueError(f"mode must be 'softmax' or 'uniform', got {mode!r}")
        if window < 1 or temperature < 0:
            raise ValueError(f"window must be >= 1 and temperature >= 0, got {window} and {temperature}")
        self.num_classes, self.way = num_classes, way
        self.window, self.temperature, self.mode = window, temperature, mode
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.entries: dict[int, Failure] = {}  # class id -> its latest failure, oldest first
        self.batches = 0  # meta-batches added so far
        self.failures = np.zeros(num_classes, np.int64)  # times each class was a task's failure class
        self.failure_acc = np.zeros(num_classes, np.float64)  # sum of its accuracy then
        self.chosen = np.zeros(num_classes, np.int64)  # times each class went into a hard task
        self.updates = 0  # hard tasks trained on

    def __len__(self) -> int:
        return len(self.entries)

    def add(
        self,
        classes: np.ndarray,
        per_class_acc: np.ndarray,
        per_class_loss: np.ndarray,
        images: np.ndarray | None = None,
    ) -> np.ndarray:
        """Add the failure class of each task of one meta-batch, then let failures older than the
        window go. ``classes``, ``per_class_acc``, ``per_class_loss``: ``(T, way)``; ``images``:
        ``(T, way, shot + query)`` image indices of the tasks (optional).

        Returns the added class ids ``(T,)``.
        """
        pos = failure_classes(torch.as_tensor(per_class_acc), torch.as_tensor(per_class_loss)).numpy()
        rows = np.arange(len(classes))
        added, accs = np.asarray(classes)[rows, pos], np.asarray(per_class_acc, np.float64)[rows, pos]
        failed = np.asarray(images)[rows, pos] if images is not None else np.zeros((len(rows), 0), np.int64)
        self.batches += 1
        for c, acc, ids in zip(added.tolist(), accs.tolist(), failed, strict=True):
            self.entries.pop(c, None)
            self.entries[c] = Failure(c, acc, self.batches, np.asarray(ids, np.int64))
            self.failures[c] += 1
            self.failure_acc[c] += acc
        oldest = self.batches - self.window + 1
        self.entries = {c: f for c, f in self.entries.items() if f.batch >= oldest}
        return added

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """Pool classes and the probability of each being a hard task's first class."""
        classes = np.fromiter(self.entries, np.int64, len(self.entries))
        if len(classes) == 0:
            return classes, np.zeros(0)
        acc = np.array([f.acc for f in self.entries.values()])
        p = np.ones(len(classes)) if self.mode == "uniform" else _weights(acc, self.temperature)
        return classes, p / p.sum()

    def sample(self) -> np.ndarray:
        """``way`` distinct class ids for one hard task (pool first, topped up from other base classes)."""
        classes = np.fromiter(self.entries, np.int64, len(self.entries))
        if len(classes) >= self.way:
            acc = np.array([f.acc for f in self.entries.values()])
            if self.mode == "uniform":
                acc = np.zeros_like(acc)
            picked = classes[draw_without_replacement(self.rng, acc, self.way, self.temperature)]
        else:
            others = np.setdiff1d(np.arange(self.num_classes), classes)
            fill = self.rng.choice(others, size=self.way - len(classes), replace=False)
            picked = np.concatenate([classes, fill])
        picked = self.rng.permutation(picked)  # class order inside a task carries no meaning
        self.chosen[picked] += 1
        self.updates += 1
        return picked

    def failed_images(self, classes: np.ndarray) -> np.ndarray:
        """The image indices on which the pool's entries among ``classes`` failed (1-D, maybe empty)."""
        ids = [self.entries[c].images for c in np.asarray(classes).tolist() if c in self.entries]
        return np.concatenate(ids) if ids else np.zeros(0, np.int64)

    def hardest(self, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` pool classes with the lowest accuracy: ``[(class id, accuracy), ...]``."""
        return sorted(((c, f.acc) for c, f in self.entries.items()), key=lambda kv: kv[1])[:k]

    def summary(self, class_names: list[str]) -> dict[str, Any]:
        """What ``metatrain/hard_tasks.json`` records."""
        per_class = {
            class_names[c]: {
                "failures": int(self.failures[c]),
                "mean_acc_when_failed": round(100 * self.failure_acc[c] / self.failures[c], 2),
                "chosen": int(self.chosen[c]),
            }
            for c in np.flatnonzero(self.failures)
        }
        pool = [
            {
                "class": class_names[c],
                "acc": round(100 * f.acc, 2),
                "meta_batches_ago": self.batches - f.batch,
            }
            for c, f in self.entries.items()
        ]
        return {
            "hard_task_updates": self.updates,
            "window": self.window,
            "pool_size": len(self),
            "pool_share_of_base_classes": round(len(self) / self.num_classes, 4),
            "pool": pool,
            "classes": per_class,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "entries": [
                [f.cls, f.acc, f.batch, torch.from_numpy(f.images.copy())] for f in self.entries.values()
            ],
            "batches": self.batches,
            "failures": torch.from_numpy(self.failures.copy()),
            "failure_acc": torch.from_numpy(self.failure_acc.copy()),
            "chosen": torch.from_numpy(self.chosen.copy()),
            "updates": self.updates,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = {
            int(c): Failure(int(c), float(a), int(b), ids.numpy().copy()) for c, a, b, ids in state["entries"]
        }
        self.batches = int(state["batches"])
        self.failures = state["failures"].numpy().copy()
        self.failure_acc = state["failure_acc"].numpy().copy()
        self.chosen = state["chosen"].numpy().copy()
        self.updates = int(state["updates"])
        self.rng.bit_generator.state = state["rng"]
