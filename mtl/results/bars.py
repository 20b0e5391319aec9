"""A results table (``metatest``, ``ablation`` or ``compare`` ``results.json``) as a bar figure.

The layout, chosen to show differences of a fraction of a point beside rows tens of points lower:

- one horizontal bar per row, top to bottom in the table's order, its full label on the y axis
  (wrapped, never cut); the 95% CI as an error bar;
- the x axis is zoomed: it starts a little below the lowest lower CI bound, not at 0 (the bars' lengths
  are not ratios; the ticks and the printed values are what is read). Where the rows (and the chance
  line, and the published numbers) fall into groups more than ``GAP`` points apart, the axis is
  *broken* into one panel per group, with break marks between them: 84.77 / 84.18 / 82.58 keep
  their own scale while a row near chance stays visible in its own panel;
- each row's value and CI ("84.77 ± 0.64") printed at the end of its bar's row, in a column right of
  the last panel, so that no label collides with a bar, a whisker or a break;
- a dotted chance line at 100 / way %, named above it;
- where the file holds paired differences (``differences``), a panel right of the bars with each
  row's difference from the reference row in points and its paired 95% CI, level with its bar, the
  reference row at 0: two rows whose own CIs overlap can still differ beyond doubt, and this panel
  shows it as the table does;
- the published numbers (``published`` per row for compare; the pipeline's ``paper`` number on the
  first row, the pipeline's own method, for metatest; elsewhere as a dashed reference line) as
  diamonds with their CI, and a legend of measured vs published only when there is one.

matplotlib is imported by the first figure drawn (:func:`mtl.results.figures.pyplot`), not with the
module.
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING

from mtl.results.figures import pyplot
from mtl.runtime.stage_folders import METATEST

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["GAP", "LABEL_WIDTH", "results_figure", "x_panels"]

GAP = 12.0  # points of accuracy with nothing in them that break the x axis
DIFF_WIDTH = 0.7  # of a full bar panel: the paired differences' panel
LABEL_WIDTH = 36  # characters of a method label per line on the y axis
MOST_PANELS = 3
BAR_HEIGHT = 0.5  # of a row: room below each bar for its published number
BAR, PUBLISHED, CHANCE = "tab:blue", "tab:orange", "0.3"


def results_figure(results: dict, stage: str) -> Figure:
    """The bars of ``results`` (a checked ``results.json``: ``rows`` of ``{"method", "acc", "ci95"}``,
    ``way``, optional ``paper`` / ``published``) that ``stage`` (its folder name) wrote."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    rows = results["rows"]
    chance = 100 / results["way"]
    marks, reference, source = _published(results, stage)
    wanted = [(r["acc"] - r["ci95"], r["acc"] + r["ci95"]) for r in rows]
    wanted += [(acc - (ci or 0), acc + (ci or 0)) for _, acc, ci in marks]
    wanted += [(chance, chance)] + ([(reference, reference)] if reference is not None else [])
    panels = x_panels(wanted)
    ends = [r["acc"] for r in rows]
    widths = [1.0 if any(lo <= e <= hi for e in ends) else 0.4 for lo, hi in panels]
    labels = [textwrap.fill(r["method"], LABEL_WIDTH) for r in rows]
    height = 1.5 + sum(0.2 + 0.17 * label.count("\n") + 0.2 for label in labels)
    diffs = _paired(results)
    fig, grid = pyplot().subplots(
        1, len(panels) + bool(diffs), sharey=True, figsize=(9 + 2 * bool(diffs), height),
        width_ratios=[*widths, *([DIFF_WIDTH] if diffs else [])], squeeze=False, layout="constrained",
    )  # fmt: skip
    fig.get_layout_engine().set(wspace=0.02, w_pad=0.02)
    axes = list(grid[0][: len(panels)])
    for ax, (lo, hi), width in zip(axes, panels, widths, strict=True):
        _draw(ax, rows, marks, reference, chance, source)
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6 if width == 1 else 3, steps=[1, 2, 2.5, 5, 10]))
        if lo <= chance <= hi:
            top = blended_transform_factory(ax.transData, ax.transAxes)
            ax.text(chance, 1.01, f"chance {chance:.3g}%", transform=top, ha="center", va="bottom",
                    fontsize=7, color=CHANCE)  # fmt: skip
    axes[0].set_yticks(range(len(rows)), labels, fontsize=8)
    axes[0].set_ylim(len(rows) - 0.5, -0.5)  # the table's first row on top
    _break_marks(axes)
    if diffs:
        _draw_differences(grid[0][-1], *diffs)
    _values(grid[0][-1], rows)
    setting = f"{results['way']}-way {results['shot']}-shot, {results['episodes']} episodes"
    fig.suptitle(f"{results['pipeline']} {stage}: {setting}", fontsize=11)
    fig.supxlabel("accuracy (%), bars: mean, whiskers: 95% CI", fontsize=9)
    if marks or reference is not None:
        handles = [Patch(color=BAR, label="measured ± 95% CI"), *axes[0].get_legend_handles_labels()[0]]
        # below the x label: the saved figure (bbox_inches="tight") grows to hold it
        fig.legend(
            handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0), ncols=len(handles), fontsize=8
        )
    return fig


