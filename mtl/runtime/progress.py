"""Progress on the console. On a terminal: a bar with ETA. Anywhere else (a SLURM or nohup log, a
pipe, CI): a heartbeat line at least every minute while a loop runs, with the step, the rate, the ETA
and, for training, the current loss and accuracy; no control characters reach the log.

A loop inside a loop that shows progress runs silently: one bar or heartbeat at a time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import click

__all__ = ["HEARTBEAT_SECONDS", "heard", "progress", "show_progress"]

T = TypeVar("T")

# A heartbeat is due this long after the last console line; with items shorter than this, no gap
# between lines in a log is longer than twice it.
HEARTBEAT_SECONDS = 30.0


class _State:
    on = False  # the running stage is not quiet (and this is rank 0)
    busy = False  # a loop is showing progress: one inside it runs silently
    last_line = 0.0  # time.monotonic() of the last console line


def show_progress(enabled: bool) -> None:
    """Turn :func:`progress` on or off for the stage that starts."""
    _State.on, _State.busy = enabled, False
    heard()


def heard() -> None:
    """A console line was just written (the heartbeat counts from it)."""
    _State.last_line = time.monotonic()


def progress(
    items: Iterable[T], *, length: int, label: str, status: Callable[[int], str] | None = None
) -> Iterator[T]:
    """Iterate ``items`` (``length`` of them) with a bar on a terminal, heartbeat lines elsewhere, or
    silently when progress is off. ``status(done)`` adds the current loss or accuracy to a heartbeat."""
    if not _State.on or _State.busy or length < 2:
        yield from items
        return
    _State.busy = True
    try:
        if sys.stderr.isatty():
            with click.progressbar(items, length=length, label=label, file=sys.stderr, show_eta=True) as bar:
                yield from bar
        else:
            yield from _heartbeat(items, length, label.strip(), status)
    finally:
        _State.busy = False


def _heartbeat(
    items: Iterable[T], length: int, label: str, status: Callable[[int], str] | None
) -> Iterator[T]:
    start = time.monotonic()
    for done, item in enumerate(items):
        yield item
        now = time.monotonic()
        if now - _State.last_line >= HEARTBEAT_SECONDS and done + 1 < length:
            rate = (done + 1) / max(now - start, 1e-9)
            eta = (length - done - 1) / rate
            extra = f", {note}" if status is not None and (note := status(done + 1)) else ""
            click.echo(
                f"[{label}] {done + 1:,}/{length:,} ({(done + 1) / length:.0%}), {_rate(rate)}, "
                f"ETA {_duration(eta)}{extra}"
            )
            heard()


def _rate(per_second: float) -> str:
    return f"{per_second:.2f}/s" if per_second >= 0.1 else f"{60 * per_second:.2f}/min"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
