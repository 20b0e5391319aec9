"""What a user watches: TensorBoard event files, progress bars with ETA, and one summary line per epoch.

Event files go to ``<checkpoints>/<name>/tb/<stage>/`` so ``tensorboard --logdir checkpoints`` shows
every stage of every pipeline side by side. Progress bars only appear on a terminal; logs and CI get
the per-epoch lines alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import click
import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

T = TypeVar("T")


class Monitor:
    """A TensorBoard writer for one stage plus console output."""

    def __init__(self, log_dir: Path, stage: str, *, quiet: bool = False, enabled: bool = True) -> None:
        """``enabled=False`` (ranks other than 0 of a multi-process run): no output of any kind."""
        self.stage = stage
        self.quiet = quiet or not enabled
        self.enabled = enabled
        self.log_dir = log_dir
        self._writer: SummaryWriter | None = None
        self._purge_step: int | None = None

    @property
    def writer(self) -> SummaryWriter:
        # Created on first use: a run that fails its checks leaves no event file behind.
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge_step)
        return self._writer

    def resume_at(self, step: int) -> None:
        """Continue a resumed run's curves: the interrupted run's events after ``step`` are dropped."""
        self.close()
        self._writer, self._purge_step = None, step

    # ---- TensorBoard
    def scalars(self, step: int, **values: float | torch.Tensor) -> None:
        if not self.enabled:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, float(value), step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if not self.enabled:
            return
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def images(self, tag: str, images: torch.Tensor, step: int, nrow: int = 8) -> None:
        """Log uint8 ``(B, H, W, C)`` images as one grid."""
        if not self.enabled:
            return
        grid = make_grid(images.detach().cpu().permute(0, 3, 1, 2), nrow=nrow, padding=2, pad_value=255)
        self.writer.add_image(tag, grid, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if not self.enabled:
            return
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    # ---- console
    def line(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"[{self.stage}] {message}")

    def progress(self, items: Iterable[T], *, length: int, label: str) -> Iterator[T]:
        """Iterate with a progress bar (with ETA) when stderr is a terminal, silently otherwise."""
        if self.quiet or not sys.stderr.isatty():
            yield from items
            return
        with click.progressbar(items, length=length, label=label, file=sys.stderr, show_eta=True) as bar:
            yield from bar


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
