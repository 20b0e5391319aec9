"""Results tables: one run's rows (accuracy ± 95% CI) beside the published number, and the
collected table of every finished metatest, laid out like the paper's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mtl.errors import MtlError


def results_table(results: dict[str, Any]) -> str:
    """A Markdown table of ``results.json``'s rows; the paper's number, if known, is its own row."""
    title = (
        f"{results['pipeline']}: {results['way']}-way {results['shot']}-shot, "
        f"{results['query']} queries, {results['episodes']} test episodes"
    )
    lines = [title, "", "| method | accuracy (%) | 95% CI |", "|---|---:|---:|"]
    for row in results["rows"]:
        lines.append(f"| {row['method']} | {row['acc']:.2f} | ± {row['ci95']:.2f} |")
    paper = results.get("paper")
    if paper and paper.get("acc") is not None:
        ci = f"± {paper['ci95']:.2f}" if paper.get("ci95") is not None else ""
        lines.append(f"| {paper.get('method') or 'paper'} (published) | {paper['acc']:.2f} | {ci} |")
    return "\n".join(lines)


DATASET_LABELS = {
    "miniimagenet": "miniImageNet",
    "tieredimagenet": "tieredImageNet",
    "fc100": "FC100",
    "omniglot": "Omniglot",
    "glyphs": "glyphs",
}
_METHOD_ORDER = ("MTL", "θ fine-tuned", "nearest centroid, pretrained", "nearest centroid, raw")


def collect(checkpoints: str | Path) -> str:
    """One Markdown table of every finished metatest under ``checkpoints``, laid out like the paper's:
    a column per (dataset, shot), a row per method, then the published number and ours minus it."""
    root = Path(checkpoints).expanduser()
    found = sorted(root.glob("*/metatest/results.json")) if root.is_dir() else []
    if not found:
        raise MtlError(f"no finished metatest under {root} (no */metatest/results.json); run `make metatest`")
    columns = [_column(path) for path in found]
    order = list(DATASET_LABELS)
    columns.sort(
        key=lambda c: (order.index(c["dataset"]) if c["dataset"] in order else len(order), c["label"])
    )
    titles = [c["label"] for c in columns]
    for c in columns:
        if titles.count(c["label"]) > 1:
            c["label"] += f" ({c['pipeline']})"

    methods: list[str] = []
    for c in columns:
        methods += [m for m in c["rows"] if m not in methods]
    methods.sort(key=lambda m: next((i for i, p in enumerate(_METHOD_ORDER) if m.startswith(p)), 99))
    lines = [
        "| method | " + " | ".join(c["label"] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for method in methods:
        cells = [_cell(c["rows"].get(method)) for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("| paper | " + " | ".join(_paper(c) for c in columns) + " |")
    lines.append("| ours (MTL) − paper | " + " | ".join(_difference(c) for c in columns) + " |")
    episodes = sorted({c["episodes"] for c in columns})
    note = (
        f"5-way accuracy (%) ± 95% CI over {', '.join(map(str, episodes))} fixed test episodes; "
        f"{len(columns)} finished metatest run(s) under {root}."
    )
    return "\n".join([*lines, "", note])


def _column(path: Path) -> dict[str, Any]:
    try:
        results = json.loads(path.read_text())
        rows = {r["method"]: r for r in results["rows"]}
        shot, way, pipeline = int(results["shot"]), int(results["way"]), str(results["pipeline"])
        episodes = int(results["episodes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MtlError(f"{path} is not a metatest results file ({type(exc).__name__}: {exc})") from None
    dataset = _dataset(path.parent / "config.yaml") or pipeline
    label = f"{DATASET_LABELS.get(dataset, dataset)} {shot}-shot" + ("" if way == 5 else f" ({way}-way)")
    return {
        "dataset": dataset,
        "label": label,
        "pipeline": pipeline,
        "rows": rows,
        "paper": results.get("paper"),
        "episodes": episodes,
    }


def _dataset(config_path: Path) -> str | None:
    try:
        return str(yaml.safe_load(config_path.read_text())["data"]["dataset"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _cell(row: dict | None) -> str:
    return "" if row is None else f"{row['acc']:.2f} ± {row['ci95']:.2f}"


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
