"""``mtl compare``: the paper's results table, measured. Every method on the same fixed test episodes.

The rows (:func:`known_rows`: ``mtl``, ``mtl-ht``, ``ft``, ``nc``, ``protonet``, ``protonet-conv4``,
...) are each a method plus config overrides, on the pipeline's dataset, way and shot: the paper's
networks for the baselines it cites (:data:`ROWS`), and one row of its own for any other registered
method. A row that trains is meta-trained into ``<checkpoints>/<name>/compare/<row>/`` (resumed or
reused like any metatrain); rows that start from the pretrained encoder share the pipeline's pretrain
(trained first if missing). Every row is scored on ``compare.episodes`` shared test episodes and shown
with its training wall-clock and, where one exists, the published number for that method and setting.

:func:`score_rows` is that engine for any list of rows; ``mtl ablate`` is one such list.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mtl import methods
from mtl.config import Config, from_dict, pipeline_file
from mtl.data.prepare.manifest import source_format
from mtl.errors import MtlError
from mtl.results.paired import difference_cells, row_name
from mtl.results.published import PAPER_TABLE, published, published_breakdowns
from mtl.results.report import breakdown_table
from mtl.runtime import checkpoint
from mtl.runtime.stage_folders import COMPARE, METATRAIN, PRETRAIN
from mtl.stages.metatest import Scorer, publish, test_episodes
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain
from mtl.training.run import Run, holding

__all__ = [
    "PAPER", "ROWS", "Row", "compare", "known_rows", "pretraining_seed", "rows", "score_rows",
    "table",
]  # fmt: skip


def _conv4(method: str, widths: list[int] | None = None, **sets) -> dict:
    """Overrides of a row on Conv-4 trained from scratch, the baselines' papers' network: 64 filters a
    block (ProtoNets, Matching and Siamese networks) or ``widths`` (MAML's and Meta-LSTM's 32)."""
    return {"backbone.name": "conv4", "backbone.widths": widths, f"{method}.pretrained": False, **sets}


_32 = [32, 32, 32, 32]

# ``{row name: (method, label, config overrides)}``, in the results tables' order ("": the method's label).
ROWS: dict[str, tuple[str, str, dict]] = {
    "mtl": ("mtl", "MTL: SS + θ meta-trained, no HT", {"meta.hard_tasks.enabled": False}),
    "mtl-ht": ("mtl", "MTL + HT: hard-task meta-batches", {"meta.hard_tasks.enabled": True}),
    "ft": ("ft", "", {}),
    "nc": ("nc", "", {}),
    "pixels": ("pixels", "", {}),
    "protonet-conv4": ("protonet", "ProtoNet, Conv-4 trained from scratch", _conv4("protonet")),
    "protonet": ("protonet", "ProtoNet, from the pretrained encoder", {"protonet.pretrained": True}),
    "matchingnet-conv4": (
        "matchingnet", "Matching Networks, Conv-4 trained from scratch", _conv4("matchingnet")
    ),
    "siamese-conv4": ("siamese", "Siamese networks, Conv-4 trained from scratch", _conv4("siamese")),
    "maml-conv4": (
        "maml", "MAML, Conv-4 (32 filters), second order", _conv4("maml", _32, **{"maml.first_order": False})
    ),
    "fomaml-conv4": (
        "maml", "first-order MAML, Conv-4 (32 filters)", _conv4("maml", _32, **{"maml.first_order": True})
    ),
    "meta-lstm-conv4": ("meta-lstm", "Meta-LSTM, Conv-4 (32 filters)", _conv4("meta-lstm", _32)),
    "tadam": ("tadam", "TADAM: metric scaling, task conditioning, co-training", {"tadam.pretrained": False}),
    "mann": ("mann", "MANN (Santoro et al. 2016)", {}),
}  # fmt: skip


def known_rows() -> dict[str, tuple[str, str, dict]]:
    """Every row ``mtl compare`` knows: :data:`ROWS`, then a row named like each registered method that
    none of them runs (its label, no overrides)."""
    covered = {method for method, _, _ in ROWS.values()}
    rows = {**ROWS, **{name: (name, "", {}) for name in methods.METHODS if name not in covered}}
    return {row: (m, label or methods.get(m).label, sets) for row, (m, label, sets) in rows.items()}


@dataclass(frozen=True)
class Row:
    """One row of a table on shared test episodes: a method and its config, meta-trained (when its
    method trains) into ``folder`` under the run folder, from a random encoder if ``from_scratch``."""

    label: str
    cfg: Config
    folder: str
    from_scratch: bool = False

    @property
    def name(self) -> str:
        """The row's short name (``--reference`` takes it): the last part of its folder."""
        return self.folder.rsplit("/", 1)[-1]

    @property
    def trains(self) -> bool:
        return methods.get(self.cfg.method).trains

    @property
    def needs_pretrained(self) -> bool:
        return not self.from_scratch and methods.get(self.cfg.method).needs_pretrained(self.cfg)

    def runs(self, seeds: int, seeds_from: str = METATRAIN.folder) -> list[Row]:
        """The row's training runs: seeds ``seed``, ``seed + 1``, ... (the first in the row's folder,
        the others in ``<folder>-seed<k>``); one run for a row that trains nothing.

        ``seeds_from="pretrain"``: each seed ``k`` > 0 also pretrains the encoder anew, with its own
        seed, into the run folder ``<pretrain run>-seed<k>`` (:func:`pretraining_seed`), and the row
        starts from that one (meta-trained into ``<folder>-pretrain-seed<k>``, apart from the runs of
        meta-training seeds); then a row that only reads the pretrained encoder (NC, FT) has seeds
        too. Seed 0 is the pipeline's own pretrain and meta-training either way."""
        repeats = self.trains or (seeds_from == PRETRAIN.folder and self.needs_pretrained)
        if not repeats:
            return [self]
        again = []
        for k in range(1, seeds):
            cfg, folder = dataclasses.replace(self.cfg, seed=self.cfg.seed + k), f"{self.folder}-seed{k}"
            if seeds_from == PRETRAIN.folder and self.needs_pretrained:
                cfg, folder = pretraining_seed(self.cfg, k), f"{self.folder}-pretrain-seed{k}"
            again.append(Row(self.label, cfg, folder, self.from_scratch))
        return [self, *again]


