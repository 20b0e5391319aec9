"""What a user watches: TensorBoard event files, and one console line per epoch.

Event files go to ``<checkpoints>/<name>/tb/<stage>/``, one stream per stage run (a rerun replaces
the last run's file; a resumed run continues it), so ``tensorboard --logdir checkpoints`` shows
every stage of every pipeline side by side. No two stages share a tag (nor a step axis).

Tags and groups: :mod:`mtl.runtime.tb_layout`. Accuracies are in percent everywhere. An accuracy with a
95% CI is one margin chart with its band on the custom-scalars page (under its stage's group, in
pipeline order); its raw bounds, clipped to [0, 100], go to the trailing ``9 CI bands`` group. A margin
chart names its tags as they are (TensorBoard escapes them itself) and draws no series whose tag has a
parenthesis: tags have brackets instead. The results of metatest are its Markdown table (Text page) and
one HParams session (the pipeline's settings, each method's accuracy a metric). Progress:
:mod:`mtl.runtime.progress`.
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
from mtl.runtime.tb_layout import (
    INPUTS,
    PARAMETERS,
    STAGE_NUMBER,
    accuracy_tags,
    stage_group,
    tag,
)

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

    def tag(self, name: str, section: str | None = None) -> str:
        """This stage's tag of ``name`` (:func:`tag`)."""
        return tag(self.stage, name, section)

    def resume_at(self, step: int) -> None:
        """Continue a resumed run's curves: the interrupted run's events after ``step`` are dropped."""
        self.close()
        self._writer, self._purge_step = None, step

    # ---- TensorBoard
    @_events
    def scalars(self, step: int, *, section: str | None = None, **values: float | torch.Tensor) -> None:
        """Each of ``values`` at ``step``, in the stage's group or in ``section``'s (:func:`tag`)."""
        if not self.enabled:
            return
        for key, value in values.items():
            self.writer.add_scalar(self.tag(key, section), float(value), step)

    @_events
    def accuracy(self, step: int, name: str, acc: float, ci: float, *, chart: str | None = None) -> None:
        """Accuracy ``name`` (percent) in the stage's group, the bounds of its 95% CI (clipped to
        [0, 100]) in the CI-band group, and a custom-scalars margin chart of the three, titled ``chart``."""
        if not self.enabled:
            return
        acc, ci = float(acc), float(ci)
        tags = accuracy_tags(self.stage, name)
        for key, value in zip(tags, (acc, max(acc - ci, 0.0), min(acc + ci, 100.0)), strict=True):
            self.writer.add_scalar(key, value, step)
        if name not in self._charts:
            self._charts[name] = [chart or f"{name} ± 95% CI (%)", list(tags)]
            self.writer.add_custom_scalars(self._layout())  # TensorBoard reads the last layout of a run

    def _layout(self) -> dict[str, dict[str, list]]:
        """The margin charts under the stage's group, after the (empty) groups of the earlier stages that
        have a stream beside this one: TensorBoard merges the layouts of the runs in the order of their
        names (metatest before pretrain), keeping each group where it first met it."""
        own = stage_group(self.stage)
        beside = [] if "/" in self.stage else [s for s in STAGE_NUMBER if (self.log_dir.parent / s).is_dir()]
        earlier = [group for group in map(stage_group, beside) if group < own]
        charts = {title: ["Margin", tags] for title, tags in self._charts.values()}
        return {**{group: {} for group in earlier}, own: charts}

    @_events
    def hparams(self, values: dict[str, str | int | float], metrics: Iterable[str]) -> None:
        """One session of the HParams page: the settings ``values`` and, as its metrics, the accuracies
        named ``metrics`` (as given to :meth:`accuracy`; TensorBoard shows the last point of each)."""
        if not self.enabled:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import api_pb2 as api
        from tensorboard.plugins.hparams import metadata, plugin_data_pb2, summary_v2

        number, kind = api.DATA_TYPE_FLOAT64, {str: api.DATA_TYPE_STRING, bool: api.DATA_TYPE_BOOL}
        infos = [api.HParamInfo(name=k, type=kind.get(type(v), number)) for k, v in values.items()]
        shown = [
            api.MetricInfo(name=api.MetricName(tag=self.tag(m)), display_name=f"{m} (%)") for m in metrics
        ]
        data = plugin_data_pb2.HParamsPluginData(
            experiment=api.Experiment(hparam_infos=infos, metric_infos=shown)
        )
        config = Summary()
        config.value.add(tag=metadata.EXPERIMENT_TAG, tensor=metadata.NULL_TENSOR)
        config.value[0].metadata.CopyFrom(metadata.create_summary_metadata(data))
        for summary in (config, summary_v2.hparams_pb(values)):
            self.writer.file_writer.add_summary(summary)

    @_events
    def histogram(
        self, tag: str, values: torch.Tensor, step: int, *, section: str | None = PARAMETERS
    ) -> None:
        if not self.enabled:
            return
        self.writer.add_histogram(self.tag(tag, section), values.detach().float().cpu(), step)

    @_events
    def images(
        self, tag: str, images: torch.Tensor, step: int, nrow: int = 8, *, section: str | None = INPUTS
    ) -> None:
        """Log uint8 ``(B, H, W, C)`` images as one grid."""
        if not self.enabled:
            return
        grid = make_grid(images.detach().cpu().permute(0, 3, 1, 2), nrow=nrow, padding=2, pad_value=255)
        self.writer.add_image(self.tag(tag, section), grid, step)

    @_events
    def task(
        self, tag: str, images: torch.Tensor, shot: int, step: int, *, section: str | None = INPUTS
    ) -> None:
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
        self.writer.add_image(self.tag(tag, section), grid, step)

    @_events
    def text(self, tag: str, text: str, step: int = 0, *, section: str | None = None) -> None:
        """Markdown ``text`` (tables render as tables on the Text page)."""
        if not self.enabled:
            return
        self.writer.add_text(self.tag(tag, section), text, step)

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
