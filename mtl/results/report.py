"""Results tables: one run's rows (accuracy ± 95% CI) beside the published number, with the rows'
per-episode breakdowns (MANN's accuracy by presentation) under them, the collected table of every
finished metatest, ablation and compare, laid out like the paper's, and the table of ``mtl bench``;
and the check that keeps an earlier ``results.json`` from being replaced by a table of nothing but
chance (:func:`refuse_chance_results`). Every file read here is first read and checked by
:mod:`mtl.results.results_file`.

Everything here reads and writes plain data (JSON, numpy arrays): no torch, no model, no dataset,
so that ``mtl report`` answers at once; the stages convert their tensors before they call in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mtl.errors import MtlError
from mtl.results.paired import (
    difference_cells,
    differences,
    mean_ci,
    per_episode_accuracy,
    row_name,
    seeds_note,
)
from mtl.results.results_file import per_episode_problem, read_results
from mtl.runtime.outputs import starts_with
from mtl.runtime.stage_folders import METATEST, RESULT_FOLDERS, RESULTS_FILE


def results_table(results: dict[str, Any]) -> str:
    """A Markdown table of ``results.json``'s rows; the paper's number, if known, is its own row."""
    title = (
        f"{results['pipeline']}: {results['way']}-way {results['shot']}-shot, "
        f"{results['query']} queries, {results['episodes']} test episodes"
    )
    paired = "differences" in results  # files written before differences were kept have three columns
    head = " − reference (paired 95% CI) | p |" if paired else ""
    lines = [title, "", f"| method | accuracy (%) | 95% CI |{head}", "|---|---:|---:|" + "---:|" * 2 * paired]
    for row in results["rows"]:
        diff = " {} | {} |".format(*difference_cells(results, row["method"])) if paired else ""
        lines.append(f"| {row_name(row)} | {row['acc']:.2f} | ± {row['ci95']:.2f} |{diff}")
    paper = results.get("paper")
    if paper and paper.get("acc") is not None:
        ci = f"± {paper['ci95']:.2f}" if paper.get("ci95") is not None else ""
        lines.append(f"| {paper.get('method') or 'paper'} (published) | {paper['acc']:.2f} | {ci} |")
    if paired:  # after a blank line: Markdown renderers would take it for a row of the table
        lines += ["", f"reference: {results['differences']['reference']}"]
    for name, entry in results.get("breakdowns", {}).items():
        lines += ["", *breakdown_table(name, entry)]
    return "\n".join(lines)


# Breakdowns: per-episode accuracies a method gives beside its accuracy, (E, K) for K columns
# (Method.evaluate_breakdowns), kept in results.json as {"breakdowns": {name: {"rows": {row: {"mean",
# "ci95"}}, "published": {source: {"at", "acc"}}}}}, columns numbered from 1.
BREAKDOWN_TITLES = {
    "by_presentation": "accuracy (%, ± 95% CI) at the k-th presentation of a class in the support sequence, "
    "each predicted before that image's label is shown (the 1st: before any label of the class)",
}
SHOWN_COLUMNS = (1, 2, 3, 4, 5, 10)  # the paper's Table 1 columns (Santoro et al. 2016), and the last one


def summarize_breakdowns(
    per_episode: dict[str, dict[str, np.ndarray | Sequence[Sequence[float]]]],
    published: dict[str, dict] | None = None,
) -> dict:
    """``{"breakdowns": ...}`` of ``{row: {name: (E, K) accuracies in [0, 1]}}`` (numpy arrays or
    nested sequences; a tensor's ``.float().cpu().numpy()``): each column's mean and 95% CI in % (of
    the accuracies in float32), and the ``published`` numbers of the names that have rows; ``{}`` for
    none."""
    out: dict[str, dict] = {}
    for row, breakdowns in per_episode.items():
        for name, acc in breakdowns.items():
            stats = [mean_ci(column) for column in np.asarray(acc, dtype=np.float32).T]
            entry = out.setdefault(name, {"rows": {}})
            entry["rows"][row] = {
                "mean": [round(m, 2) for m, _ in stats],
                "ci95": [round(c, 2) for _, c in stats],
            }
    for name, entry in out.items():
        if (published or {}).get(name):
            entry["published"] = published[name]
    return {"breakdowns": out} if out else {}


def ordinal(k: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def breakdown_table(name: str, entry: dict) -> list[str]:
    """The lines of one breakdown: its title and a Markdown table of the paper's columns (1st .. 5th,
    10th) that exist and the last one, a row per method, then the published rows."""
    count = max(len(r["mean"]) for r in entry["rows"].values())
    shown = sorted({k for k in SHOWN_COLUMNS if k <= count} | {count})
    lines = [
        f"{BREAKDOWN_TITLES.get(name, name.replace('_', ' '))}:",
        "",
        "| method | " + " | ".join(ordinal(k) for k in shown) + " |",
        "|---|" + "---:|" * len(shown),
    ]
    for method, row in entry["rows"].items():
        cells = [
            f"{row['mean'][k - 1]:.1f} ± {row['ci95'][k - 1]:.1f}" if k <= len(row["mean"]) else ""
            for k in shown
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for source, pub in entry.get("published", {}).items():
        at = dict(zip(pub["at"], pub["acc"], strict=True))
        lines.append(
            f"| {source} (published) | "
            + " | ".join(f"{at[k]:.1f}" if k in at else "—" for k in shown)
            + " |"
        )
    return lines


DATASET_LABELS = {
    "miniimagenet": "miniImageNet",
    "tieredimagenet": "tieredImageNet",
    "fc100": "FC100",
    "omniglot": "Omniglot",
    "glyphs": "glyphs",
}


# What `mtl report --out` may replace: a table it wrote before (collect's first line begins so).
REPORT_TABLE = starts_with("a report table (mtl report --out)", b"| method |")


def collect(checkpoints: str | Path) -> str:
    """One Markdown table of every finished metatest, ablation and compare under ``checkpoints``
    (``<run>/<folder>/results.json``), laid out like the paper's: a column per results file (dataset
    and shot; an ablation's or a compare's column says so), a row per method, then the published number
    and ours minus it."""
    root = Path(checkpoints).expanduser()
    patterns = [f"*/{folder}/{RESULTS_FILE}" for folder in RESULT_FOLDERS]
    found = sorted(p for pattern in patterns for p in root.glob(pattern)) if root.is_dir() else []
    if not found:
        raise MtlError(
            f"no finished metatest under {root} (no {', '.join(patterns)}); run `make {METATEST.folder}`"
        )
    columns = [_column(path) for path in found]
    order = list(DATASET_LABELS)
    columns.sort(
        key=lambda c: (order.index(c["dataset"]) if c["dataset"] in order else len(order), c["label"])
    )
    titles = [c["label"] for c in columns]
    for c in columns:
        if titles.count(c["label"]) > 1:
            c["label"] = _label(c["setting"], [*c["notes"], c["run"]])

    methods: list[str] = []
    for c in columns:
        methods += [m for m in c["rows"] if m not in methods]
    order = tuple(methods)  # as the stages wrote them: in the method registry's order
    methods.sort(key=lambda m: _method_rank(m, order))
    lines = [
        "| method | " + " | ".join(c["label"] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for method in methods:
        cells = [_cell(c["rows"].get(method)) for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("| paper | " + " | ".join(_paper(c) for c in columns) + " |")
    lines.append("| ours (MTL) − paper | " + " | ".join(_difference(c) for c in columns) + " |")
    ignored = [
        f"{c['path']}: {c['ignored']}; its paired differences are not shown" for c in columns if c["ignored"]
    ]
    return "\n".join([*lines, "", _note(columns, root), *_paired_lines(columns), *ignored])


def _paired_lines(columns: list[dict]) -> list[str]:
    """Each column's rows against its reference row, recomputed from the per-episode results its
    ``results.json`` keeps (columns written before they were kept have none)."""
    lines = []
    for c in columns:
        diffs = c["differences"]
        if diffs is None or not diffs["rows"]:
            continue
        cells = [f"{m} {d['diff']:+.2f} ± {d['ci95']:.2f} (p {_p(d['p'])})" for m, d in diffs["rows"].items()]
        lines.append(f"{c['label']}, − {diffs['reference']} (paired 95% CI): " + "; ".join(cells))
    return ["", *lines] if lines else []


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _method_rank(method: str, order: tuple[str, ...]) -> int:
    """A row's place: its method's in ``order`` (the rows as the results list them), by label or else
    by the label's first word (compare's and the ablation's "MTL: ..." and "MTL + HT: ..." beside
    metatest's MTL row); unknown ones last."""
    first = method.split()[0].rstrip(":,")
    ranks = [i for i, p in enumerate(order) if method.startswith(p)]
    ranks += [i for i, p in enumerate(order) if p.split()[0].rstrip(":,") == first]
    return min(ranks, default=len(order))