def pretraining_seed(cfg: Config, k: int) -> Config:
    """``cfg``'s extra seed ``k`` that pretrains too: seed ``seed + k``, its pretrain kept apart from
    the pipeline's in the run folder ``<pretrain run>-seed<k>`` (pipelines that share a
    ``pretrain.name`` share it too)."""
    name = f"{cfg.run_name(PRETRAIN.folder)}-seed{k}"
    pretrain = dataclasses.replace(cfg.pretrain, name=name)
    return dataclasses.replace(cfg, seed=cfg.seed + k, pretrain=pretrain)


# The name of a set of rows: the MTL paper's comparison table, in its order.
PAPER = "paper"


def rows(cfg: Config, names: list[str] | None = None) -> dict[str, Row]:
    """``{row name: row}`` of the requested compare rows (default ``compare.methods``, else all);
    ``paper`` stands for the MTL paper's comparison table (:data:`mtl.results.published.PAPER_TABLE`)."""
    known = known_rows()
    names = names or cfg.compare.methods or list(known)
    names = list(dict.fromkeys(n for name in names for n in (PAPER_TABLE if name == PAPER else (name,))))
    unknown = [n for n in names if n not in known]
    if unknown:
        rows_known = f"{', '.join(known)}; {PAPER}: the MTL paper's table"
        raise MtlError(f"compare: unknown method '{unknown[0]}' (known: {rows_known})")
    out = {}
    for name in names:
        method, label, sets = known[name]
        raw = cfg.to_dict()
        raw["method"] = method
        for key, value in sets.items():
            pipeline_file.set_key(raw, key, value)
        out[name] = Row(label, from_dict(raw), f"{COMPARE.folder}/{name}")
    return out