def x_panels(intervals: list[tuple[float, float]], gap: float = GAP) -> list[tuple[float, float]]:
    """The x ranges ``[(lo, hi)]`` of the panels of a broken axis that shows every interval: the
    intervals merged where less than ``gap`` apart (at most ``MOST_PANELS`` groups: the closest
    merge first), each padded a little, widened to at least 4 points and kept inside [0, 100]."""
    groups: list[list[float]] = []
    for lo, hi in sorted((_percent(min(a, b)), _percent(max(a, b))) for a, b in intervals):
        if groups and lo - groups[-1][1] < gap:
            groups[-1][1] = max(groups[-1][1], hi)
        else:
            groups.append([lo, hi])
    while len(groups) > MOST_PANELS:
        i = min(range(len(groups) - 1), key=lambda k: groups[k + 1][0] - groups[k][1])
        groups[i : i + 2] = [[groups[i][0], max(groups[i][1], groups[i + 1][1])]]
    panels = []
    for lo, hi in groups:
        pad = 0.5 + 0.04 * (hi - lo)  # room for the caps of the whiskers
        lo, hi = math.floor(lo - pad), math.ceil(hi + pad)
        if hi - lo < 4:  # a lone line (chance) gets a readable stretch of axis around it
            lo = round((lo + hi) / 2) - 2
        lo = min(max(0, lo), 96)
        panels.append((float(lo), float(max(min(100, hi), lo + 4))))
    return panels


def _percent(value: float) -> float:
    """``value`` inside [0, 100]: a CI past either end shows up to the end of the axis."""
    return min(max(0.0, value), 100.0)


def _published(results: dict, stage: str) -> tuple[list[tuple[int, float, float | None]], float | None, str]:
    """``(row index, acc, ci95)`` of each published number beside a row, a published number that belongs
    to no row (a reference line) or None, and the legend's name for them."""
    rows, per_row, paper = results["rows"], results.get("published") or {}, results.get("paper") or {}
    marks = [(i, p["acc"], p.get("ci95")) for i, r in enumerate(rows) if (p := per_row.get(r["method"]))]
    if marks or paper.get("acc") is None:
        return marks, None, "published"
    source = f"published: {paper['method']}" if paper.get("method") else "published"
    if stage == METATEST.folder and rows:
        # metatest's first row is the pipeline's own method, the one its `paper` number is for
        return [(0, paper["acc"], paper.get("ci95"))], None, source
    return [], paper["acc"], source


