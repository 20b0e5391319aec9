"""The ablation: what pretraining, SS meta-training and hard tasks each add, on the same test episodes.

A set of :mod:`mtl.stages.compare` rows (:func:`~mtl.stages.compare.score_rows`), in the order of the
paper's ablation table:

1. (``ablation.scratch``) train from scratch, the paper's first row: no pretraining, every parameter
   of the pipeline's backbone and of a linear head ([Θ; θ]) adapted on each support set and
   meta-learned from random initialisation, MAML-style (:mod:`mtl.methods.maml` with the ``maml:``
   section's steps and rates; second order unless ``ablation.scratch_first_order``);
2. nearest centroid on pretrained features;
3. θ fine-tuned on the frozen pretrained features, no meta-training (the paper's "FT");
4. MTL: SS + θ meta-trained, no hard tasks;
5. MTL + random extra tasks: the control of row 6, as many extra tasks per meta-batch as HT adds, of
   random base classes (``meta.hard_tasks.mode: random``); without it an HT gain cannot be told from
   the gain of more tasks per meta-update;
6. MTL + HT: the same with hard-task meta-batches;
7. (``ablation.random_encoder``) mtl's own control, not a row of the paper: SS + θ meta-trained on a
   random, unpretrained encoder (batch norm learns its statistics and affine weights meanwhile,
   ``mtl.bn: affine`` when the method is MTL).

Rows 2–6 share the pipeline's pretrain ``best.pt`` (trained first if missing). The trained rows are
meta-trained here, into ``<checkpoints>/<name>/ablation/<row>/``, with the pipeline's meta-training
schedule and seed; all rows are scored on ``ablation.episodes`` fixed test episodes, each beside its
published number where the paper gives one for the pipeline's dataset and shot.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mtl import methods
from mtl.config import Config
from mtl.data.prepare.manifest import source_format
from mtl.errors import MtlError
from mtl.results.published import published
from mtl.runtime import checkpoint
from mtl.runtime.stage_folders import ABLATION, METATRAIN
from mtl.stages.compare import Row, score_rows, table
from mtl.training.run import holding

__all__ = [
    "FT", "MTL", "MTL_HT", "MTL_RANDOM", "NC", "RANDOM_ENCODER", "SCRATCH", "ablate", "ablation_rows",
    "labels", "paper_numbers", "scratch_config", "scratch_label",
]  # fmt: skip

NC = methods.get("nc").label
FT = methods.get("ft").label
MTL = "MTL: SS + θ meta-trained, no HT"
MTL_RANDOM = "MTL + as many random extra tasks (control of HT)"
MTL_HT = "MTL + HT: hard-task meta-batches"
RANDOM_ENCODER = "SS + θ meta-trained on a random encoder (mtl's control, not in the paper)"
SCRATCH = "train from scratch: MAML on the whole network from random initialisation (the paper's row)"


def labels(method: str) -> dict[str, str]:
    """The labels of the rows the pipeline's ``method`` trains: ``{plain | random | hard |
    random_encoder: label}`` (MTL's are the paper's words)."""
    if method == "mtl":
        return {"plain": MTL, "random": MTL_RANDOM, "hard": MTL_HT, "random_encoder": RANDOM_ENCODER}
    label = methods.get(method).label
    return {
        "plain": f"{label}, no HT",
        "random": f"{label} + as many random extra tasks (control of HT)",
        "hard": f"{label} + HT: hard-task meta-batches",
        "random_encoder": f"{label} on a random encoder (mtl's control, not in the paper)",
    }


def _variant(cfg: Config, *, hard_tasks: bool, mode: str | None = None) -> Config:
    mode = mode or ("softmax" if cfg.meta.hard_tasks.mode == "random" else cfg.meta.hard_tasks.mode)
    ht = dataclasses.replace(cfg.meta.hard_tasks, enabled=hard_tasks, mode=mode)
    return dataclasses.replace(cfg, meta=dataclasses.replace(cfg.meta, hard_tasks=ht))


def _random_encoder(cfg: Config) -> Config:
    """The random-encoder control: no HT; a random encoder has no meaningful running statistics, so
    MTL's batch norm learns them (and its affine weights) during meta-training, as the official
    PyTorch code does."""
    plain = _variant(cfg, hard_tasks=False)
    if cfg.method != "mtl":
        return plain
    affine = dataclasses.replace(cfg.section("mtl"), bn="affine")
    return dataclasses.replace(plain, sections={**plain.sections, "mtl": affine})


def scratch_config(cfg: Config) -> Config:
    """The train-from-scratch row's pipeline: MAML on the pipeline's backbone, random start, no HT."""
    maml = dataclasses.replace(cfg.maml, pretrained=False, first_order=cfg.ablation.scratch_first_order)
    plain = _variant(cfg, hard_tasks=False)
    return dataclasses.replace(plain, method="maml", sections={**plain.sections, "maml": maml})


def scratch_label(cfg: Config) -> str:
    """The train-from-scratch row's label, saying when it drops the second derivatives."""
    return SCRATCH + (", first order" if cfg.ablation.scratch_first_order else "")


