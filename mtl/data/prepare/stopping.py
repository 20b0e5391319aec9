"""Stop signals during a long write: SIGTERM and SIGINT become an exception, so the writer's ``finally``
clauses remove its temporary files before the process exits (SIGTERM's default action would just end
it, leaving a hidden folder of gigabytes behind). Its worker processes leave Ctrl-C to the parent and
end at SIGTERM (:func:`worker_signals`); :func:`terminate_workers` ends them without waiting."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from types import FrameType

__all__ = ["Interrupted", "StopSignals", "terminate_workers", "worker_signals"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A stop signal arrived; the message says what was left. The CLI prints it and exits with 128 +
    ``signum``. A ``BaseException`` like ``KeyboardInterrupt``, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(message or f"stopped by {self.name}")


class StopSignals:
    """A context in which SIGTERM and SIGINT raise :class:`Interrupted`; the previous handlers come
    back when it ends. Only the main thread can install handlers: elsewhere it changes nothing."""

    def __init__(self) -> None:
        self.previous: dict[int, object] = {}
        self.holding = False
        self.pending: int | None = None

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if self.holding:
            self.pending = self.pending or signum
            return
        raise Interrupted(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._stop) for s in _SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A signal arriving within the block is acted on when the block ends, so that a step which
        must not be cut in half (renaming the finished folder into place, removing the temporary one)
        completes first."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise Interrupted(signum)


def worker_signals() -> None:
    """In worker processes (a pool's ``initializer``): Ctrl-C is the parent's to handle (no traceback
    per worker), and SIGTERM ends a worker at once (the parent's handler, inherited by fork, would not)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def terminate_workers(pool: ProcessPoolExecutor) -> None:
    """End ``pool``'s worker processes now, without waiting for their running jobs."""
    if hasattr(pool, "terminate_workers"):  # Python 3.14
        pool.terminate_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