def _draw(
    ax: Axes, rows: list[dict], marks: list, reference: float | None, chance: float, source: str
) -> None:
    """One panel's bars, whiskers, chance line and published numbers; the limits clip what is out."""
    y = range(len(rows))
    ax.barh(
        y, [r["acc"] for r in rows], xerr=[r["ci95"] for r in rows], height=BAR_HEIGHT, color=BAR,
        error_kw={"ecolor": "black", "capsize": 3, "elinewidth": 1},
    )  # fmt: skip
    ax.axvline(chance, color=CHANCE, ls=":", lw=1.3, gid="chance")
    if marks:
        below = [i + BAR_HEIGHT / 2 + 0.08 for i, _, _ in marks]  # just under its row's bar, not on it
        line, _, _ = ax.errorbar(
            [acc for _, acc, _ in marks], below, xerr=[ci or 0 for _, _, ci in marks], fmt="D", ms=6,
            color=PUBLISHED, mec="black", mew=0.6, capsize=3, label=source,
        )  # fmt: skip
        line.set_gid("published")  # the markers, not their caps
    if reference is not None:
        ax.axvline(reference, color=PUBLISHED, ls="--", lw=1.3, label=source, gid="published")
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="y", length=0)


def _paired(results: dict) -> tuple[int, list[tuple[int, float, float]]] | None:
    """The reference row's index and ``(row index, difference, its 95% CI)`` of the other rows, in
    points, from ``results["differences"]``; None where the file has none (or none that reads)."""
    record = results.get("differences")
    index = {r["method"]: i for i, r in enumerate(results["rows"])}
    if not isinstance(record, dict) or not isinstance(record.get("rows"), dict):
        return None
    diffs = [
        (index[label], float(d["diff"]), float(d["ci95"]))
        for label, d in record["rows"].items()
        if label in index and isinstance(d, dict) and _points(d.get("diff")) and _points(d.get("ci95"))
    ]
    ref = record.get("reference")
    return (index[ref], diffs) if diffs and isinstance(ref, str) and ref in index else None


def _points(value: object) -> bool:
    """A finite number of accuracy points, a difference or a CI (at most 100 either way)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= 100


def _draw_differences(ax: Axes, reference: int, diffs: list[tuple[int, float, float]]) -> None:
    """Each row's paired difference from row ``reference`` and its 95% CI, level with its bar; the
    reference row at 0."""
    ax.axvline(0, color=CHANCE, lw=1, gid="no difference")
    line, _, _ = ax.errorbar(
        [d for _, d, _ in diffs], [i for i, _, _ in diffs], xerr=[ci for _, _, ci in diffs], fmt="o", ms=5,
        color=BAR, ecolor="black", capsize=3, elinewidth=1,
    )  # fmt: skip
    line.set_gid("difference")
    ax.plot([0], [reference], marker="|", ms=14, mew=2, color="black", gid="reference")
    span = max(abs(d) + ci for _, d, ci in diffs)
    ax.set_xlim(-1.15 * span - 0.1, 1.15 * span + 0.1)
    if span > GAP:  # a row far below (raw pixels) would squash the close rows' differences onto 0
        ax.set_xscale("symlog", linthresh=1.0, linscale=1.5)
        ticks = [t for t in (-100, -10, -1, 0, 1, 10, 100) if abs(t) <= 1.15 * span]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)
    ax.set_title("− reference, paired 95% CI", fontsize=8)
    ax.set_xlabel("points", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="y", length=0, left=False)


def _break_marks(axes: list[Axes]) -> None:
    """Hide the spines where the axis is broken and draw the usual slanted marks on them."""
    marks = {"marker": [(-0.5, -1), (0.5, 1)], "markersize": 10, "linestyle": "none", "color": "black",
             "mec": "black", "mew": 1, "clip_on": False, "gid": "break"}  # fmt: skip
    for left, right in zip(axes, axes[1:], strict=False):
        left.spines["right"].set_visible(False)
        right.spines["left"].set_visible(False)
        right.tick_params(axis="y", left=False)
        left.plot([1, 1], [0, 1], transform=left.transAxes, **marks)
        right.plot([0, 0], [0, 1], transform=right.transAxes, **marks)


def _values(ax: Axes, rows: list[dict]) -> None:
    """Each row's "acc ± ci95" right of the last panel, level with its bar."""
    from matplotlib.transforms import blended_transform_factory

    at = blended_transform_factory(ax.transAxes, ax.transData)
    for i, r in enumerate(rows):
        ax.text(1.03, i, f"{r['acc']:.2f} ± {r['ci95']:.2f}", transform=at, ha="left", va="center",
                fontsize=8, gid="value")  # fmt: skip
