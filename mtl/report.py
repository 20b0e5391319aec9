"""Results tables: our rows (accuracy ± 95% CI) with the published number beside them."""

from __future__ import annotations

from typing import Any


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