def compare(
    cfg: Config,
    checkpoints: str | Path = "checkpoints",
    *,
    names: list[str] | None = None,
    reference: str | None = None,
    seeds: int = 1,
    seeds_from: str = METATRAIN.folder,
    quiet: bool = False,
    allow_chance: bool = False,
) -> dict:
    """Train what needs training, score every row; writes ``compare/results.json`` (metatest's shape
    plus ``seconds`` of training per row and ``published`` numbers) and returns it. Each row's paired
    difference is taken from row ``reference`` (default: the first row of the pipeline's method);
    ``seeds`` runs of each row that trains, from meta-training or from pretraining (``seeds_from``,
    :meth:`Row.runs`). The ``compare`` folder is held from the first row's training to the table.
    ``allow_chance``: let a table of nothing but chance replace an earlier one
    (:func:`mtl.stages.metatest.publish`)."""
    todo = rows(cfg, names)
    prepared = source_format(cfg.data.root)
    paper = {
        row.label: n
        for name, row in todo.items()
        if (n := published(name, cfg, source_format=prepared)) is not None
    }
    with holding(cfg, checkpoints, COMPARE.folder):
        results = score_rows(
            cfg, checkpoints, list(todo.values()), folder=COMPARE.folder, episodes=cfg.compare.episodes,
            quiet=quiet, extra=lambda: {"published": paper}, reference=reference, seeds=seeds,
            seeds_from=seeds_from, allow_chance=allow_chance,
        )  # fmt: skip
    if not quiet:
        print(table(results))
    return results


def score_rows(
    cfg: Config,
    checkpoints: str | Path,
    todo: list[Row],
    *,
    folder: str,
    episodes: int,
    quiet: bool,
    extra: Callable[[], dict] = dict,
    reference: str | None = None,
    seeds: int = 1,
    seeds_from: str = METATRAIN.folder,
    allow_chance: bool = False,
) -> dict:
    """Meta-train the rows that train (after the pipeline's pretrain, if a row starts from it), then
    score every row on ``episodes`` shared test episodes and write ``<folder>/results.json``: metatest's
    shape plus ``seconds`` (of training, per row, and in all), ``kept_epoch`` and what ``extra()``
    returns once the training is done. Paired differences are taken from the row named ``reference``
    (default: the first row of the pipeline's method, else the first row). ``seeds``: each trained row
    is trained that many times (:meth:`Row.runs`; ``seeds_from="pretrain"``: pretraining included, and
    the rows that read the pretrained encoder then have seeds too), every run scored on the same
    episodes. The table is
    the caller's to print. Scores of nothing but chance keep an earlier ``results.json`` unless
    ``allow_chance`` (:func:`mtl.stages.metatest.publish`); the rows' training is kept either way."""
    ref = reference_row(cfg, todo, reference)
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    kept: dict[str, int] = {}
    runs = {row.label: row.runs(seeds, seeds_from) for row in todo}
    if any(r.needs_pretrained for rs in runs.values() for r in rs):
        t0 = time.perf_counter()
        for k in range(seeds if seeds_from == PRETRAIN.folder else 1):  # the pipeline's, then each seed's
            pretrain(
                pretraining_seed(cfg, k) if k else cfg, checkpoints, quiet=quiet
            )  # reuses a finished one
        seconds["pretrain"] = round(time.perf_counter() - t0, 1)
    for row in todo:
        if row.trains:
            t0 = time.perf_counter()
            epochs = [
                metatrain(r.cfg, checkpoints, quiet=quiet, folder=r.folder, from_scratch=r.from_scratch)[
                    "epoch"
                ]
                for r in runs[row.label]
            ]  # 0: validation never beat the untrained start
            seconds[row.label] = round(time.perf_counter() - t0, 1)
            kept[row.label] = epochs[0] if seeds == 1 else epochs
    with Run.open(cfg, folder, checkpoints, quiet=quiet) as run:
        scorer = Scorer(run, *test_episodes(run, episodes))
        # Every checkpoint is read and checked before the first row is scored.
        scored = [(row, [_method(scorer, r, checkpoints, cfg.name) for r in runs[row.label]]) for row in todo]
        scores = {row.label: _scores(scorer, row, runs[row.label], methods_) for row, methods_ in scored}
        seconds["total"] = round(time.perf_counter() - start, 1)
        extra_entries = {"seconds": seconds, "kept_epoch": kept, **extra()}
        prepared = source_format(cfg.data.root)
        papers = {
            k: v
            for row in todo
            for k, v in published_breakdowns(row.cfg.method, cfg, source_format=prepared).items()
        }
        pretrained_seeds = {
            label: PRETRAIN.folder for label, rs in runs.items() if len(rs) > 1 and rs[1].needs_pretrained
        } if seeds_from == PRETRAIN.folder else {}  # fmt: skip
        return publish(
            run, scores, episodes, quiet=True, extra=extra_entries, reference=ref.label,
            allow_chance=allow_chance, breakdowns=scorer.breakdowns, published=papers,
            seeds_from=pretrained_seeds,
        )  # fmt: skip


