"""The hard-task (HT) meta-batch: a persistent pool of failure classes, re-sampled into extra tasks.

After each normal task, the class with the lowest query accuracy (ties broken by the higher query
loss) is that task's *failure class*; it enters the pool with its accuracy. After the normal tasks of
every meta-batch, hard tasks are composed of ``way`` distinct pool classes, drawn with probability
``softmax(-accuracy / temperature)`` (or uniformly), with freshly drawn support and query images. If the
pool holds fewer than ``way`` classes, the rest are drawn uniformly from the other base classes. The
pool keeps at most ``capacity`` classes; re-entering a class refreshes its accuracy and age, and the
oldest class is forgotten first.

The pool persists across meta-batches because with one task per meta-batch (the official PyTorch
setting) a single batch cannot form an N-way hard task. See ``REFERENCE.md`` §2 and the README.
"""

from __future__ import annotations

from collections import OrderedDict
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


class HardTaskPool:
    """A bounded pool of failure classes (split-level class ids) with their accuracies."""

    def __init__(
        self,
        num_classes: int,
        way: int,
        *,
        capacity: int = 64,
        temperature: float = 0.1,
        mode: str = "softmax",
        seed: int | np.random.Generator = 0,
    ) -> None:
        if mode not in ("softmax", "uniform"):
            raise ValueError(f"mode must be 'softmax' or 'uniform', got {mode!r}")
        self.num_classes, self.way = num_classes, way
        self.capacity, self.temperature, self.mode = capacity, temperature, mode
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.entries: OrderedDict[int, float] = OrderedDict()  # class id -> accuracy, oldest first
        self.failures = np.zeros(num_classes, np.int64)  # times each class was a task's failure class
        self.failure_acc = np.zeros(num_classes, np.float64)  # sum of its accuracy then
        self.chosen = np.zeros(num_classes, np.int64)  # times each class went into a hard task
        self.updates = 0  # hard tasks trained on

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, classes: np.ndarray, per_class_acc: np.ndarray, per_class_loss: np.ndarray) -> np.ndarray:
        """Add each task's failure class; ``classes``, ``per_class_acc``, ``per_class_loss``: ``(T, way)``.

        Returns the added class ids ``(T,)``.
        """
        pos = failure_classes(torch.as_tensor(per_class_acc), torch.as_tensor(per_class_loss)).numpy()
        rows = np.arange(len(classes))
        added, accs = np.asarray(classes)[rows, pos], np.asarray(per_class_acc, np.float64)[rows, pos]
        for c, acc in zip(added.tolist(), accs.tolist(), strict=True):
            self.entries.pop(c, None)
            self.entries[c] = acc
            self.failures[c] += 1
            self.failure_acc[c] += acc
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return added

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """Pool classes and their sampling probabilities (lower accuracy -> higher probability)."""
        classes = np.fromiter(self.entries.keys(), np.int64, len(self.entries))
        if self.mode == "uniform" or len(classes) == 0:
            return classes, np.full(len(classes), 1.0 / max(1, len(classes)))
        acc = np.fromiter(self.entries.values(), np.float64, len(self.entries))
        logits = -acc / max(self.temperature, 1e-8)
        p = np.exp(logits - logits.max())
        return classes, p / p.sum()

    def sample(self) -> np.ndarray:
        """``way`` distinct class ids for one hard task (pool first, topped up from other base classes)."""
        classes, p = self.probabilities()
        if len(classes) >= self.way:
            picked = self.rng.choice(classes, size=self.way, replace=False, p=p)
        else:
            others = np.setdiff1d(np.arange(self.num_classes), classes)
            fill = self.rng.choice(others, size=self.way - len(classes), replace=False)
            picked = np.concatenate([classes, fill])
        picked = self.rng.permutation(picked)  # class order inside a task carries no meaning
        self.chosen[picked] += 1
        self.updates += 1
        return picked

    def hardest(self, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` pool classes with the lowest accuracy: ``[(class id, accuracy), ...]``."""
        return sorted(self.entries.items(), key=lambda kv: kv[1])[:k]

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
        return {"hard_task_updates": self.updates, "pool_size": len(self), "classes": per_class}

    def state_dict(self) -> dict[str, Any]:
        return {
            "entries": [[c, a] for c, a in self.entries.items()],
            "failures": torch.from_numpy(self.failures.copy()),
            "failure_acc": torch.from_numpy(self.failure_acc.copy()),
            "chosen": torch.from_numpy(self.chosen.copy()),
            "updates": self.updates,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = OrderedDict((int(c), float(a)) for c, a in state["entries"])
        self.failures = state["failures"].numpy().copy()
        self.failure_acc = state["failure_acc"].numpy().copy()
        self.chosen = state["chosen"].numpy().copy()
        self.updates = int(state["updates"])
        self.rng.bit_generator.state = state["rng"]
