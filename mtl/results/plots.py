"""``mtl report --plot DIR``: the figures a user would otherwise draw by hand, as PNG files.

For every run under the checkpoints folder:

- ``<run>-curves.png``: each stage's validation accuracy with its 95% CI band (read back from the
  TensorBoard event files), one panel per stage, training steps on the x axis;
- ``<run>-<metatest|ablation|compare>.png``: that results table as bars with CI whiskers, the
  published numbers as hatched bars beside them;
- ``<run>-<folder>-hard-tasks.png``: how often each base class failed into the hard-task pool and
  how often hard tasks drew it (``hard_tasks.json``), the most-drawn classes first.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, works headless and in CI

import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from mtl.errors import MtlError  # noqa: E402
from mtl.results.report import read_results  # noqa: E402
from mtl.runtime.atomic import atomic_write  # noqa: E402
from mtl.runtime.stage_folders import RESULT_FOLDERS, RESULTS_FILE  # noqa: E402

__all__ = ["plot_all"]

TOP_CLASSES = 30


def plot_all(checkpoints: str | Path, out: str | Path) -> list[Path]:
    """Write every figure of the runs under ``checkpoints`` into ``out``; returns the files."""
    root, out = Path(checkpoints).expanduser(), Path(out).expanduser()
    found: set[Path] = set()
    if root.is_dir():
        found |= {p.parent for p in root.glob("*/tb")}
        found |= {p.parents[1] for s in RESULT_FOLDERS for p in root.glob(f"*/{s}/{RESULTS_FILE}")}
    runs = sorted(found)
    if not runs:
        raise MtlError(
            f"nothing to plot under {root}: no run folders (<name>/tb or <name>/<stage>/results.json)"
        )
    if out.exists() and not out.is_dir():
        raise MtlError(f"--plot {out} is a file; give a folder for the figures")
    todo = []  # every file is read and checked before the first figure (or the folder) is made
    for run in runs:
        todo.append((_curves_data(run), out / f"{run.name}-curves.png", _curves))
        for stage in RESULT_FOLDERS:
            if (results := run / stage / RESULTS_FILE).is_file():
                todo.append((read_results(results), out / f"{run.name}-{stage}.png", _bars))
        for hard in sorted(run.rglob("hard_tasks.json")):
            folder = "-".join(hard.parent.relative_to(run).parts)
            todo.append((_read_hard_tasks(hard), out / f"{run.name}-{folder}-hard-tasks.png", _hard_tasks))
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MtlError(f"--plot {out}: cannot make the folder ({exc.strerror or exc})") from None
    try:
        return [draw(data, path) for data, path, draw in todo if data]
    except BaseException:
        if made and not any(out.iterdir()):
            out.rmdir()  # a failed first figure leaves no empty folder behind
        raise


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _curves_data(run: Path) -> list[tuple]:
    """``(stage, steps, acc, low, high)`` of each stage of ``run`` that logged a validation accuracy."""
    panels = []
    for stage_dir in sorted(p for p in (run / "tb").rglob("*") if p.is_dir() and any(p.glob("events.*"))):
        stage = stage_dir.relative_to(run / "tb").as_posix()
        try:
            events = EventAccumulator(str(stage_dir), size_guidance={"scalars": 0})
            events.Reload()
        except (OSError, UnicodeError, ValueError, KeyError):
            raise MtlError(f"cannot read the TensorBoard events in {stage_dir}") from None
        tag = f"{stage}/val/acc"
        if {tag, f"{tag}_low", f"{tag}_high"} <= set(events.Tags()["scalars"]):
            series = [[e.value for e in events.Scalars(t)] for t in (tag, f"{tag}_low", f"{tag}_high")]
            panels.append((stage, [e.step for e in events.Scalars(tag)], *series))
    return panels


def _read_hard_tasks(path: Path) -> dict:
    """A ``hard_tasks.json``, checked as :func:`_hard_tasks` reads it, or one line saying it is not one."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        classes = summary["classes"]
        ok = isinstance(summary["hard_task_updates"], int) and isinstance(summary["window"], int)
        ok = ok and all(
            isinstance(c["chosen"], int) and isinstance(c["failures"], int) for c in classes.values()
        )
    except OSError as exc:
        raise MtlError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        ok = False
    if not ok:
        raise MtlError(f"{path} is not a hard-task summary (hard_tasks.json as metatrain writes it)")
    return summary


def _curves(panels: list[tuple], path: Path) -> Path:
    """Validation accuracy ± CI of each stage that logged one."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (stage, steps, acc, low, high) in zip(axes[0], panels, strict=True):
        ax.plot(steps, acc, marker="o", ms=3, label="validation accuracy")
        ax.fill_between(steps, low, high, alpha=0.25, label="95% CI")
        ax.set(
            title=f"{path.name.removesuffix('-curves.png')}: {stage}",
            xlabel="training step",
            ylabel="accuracy (%)",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _bars(results: dict, path: Path) -> Path:
    """One bar per row with its CI whisker; published numbers (the pipeline's, or compare's per
    row) as hatched bars."""
    rows = results["rows"]
    published = dict(results.get("published") or {})
    paper = results.get("paper")
    labels = [r["method"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.8))
    y = range(len(rows))
    ax.barh(
        y,
        [r["acc"] for r in rows],
        xerr=[r["ci95"] for r in rows],
        capsize=3,
        color="tab:blue",
        label="measured",
    )
    pub = [(i, published[m]) for i, m in enumerate(labels) if m in published]
    if pub:
        ax.barh(
            [i + 0.35 for i, _ in pub], [p["acc"] for _, p in pub], height=0.3,
            xerr=[p["ci95"] or 0 for _, p in pub], capsize=2, color="none", edgecolor="tab:orange",
            hatch="//", label="published",
        )  # fmt: skip
    if paper and paper.get("acc") is not None:
        ax.axvline(
            paper["acc"], color="tab:orange", ls="--", label=f"{paper.get('method') or 'paper'} (published)"
        )
    ax.set_yticks(list(y), [_short(m) for m in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    setting = f"{results['way']}-way {results['shot']}-shot, {results['episodes']} episodes"
    ax.set(xlabel="accuracy (%) ± 95% CI", title=f"{results['pipeline']}: {setting}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _hard_tasks(summary: dict, path: Path) -> Path:
    """Failures into the pool and draws into hard tasks per class, the most-drawn first."""
    classes = sorted(summary["classes"].items(), key=lambda kv: (-kv[1]["chosen"], -kv[1]["failures"]))
    classes = classes[:TOP_CLASSES]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(classes) + 2), 3.8))
    x = range(len(classes))
    ax.bar([i - 0.2 for i in x], [c["failures"] for _, c in classes], width=0.4, label="failed into the pool")
    ax.bar([i + 0.2 for i in x], [c["chosen"] for _, c in classes], width=0.4, label="drawn into hard tasks")
    ax.set_xticks(list(x), [name for name, _ in classes], rotation=90, fontsize=7)
    ax.set(
        ylabel="meta-batches",
        title=f"hard-task pool ({summary['hard_task_updates']} updates, window {summary['window']}, "
        f"{len(summary['classes'])} classes seen)",
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def _short(label: str, width: int = 48) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"
