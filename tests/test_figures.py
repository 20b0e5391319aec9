"""The figures of ``mtl report --plot``, asserted on the matplotlib Figures: results bars on a zoomed
(broken) axis with values, CIs, chance and published numbers; curves in stage order on a shared axis."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.ticker import MaxNLocator

from mtl.results.bars import results_figure, x_panels
from mtl.results.figures import ACCURACY, POOL, Series, curves_figure, hard_tasks_figure
from mtl.results.plots import read_curves
from mtl.runtime.monitor import Monitor

MTL = "MTL (SS + meta-learned θ)"
FT = "FT: θ fine-tuned on pretrained features (no meta-training)"
NC = "nearest centroid, pretrained features"
PIXELS = "nearest centroid, raw pixels"
CLOSE = [(MTL, 84.77, 0.64), (FT, 84.18, 0.64), (NC, 82.58, 0.67)]
FAR = [*CLOSE, (PIXELS, 20.29, 0.36)]
PAPER = {"method": "MTL + HT, ResNet-12 (TPAMI 2020)", "acc": 83.9, "ci95": 1.1}


def metatest_results(rows=FAR, way: int = 5, paper: dict | None = None) -> dict:
    """A ``metatest/results.json`` as :func:`mtl.stages.metatest.publish` writes it."""
    return {
        "pipeline": "glyphs-1shot",
        "way": way,
        "shot": 1,
        "query": 15,
        "episodes": 600,
        "rows": [{"method": m, "acc": a, "ci95": c} for m, a, c in rows],
        "paper": paper,
    }


def compare_results(rows=FAR, published: dict | None = None) -> dict:
    """A ``compare/results.json`` as :func:`mtl.stages.compare.compare` writes it: metatest's shape plus
    ``seconds``, ``kept_epoch`` and ``published`` (per row label)."""
    seconds = {"pretrain": 120.0, MTL: 300.0, "total": 480.0}
    extra = {"seconds": seconds, "kept_epoch": {MTL: 3}, "published": published or {}}
    return {**metatest_results(rows), **extra}


def write_results(ckpts: Path, run: str, stage: str, results: dict, dataset: str = "glyphs") -> Path:
    """``<ckpts>/<run>/<stage>/results.json`` and the ``config.yaml`` beside it."""
    out = ckpts / run / stage
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(f"name: {run}\ndata:\n  dataset: {dataset}\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return out / "results.json"


def write_curves(run: Path, stage: str, points: list[tuple[int, float, float]], pool: list[int] = ()) -> None:
    """TensorBoard events of ``stage`` as the stages log them: ``(step, acc, ci)`` validation points
    and the hard-task pool size per step."""
    monitor = Monitor(run / "tb" / stage, stage, quiet=True)
    for step, acc, ci in points:
        monitor.accuracy(step, "validation accuracy", acc, ci, chart="validation accuracy ± 95% CI (%)")
    for step, size in enumerate(pool):
        monitor.scalars(step, section="hard tasks", **{"pool size": size})
    monitor.close()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def bar_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.patches]


def lines(fig, gid: str) -> list:
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == gid]


def holding(axes, value: float) -> list:
    return [ax for ax in axes if ax.get_xlim()[0] <= value <= ax.get_xlim()[1]]


def test_close_rows_get_a_zoomed_axis_that_holds_every_bar():
    fig = results_figure(metatest_results(CLOSE), "metatest")
    axes = bar_axes(fig)
    assert all(ax.get_xlim()[0] > 0 for ax in axes)  # not a 0-100 axis
    for _, acc, ci in CLOSE:
        (ax,) = holding(axes, acc)
        lo, hi = ax.get_xlim()
        assert lo <= acc - ci and acc + ci <= hi and hi - lo <= 10  # a 2-point difference is visible


def test_a_row_far_below_stays_visible_and_the_close_rows_keep_their_zoom():
    fig = results_figure(metatest_results(FAR), "metatest")
    axes = bar_axes(fig)
    assert len(axes) == 2  # broken between the raw-pixel row (and chance) and the others
    for _, acc, ci in FAR:
        (ax,) = holding(axes, acc)
        assert ax.get_xlim()[0] <= acc - ci and acc + ci <= ax.get_xlim()[1]
    (top,) = holding(axes, 84.77)
    assert top.get_xlim()[1] - top.get_xlim()[0] <= 10
    assert sum(line.get_gid() == "break" for ax in axes for line in ax.get_lines()) == 2  # a pair per side


def test_every_bar_has_its_value_and_ci_printed_level_with_it():
    fig = results_figure(metatest_results(FAR), "metatest")
    texts = {t.get_text(): t.get_position()[1] for ax in fig.axes for t in ax.texts if t.get_gid() == "value"}
    assert texts == {"84.77 ± 0.64": 0, "84.18 ± 0.64": 1, "82.58 ± 0.67": 2, "20.29 ± 0.36": 3}
    whiskers = [c for ax in bar_axes(fig) for c in ax.containers if getattr(c, "errorbar", None)]
    assert whiskers and all(c.errorbar.has_xerr for c in whiskers)  # the CI as an error bar


@pytest.mark.parametrize("way", [5, 20])
def test_the_chance_line_is_at_100_over_way(way):
    fig = results_figure(metatest_results(CLOSE, way=way), "metatest")
    chance = lines(fig, "chance")
    assert chance and all(list(line.get_xdata()) == [100 / way] * 2 for line in chance)
    assert holding(bar_axes(fig), 100 / way)  # on a panel, not off the axis
    assert any(t.get_text() == f"chance {100 / way:g}%" for ax in fig.axes for t in ax.texts)


def test_full_labels_on_the_y_axis_and_no_legend_without_a_published_number():
    long = "a method whose label is much longer than one line of the y axis can hold, every word kept"
    rows = [*FAR, (long, 50.0, 1.0)]
    fig = results_figure(metatest_results(rows), "metatest")
    ticks = [t.get_text() for t in bar_axes(fig)[0].get_yticklabels()]
    assert [t.replace("\n", " ") for t in ticks] == [m for m, _, _ in rows]
    assert "\n" in ticks[-1] and not any("…" in t for t in ticks)
    assert not fig.legends and all(ax.get_legend() is None for ax in fig.axes)
    assert not lines(fig, "published")


def test_metatest_paper_number_is_a_marker_on_the_first_row_with_a_legend():
    fig = results_figure(metatest_results(FAR, paper=PAPER), "metatest")
    marks = lines(fig, "published")
    assert marks and all(list(m.get_xdata()) == [83.9] for m in marks)
    assert all(0 < m.get_ydata()[0] < 1 for m in marks)  # beside the first row (the pipeline's method)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "measured ± 95% CI",
        "published: MTL + HT, ResNet-12 (TPAMI 2020)",
    ]


def test_compare_published_numbers_sit_beside_their_rows():
    published = {NC: {"acc": 49.4, "ci95": 0.8, "source": "Snell et al. 2017"}}
    fig = results_figure(compare_results(FAR, published), "compare")
    marks = lines(fig, "published")
    assert marks and all(list(m.get_xdata()) == [49.4] and 2 < m.get_ydata()[0] < 3 for m in marks)
    assert holding(bar_axes(fig), 49.4)  # a published number far from every row gets a panel
    (legend,) = fig.legends
    assert "published" in [t.get_text() for t in legend.get_texts()]


def test_an_ablation_paper_number_without_a_row_is_a_reference_line():
    fig = results_figure({**metatest_results(FAR, paper=PAPER), "seconds": {"total": 1.0}}, "ablation")
    refs = lines(fig, "published")
    assert refs and all(list(r.get_xdata()) == [83.9, 83.9] for r in refs)
    assert len(fig.legends) == 1


def test_x_panels_merge_close_groups_and_pad_inside_0_100():
    assert x_panels([(82, 85), (84, 86)]) == [(81.0, 87.0)]
    assert x_panels([(99.5, 100.0)]) == [(96.0, 100.0)]
    assert x_panels([(0.0, 0.5)]) == [(0.0, 4.0)]
    assert len(x_panels([(20, 20), (84, 85)])) == 2
    four = x_panels([(5, 5), (30, 31), (60, 61), (90, 91)])
    assert len(four) == 3 and all(0 <= lo < hi <= 100 for lo, hi in four)


def series(stage: str, points: list[tuple[int, float, float]]) -> Series:
    steps, acc, ci = zip(*points, strict=True)
    low, high = [a - c for a, c in zip(acc, ci, strict=True)], [a + c for a, c in zip(acc, ci, strict=True)]
    return Series(stage, ACCURACY, list(steps), list(acc), low, high)


def test_curve_panels_in_stage_order_on_one_shared_accuracy_axis():
    given = [
        series("metatrain", [(0, 60.0, 2.0), (5, 70.0, 2.0)]),
        series("compare/mtl", [(0, 40.0, 3.0), (5, 45.0, 3.0)]),
        series("pretrain", [(1, 30.0, 3.0), (2, 50.0, 3.0)]),
    ]
    fig = curves_figure("run", given)
    assert [ax.get_title() for ax in fig.axes] == ["run: pretrain", "run: metatrain", "run: compare/mtl"]
    limits = {ax.get_ylim() for ax in fig.axes}
    assert len(limits) == 1
    ((lo, hi),) = limits
    assert 0 <= lo <= 27 and 72 <= hi <= 100


def test_a_one_point_curve_is_a_marker_on_a_readable_range():
    fig = curves_figure("run", [series("metatrain", [(0, 96.5, 0.5)])])
    (ax,) = fig.axes
    lo, hi = ax.get_ylim()
    assert hi - lo >= 10 and lo <= 96 and 97 <= hi <= 100
    assert ax.get_xlim() == (-1, 1)
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_counts_get_integer_ticks():
    pool = Series("metatrain", POOL, [0, 1, 2, 3], [2.0, 4.0, 2.0, 3.0])
    fig = curves_figure("run", [series("metatrain", [(0, 50.0, 2.0), (2, 55.0, 2.0)]), pool])
    ax = fig.axes[-1]
    assert ax.get_title() == "run: metatrain, hard tasks"
    assert isinstance(ax.yaxis.get_major_locator(), MaxNLocator)
    assert all(float(t).is_integer() for t in ax.get_yticks())
    summary = {"hard_task_updates": 4, "window": 2, "classes": {"a": {"chosen": 3, "failures": 2}}}
    ax = hard_tasks_figure(summary).axes[0]
    assert all(float(t).is_integer() for t in ax.get_yticks())


def test_curves_read_back_from_event_files(tmp_path):
    run = tmp_path / "run"
    write_curves(run, "metatrain", [(0, 50.0, 2.0), (4, 60.0, 2.0)], pool=[2, 4, 3])
    write_curves(run, "pretrain", [(10, 40.0, 3.0)])
    got = read_curves(run)
    assert {(s.stage, s.kind) for s in got} == {
        ("metatrain", ACCURACY),
        ("metatrain", POOL),
        ("pretrain", ACCURACY),
    }
    (pre,) = [s for s in got if s.stage == "pretrain"]
    assert pre.steps == [10] and pre.values == [40.0] and pre.low == [37.0] and pre.high == [43.0]
    fig = curves_figure(run.name, got)
    assert [ax.get_title() for ax in fig.axes] == [
        "run: pretrain",
        "run: metatrain",
        "run: metatrain, hard tasks",
    ]


def test_intervals_past_0_or_100_stay_on_a_0_100_axis():
    assert x_panels([(-3.0, 2.0), (97.0, 104.0)]) == [(0.0, 4.0), (96.0, 100.0)]
    fig = results_figure(metatest_results([("wide", 99.0, 5.0), ("narrow", 1.0, 3.0)], way=2), "metatest")
    assert all(0 <= ax.get_xlim()[0] < ax.get_xlim()[1] <= 100 for ax in bar_axes(fig))


def test_the_paired_differences_are_a_panel_level_with_their_rows():
    """MTL and FT's own CIs overlap; their paired difference does not reach 0, and the figure shows it."""
    diffs = {FT: {"diff": -0.59, "ci95": 0.14, "p": 0.0001}, NC: {"diff": -2.19, "ci95": 0.28, "p": 0.0001}}
    fig = results_figure(
        {**metatest_results(CLOSE), "differences": {"reference": MTL, "rows": diffs}}, "metatest"
    )
    (points,) = lines(fig, "difference")
    assert list(points.get_xdata()) == [-0.59, -2.19] and list(points.get_ydata()) == [1, 2]
    (panel,) = [ax for ax in fig.axes if points in ax.get_lines()]
    assert panel not in bar_axes(fig) and panel.get_xlim()[0] < -2.19 - 0.28 and panel.get_xlim()[1] > 0
    whiskers = [c for c in panel.containers if getattr(c, "has_xerr", False)]
    (segments,) = [c.lines[2][0].get_segments() for c in whiskers]
    assert [round(hi[0] - lo[0], 6) for lo, hi in segments] == [0.28, 0.56]  # ± the paired CI
    assert all(hi[0] < 0 for _, hi in segments)  # FT's difference excludes 0, as the table says
    (ref,) = lines(fig, "reference")
    assert (list(ref.get_xdata()), list(ref.get_ydata())) == ([0], [0])
    values = {t.get_text() for t in panel.texts if t.get_gid() == "value"}
    assert values == {"84.77 ± 0.64", "84.18 ± 0.64", "82.58 ± 0.67"}  # still right of the last panel


def test_no_difference_panel_without_paired_differences():
    fig = results_figure(metatest_results(CLOSE), "metatest")
    assert not lines(fig, "difference") and len(fig.axes) == len(bar_axes(fig))
    broken = {**metatest_results(CLOSE), "differences": {"reference": MTL, "rows": {FT: {"diff": "x"}}}}
    assert len(results_figure(broken, "metatest").axes) == len(bar_axes(fig))


def test_a_far_difference_keeps_the_close_ones_apart():
    diffs = {
        FT: {"diff": -0.59, "ci95": 0.14, "p": 0.0001},
        PIXELS: {"diff": -64.48, "ci95": 0.76, "p": 0.0001},
    }
    results = {**metatest_results(FAR), "differences": {"reference": MTL, "rows": diffs}}
    (points,) = lines(results_figure(results, "metatest"), "difference")
    panel = points.axes
    assert panel.get_xscale() == "symlog" and panel.get_xlim()[0] < -64.48 - 0.76
    at = panel.transData.transform
    assert abs(at((-0.59, 0))[0] - at((0, 0))[0]) > 0.1 * panel.bbox.width  # not squashed onto 0