def _note(columns: list[dict], root: Path) -> str:
    """The line under the table: the setting, the episodes and how many results of each kind."""
    episodes = sorted({c["episodes"] for c in columns})
    ways = {c["way"] for c in columns}
    kinds = [
        f"{n} finished {s} run(s)" for s in RESULT_FOLDERS if (n := sum(c["stage"] == s for c in columns))
    ]
    setting = f"{ways.pop()}-way accuracy" if len(ways) == 1 else "Accuracy"
    return (
        f"{setting} (%) ± 95% CI over {', '.join(map(str, episodes))} fixed test episodes; "
        f"{', '.join(kinds)} under {root}."
    )


ALLOW_CHANCE = "--allow-chance"  # the option of metatest, compare and ablate that writes such a table


def all_rows_at_chance(results: dict[str, Any]) -> bool:
    """Whether every row of ``results`` (the ``results.json`` of metatest, compare or ablate) scored
    exactly chance, ``100 / way`` %, with zero spread: ``way`` of the queries of every episode (and
    every training seed) correct, read off the per-episode record; what a model scores whose every
    logit is the same constant, as when every input reached it as one number. A file without that
    record is read off its rows' rounded accuracy and CI. No rows: False."""
    way, rows = results.get("way"), results.get("rows")
    if not isinstance(way, int) or way < 2 or not rows:
        return False
    record = results.get("per_episode")
    if isinstance(record, dict) and isinstance(record.get("correct"), dict):
        correct, queries = record["correct"], record.get("queries")
        if set(correct) == {row["method"] for row in rows} and isinstance(queries, int):
            # Integer counts: exact, where accuracies in floats would round.
            return all(np.size(c) > 0 and np.all(np.asarray(c) * way == queries) for c in correct.values())
    return all(
        row["acc"] == round(100 / way, 2) and row["ci95"] == 0 and not row.get("seed_sd") for row in rows
    )


