"""Differences between rows scored on the same episodes, and what of them is noise.

Rows of one table (metatest's baselines, ``mtl compare``, ``mtl ablate``) are scored on the same test
episodes, so their per-episode accuracies are strongly correlated: the 95% CI of a row's *paired*
difference from a reference row, ``1.96 · std(a − b) / √E``, is far tighter than either row's own CI.
The p-value is that of the paired z-test (two-sided), the same normal approximation as the rows' own
CIs (:func:`mean_ci`); with hundreds of episodes it is the paired t-test's.

``results.json`` keeps each row's correct queries per episode (``per_episode``), so any two rows can be
compared later; this module reads and writes that record and makes the ``differences`` entry.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Difference",
    "difference_cells",
    "differences",
    "dumps",
    "mean_ci",
    "paired",
    "per_episode_accuracy",
    "per_episode_record",
    "row_name",
    "seed_summary",
    "seeds_note",
]


@dataclass(frozen=True)
class Difference:
    """``row − reference`` in accuracy points (percent), its paired 95% CI half-width and p-value."""

    diff: float
    ci95: float
    p: float

    def as_dict(self) -> dict[str, float]:
        return {"diff": round(self.diff, 2), "ci95": round(self.ci95, 2), "p": float(f"{self.p:.3g}")}


def mean_ci(acc: np.ndarray | Sequence[float]) -> tuple[float, float]:
    """Mean accuracy and its 95% confidence half-width, both in percent.

    ``CI = 1.96 · std(acc) / sqrt(E)`` with the population std (``ddof=0``), as in the MTL and most
    few-shot code; with hundreds of episodes the ``ddof=1`` value differs by < 0.1% relative.

    Args:
        acc: ``(E,)`` per-episode accuracies in ``[0, 1]``, computed in float64.
    """
    acc = np.asarray(acc, dtype=np.float64).reshape(-1)
    if acc.size == 0:
        raise ValueError("mean_ci needs at least one episode")
    return float(acc.mean() * 100), float(1.96 * acc.std() / math.sqrt(acc.size) * 100)


def paired(a: np.ndarray, b: np.ndarray) -> Difference:
    """Per-episode accuracies ``a`` and ``b`` in ``[0, 1]`` on the same episodes, ``(E,)`` or, with
    several training seeds, ``(S, E)`` (a row of one seed is paired with every seed of the other) ->
    the paired difference ``mean(a − b)`` in points, its 95% CI half-width and the two-sided p-value.

    One seed: ``1.96 · std(a − b) / √E`` (population std, as the rows' own CIs). Several:
    ``1.96 · √(s² / S + v / E)``, ``s`` the between-seed standard deviation of the per-seed mean
    differences, ``v`` the variance over episodes of the seed-averaged difference: the training runs'
    spread and the episodes' both count."""
    d = np.atleast_2d(np.asarray(a, dtype=np.float64)) - np.atleast_2d(np.asarray(b, dtype=np.float64))
    if d.size == 0:
        raise ValueError("paired needs at least one episode")
    return _estimate(d)


def seed_summary(acc: np.ndarray) -> tuple[float, float, float]:
    """Accuracies ``(E,)`` or ``(S, E)`` -> mean (percent), its 95% CI half-width (episodes and seeds,
    as :func:`paired`) and the between-seed standard deviation of the seeds' means (0 for one seed)."""
    acc = np.atleast_2d(np.asarray(acc, dtype=np.float64))
    est = _estimate(acc)
    sd = float(acc.mean(1).std(ddof=1)) if len(acc) > 1 else 0.0
    return est.diff, est.ci95, 100 * sd


def _estimate(x: np.ndarray) -> Difference:
    """The mean of ``x`` ``(S, E)`` with the CI and p-value described in :func:`paired`."""
    seeds, episodes = x.shape
    mean = float(x.mean())
    var = x.var() / episodes if seeds == 1 else x.mean(1).var(ddof=1) / seeds + x.mean(0).var() / episodes
    se = math.sqrt(var)
    p = 1.0 if mean == 0 else (0.0 if se == 0 else math.erfc(abs(mean / se) / math.sqrt(2)))
    return Difference(100 * mean, 100 * 1.96 * se, p)


def differences(scores: dict[str, np.ndarray], reference: str) -> dict:
    """``{"reference": label, "rows": {label: {"diff", "ci95", "p"}}}`` of every other row of
    ``scores`` (``{label: (E,) accuracies}``) against ``reference``."""
    ref = scores[reference]
    rows = {}
    for label, acc in scores.items():
        if label == reference:
            continue
        rows[label] = paired(acc, ref).as_dict()
        if max(np.ndim(acc), np.ndim(ref)) == 2:  # several seeds: each seed's difference too
            a, b = np.atleast_2d(acc), np.atleast_2d(ref)
            n = max(len(a), len(b))
            rows[label]["per_seed"] = [
                paired(a[min(k, len(a) - 1)], b[min(k, len(b) - 1)]).as_dict() for k in range(n)
            ]
    return {"reference": reference, "rows": rows}


def per_episode_record(scores: dict[str, np.ndarray], queries: int) -> dict:
    """Compact per-episode results: ``{"queries": queries per episode, "correct": {label: [int] * E}}``
    (a row of several seeds: a list per seed)."""
    return {
        "queries": queries,
        "correct": {
            label: np.rint(np.asarray(acc) * queries).astype(int).tolist() for label, acc in scores.items()
        },
    }


def per_episode_accuracy(results: dict) -> dict[str, np.ndarray]:
    """``{label: (E,) accuracies}`` (``(S, E)`` for a row of several seeds) from a ``results.json``'s
    ``per_episode`` record (``{}`` for a file written before it was kept)."""
    record = results.get("per_episode")
    if not isinstance(record, dict) or not record.get("queries"):
        return {}
    queries = record["queries"]
    return {
        label: np.asarray(c, dtype=np.float64) / queries for label, c in record.get("correct", {}).items()
    }


def dumps(results: dict) -> str:
    """``results.json``'s text: indented, with each list of numbers on one line (a per-episode record
    of 10,000 episodes is one line per row, not 10,000)."""
    return re.sub(
        r"\[\s*(-?\d[\d.e+-]*(?:,\s*-?\d[\d.e+-]*)*)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        json.dumps(results, indent=2),
    )


def difference_cells(results: dict, label: str) -> tuple[str, str]:
    """The table cells of row ``label``'s paired difference: ``("+0.07 ± 0.05", "0.006")``;
    ``("reference", "")`` for the reference row, ``("—", "—")`` where the file has none."""
    record = results.get("differences")
    if not isinstance(record, dict):
        return "—", "—"
    if label == record.get("reference"):
        return "reference", ""
    d = record.get("rows", {}).get(label)
    if not isinstance(d, dict):
        return "—", "—"
    return f"{d['diff']:+.2f} ± {d['ci95']:.2f}", _p_text(d["p"])


def _p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def row_name(row: dict) -> str:
    """A results row's name in a table, with its seeds when it has several: ``MTL [3 seeds, sd 0.12]``
    (:func:`seeds_note`)."""
    return row["method"] + seeds_note(row)


def seeds_note(row: dict) -> str:
    """`` [3 seeds, sd 0.12]`` for a results row of several seeds (``sd``: the between-seed standard
    deviation of its accuracy, in points), seeds that each repeat the pretraining with their range:
    `` [3 seeds from pretraining, sd 0.35, 83.10–84.02]``; ``""`` for a row of one."""
    if row.get("seeds", 1) <= 1:
        return ""
    if row.get("seeds_from") == "pretrain":
        low, high = min(row["per_seed"]), max(row["per_seed"])
        return f" [{row['seeds']} seeds from pretraining, sd {row['seed_sd']:.2f}, {low:.2f}–{high:.2f}]"
    return f" [{row['seeds']} seeds, sd {row['seed_sd']:.2f}]"
