"""``mtl report --plot DIR``: the figures a user would otherwise draw by hand, as PNG files.

For every run under the checkpoints folder:

- ``<run>-curves.png``: each stage's validation accuracy with its 95% CI band (read back from the
  TensorBoard event files) in stage order on one shared accuracy axis, and the hard-task pool size
  where metatrain logged one (:func:`mtl.results.figures.curves_figure`);
- ``<run>-<metatest|ablation|compare>.png``: that results table as horizontal bars with CI whiskers on
  a zoomed (where needed, broken) accuracy axis, each value printed, the chance line and the published
  numbers (:func:`mtl.results.bars.results_figure`);
- ``<run>-<folder>-hard-tasks.png``: how often each base class failed into the hard-task pool and
  how often hard tasks drew it (``hard_tasks.json``), the most-drawn classes first;
- ``<run>-<stage>-<breakdown>.png``: a results table's per-episode breakdown, such as MANN's
  accuracy by presentation (``<run>-metatest-by-presentation.png``), against its column, beside the
  published numbers (:func:`mtl.results.figures.breakdown_figure`).

The figure functions return matplotlib Figures; this module finds and checks the files and saves.
matplotlib is imported when the first figure is drawn and TensorBoard's event reader when a run's
curves are read, not with the module (``mtl report`` without ``--plot`` needs neither).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from mtl.errors import MtlError
from mtl.results.bars import results_figure
from mtl.results.figures import (
    ACCURACY,
    POOL,
    Series,
    breakdown_figure,
    curves_figure,
    hard_tasks_figure,
    pyplot,
)
from mtl.results.results_file import MAX_COUNT, is_number, read_results
from mtl.runtime import outputs
from mtl.runtime.atomic import atomic_write
from mtl.runtime.stage_folders import RESULT_FOLDERS, RESULTS_FILE
from mtl.runtime.tb_layout import HARD_TASKS, accuracy_tags, tag

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

__all__ = ["FIGURE", "plan_figures", "plot_all", "read_curves", "write_figures"]

FIGURE = outputs.starts_with("a PNG figure", b"\x89PNG\r\n\x1a\n")  # what a figure may replace


Figures = list[tuple[Callable[[], "Figure"], Path]]  # (draw the figure, its file), in the order written


def plot_all(checkpoints: str | Path, out: str | Path) -> list[Path]:
    """Write every figure of the runs under ``checkpoints`` into ``out``; returns the files."""
    return write_figures(plan_figures(checkpoints, out), out)


def plan_figures(checkpoints: str | Path, out: str | Path) -> Figures:
    """Every figure of the runs under ``checkpoints`` and its file in ``out``, once every file they
    draw on is read and checked and every figure's file may be written (an earlier figure may be
    replaced, a file of another kind may not): nothing is drawn or written yet."""
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
    todo = _figures(runs, out)
    for _, path in todo:
        outputs.check_file("--plot", path, FIGURE, make_folder=True)
    return todo


def write_figures(todo: Figures, out: str | Path) -> list[Path]:
    """Draw and write the figures :func:`plan_figures` planned into ``out`` (made if missing); a full
    disk ends in one line saying which figures were written and which were not."""
    out = Path(out).expanduser()
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MtlError(f"--plot {out}: cannot make the folder ({exc.strerror or exc})") from None
    written: list[Path] = []
    try:
        for i, (draw, path) in enumerate(todo):
            try:
                written.append(_save(draw(), path))
            except MtlError as exc:  # a full disk, a read-only folder: say which figures are new
                raise MtlError(_unfinished(str(exc), written, [p for _, p in todo[i:]])) from None
        return written
    except BaseException:
        if made and not any(out.iterdir()):
            out.rmdir()  # a failed first figure leaves no empty folder behind
        raise


def _unfinished(error: str, written: list[Path], missing: list[Path]) -> str:
    """The one line of a figure that could not be written (``error``, :func:`atomic_write`'s line, which
    names it and why) with the figures this call wrote before it and those it did not write."""
    if not written:
        return error  # its "nothing was written" is then true of every figure
    # atomic_write's "nothing was written" is of its one file: here others were, and the line lists them
    error = error.removesuffix("; nothing was written")
    return (
        f"{error}; figures written: {', '.join(p.name for p in written)}; "
        f"not written: {', '.join(p.name for p in missing)}"
    )


def _figures(runs: list[Path], out: Path) -> Figures:
    """``(build the figure, its file)`` of every figure of ``runs`` that has something to show."""
    todo: Figures = []
    for run in runs:
        if curves := read_curves(run):
            todo.append((partial(curves_figure, run.name, curves), out / f"{run.name}-curves.png"))
        for stage in RESULT_FOLDERS:
            if (path := run / stage / RESULTS_FILE).is_file() and (results := read_results(path))["rows"]:
                todo.append((partial(results_figure, results, stage), out / f"{run.name}-{stage}.png"))
                for name in results.get("breakdowns", {}):
                    file = out / f"{run.name}-{stage}-{name.replace('_', '-')}.png"
                    todo.append((partial(breakdown_figure, results, name, stage), file))
        for hard in sorted(run.rglob("hard_tasks.json")):
            folder = "-".join(hard.parent.relative_to(run).parts)
            summary = _read_hard_tasks(hard)
            if summary["classes"]:
                todo.append(
                    (partial(hard_tasks_figure, summary), out / f"{run.name}-{folder}-hard-tasks.png")
                )
    return todo


def _save(fig: Figure, path: Path) -> Path:
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    finally:
        pyplot().close(fig)  # also after a failed write: pyplot keeps every open figure alive
    return path


def read_curves(run: Path) -> list[Series]:
    """Every stage of ``run`` (a folder with ``tb/<stage>/events.*``): its validation accuracy with
    its CI bounds, where logged, and its hard-task pool size, where logged."""
    series = []
    for stage_dir in sorted(p for p in (run / "tb").rglob("*") if p.is_dir() and any(p.glob("events.*"))):
        stage = stage_dir.relative_to(run / "tb").as_posix()
        events = _events(stage_dir)
        tags, pool = set(events.Tags()["scalars"]), tag(stage, "pool size", HARD_TASKS)
        acc = accuracy_tags(stage, "validation accuracy")  # the curve and its CI bounds
        if set(acc) <= tags:
            values, low, high = ([e.value for e in events.Scalars(t)] for t in acc)
            steps = [e.step for e in events.Scalars(acc[0])]
            series.append(Series(stage, ACCURACY, steps, values, low, high))
        if pool in tags:
            points = events.Scalars(pool)
            series.append(Series(stage, POOL, [e.step for e in points], [e.value for e in points]))
    return series


def _events(folder: Path) -> EventAccumulator:
    """Every scalar of the TensorBoard event files in ``folder``, read (TensorBoard's reader is
    imported here: runs without event files never need it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    try:
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
    except (OSError, UnicodeError, ValueError, KeyError):
        raise MtlError(f"cannot read the TensorBoard events in {folder}") from None
    return events


def _read_hard_tasks(path: Path) -> dict:
    """A ``hard_tasks.json``, checked as :func:`hard_tasks_figure` reads it, or one line saying it is not."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        classes = summary["classes"]
        ok = all(_count(summary[key]) for key in ("hard_task_updates", "window")) and all(
            _count(c["chosen"]) and _count(c["failures"]) for c in classes.values()
        )
    except OSError as exc:
        raise MtlError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        ok = False
    if not ok:
        raise MtlError(f"{path} is not a hard-task summary (hard_tasks.json as metatrain writes it)")
    return summary


def _count(value: object) -> bool:
    """Whether ``value`` is a count the figure can draw: a whole number, not a bool, not past a float."""
    return is_number(value, 0, MAX_COUNT, integer=True)
