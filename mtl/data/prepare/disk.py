"""The disk side of writing a prepared dataset: its size on the file system, checked before the work;
its image arrays' space reserved up front; and a failed write told in one line.

A prepared dataset's arrays are large, and a write that finds the disk full must fail with a message
(ENOSPC), never kill the process: memory-mapped writes die with SIGBUS when a sparse file's page
cannot be allocated. So the images are written with ``write()`` into space reserved by
``posix_fallocate`` before the first image is decoded.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from mtl.errors import MtlError
from mtl.runtime.outputs import read_only

__all__ = [
    "check_space",
    "failed_write",
    "folder_bytes",
    "make_room",
    "naming",
    "npy_header",
    "on_disk",
    "reserve",
]


def npy_header(shape: tuple[int, ...], descr: str = "|u1", length: int | None = None) -> bytes:
    """The ``.npy`` (version 1.0) header of a C-order array of ``shape`` and dtype ``descr``.

    With ``length``, padded with spaces to that many bytes: a header rewritten in place for fewer
    rows (skipped images) keeps the data where it is, so the file is truncated instead of copied.
    """
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": tuple(int(n) for n in shape)}
    )
    head = buf.getvalue()
    if length is None or length == len(head):
        return head
    if length < len(head):
        raise ValueError(f"a header for shape {shape} needs {len(head)} bytes, not {length}")
    text = head[10:-1] + b" " * (length - len(head)) + b"\n"  # magic (6), version (2), length (2)
    return head[:8] + struct.pack("<H", len(text)) + text


def on_disk(sizes: Iterable[int], folder: Path) -> int:
    """Bytes that files of ``sizes`` take in a new folder under ``folder``: each rounded up to the file
    system's block, plus one block for the folder itself."""
    stats = os.statvfs(folder)
    block = stats.f_frsize or stats.f_bsize or 4096
    return sum(-(-n // block) * block for n in sizes) + block


def folder_bytes(folder: Path) -> int:
    """Bytes the files directly in ``folder`` occupy (allocated blocks, not apparent sizes)."""
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


def size_text(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def check_space(folder: Path, need: int, kept: Path | None = None) -> None:
    """Refuse before any work if ``folder``'s file system has less than ``need`` bytes free. ``kept``: an
    earlier dataset that the new one replaces, which keeps its space until the new one is complete.
    A read-only file system is named as such (it often reports no free space)."""
    if read_only(folder):
        raise MtlError(f"cannot write in {folder}: a read-only file system; nothing was written")
    free = shutil.disk_usage(folder).free
    if need > free:
        need_text, free_text = size_text(need), size_text(free)
        if need_text == free_text:  # "needs 2.0 MB, only 2.0 MB are free" would read as a contradiction
            need_text, free_text = f"{need / 1024:,.0f} KB", f"{free / 1024:,.0f} KB"
        also = ""
        if kept is not None:
            old = size_text(folder_bytes(kept))
            also = f" (the earlier dataset in {kept}, {old}, stays until the new one is complete)"
        raise MtlError(f"{folder}: the prepared dataset needs {need_text}, only {free_text} are free{also}")


def make_room(dest: Path, sizes: list[int]) -> bool:
    """Before any work: create ``dest``'s parent, check that it (and an earlier dataset in ``dest``) can
    be written, and that the file system has room for files of ``sizes``; whether ``dest`` holds an
    earlier dataset, which is replaced."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = exc.filename or dest.parent
        raise MtlError(f"cannot create {where}: {exc.strerror or exc}; nothing was written") from None
    replacing = dest.is_dir() and any(dest.iterdir())
    for folder, what in ((dest.parent, "write in"), (dest, "replace the dataset in")):
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            why = "a read-only file system" if read_only(folder) else "permission denied"
            kept = "it is left as it was" if folder == dest else "nothing was written"
            raise MtlError(f"cannot {what} {folder}: {why}; {kept}")
    check_space(dest.parent, on_disk(sizes, dest.parent), dest if replacing else None)
    return replacing


def reserve(fd: int, nbytes: int) -> None:
    """Allocate ``nbytes`` for the open file ``fd`` now, so that a full disk is an ENOSPC here.

    A file system that cannot preallocate (EOPNOTSUPP, EINVAL; or no ``posix_fallocate``, as on macOS)
    is left as it is: the writes that follow are plain ``write()`` calls, which report a full disk too.
    """
    if nbytes <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Within the block, an ``OSError`` that names no file (a ``write()`` to a full disk) names ``path``."""
    try:
        yield
    except OSError as exc:
        if not exc.filename:
            exc.filename = str(path)
        raise


def failed_write(exc: OSError, tmp: Path, dest: Path, kept: str) -> MtlError:
    """One line for a write into the temporary folder ``tmp`` (bound for ``dest``) that failed with
    ``exc``: the file as it would have been named in ``dest``, the reason, and what is ``kept``."""
    shown: Path | str = dest
    if exc.filename:
        name = Path(os.fsdecode(exc.filename))
        shown = dest / name.relative_to(tmp) if name.is_relative_to(tmp) else name  # tmp itself: dest
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return MtlError(f"could not write {shown}: {reason}; {kept}")