def ablation_rows(cfg: Config) -> list[Row]:
    """The ablation's rows for the pipeline's method, in the table's order."""
    label = labels(cfg.method).__getitem__
    folder = ABLATION.folder
    rows = []
    if cfg.ablation.scratch:
        rows.append(Row(scratch_label(cfg), scratch_config(cfg), f"{folder}/from-scratch"))
    rows += [
        Row(NC, dataclasses.replace(cfg, method="nc"), f"{folder}/nc"),
        Row(FT, dataclasses.replace(cfg, method="ft"), f"{folder}/ft"),
        Row(label("plain"), _variant(cfg, hard_tasks=False), f"{folder}/mtl"),
        Row(label("random"), _variant(cfg, hard_tasks=True, mode="random"), f"{folder}/mtl-random"),
        Row(label("hard"), _variant(cfg, hard_tasks=True), f"{folder}/mtl-ht"),
    ]
    if cfg.ablation.random_encoder:
        control = _random_encoder(cfg)
        rows.append(Row(label("random_encoder"), control, f"{folder}/random-encoder", from_scratch=True))
    return rows


def paper_numbers(cfg: Config, todo: list[Row]) -> dict[str, dict]:
    """``{row label: published number}`` of the rows the paper's tables give for this setting: the
    train-from-scratch row, and MTL without and with HT when the pipeline's method is MTL."""
    names = {"from-scratch"} | ({"mtl", "mtl-ht"} if cfg.method == "mtl" else set())
    prepared = source_format(cfg.data.root)
    return {
        row.label: number
        for row in todo
        if row.name in names and (number := published(row.name, cfg, source_format=prepared)) is not None
    }


def ablate(
    cfg: Config,
    checkpoints: str | Path = "checkpoints",
    *,
    reference: str | None = None,
    seeds: int = 1,
    seeds_from: str = METATRAIN.folder,
    quiet: bool = False,
    allow_chance: bool = False,
) -> dict:
    """Run the ablation; writes ``ablation/results.json`` (metatest's shape plus wall-clock seconds, each
    row's training query accuracy per epoch and the published numbers). Paired differences are taken
    from row ``reference`` (``from-scratch``, ``nc``, ``ft``, ``mtl``, ``mtl-random``, ``mtl-ht``,
    ``random-encoder``; default ``mtl``); ``seeds`` training runs per meta-trained row, scored on the
    same episodes, from meta-training or, ``seeds_from="pretrain"``, from pretraining (then NC and
    FT have seeds too: :meth:`~mtl.stages.compare.Row.runs`). ``allow_chance``: let a table of
    nothing but chance replace an earlier one (:func:`mtl.stages.metatest.publish`)."""
    todo = ablation_rows(cfg)
    reference = reference or "mtl"  # the pipeline's method, no HT
    paper = paper_numbers(cfg, todo)
    with holding(cfg, checkpoints, ABLATION.folder):
        results = score_rows(
            cfg, checkpoints, todo, folder=ABLATION.folder, episodes=cfg.ablation.episodes, quiet=quiet,
            extra=lambda: {"query_acc_per_epoch": _per_epoch(cfg, todo, checkpoints), "published": paper},
            reference=reference, seeds=seeds, seeds_from=seeds_from, allow_chance=allow_chance,
        )  # fmt: skip
    if not quiet:
        print(table(results))
        _print_per_epoch(results["query_acc_per_epoch"])
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


def _print_per_epoch(per_epoch: dict[str, list[dict]]) -> None:
    for label, epochs in per_epoch.items():
        rows = ", ".join(f"{e['normal_query_acc']:.1f}/{e['extra_query_acc']:.1f}" for e in epochs)
        print(f"{label.split(':')[0]}: training query accuracy per epoch, normal/extra tasks (%): {rows}")
