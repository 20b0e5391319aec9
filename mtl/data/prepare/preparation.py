"""``mtl data prepare``: any supported source -> the one prepared-dataset format every stage reads.

The dataset's reader (:mod:`mtl.data.prepare.formats`) finds the split layout; here each image is decoded
and resized (in worker processes for image files) and streamed into one ``.npy`` per split inside a
hidden folder, which replaces the destination only when complete (see
:mod:`mtl.data.prepared`): an interrupted prepare never leaves a dataset that loads. Before the first
image is decoded, the space every file will take is checked and the image arrays' space reserved
(:mod:`mtl.data.prepare.disk`); a full or read-only disk, SIGTERM or Ctrl-C removes the hidden folder and
leaves an earlier dataset in the destination as it was.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Generator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtl.data import prepared
from mtl.data.prepare import disk
from mtl.data.prepare.formats import DATASETS, DatasetSpec
from mtl.data.prepare.formats.common import SplitSource
from mtl.data.prepare.images import BadImage, TooLarge, to_pixels
from mtl.data.prepare.limits import PIXELS, human
from mtl.data.prepare.stopping import Interrupted, StopSignals, terminate_workers, worker_signals
from mtl.errors import MtlError
from mtl.runtime.outputs import Input, check_not_input, check_run_folder
from mtl.runtime.progress import progress, show_progress

_CHUNK = 256  # images per worker job
_POOL_MIN = 2000  # fewer image files than this decode in-process (no worker start-up cost)


@dataclass
class Report:
    """What a prepare run did: per-split counts, skipped images, the destination and its manifest."""

    dest: Path
    source_format: str
    splits: dict[str, dict] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"prepared {self.dest} from {self.source_format} in {self.seconds:.1f} s"]
        for name, s in self.splits.items():
            out.append(f"  {name:<5} {s['classes']:>5} classes {s['images']:>8} images  {s['image_shape']}")
        if self.skipped:
            out.append(f"  skipped {len(self.skipped)} undecodable images (first: {self.skipped[0]})")
        return out


def prepare(
    dataset: str,
    source: str | Path,
    dest: str | Path,
    *,
    image_size: int | None = None,
    split: tuple[float, float, float] | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    workers: int | None = None,
    quiet: bool = True,
    split_lists: str | Path | None = None,
    max_pixels: int | None = None,
) -> Report:
    """Prepare ``dataset`` from ``source`` into ``dest``; see the module docstring.

    ``image_size`` defaults to the dataset's standard size; ``split`` (train, val, test fractions of the
    classes, seeded by ``seed``) applies to a ``folder`` dataset without ``train/val/test`` folders;
    ``split_lists`` (a folder of ``train.txt``, ``val.txt``, ``test.txt``) to Omniglot: the Vinyals et
    al. protocol with rotated classes. ``max_pixels`` bounds one source image (default
    ``MTL_MAX_PIXELS``, see :mod:`mtl.data.prepare.limits`). A stop signal (SIGTERM, SIGINT) while writing
    raises :class:`~mtl.data.prepare.stopping.Interrupted` once the temporary folder is removed.
    """
    spec, source, dest, size = _check_request(dataset, source, dest, image_size, split_lists)
    opts = _Options(size, spec.channels, skip_bad, workers, quiet, max_pixels or PIXELS.get())
    start = time.perf_counter()
    source_format, splits = _read(spec.read, source, split=split, seed=seed, split_lists=split_lists)
    for name, s in splits.items():
        _check_split(name, s, source)

    report = Report(dest, source_format)
    extra = {"dataset": dataset, "source": str(source), "skipped": 0}
    _write_dataset(splits, extra, opts, report)
    report.splits = prepared.load_manifest(dest)["splits"]
    report.seconds = time.perf_counter() - start
    return report


def _check_request(
    dataset: str, source: str | Path, dest: str | Path, image_size: int | None, split_lists: str | Path | None
) -> tuple[DatasetSpec, Path, Path, int]:
    """The dataset's reader, the source, the destination and the image size, once every argument is
    checked: before hours of decoding, not after."""
    if split_lists is not None and dataset != "omniglot":
        raise MtlError("--split-lists applies to omniglot only (the Vinyals et al. class lists)")
    if dataset not in DATASETS:
        raise MtlError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    # A symlinked dest (e.g. ~/.cache/mtl/x -> /data/x) is written where it points.
    source, dest = Path(source).expanduser(), Path(dest).expanduser().resolve()
    if not source.exists():
        raise MtlError(f"source not found: {source}")
    reads = [Input("--source", source)]
    reads += [Input("--split-lists", Path(split_lists).expanduser())] if split_lists is not None else []
    check_run_folder("--dest", dest)
    check_not_input("--dest", dest, reads, whole=True)  # the dataset folder is replaced whole
    prepared.check_replaceable(dest)
    size = image_size or spec.image_size
    if size < 8:
        raise MtlError(f"--image-size must be at least 8, got {size}")
    return spec, source, dest, size


def _write_dataset(splits: dict[str, SplitSource], extra: dict, opts: _Options, report: Report) -> None:
    """Decode every split into a hidden folder beside ``report.dest`` and swap it in whole. A full disk,
    a dead decoding process or a stop signal removes the hidden folder and leaves the destination as
    it was (or, after the swap, complete), and the error says which."""
    dest, source_format = report.dest, report.source_format
    counts = {name: (s.class_names, len(s)) for name, s in splits.items()}
    shape = (opts.size, opts.size, opts.channels)
    replacing = disk.make_room(dest, prepared.file_sizes(counts, shape, source_format, extra))
    kept = f"the earlier dataset in {dest} is intact" if replacing else f"nothing was written to {dest}"
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    signals, swapped = StopSignals(), False
    try:
        with signals:
            try:
                tmp.mkdir()
                written = {name: _write_split(tmp, name, s, opts, report) for name, s in splits.items()}
                extra["skipped"] = len(report.skipped)
                prepared.write_manifest(tmp, written, source_format=source_format, extra=extra)
                with signals.held():  # a signal now waits: the swap is never cut in half
                    prepared.swap_in(tmp, dest)
                    swapped = True
            finally:
                with signals.held():  # nor the clean-up, by a second Ctrl-C
                    shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise disk.failed_write(exc, tmp, dest, kept) from None
    except BrokenProcessPool:
        raise MtlError(
            f"a decoding process died (out of memory?); {kept}; --workers 1 decodes here"
        ) from None
    except Interrupted as exc:
        done = f"{dest} is complete" if swapped else f"its temporary folder is removed and {kept}"
        raise Interrupted(exc.signum, f"mtl data prepare stopped by {exc.name}; {done}") from None


@dataclass(frozen=True)
class _Options:
    size: int
    channels: int
    skip_bad: bool
    workers: int | None
    quiet: bool
    max_pixels: int


def _read(read: Callable, source: Path, **kwargs) -> tuple[str, dict[str, SplitSource]]:
    """The dataset reader's result; what it could not read (no permission, a vanished file, too
    little memory) is one line naming the file."""
    try:
        return read(source, **kwargs)
    except OSError as exc:
        raise MtlError(f"{exc.filename or source}: cannot read it ({exc.strerror or exc})") from None
    except MemoryError:
        raise MtlError(f"{source}: not enough memory to read the source") from None


def _check_split(name: str, s: SplitSource, source: Path) -> None:
    if len(s.class_names) < 2:
        raise MtlError(f"{source}: the {name} split has {len(s.class_names)} class(es), at least 2 needed")
    counts = np.bincount(s.labels, minlength=len(s.class_names))
    if (counts == 0).any():
        raise MtlError(f"{source}: class '{s.class_names[int(np.argmin(counts))]}' ({name}) has no images")


def _write_split(tmp: Path, name: str, s: SplitSource, opts: _Options, report: Report) -> prepared.Split:
    """Decode split ``name`` into ``tmp/{name}_images.npy`` (``(N, S, S, C)`` uint8) and its labels.

    The images file is allocated whole before the first image is decoded (a full disk fails then) and
    written with ``write()``, not through a memory map, so a full disk is an error, never SIGBUS."""
    path, shape = tmp / f"{name}_images.npy", (opts.size, opts.size, opts.channels)
    header = disk.npy_header((len(s), *shape))
    keep, n = np.ones(len(s), dtype=bool), 0
    with disk.naming(path), open(path, "wb") as f:
        disk.reserve(f.fileno(), len(header) + len(s) * math.prod(shape))
        f.write(header)
        results = _pixels(s, opts)
        try:
            show_progress(not opts.quiet)  # a bar on a terminal, heartbeat lines in a log
            for i, pixels in progress(results, length=len(s), label=f"  {name}"):
                if isinstance(pixels, BadImage):
                    if not opts.skip_bad:
                        raise _refusal(s.where(i), pixels)
                    report.skipped.append(s.where(i))
                    keep[i] = False
                else:
                    f.write(np.ascontiguousarray(pixels, dtype=np.uint8).reshape(shape).data)
                    n += 1
        finally:
            results.close()  # stops the worker processes now, on an error or a signal too
        if n < len(s):  # skipped images: a header for n rows, as long as the first, then the file cut
            f.seek(0)
            f.write(disk.npy_header((n, *shape), length=len(header)))
            f.truncate(len(header) + n * math.prod(shape))
    labels = s.labels[keep]
    counts = np.bincount(labels, minlength=len(s.class_names))
    if (counts == 0).any():
        empty = s.class_names[int(np.argmin(counts))]
        raise MtlError(f"class '{empty}' ({name}) has no decodable images")
    with disk.naming(tmp / f"{name}_labels.npy"):
        np.save(tmp / f"{name}_labels.npy", labels)
    images = np.load(path, mmap_mode="r")  # read-only: the file is complete, nothing can SIGBUS
    return prepared.Split(images=images, labels=labels, class_names=s.class_names)


def _refusal(where: str, exc: BadImage) -> MtlError:
    if isinstance(exc, TooLarge):
        return MtlError(
            f"{where}: image of {exc.size()}, over the limit of {human(exc.limit, 'pixels')} per image; "
            "raise it with --max-pixels or MTL_MAX_PIXELS, or --skip-bad skips such images"
        )
    return MtlError(f"{where}: cannot decode image ({exc}); --skip-bad skips these")


def _pixels(s: SplitSource, opts: _Options) -> Generator[tuple[int, np.ndarray | BadImage], None, None]:
    """Yield ``(i, pixels or BadImage)`` in order."""
    items, size, channels = s.items, opts.size, opts.channels
    if isinstance(items, np.ndarray) and items.shape[1:] == (size, size, channels):
        for start in range(0, len(items), 4096):  # already the right size: a plain copy
            block = np.asarray(items[start : start + 4096])
            yield from enumerate(block, start)
        return
    workers = os.cpu_count() or 1 if opts.workers is None else opts.workers
    if workers <= 1 or isinstance(items, np.ndarray) or len(items) < _POOL_MIN:
        for i in range(len(items)):
            yield i, _one(items[i], size, channels, opts.max_pixels)
        return
    chunks = [list(range(a, min(a + _CHUNK, len(items)))) for a in range(0, len(items), _CHUNK)]
    pool, done = ProcessPoolExecutor(max_workers=workers, initializer=worker_signals), False
    try:
        batches = ([items[i] for i in c] for c in chunks)
        n = len(chunks)
        jobs = pool.map(_decode_chunk, batches, [size] * n, [channels] * n, [opts.max_pixels] * n)
        for chunk, results in zip(chunks, jobs, strict=True):
            yield from zip(chunk, results, strict=True)
        done = True
    finally:
        # Leaving early (an error, a signal): no further chunk starts, and the running ones are not
        # waited for, or the process would linger (on exit) until every worker finished its chunk.
        pool.shutdown(wait=False, cancel_futures=True)
        if not done:
            terminate_workers(pool)


def _decode_chunk(items: list, size: int, channels: int, max_pixels: int) -> list:
    return [_one(item, size, channels, max_pixels) for item in items]


def _one(item, size: int, channels: int, max_pixels: int) -> np.ndarray | BadImage:
    try:
        return to_pixels(item, size, channels, max_pixels=max_pixels)
    except BadImage as exc:
        return exc