def refuse_chance_results(results: dict[str, Any], path: Path, *, allow: bool) -> str | None:
    """Before ``results`` are written to ``path``: where every row scored exactly chance with zero
    spread (:func:`all_rows_at_chance`) and an earlier results file is at ``path``, raise one line
    that keeps it (unless ``allow``: :data:`ALLOW_CHANCE`). Such a table is what inputs that reached the
    model as constants score (a normalisation that overflowed), never a result worth an earlier one.
    Returns the warning to print when such a table is written anyway (no earlier file, or ``allow``),
    else None. Reads ``path``'s existence only: call it before anything of the run is written."""
    if not all_rows_at_chance(results):
        return None
    what = (
        f"every row scored exactly chance ({100 / results['way']:.2f}%) with zero spread: the inputs likely "
        "reached the model as constants (check data.mean and data.std)"
    )
    if path.exists() and not allow:
        raise MtlError(f"{what}; the earlier {path} is kept ({ALLOW_CHANCE} replaces it)")
    return f"warning: {what}; {path} written all the same"


def _column(path: Path) -> dict[str, Any]:
    results = read_results(path)
    rows = {r["method"]: r for r in results["rows"]}
    shot, way, episodes = results["shot"], results["way"], results["episodes"]
    dataset = _dataset(path.parent / "config.yaml") or results["pipeline"]
    stage = path.parent.name  # metatest, ablation or compare
    setting = f"{DATASET_LABELS.get(dataset, dataset)} {shot}-shot"
    notes = ([] if way == 5 else [f"{way}-way"]) + ([] if stage == METATEST.folder else [stage])
    return {
        "dataset": dataset,
        "label": _label(setting, notes),
        "setting": setting,
        "notes": notes,
        "run": path.parent.parent.name,  # tells apart columns of one setting
        "stage": stage,
        "way": way,
        "rows": rows,
        "paper": results.get("paper"),
        "episodes": episodes,
        "differences": _differences(results),
        "ignored": per_episode_problem(results),
        "path": path,
    }


def _differences(results: dict[str, Any]) -> dict | None:
    """The paired differences of a results file's rows, from its per-episode record (None: it has none,
    or one that :func:`~mtl.results.results_file.per_episode_problem` finds fault with)."""
    if results.get("per_episode") is None or per_episode_problem(results) is not None:
        return None
    accs = per_episode_accuracy(results)
    rows = [r["method"] for r in results["rows"]]
    ref = (results.get("differences") or {}).get("reference", rows[0])
    return differences(accs, ref if isinstance(ref, str) and ref in accs else rows[0])


def _label(setting: str, notes: list[str]) -> str:
    """A column's title: ``"miniImageNet 1-shot"``, then what sets it apart in parentheses."""
    return setting + (f" ({', '.join(notes)})" if notes else "")


def _dataset(config_path: Path) -> str | None:
    """The dataset the run's ``config.yaml`` names, if it is readable and names one."""
    try:
        dataset = yaml.safe_load(config_path.read_text(encoding="utf-8"))["data"]["dataset"]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, RecursionError):
        return None
    return dataset if isinstance(dataset, str) else None


def _cell(row: dict | None) -> str:
    return "" if row is None else f"{row['acc']:.2f} ± {row['ci95']:.2f}{seeds_note(row)}"


def _paper(column: dict) -> str:
    paper = column["paper"]
    if not paper or paper.get("acc") is None:
        return "—"
    return f"{paper['acc']:.2f}" + (f" ± {paper['ci95']:.2f}" if paper.get("ci95") is not None else "")


def _difference(column: dict) -> str:
    paper, mtl = column["paper"], next((r for m, r in column["rows"].items() if m.startswith("MTL")), None)
    if not paper or paper.get("acc") is None or mtl is None:
        return "—"
    return f"{mtl['acc'] - paper['acc']:+.2f}"
