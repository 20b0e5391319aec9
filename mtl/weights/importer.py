"""``mtl import``: a weights file -> the stage checkpoint the next stage of a pipeline reads.

An encoder becomes the pipeline's pretrain ``best.pt`` (so ``mtl metatrain`` continues from it), a
meta-trained model its metatrain ``best.pt`` (so ``mtl metatest`` and ``mtl adapt`` do). The checkpoint
is what the stage itself would write (``mtl.training.run.Run.save``), with these choices for what an
import cannot know:

* ``class_names``: ``[]``. The weights were trained on classes elsewhere; nothing reads a stage
  checkpoint's class names but people (an mtl export keeps its own).
* ``metric``: ``{"val_acc": nan, "val_ci95": nan, "epoch": -1}``. No validation ran here; ``-1`` is
  "before any epoch" (not 0, which metatest reads as "meta-training never beat its start").
* ``head`` (pretrain): ``{}``. Only resuming a pretrain reads a head, from ``last.pt``, which an import
  does not write; a file's head was trained on other classes anyway.
* ``imported``: ``{"file", "layout", "notes"}``, where the weights came from and what was done to them.

An existing ``best.pt`` is never replaced without ``force``. The checkpoint is written atomically, then
the pipeline's ``config.yaml`` beside it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mtl import methods
from mtl.config import Config
from mtl.errors import MtlError
from mtl.models.backbone import backbone_for
from mtl.runtime import atomic, checkpoint, run_lock
from mtl.runtime.stage_folders import CHECKPOINT_FILE, FOLDERS
from mtl.weights import batchnorm, files, layouts
from mtl.weights.convert import Converted, Layout, check_tensors

__all__ = ["Imported", "import_weights"]

STAGES = tuple(s.folder for s in FOLDERS if s.checkpoint)  # the stage checkpoints an import may write


@dataclass
class Imported:
    """What :func:`import_weights` wrote (``path``, a ``stage`` checkpoint) and the lines describing it."""

    path: Path
    stage: str
    layout: Layout
    lines: list[str]


def import_weights(
    spec: str, cfg: Config, checkpoints: str | Path, *, fmt: str | None = None, force: bool = False
) -> Imported:
    """Convert the weights at ``spec`` (a file, an export folder, ``hf-hub:<repo>``) for pipeline ``cfg``
    and write ``<checkpoints>/<run name>/<stage>/best.pt`` with ``config.yaml`` beside it."""
    layout = layouts.by_name(fmt) if fmt else None  # an unknown --format fails before any reading
    _check_not_written(spec, cfg, checkpoints)
    source = files.read(spec)
    layout = layout or layouts.recognise(source, cfg)
    layout.check(source, cfg, layout)
    stage = layout.stage_for(source)
    out = checkpoint.stage_dir(checkpoints, cfg.run_name(stage), stage) / CHECKPOINT_FILE
    if out.exists() and not force:
        raise MtlError(f"{out} exists; add --force to replace it with the imported weights")
    encoder = backbone_for(cfg)
    expected = encoder.state_dict()
    conv = layout.convert(source, cfg, expected)
    lines = [
        f"recognised: {layout.title}, {conv.tensors} tensors -> {stage} of {cfg.backbone.name}",
        *conv.notes,
    ]
    if conv.encoder is not None:
        target = f"the pipeline's {cfg.backbone.name}"
        check_tensors(
            expected, conv.encoder, label=source.label, target=target, name_in_file=conv.name_in_file
        )
        encoder.load_state_dict(conv.encoder)
    if conv.recalibrate:
        n = batchnorm.recalibrate(encoder, cfg)
        lines.append(f"estimated: batch-norm running statistics from {n} train images (the file has none)")
    payload = _payload(stage, cfg, encoder, conv, lines)
    where = str(source.path.resolve()) if source.path is not None else source.label
    payload["imported"] = {"file": where, "layout": layout.name, "notes": lines}
    if (out.parent / "last.pt").exists():
        lines.append(f"note: {out.parent / 'last.pt'} of an earlier run is left as it is")
    _write(out, cfg, payload)
    return Imported(out, stage, layout, lines)


def _check_not_written(spec: str, cfg: Config, checkpoints: str | Path) -> None:
    """Refuse a FILE that is one of the checkpoints an import of this pipeline writes: an import never
    writes over what it reads."""
    given = Path(spec).expanduser()
    for stage in STAGES:
        out = checkpoint.stage_dir(checkpoints, cfg.run_name(stage), stage) / CHECKPOINT_FILE
        if given.is_file() and out.is_file() and os.path.samefile(given, out):
            raise MtlError(f"{spec} is the {stage} best.pt this import would write; it is left as it is")


def _payload(stage: str, cfg: Config, encoder: nn.Module, conv: Converted, lines: list[str]) -> dict:
    """The checkpoint's entries, as the stage writes them (see the module's docstring for the choices)."""
    base = {
        "stage": stage,
        "config": cfg.to_dict(),
        "class_names": [],
        "metric": {"val_acc": math.nan, "val_ci95": math.nan, "epoch": -1},
        **conv.extra,
    }
    if stage == "pretrain":
        return {"head": {}, **base, "encoder": encoder.state_dict()}
    method = methods.build(cfg, encoder)  # MTL attaches SS here, as metatrain does
    if conv.finish is not None:
        lines += conv.finish(method)
    return {**base, "method": cfg.method, **method.state()}


def _write(out: Path, cfg: Config, payload: dict) -> None:
    """Write ``best.pt`` and ``config.yaml`` holding the run folder's lock: a stage running into it
    (or another import) is refused in one line naming its process, not overwritten halfway."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MtlError(f"cannot write to {out.parent}: {exc.strerror or exc}") from None
    lock = run_lock.acquire(out.parent)
    try:
        checkpoint.save(out, payload)
        atomic.write_text(out.parent / "config.yaml", cfg.to_yaml())
    finally:
        lock.release()