def reference_row(cfg: Config, todo: list[Row], name: str | None) -> Row:
    """The row named ``name``, or by default the first of the pipeline's method (else the first)."""
    if name is not None:
        found = [row for row in todo if name in (row.name, row.label)]
        if not found:
            raise MtlError(f"--reference: no row '{name}' (rows: {', '.join(r.name for r in todo)})")
        return found[0]
    return next((row for row in todo if row.cfg.method == cfg.method), todo[0])


def _scores(scorer: Scorer, row: Row, runs: list[Row], fitted: list[methods.Method]) -> torch.Tensor:
    """Per-episode accuracy of the row: ``(E,)``, or ``(S, E)`` for a row of several seeds. Rows that
    encode with the pretrained encoder as it is share its features (per pretraining seed)."""
    shares = [r.cfg.run_name(PRETRAIN.folder) if _plain(r) else None for r in runs]
    if len(runs) == 1:
        return scorer.score(fitted[0], shares=shares[0], label=row.label)
    return torch.stack(
        [
            scorer.score(m, shares=s, label=f"{row.label} (seed {k})")
            for k, (m, s) in enumerate(zip(fitted, shares, strict=True))
        ]
    )


def _method(scorer: Scorer, row: Row, checkpoints: str | Path, name: str) -> methods.Method:
    if not row.trains:
        return scorer.method(row.cfg)
    path = checkpoint.stage_dir(checkpoints, name, row.folder) / "best.pt"
    return scorer.method(row.cfg, checkpoint.load(path, stage="metatrain"), path)


def _plain(row: Row) -> bool:
    """Whether the row's features are the pretrained encoder's (computed once for every such row of
    one pretraining)."""
    cls = methods.get(row.cfg.method)
    return not row.trains and row.needs_pretrained and cls.features is methods.FeatureMethod.features


def table(results: dict) -> str:
    """The compare table: accuracy ± CI, training seconds, the epoch validation kept (0: the untrained
    start) and the published number of each row."""
    seconds, kept, paper = results["seconds"], results["kept_epoch"], results["published"]
    lines = [
        f"{results['pipeline']}: {results['way']}-way {results['shot']}-shot, {results['query']} queries, "
        f"{results['episodes']} shared test episodes",
        "| method | accuracy (%) | 95% CI | − reference (paired 95% CI) | p | training (s) | kept epoch "
        "| published |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["rows"]:
        train = f"{seconds[r['method']]:.0f}" if r["method"] in seconds else "—"
        epoch = str(kept[r["method"]]) if r["method"] in kept else "—"
        p = paper.get(r["method"])
        ci = f" ± {p['ci95']}" if p and p["ci95"] is not None else ""
        pub = f"{p['acc']}{ci} ({p['source']})" if p else "—"
        diff, pval = difference_cells(results, r["method"])
        cells = [row_name(r), f"{r['acc']:.2f}", f"± {r['ci95']:.2f}", diff, pval, train, epoch, pub]
        lines.append("| " + " | ".join(cells) + " |")
    pretrainings = max((r["seeds"] for r in results["rows"] if r.get("seeds_from") == "pretrain"), default=1)
    if "pretrain" in seconds and pretrainings > 1:
        lines.append(
            f"pretraining, {pretrainings} seeds (each shared by the rows that start from it): "
            f"{seconds['pretrain']:.0f} s"
        )
    elif "pretrain" in seconds:
        lines.append(f"pretraining (shared by the rows that start from it): {seconds['pretrain']:.0f} s")
    lines.append(f"wall-clock in all: {seconds['total'] / 60:.1f} min")
    if "differences" in results:
        lines.append(f"reference: {results['differences']['reference']}")
    for name, entry in results.get("breakdowns", {}).items():
        lines += ["", *breakdown_table(name, entry)]
    return "\n".join(lines)
