"""``mtl compare``: the paper's results table, measured. Every method on the same fixed test episodes.

The rows are the methods' variants (:func:`mtl.methods.variants`: ``nc``, ``ft``, ``mtl``, ``mtl-ht``,
``protonet``, ``protonet-conv4``, ...), each a method plus config overrides, on the pipeline's dataset,
way and shot. A row that trains is meta-trained into ``<checkpoints>/<name>/compare/<row>/`` (resumed or
reused like any metatrain); rows that start from the pretrained encoder share the pipeline's pretrain
(trained first if missing). Every row is scored on ``compare.episodes`` shared test episodes and shown
with its training wall-clock and, where one exists, the published number for that method and setting.
"""

from __future__ import annotations

import time
from pathlib import Path

from mtl import methods
from mtl.config import Config, from_dict, pipeline_file
from mtl.errors import MtlError
from mtl.results.published import published
from mtl.runtime import checkpoint
from mtl.runtime.stage_folders import COMPARE
from mtl.stages.metatest import Scorer, publish, test_episodes
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain
from mtl.training.run import Run, holding


def rows(cfg: Config, names: list[str] | None = None) -> dict[str, tuple[str, Config]]:
    """``{row name: (label, config)}`` of the requested rows (default ``compare.methods``, else all)."""
    known = methods.variants()
    names = names or cfg.compare.methods or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise MtlError(f"compare: unknown method '{unknown[0]}' (known: {', '.join(known)})")
    out = {}
    for name in names:
        method, label, sets = known[name]
        raw = cfg.to_dict()
        raw["method"] = method
        for key, value in sets.items():
            pipeline_file.set_key(raw, key, value)
        out[name] = (label, from_dict(raw))
    return out


def compare(
    cfg: Config,
    checkpoints: str | Path = "checkpoints",
    *,
    names: list[str] | None = None,
    quiet: bool = False,
) -> dict:
    """Train what needs training, score every row; writes ``compare/results.json`` (metatest's shape
    plus ``seconds`` of training per row and ``published`` numbers) and returns it. The ``compare``
    folder is held from the first row's training to the table."""
    with holding(cfg, checkpoints, COMPARE.folder):
        return _compare(cfg, checkpoints, names, quiet)


def _compare(cfg: Config, checkpoints: str | Path, names: list[str] | None, quiet: bool) -> dict:
    start = time.perf_counter()
    todo = rows(cfg, names)
    seconds: dict[str, float] = {}
    kept: dict[str, int] = {}
    if any(methods.get(c.method).needs_pretrained(c) for _, c in todo.values()):
        t0 = time.perf_counter()
        pretrain(cfg, checkpoints, quiet=quiet)  # reuses a finished one
        seconds["pretrain"] = round(time.perf_counter() - t0, 1)
    for name, (label, row_cfg) in todo.items():
        if methods.get(row_cfg.method).trains:
            t0 = time.perf_counter()
            best = metatrain(row_cfg, checkpoints, quiet=quiet, folder=f"{COMPARE.folder}/{name}")
            seconds[label] = round(time.perf_counter() - t0, 1)
            kept[label] = best["epoch"]  # 0: validation never beat the untrained start

    with Run.open(cfg, COMPARE.folder, checkpoints, quiet=quiet) as run:
        scorer = Scorer(run, *test_episodes(run, cfg.compare.episodes))
        scores, paper = {}, {}
        for name, (label, row_cfg) in todo.items():
            trained, path = None, None
            if methods.get(row_cfg.method).trains:
                path = checkpoint.stage_dir(checkpoints, cfg.name, f"{COMPARE.folder}/{name}") / "best.pt"
                trained = checkpoint.load(path, stage="metatrain")
            scores[label] = scorer.score(scorer.method(row_cfg, trained, path))
            if (number := published(name, cfg)) is not None:
                paper[label] = number
        seconds["total"] = round(time.perf_counter() - start, 1)
        extra = {"seconds": seconds, "kept_epoch": kept, "published": paper}
        results = publish(run, scores, cfg.compare.episodes, quiet=True, extra=extra)
    if not quiet:
        print(table(results))
    return results


def table(results: dict) -> str:
    """The compare table: accuracy ± CI, training seconds, the epoch validation kept (0: the untrained
    start) and the published number of each row."""
    seconds, kept, paper = results["seconds"], results["kept_epoch"], results["published"]
    lines = [
        f"{results['pipeline']}: {results['way']}-way {results['shot']}-shot, {results['query']} queries, "
        f"{results['episodes']} shared test episodes",
        "| method | accuracy (%) | 95% CI | training (s) | kept epoch | published |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results["rows"]:
        train = f"{seconds[r['method']]:.0f}" if r["method"] in seconds else "—"
        epoch = str(kept[r["method"]]) if r["method"] in kept else "—"
        p = paper.get(r["method"])
        ci = f" ± {p['ci95']}" if p and p["ci95"] is not None else ""
        pub = f"{p['acc']}{ci} ({p['source']})" if p else "—"
        lines.append(f"| {r['method']} | {r['acc']:.2f} | ± {r['ci95']:.2f} | {train} | {epoch} | {pub} |")
    if "pretrain" in seconds:
        lines.append(f"pretraining (shared by the rows that start from it): {seconds['pretrain']:.0f} s")
    lines.append(f"wall-clock in all: {seconds['total'] / 60:.1f} min")
    return "\n".join(lines)
