"""The ablation: what pretraining, SS meta-training and hard tasks each add, on the same test episodes.

A set of :mod:`mtl.stages.compare` rows (:func:`~mtl.stages.compare.score_rows`) over one pretrained
encoder (the pipeline's pretrain ``best.pt``, trained first if missing):

1. nearest centroid on pretrained features;
2. θ fine-tuned on the frozen pretrained features, no meta-training (the paper's "FT");
3. MTL: SS + θ meta-trained, no hard tasks;
4. MTL + random extra tasks: the control of row 5, as many extra tasks per meta-batch as HT adds, of
   random base classes (``meta.hard_tasks.mode: random``); without it an HT gain cannot be told from
   the gain of more tasks per meta-update;
5. MTL + HT: the same with hard-task meta-batches;
6. (``ablation.scratch``) SS + θ meta-trained on a random, unpretrained encoder (batch norm learns its
   statistics and affine weights meanwhile, ``meta.bn: affine``).

Rows 3–6 are meta-trained here, into ``<checkpoints>/<name>/ablation/<variant>/``, with the pipeline's
meta-training settings and seed; all rows are scored on ``ablation.episodes`` fixed test episodes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mtl import methods
from mtl.config import Config
from mtl.errors import MtlError
from mtl.results.report import results_table
from mtl.runtime import checkpoint
from mtl.runtime.stage_folders import ABLATION
from mtl.stages.compare import Row, score_rows
from mtl.training.run import holding

__all__ = ["FT", "MTL", "MTL_HT", "MTL_RANDOM", "NC", "SCRATCH", "ablate", "ablation_rows"]

_MTL = methods.get("mtl")
NC = methods.get("nc").label
FT = methods.get("ft").label
MTL = _MTL.ablation_label("plain")
MTL_RANDOM = _MTL.ablation_label("random")
MTL_HT = _MTL.ablation_label("hard")
SCRATCH = _MTL.ablation_label("scratch")


def _variant(cfg: Config, *, hard_tasks: bool, bn: str | None = None, mode: str | None = None) -> Config:
    mode = mode or ("softmax" if cfg.meta.hard_tasks.mode == "random" else cfg.meta.hard_tasks.mode)
    ht = dataclasses.replace(cfg.meta.hard_tasks, enabled=hard_tasks, mode=mode)
    meta = dataclasses.replace(cfg.meta, hard_tasks=ht, bn=bn or cfg.meta.bn)
    return dataclasses.replace(cfg, meta=meta)


def ablation_rows(cfg: Config) -> list[Row]:
    """The ablation's rows for the pipeline's method, in the table's order."""
    label = methods.get(cfg.method).ablation_label
    folder = ABLATION.folder
    rows = [
        Row(NC, dataclasses.replace(cfg, method="nc"), f"{folder}/nc"),
        Row(FT, dataclasses.replace(cfg, method="ft"), f"{folder}/ft"),
        Row(label("plain"), _variant(cfg, hard_tasks=False), f"{folder}/mtl"),
        Row(label("random"), _variant(cfg, hard_tasks=True, mode="random"), f"{folder}/mtl-random"),
        Row(label("hard"), _variant(cfg, hard_tasks=True), f"{folder}/mtl-ht"),
    ]
    if cfg.ablation.scratch:
        # A random encoder has no meaningful running statistics: let batch norm learn them (and its
        # affine weights) during meta-training, as the official PyTorch code does.
        scratch = _variant(cfg, hard_tasks=False, bn="affine")
        rows.append(Row(label("scratch"), scratch, f"{folder}/scratch", from_scratch=True))
    return rows


def ablate(
    cfg: Config,
    checkpoints: str | Path = "checkpoints",
    *,
    reference: str | None = None,
    seeds: int = 1,
    quiet: bool = False,
    allow_chance: bool = False,
) -> dict:
    """Run the ablation; writes ``ablation/results.json`` (metatest's shape plus wall-clock seconds and
    each row's training query accuracy per epoch). Paired differences are taken from row ``reference``
    (``nc``, ``ft``, ``mtl``, ``mtl-random``, ``mtl-ht``, ``scratch``; default ``mtl``); ``seeds``
    training runs per meta-trained row, scored on the same episodes. ``allow_chance``: let a table of
    nothing but chance replace an earlier one (:func:`mtl.stages.metatest.publish`)."""
    todo = ablation_rows(cfg)
    reference = reference or todo[2].name  # the pipeline's method, no HT
    with holding(cfg, checkpoints, ABLATION.folder):
        results = score_rows(
            cfg, checkpoints, todo, folder=ABLATION.folder, episodes=cfg.ablation.episodes, quiet=quiet,
            extra=lambda: {"query_acc_per_epoch": _per_epoch(cfg, todo, checkpoints)},
            reference=reference, seeds=seeds, allow_chance=allow_chance,
        )  # fmt: skip
    if not quiet:
        print(results_table(results))
        _print_times(results["seconds"], results["query_acc_per_epoch"])
    return results


def _per_epoch(cfg: Config, todo: list[Row], checkpoints: str | Path) -> dict[str, list[dict]]:
    """Each meta-trained row's training accuracy per epoch, from its ``hard_tasks.json`` (if any)."""
    out = {}
    for row in todo:
        path = checkpoint.stage_dir(checkpoints, cfg.name, row.folder) / "hard_tasks.json"
        if row.trains and path.is_file():
            try:
                out[row.label] = json.loads(path.read_text())["epochs"]
            except (OSError, ValueError, KeyError, TypeError):
                raise MtlError(
                    f"{path} is not a hard-task summary mtl wrote; run the ablation again"
                ) from None
    return out


def _print_times(seconds: dict[str, float], per_epoch: dict[str, list[dict]]) -> None:
    trained = {k: v for k, v in seconds.items() if k not in ("total", "pretrain")}
    print(
        f"\nwall-clock: {seconds['total'] / 60:.1f} min in all; meta-training "
        + ", ".join(f"{k.split(':')[0]} {v:.0f} s" for k, v in trained.items())
    )
    for label, epochs in per_epoch.items():
        rows = ", ".join(f"{e['normal_query_acc']:.1f}/{e['extra_query_acc']:.1f}" for e in epochs)
        print(f"{label.split(':')[0]}: training query accuracy per epoch, normal/extra tasks (%): {rows}")
