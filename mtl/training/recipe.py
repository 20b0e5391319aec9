"""What a resolved pipeline will run, in the figures a researcher checks before a long run.

``mtl config PIPELINE`` prints them beside the resolved config: the number of meta-updates, the tasks
of each (normal + hard), the update counts after which the meta-learning rates drop, the hard-task
window, and pretraining's steps, images per epoch and the epoch counts after which its rate drops.
Nothing here trains or loads images; the train split's size comes from the prepared dataset's
manifest when there is one, else from the dataset's standard size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtl.config import Config
from mtl.errors import MtlError
from mtl.methods import get as method
from mtl.training.schedule import drops, meta_factor, pretrain_factor

__all__ = ["derived", "train_images"]


def train_images(cfg: Config) -> tuple[int | None, str]:
    """Images in the train split, and where the number comes from."""
    from mtl.data.glyphs import dataset as glyphs
    from mtl.data.prepare.formats import DATASETS
    from mtl.data.prepared import load_manifest

    d = cfg.data
    if d.dataset == "glyphs":
        g = d.glyphs
        classes = len(glyphs.class_split_ids(g.classes, g.preset, g.seed)["train"])
        return classes * g.images_per_class, "the glyphs settings"
    root = Path(d.root).expanduser()
    try:
        return int(load_manifest(root)["splits"]["train"]["images"]), f"the manifest at {root}"
    except (MtlError, KeyError, TypeError, ValueError):
        pass
    spec = DATASETS.get(d.dataset)
    if spec is not None and spec.train_images is not None:
        return spec.train_images, f"the standard {d.dataset} train split (not prepared at {root} yet)"
    return None, f"unknown until the dataset is prepared at {root}"


def derived(cfg: Config) -> dict[str, Any]:
    """The figures of ``mtl config``: a flat mapping of numbers and lists (JSON-ready)."""
    m, ht, p = cfg.meta, cfg.meta.hard_tasks, cfg.pretrain
    extra = ht.per_batch if ht.enabled else 0
    meta_updates = m.epochs * m.updates_per_epoch
    final = meta_factor(m, meta_updates - 1)
    images, source = train_images(cfg)
    batch = min(p.batch_size, images) if images else p.batch_size
    steps = images // batch if images else None
    return {
        "meta_updates": meta_updates,
        "tasks_per_update": {"normal": m.meta_batch, "hard": extra, "total": m.meta_batch + extra},
        "extra_tasks": (ht.mode if ht.mode == "random" else "hard") if extra else None,
        "meta_tasks": meta_updates * (m.meta_batch + extra),
        "lr_drops_at": drops(lambda n: meta_factor(m, n), meta_updates),
        **method(cfg.method).figures(cfg, final),
        "hard_task_window": ht.window_for(m.way, m.meta_batch) if extra else None,
        "train_images": images,
        "train_images_from": source,
        "pretrain_steps_per_epoch": steps,
        "pretrain_steps": p.epochs * steps if steps is not None else None,
        "images_per_epoch": steps * batch if steps is not None else None,
        "pretrain_lr_drops_at": (
            drops(lambda n: pretrain_factor(p, n), p.epochs) if p.schedule == "step" else None
        ),
    }


# What a figure of ``derived`` that is None (null in --json) means.
_NOT_SET = {
    "extra_tasks": "none (meta.hard_tasks.enabled: false)",
    "hard_task_window": "none (no extra tasks)",
    "pretrain_lr_drops_at": "none (pretrain.schedule: cosine)",
}


def describe(cfg: Config) -> str:
    """The figures of :func:`derived` as aligned ``key: value`` lines."""
    lines = []
    for key, value in derived(cfg).items():
        if value is None:
            value = _NOT_SET.get(key, "unknown until the dataset is prepared")
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        lines.append(f"{key + ':':<26}{value}")
    return "\n".join(lines)
