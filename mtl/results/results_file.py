"""A ``results.json`` as the stages write it and ``mtl report`` and its figures read it: reading
one, and checking every entry they read (types, numbers in range, lengths equal to ``episodes``,
counts within ``[0, queries]``), so that a damaged file is one line naming the file and the entry,
never a traceback or a nonsense number.

Plain JSON and Python only: no torch, no numpy, so that ``mtl report`` answers at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtl.errors import MtlError

__all__ = ["MAX_COUNT", "PERCENT", "is_number", "per_episode_problem", "read_results"]


def read_results(path: Path) -> dict[str, Any]:
    """A ``results.json`` (metatest, ablation or compare), every entry the tables and figures read
    checked, or one line saying which is wrong (never what the file holds)."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MtlError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise MtlError(f"{path} is not a metatest results file (not JSON)") from None
    if (problem := _results_problem(results)) is not None:
        raise MtlError(f"{path} is not a metatest results file ({problem})")
    return results


MAX_COUNT = 2**53  # the largest whole number a float (and so numpy) holds exactly
PERCENT = (0.0, 100.0)  # an accuracy, a published number or a CI half-width, in points


def is_number(value: Any, low: float, high: float, *, integer: bool = False) -> bool:
    """Whether ``value``, as :func:`json.loads` gives it, is a number in ``[low, high]`` (a whole one
    where ``integer``). Never a bool, a string, a list or an object, nor NaN or ±Infinity (the ``NaN``,
    ``Infinity`` and ``1e400`` literals), nor an integer past a float's range (``10**400``), on which
    ``math.isfinite`` and numpy raise ``OverflowError``: every number read from a ``results.json`` or a
    ``hard_tasks.json`` is checked here, before anything converts it."""
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    return low <= value <= high  # exact for an int of any size; False for NaN


def _results_problem(results: Any) -> str | None:
    """What is missing or of the wrong type in a parsed ``results.json``, or None."""
    if not isinstance(results, dict):
        return "not a JSON object"
    if not isinstance(results.get("pipeline"), str):
        return "'pipeline' is missing or not a string"
    for key in ("way", "shot", "query", "episodes"):
        value = results.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"'{key}' is missing or not an integer"
        if not is_number(value, 1, MAX_COUNT, integer=True):  # the figures draw chance at 100 / way
            return f"'{key}' is not a positive integer" if value < 1 else f"'{key}' is too large"
    rows = results.get("rows")
    if not isinstance(rows, list):
        return "'rows' is missing or not a list"
    for i, row in enumerate(rows):
        if not (
            isinstance(row, dict) and isinstance(row.get("method"), str) and _numbers(row, "acc", "ci95")
        ):
            return f"rows[{i}] is not a row of method, acc and ci95"
        if (problem := _seeds_problem(row)) is not None:
            return f"rows[{i}]: {problem}"
    paper = results.get("paper")
    if paper is not None and not (
        isinstance(paper, dict)
        and _numbers(paper, "acc", "ci95", optional=True)
        and isinstance(paper.get("method"), (str, type(None)))  # the figures' legend names it
    ):
        return "'paper' is not a published number of acc and ci95"
    published = results.get("published")
    if published is not None and not (
        isinstance(published, dict)
        and all(isinstance(p, dict) and _numbers(p, "acc") and _numbers(p, "ci95", optional=True)
                for p in published.values())
    ):  # fmt: skip
        return "'published' is not a mapping of rows to published numbers"
    return _breakdowns_problem(results.get("breakdowns"))


def _seeds_problem(row: dict) -> str | None:
    """What is wrong with a row's seeds (absent: one seed, nothing to check): ``seeds`` a whole number,
    ``seed_sd`` in points, ``per_seed`` one accuracy a seed, ``seeds_from`` a training stage."""
    if "seeds" not in row:
        return None
    seeds = row["seeds"]
    if not is_number(seeds, 1, MAX_COUNT, integer=True):
        return "'seeds' is not a positive integer"
    if not _numbers(row, "seed_sd"):
        return "'seed_sd' is not a number of points"
    per_seed = row.get("per_seed")
    if not (
        isinstance(per_seed, list)
        and len(per_seed) == seeds
        and all(is_number(a, *PERCENT) for a in per_seed)
    ):
        return f"'per_seed' is not {seeds:,} accuracies"
    if row.get("seeds_from", "metatrain") not in ("metatrain", "pretrain"):
        return "'seeds_from' is neither metatrain nor pretrain"
    return None


