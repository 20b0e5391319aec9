"""The ablation: what pretraining, SS meta-training and hard tasks each add, on the same test episodes.

One pretrained encoder (the pipeline's pretrain ``best.pt``, trained first if missing) feeds every row:

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
import time
from pathlib import Path

from mtl import methods
from mtl.config import Config
from mtl.errors import MtlError
from mtl.runtime import checkpoint
from mtl.runtime.stage_folders import ABLATION, PRETRAIN
from mtl.stages.metatest import Scorer, publish, test_episodes
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain
from mtl.training.run import Run, holding

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


def _variants(cfg: Config) -> dict[str, tuple[str, Config, bool]]:
    """``{row label: (folder, config, from scratch)}`` of the rows that are meta-trained."""
    cls = methods.get(cfg.method)
    rows = {
        cls.ablation_label("plain"): (f"{ABLATION.folder}/mtl", _variant(cfg, hard_tasks=False), False),
        cls.ablation_label("random"): (
            f"{ABLATION.folder}/mtl-random",
            _variant(cfg, hard_tasks=True, mode="random"),
            False,
        ),
        cls.ablation_label("hard"): (f"{ABLATION.folder}/mtl-ht", _variant(cfg, hard_tasks=True), False),
    }
    if cfg.ablation.scratch:
        # A random encoder has no meaningful running statistics: let batch norm learn them (and its affine
        # weights) during meta-training, as the official PyTorch code does.
        rows[cls.ablation_label("scratch")] = (
            f"{ABLATION.folder}/scratch", _variant(cfg, hard_tasks=False, bn="affine"), True
        )  # fmt: skip
    return rows


def ablate(cfg: Config, checkpoints: str | Path = "checkpoints", *, quiet: bool = False) -> dict:
    """Run the ablation; writes ``ablation/results.json`` (metatest's shape plus wall-clock seconds)."""
    with holding(cfg, checkpoints, ABLATION.folder):
        return _ablate(cfg, checkpoints, quiet=quiet)


def _ablate(cfg: Config, checkpoints: str | Path, *, quiet: bool) -> dict:
    start = time.perf_counter()
    pre_path = checkpoint.stage_dir(checkpoints, cfg.run_name(PRETRAIN.folder), PRETRAIN.folder) / "best.pt"
    if not pre_path.is_file():
        pretrain(cfg, checkpoints, quiet=quiet)
    variants = _variants(cfg)
    seconds, kept = {}, {}
    for label, (folder, variant_cfg, scratch) in variants.items():
        t0 = time.perf_counter()
        best = metatrain(variant_cfg, checkpoints, quiet=quiet, folder=folder, from_scratch=scratch)
        seconds[label] = round(time.perf_counter() - t0, 1)
        kept[label] = best["epoch"]  # 0: meta-validation never beat the untrained start

    with Run.open(cfg, ABLATION.folder, checkpoints, quiet=quiet) as run:
        scorer = Scorer(run, *test_episodes(run, cfg.ablation.episodes))
        trained = {}  # every checkpoint read and checked before the first row is scored
        for label, (folder, variant_cfg, _) in variants.items():
            path = checkpoint.stage_dir(checkpoints, cfg.name, folder) / "best.pt"
            trained[label] = scorer.method(variant_cfg, checkpoint.load(path, stage="metatrain"), path)
        scores = scorer.baselines(["nc", "ft"])
        scores.update({label: scorer.score(method) for label, method in trained.items()})
        seconds["total"] = round(time.perf_counter() - start, 1)
        extra = {"seconds": seconds, "kept_epoch": kept, "query_acc_per_epoch": _per_epoch(cfg, checkpoints)}
        results = publish(run, scores, cfg.ablation.episodes, quiet=quiet, extra=extra)
    if not quiet:
        _print_times(seconds, extra["query_acc_per_epoch"])
    return results


def _per_epoch(cfg: Config, checkpoints: str | Path) -> dict[str, list[dict]]:
    """Each meta-trained row's training accuracy per epoch, from its ``hard_tasks.json`` (if any)."""
    out = {}
    for label, (folder, _, _) in _variants(cfg).items():
        path = checkpoint.stage_dir(checkpoints, cfg.name, folder) / "hard_tasks.json"
        if path.is_file():
            try:
                out[label] = json.loads(path.read_text())["epochs"]
            except (OSError, ValueError, KeyError, TypeError):
                raise MtlError(
                    f"{path} is not a hard-task summary mtl wrote; run the ablation again"
                ) from None
    return out


def _print_times(seconds: dict[str, float], per_epoch: dict[str, list[dict]]) -> None:
    print(
        f"\nwall-clock: {seconds['total'] / 60:.1f} min in all; meta-training "
        + ", ".join(f"{k.split(':')[0]} {v:.0f} s" for k, v in seconds.items() if k != "total")
    )
    for label, epochs in per_epoch.items():
        rows = ", ".join(f"{e['normal_query_acc']:.1f}/{e['extra_query_acc']:.1f}" for e in epochs)
        print(f"{label.split(':')[0]}: training query accuracy per epoch, normal/extra tasks (%): {rows}")
