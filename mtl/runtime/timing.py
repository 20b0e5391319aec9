"""Measuring a block's wall-clock time and peak memory: the training loop's epoch timer, and the timed
calls the benchmark compares (medians of repeated runs, two paths timed in turn)."""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import torch

__all__ = ["PeakMemory", "timed", "timed_pair", "timer"]


@contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed wall-clock time in seconds."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or on the CPU the growth of the process's resident
    set over its size at entry (sampled every millisecond after returning freed heap to the OS)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mb = device, 0.0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        with suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self._base = self._peak = self._rss()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.001):
                self._peak = max(self._peak, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.mb = (self._peak - self._base) / 2**20


def timed(step: Callable[[], object], device: torch.device, min_seconds: float) -> tuple[float, int]:
    """Run ``step`` twice to warm up, then until ``min_seconds`` have passed (at least twice), waiting
    for the device after each call; returns (seconds, calls) of the timed part."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    step()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 2:
            return elapsed, calls


def timed_pair(
    a: Callable[[], object], b: Callable[[], object], device: torch.device, min_seconds: float
) -> tuple[float, float]:
    """Median seconds per call of ``a`` and of ``b``, called in turn (a, b, a, b, ...) after a warm-up
    round until each has run ``min_seconds`` (at least 5 rounds). A ratio of the two is then measured
    under the same machine load, where two ``timed`` runs one after the other drift apart."""

    def once(step: Callable[[], object]) -> float:
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once(a), once(b)
    ta: list[float] = []
    tb: list[float] = []
    while len(ta) < 5 or min(sum(ta), sum(tb)) < min_seconds:
        ta.append(once(a))
        tb.append(once(b))
    return statistics.median(ta), statistics.median(tb)
