"""What a user watches: TensorBoard event files, progress bars with ETA, and one summary line per epoch.

Event files go to ``<checkpoints>/<name>/tb/<stage>/``, one stream per stage run (a rerun replaces
the last run's file; a resumed run continues it), so ``tensorboard --logdir checkpoints`` shows
every stage of every pipeline side by side. Every tag starts with its stage (``pretrain/val/acc``,
``metatrain/val/acc``): no two stages share a step axis. Accuracies are in percent everywhere; an
accuracy with a CI is written with its band (``…_low``, ``…_high``) and gets a margin chart in the
custom-scalars layout. Progress: :mod:`mtl.runtime.progress` (a bar on a terminal, heartbeat lines in
a log).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import click
import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from mtl.errors import MtlError
from mtl.runtime.progress import heard, progress

T = TypeVar("T")


def _utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _events(method: Callable) -> Callable:
    """A TensorBoard write that fails on the disk (full, read-only) is one line; checkpoints are apart."""

    @functools.wraps(method)
    def guarded(self: Monitor, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            raise _cannot(self.log_dir, exc) from None

    return guarded


def _cannot(log_dir: Path, exc: OSError) -> MtlError:
    return MtlError(f"cannot write TensorBoard events to {log_dir}: {exc.strerror or exc}")


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
        self._charts: dict[str, list] = {}
        self._dir_fd: int | None = None

    @property
    def writer(self) -> SummaryWriter:
        # Created on first use: a run that fails its checks leaves no event file behind.
        if self._writer is None:
            self._writer = self._open_writer()
        return self._writer

    def _open_writer(self) -> SummaryWriter:
        """The new stream, created before anything is removed: a fresh run of this stage replaces the
        last one's stream, which goes only once the new one exists."""
        fresh = self._purge_step is None and self.log_dir.is_dir()
        old = list(self.log_dir.glob("events.out.tfevents.*")) if fresh else []
        self.log_dir.mkdir(parents=True, exist_ok=True)  # an OSError here is one line (@_events)
        writer = SummaryWriter(log_dir=self._writer_dir(), purge_step=self._purge_step)
        for path in old:
            path.unlink(missing_ok=True)
        return writer

    def _writer_dir(self) -> str:
        """The folder as TensorBoard can take it. It encodes paths as UTF-8, which a Linux path need not
        be: such a folder is given as /proc/self/fd/N of an open descriptor of it (kept open)."""
        if _utf8(self.log_dir):
            return str(self.log_dir)
        self._dir_fd = os.open(self.log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self._dir_fd}"

    def check(self) -> None:
        """Before any work: one line if the event folder cannot be written, rather than a failure after
        hours of training or all the scoring. Makes nothing (a probe file comes and goes)."""
        if not self.enabled:
            return
        if not _utf8(self.log_dir) and not Path("/proc/self/fd").is_dir():
            raise MtlError(f"TensorBoard cannot write to {self.log_dir!r}: the path is not UTF-8")
        existing = self.log_dir
        try:  # os.access says yes to root even on a read-only mount: a probe file tells the truth
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                raise MtlError(
                    f"cannot write TensorBoard events to {self.log_dir}: {existing} is not a folder"
                )
            fd, probe = tempfile.mkstemp(prefix=".tb.", suffix=".probe", dir=existing)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise _cannot(self.log_dir, exc) from None

    def tag(self, name: str) -> str:
        return f"{self.stage}/{name}"

    def resume_at(self, step: int) -> None:
        """Continue a resumed run's curves: the interrupted run's events after ``step`` are dropped."""
        self.close()
        self._writer, self._purge_step = None, step

    # ---- TensorBoard
    @_events
    def scalars(self, step: int, **values: float | torch.Tensor) -> None:
        if not self.enabled:
            return
        for key, value in values.items():
            self.writer.add_scalar(self.tag(key), float(value), step)

    @_events
    def accuracy(self, step: int, name: str, acc: float, ci: float, *, chart: str | None = None) -> None:
        """Accuracy ``name`` (percent) with its 95% CI band, and a margin chart of the three."""
        self.scalars(step, **{name: acc, f"{name}_low": acc - ci, f"{name}_high": acc + ci})
        if not self.enabled or name in self._charts:
            return
        self._charts[name] = [
            chart or f"{name} ± 95% CI (%)",
            [self.tag(t) for t in (name, f"{name}_low", f"{name}_high")],
        ]
        layout = {self.stage: {title: ["Margin", tags] for title, tags in self._charts.values()}}
        self.writer.add_custom_scalars(layout)  # TensorBoard reads the last layout of each run

    @_events
    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if not self.enabled:
            return
        self.writer.add_histogram(self.tag(tag), values.detach().float().cpu(), step)

    @_events
    def images(self, tag: str, images: torch.Tensor, step: int, nrow: int = 8) -> None:
        """Log uint8 ``(B, H, W, C)`` images as one grid."""
        if not self.enabled:
            return
        grid = make_grid(images.detach().cpu().permute(0, 3, 1, 2), nrow=nrow, padding=2, pad_value=255)
        self.writer.add_image(self.tag(tag), grid, step)

    @_events
    def task(self, tag: str, images: torch.Tensor, shot: int, step: int) -> None:
        """One task's uint8 images ``(way, shot + query, H, W, C)`` as a grid, a row per class: support
        images framed in green, queries in grey."""
        if not self.enabled:
            return
        x = images.detach().cpu().permute(0, 1, 4, 2, 3)  # (way, n, C, H, W)
        way, n, c = x.shape[:3]
        frame = torch.tensor([150, 150, 150] if c == 3 else [150], dtype=torch.uint8).repeat(way, n, 1)
        frame[:, :shot] = torch.tensor([40, 200, 40] if c == 3 else [255], dtype=torch.uint8)
        framed = frame[..., None, None].expand(-1, -1, -1, *(s + 4 for s in x.shape[3:])).clone()
        framed[..., 2:-2, 2:-2] = x
        grid = make_grid(framed.flatten(0, 1), nrow=n, padding=2, pad_value=255)
        self.writer.add_image(self.tag(tag), grid, step)

    @_events
    def text(self, tag: str, text: str, step: int = 0) -> None:
        if not self.enabled:
            return
        self.writer.add_text(self.tag(tag), text, step)

    @_events
    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    # ---- console
    def line(self, message: str) -> None:
        if not self.quiet:
            # A path that is not UTF-8 is shown with a replacement character, not a UnicodeEncodeError.
            click.echo(
                f"[{self.stage}] {message}".encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            )
            heard()

    def progress(
        self, items: Iterable[T], *, length: int, label: str, status: Callable[[int], str] | None = None
    ) -> Iterator[T]:
        """Iterate with a bar on a terminal, heartbeat lines in a log (:mod:`mtl.runtime.progress`)."""
        if self.quiet:
            yield from items
            return
        yield from progress(items, length=length, label=label, status=status)
