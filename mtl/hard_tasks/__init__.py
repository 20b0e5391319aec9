"""Hard tasks: the pool of recent failure classes (:mod:`~mtl.hard_tasks.pool`) and the extra tasks it
adds to metatrain's meta-batches (:mod:`~mtl.hard_tasks.meta_batches`)."""

from mtl.hard_tasks.meta_batches import HardTasks
from mtl.hard_tasks.pool import Failure, HardTaskPool, draw_without_replacement, per_class_scores

__all__ = ["Failure", "HardTaskPool", "HardTasks", "draw_without_replacement", "per_class_scores"]
