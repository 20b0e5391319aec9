"""A run's training figures, built as matplotlib Figures (:mod:`mtl.results.plots` saves them).

- :func:`curves_figure`: one panel per TensorBoard stage folder in the order a user runs them
  (pretrain, metatrain, then the others by name, e.g. ``compare/mtl``), validation accuracy with its
  95% CI band; every accuracy panel on one shared y range (they show the same quantity, in %), never
  narrower than ``MIN_SPAN`` points. Then the hard-task pool size of each stage that logged one, on
  integer ticks. A stage that logged one point shows it as a marker with its CI whisker.
- :func:`hard_tasks_figure`: how often each base class failed into the hard-task pool and how often
  hard tasks drew it, the most-drawn first, on integer ticks.
- :func:`breakdown_figure`: a results file's per-episode breakdown (MANN's accuracy by presentation)
  against its column, each row with its 95% CI band, the published numbers as dashed lines and the
  chance line.

matplotlib is imported by the first figure drawn (:func:`pyplot`), not with the module.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from mtl.runtime.stage_folders import METATRAIN, PRETRAIN

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ACCURACY",
    "POOL",
    "Series",
    "accuracy_range",
    "breakdown_figure",
    "curves_figure",
    "hard_tasks_figure",
    "pyplot",
    "stage_key",
]

ACCURACY, POOL = "accuracy", "pool"
STAGE_ORDER = (PRETRAIN.folder, METATRAIN.folder)
MIN_SPAN = 10.0  # points of accuracy a curve panel shows at least
COLUMNS = 4  # panels a row of the curves figure
TOP_CLASSES = 30


@functools.cache
def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (files only: no display, works headless and in CI),
    imported on first use: reading results needs no matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class Series:
    """One logged curve of a stage: ``steps`` and ``values`` (equal lengths); for ``kind`` ACCURACY
    (validation accuracy, %) also the CI's ``low`` and ``high`` bounds, for POOL (the hard-task pool
    size, classes) none."""

    stage: str  # the folder under <run>/tb: "pretrain", "metatrain", "compare/mtl-ht", ...
    kind: str
    steps: list[int]
    values: list[float]
    low: list[float] | None = None
    high: list[float] | None = None


def stage_key(stage: str) -> tuple[int, str]:
    """Sort key of stage folders: pretrain, metatrain, then the others by name."""
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def accuracy_range(series: list[Series]) -> tuple[float, float]:
    """The y range that holds every CI band of ``series``, padded, inside [0, 100] and at least
    ``MIN_SPAN`` wide (a single point or a flat curve is not blown up into a range of a tenth of a point)."""
    bounds = [v for s in series for v in (*(s.low or s.values), *(s.high or s.values)) if math.isfinite(v)]
    lo, hi = (min(bounds), max(bounds)) if bounds else (0.0, 100.0)
    pad = max(1.0, 0.05 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    if hi - lo < MIN_SPAN:
        mid = (lo + hi) / 2
        lo = min(max(0.0, mid - MIN_SPAN / 2), 100.0 - MIN_SPAN)
        hi = lo + MIN_SPAN
    return lo, hi


def curves_figure(run: str, series: list[Series]) -> Figure:
    """The curves of run ``run``: accuracy panels in stage order on one shared y range, then pool sizes."""
    from matplotlib.ticker import MaxNLocator

    accuracy = sorted((s for s in series if s.kind == ACCURACY), key=lambda s: stage_key(s.stage))
    pools = sorted((s for s in series if s.kind == POOL), key=lambda s: stage_key(s.stage))
    panels = accuracy + pools
    columns = min(len(panels), COLUMNS)
    rows = math.ceil(len(panels) / columns)
    fig, grid = pyplot().subplots(
        rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False, layout="constrained"
    )
    axes = list(grid.ravel())
    for ax in axes[len(panels) :]:
        fig.delaxes(ax)  # the last row's empty places
    shown = axes[: len(accuracy)]
    for ax in shown[1:]:
        ax.sharey(shown[0])
    for i, (ax, s) in enumerate(zip(axes, panels, strict=False)):
        (_accuracy if s.kind == ACCURACY else _pool)(ax, s)
        ax.set_title(f"{run}: {s.stage}" + ("" if s.kind == ACCURACY else ", hard tasks"), fontsize=10)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are counts
        if len(set(s.steps)) == 1:  # one point: a readable stretch of steps around it
            ax.set_xlim(s.steps[0] - 1, s.steps[0] + 1)
        ax.grid(alpha=0.3)
        if i == 0 and s.kind == ACCURACY:
            ax.legend(loc="best", fontsize=8)
    if shown:
        shown[0].set_ylim(*accuracy_range(accuracy))
    return fig


def _accuracy(ax: Axes, s: Series) -> None:
    """Validation accuracy ± 95% CI: a line and a band, or one marker with its whisker."""
    low, high = s.low or s.values, s.high or s.values
    if len(s.steps) == 1:
        err = [[s.values[0] - low[0]], [high[0] - s.values[0]]]
        ax.errorbar(
            s.steps, s.values, yerr=err, fmt="o", ms=6, capsize=4, label="validation accuracy ± 95% CI"
        )
    else:
        ax.plot(s.steps, s.values, marker="o", ms=3, label="validation accuracy")
        ax.fill_between(s.steps, low, high, alpha=0.25, label="95% CI")
    ax.set_ylabel("accuracy (%)")


def _pool(ax: Axes, s: Series) -> None:
    """The hard-task pool's size (classes) after each meta-update."""
    from matplotlib.ticker import MaxNLocator

    ax.plot(s.steps, s.values, drawstyle="steps-post", marker="o", ms=3, color="tab:red")
    ax.set_ylim(0, max(s.values) + 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a number of classes
    ax.set_ylabel("hard-task pool (classes)")


def hard_tasks_figure(summary: dict) -> Figure:
    """Failures into the pool and draws into hard tasks per class of a checked ``hard_tasks.json``
    (``classes``: ``{name: {"chosen", "failures"}}``), the most-drawn first, at most ``TOP_CLASSES``."""
    from matplotlib.ticker import MaxNLocator

    classes = sorted(summary["classes"].items(), key=lambda kv: (-kv[1]["chosen"], -kv[1]["failures"]))
    classes = classes[:TOP_CLASSES]
    fig, ax = pyplot().subplots(figsize=(max(6, 0.3 * len(classes) + 2), 3.8), layout="constrained")
    x = range(len(classes))
    ax.bar([i - 0.2 for i in x], [c["failures"] for _, c in classes], width=0.4, label="failed into the pool")
    ax.bar([i + 0.2 for i in x], [c["chosen"] for _, c in classes], width=0.4, label="drawn into hard tasks")
    ax.set_xticks(list(x), [name for name, _ in classes], rotation=90, fontsize=7)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of meta-batches
    ax.set(
        ylabel="meta-batches",
        title=f"hard-task pool ({summary['hard_task_updates']} updates, window {summary['window']}, "
        f"{len(summary['classes'])} classes seen)",
    )
    ax.legend(fontsize=8)
    return fig


BREAKDOWN_AXES = {"by_presentation": "presentation of the class in the support sequence"}


def breakdown_figure(results: dict, name: str, stage: str) -> Figure:
    """Breakdown ``name`` of a checked ``results.json`` (``results["breakdowns"][name]``): accuracy (%)
    at each column, a line and its 95% CI band per row, published rows dashed, chance at 100 / way."""
    from matplotlib.ticker import MaxNLocator

    entry = results["breakdowns"][name]
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2), layout="constrained")
    for method, row in entry["rows"].items():
        at = list(range(1, len(row["mean"]) + 1))
        low = [m - c for m, c in zip(row["mean"], row["ci95"], strict=True)]
        high = [m + c for m, c in zip(row["mean"], row["ci95"], strict=True)]
        (line,) = ax.plot(at, row["mean"], marker="o", ms=4, label=method)
        ax.fill_between(at, low, high, alpha=0.2, color=line.get_color())
    for source, pub in entry.get("published", {}).items():
        ax.plot(pub["at"], pub["acc"], linestyle="--", marker="s", ms=4, label=f"{source} (published)")
    ax.axhline(
        100 / results["way"], color="grey", linestyle=":", label=f"chance ({100 / results['way']:.1f}%)"
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # columns are counts
    ax.set(
        xlabel=BREAKDOWN_AXES.get(name, name.replace("_", " ")),
        ylabel="accuracy (%)",
        ylim=(0, 100),
        title=f"{results['pipeline']} {stage}: {results['way']}-way {results['shot']}-shot, "
        f"accuracy {name.replace('_', ' ')}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig
