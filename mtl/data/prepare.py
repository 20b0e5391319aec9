"""``mtl data prepare``: any supported source -> the one prepared-dataset format every stage reads.

The dataset's reader (:mod:`mtl.data.formats`) finds the split layout; here each image is decoded
and resized (in worker processes for image files) and streamed into a memory-mapped ``.npy`` per
split inside a hidden folder, which replaces the destination only when complete (see
:mod:`mtl.data.prepared`): an interrupted prepare never leaves a dataset that loads.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from mtl.data import prepared
from mtl.data.formats import DATASETS
from mtl.data.formats.common import SplitSource
from mtl.data.images import BadImage, to_pixels
from mtl.errors import MtlError

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
) -> Report:
    """Prepare ``dataset`` from ``source`` into ``dest``; see the module docstring.

    ``image_size`` defaults to the dataset's standard size; ``split`` (train, val, test fractions of the
    classes, seeded by ``seed``) applies to a ``folder`` dataset without ``train/val/test`` folders;
    ``split_lists`` (a folder of ``train.txt``, ``val.txt``, ``test.txt``) to Omniglot: the Vinyals et
    al. protocol with rotated classes.
    """
    if split_lists is not None and dataset != "omniglot":
        raise MtlError("--split-lists applies to omniglot only (the Vinyals et al. class lists)")
    if dataset not in DATASETS:
        raise MtlError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    # A symlinked dest (e.g. ~/.cache/mtl/x -> /data/x) is written where it points.
    source, dest = Path(source).expanduser(), Path(dest).expanduser().resolve()
    if not source.exists():
        raise MtlError(f"source not found: {source}")
    prepared.check_replaceable(dest)  # before hours of decoding, not after
    if dest == source.resolve() or source.resolve() in dest.parents:
        raise MtlError(f"--dest {dest} must not be inside the source {source}")
    size = image_size or spec.image_size
    if size < 8:
        raise MtlError(f"--image-size must be at least 8, got {size}")
    start = time.perf_counter()
    source_format, splits = spec.read(source, split=split, seed=seed, split_lists=split_lists)
    for name, s in splits.items():
        _check_split(name, s, source)

    report = Report(dest, source_format)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _check_space(dest.parent, sum(len(s) for s in splits.values()) * size * size * spec.channels)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        written = {}
        for name, s in splits.items():
            written[name] = _write_split(tmp, name, s, size, spec.channels, skip_bad, workers, quiet, report)
        extra = {"dataset": dataset, "source": str(source), "skipped": len(report.skipped)}
        prepared.write_manifest(tmp, written, source_format=source_format, extra=extra)
        prepared.swap_in(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.splits = prepared.load_manifest(dest)["splits"]
    report.seconds = time.perf_counter() - start
    return report


def _check_space(folder: Path, need: int) -> None:
    """Images are written through memory maps, where a full disk kills the process (SIGBUS) with no
    message; so the space is checked before the first image is decoded."""
    free = shutil.disk_usage(folder).free
    if need > free:
        raise MtlError(f"{folder}: the prepared dataset needs {_size(need)}, only {_size(free)} are free")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _check_split(name: str, s: SplitSource, source: Path) -> None:
    if len(s.class_names) < 2:
        raise MtlError(f"{source}: the {name} split has {len(s.class_names)} class(es), at least 2 needed")
    counts = np.bincount(s.labels, minlength=len(s.class_names))
    if (counts == 0).any():
        raise MtlError(f"{source}: class '{s.class_names[int(np.argmin(counts))]}' ({name}) has no images")


def _write_split(
    tmp: Path,
    name: str,
    s: SplitSource,
    size: int,
    channels: int,
    skip_bad: bool,
    workers: int | None,
    quiet: bool,
    report: Report,
) -> prepared.Split:
    path = tmp / f"{name}_images.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(s), size, size, channels))
    keep = np.ones(len(s), dtype=bool)
    n = 0
    with _progress(len(s), f"{name}", quiet) as bar:
        for i, pixels in _pixels(s, size, channels, workers):
            if isinstance(pixels, BadImage):
                if not skip_bad:
                    raise MtlError(f"{s.where(i)}: cannot decode image ({pixels}); --skip-bad skips these")
                report.skipped.append(s.where(i))
                keep[i] = False
            else:
                out[n] = pixels
                n += 1
            bar.update(1)
    out.flush()
    labels = s.labels[keep]
    counts = np.bincount(labels, minlength=len(s.class_names))
    if (counts == 0).any():
        empty = s.class_names[int(np.argmin(counts))]
        raise MtlError(f"class '{empty}' ({name}) has no decodable images")
    if n < len(s):  # skipped images: keep the first n rows
        del out
        full = np.load(path, mmap_mode="r")
        trimmed = tmp / f".{name}_images.npy"
        np.save(trimmed, full[:n])
        del full
        os.replace(trimmed, path)
        out = np.load(path, mmap_mode="r")
    np.save(tmp / f"{name}_labels.npy", labels)
    return prepared.Split(images=out, labels=labels, class_names=s.class_names)


def _pixels(s: SplitSource, size: int, channels: int, workers: int | None):
    """Yield ``(i, pixels or BadImage)`` in order."""
    items = s.items
    if isinstance(items, np.ndarray) and items.shape[1:] == (size, size, channels):
        for start in range(0, len(items), 4096):  # already the right size: a plain copy
            block = np.asarray(items[start : start + 4096])
            yield from enumerate(block, start)
        return
    workers = os.cpu_count() or 1 if workers is None else workers
    if workers <= 1 or isinstance(items, np.ndarray) or len(items) < _POOL_MIN:
        for i in range(len(items)):
            yield i, _one(items[i], size, channels)
        return
    chunks = [list(range(a, min(a + _CHUNK, len(items)))) for a in range(0, len(items), _CHUNK)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        batches = ([items[i] for i in c] for c in chunks)
        jobs = pool.map(_decode_chunk, batches, [size] * len(chunks), [channels] * len(chunks))
        for chunk, results in zip(chunks, jobs, strict=True):
            yield from zip(chunk, results, strict=True)


def _decode_chunk(items: list, size: int, channels: int) -> list:
    return [_one(item, size, channels) for item in items]


def _one(item, size: int, channels: int) -> np.ndarray | BadImage:
    try:
        return to_pixels(item, size, channels)
    except BadImage as exc:
        return exc


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int) -> None:
        pass


def _progress(total: int, label: str, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return _NoBar()
    return click.progressbar(length=total, label=f"  {label}", file=sys.stderr, show_eta=True)