def _breakdowns_problem(breakdowns: Any) -> str | None:
    """What is wrong with a results file's ``breakdowns`` (absent: nothing): each a mapping of rows to
    ``mean`` and ``ci95`` lists of one length, in points, and optionally ``published`` lists of
    columns (``at``, from 1) and accuracies."""
    if breakdowns is None:
        return None
    if not isinstance(breakdowns, dict):
        return "'breakdowns' is not a mapping"
    for name, entry in breakdowns.items():
        if not (name.isascii() and name.isidentifier()):  # it names a figure's file
            return "a name in 'breakdowns' is not letters, digits and _"
        rows = entry.get("rows") if isinstance(entry, dict) else None
        if not isinstance(rows, dict) or not rows or not all(_columns(r) for r in rows.values()):
            return f"breakdowns['{name[:40]}'] is not a mapping of rows to mean and ci95 lists"
        published = entry.get("published", {})
        if not isinstance(published, dict) or not all(_published_columns(p) for p in published.values()):
            return f"breakdowns['{name[:40]}']['published'] is not a mapping of sources to at and acc lists"
    return None


def _columns(row: Any) -> bool:
    """Whether ``row`` holds ``mean`` and ``ci95``: equally long, non-empty lists of points."""
    if not isinstance(row, dict):
        return False
    mean, ci = row.get("mean"), row.get("ci95")
    return (
        isinstance(mean, list) and isinstance(ci, list) and 0 < len(mean) == len(ci)
        and all(is_number(v, *PERCENT) for v in (*mean, *ci))
    )  # fmt: skip


def _published_columns(pub: Any) -> bool:
    """Whether ``pub`` holds ``at`` (column numbers from 1) and ``acc`` (points), equally long."""
    if not isinstance(pub, dict):
        return False
    at, acc = pub.get("at"), pub.get("acc")
    return (
        isinstance(at, list) and isinstance(acc, list) and 0 < len(at) == len(acc)
        and all(is_number(k, 1, MAX_COUNT, integer=True) for k in at)
        and all(is_number(a, *PERCENT) for a in acc)
    )  # fmt: skip


def _numbers(entry: dict, *keys: str, optional: bool = False) -> bool:
    """Whether each of ``keys`` in ``entry`` is a number of points in [0, 100] (an accuracy, or a CI
    half-width, never negative) or, ``optional``, null or absent."""
    return all((optional and entry.get(key) is None) or is_number(entry.get(key), *PERCENT) for key in keys)


def per_episode_problem(results: dict[str, Any]) -> str | None:
    """What keeps ``results``' per-episode record from giving paired differences: its first field that
    is not what metatest writes (``queries`` a positive integer; ``correct`` a mapping of the table's
    rows to their correct queries per episode, each count in ``[0, queries]``, ``episodes`` of them in
    each; a row of several seeds: a list of such lists, one per seed), in a few words naming it. None: the
    record is sound, or there is none (a file written before it was kept)."""
    record = results.get("per_episode")
    if record is None:
        return None
    if not isinstance(record, dict):
        return "per_episode is not a mapping"
    queries = record.get("queries")
    if not is_number(queries, 1, MAX_COUNT, integer=True):
        return "per_episode.queries is not a positive whole number"
    correct, rows = record.get("correct"), [r["method"] for r in results["rows"]]
    if not isinstance(correct, dict) or set(correct) != set(rows):
        return "per_episode.correct does not hold one entry per row of the table"
    lengths: dict[int, str] = {}
    for row, counts in correct.items():
        if not _counts(counts, queries):
            return f"per_episode.correct[{row!r}] is not counts of correct queries in [0, {queries}]"
        for n in {len(counts)} if not isinstance(counts[0], list) else {len(c) for c in counts}:
            lengths.setdefault(n, row)
    if len(lengths) > 1:
        (n, first), (m, other) = sorted(lengths.items())[:2]
        if first == other:
            return f"per_episode.correct[{first!r}] has seeds of {n:,} and of {m:,} episodes"
        return f"per_episode.correct[{first!r}] has {n:,} episodes, [{other!r}] {m:,}"
    if lengths and (n := next(iter(lengths))) != results["episodes"]:
        return f"per_episode.correct[{lengths[n]!r}] has {n:,} episodes, the file {results['episodes']:,}"
    return None


def _counts(value: Any, queries: int, seeds: bool = True) -> bool:
    """Whether ``value`` is a non-empty list of counts in ``[0, queries]`` or, where ``seeds``, a
    non-empty list of such lists."""
    if not isinstance(value, list) or not value:
        return False
    if all(is_number(c, 0, queries, integer=True) for c in value):
        return True
    return seeds and all(_counts(v, queries, seeds=False) for v in value)
