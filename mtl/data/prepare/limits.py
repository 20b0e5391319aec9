"""What reading one user file may cost: the limits, their defaults in one place, and the guarded reads.

A few megabytes of input can ask for gigabytes of memory (a PNG of 30,000 × 30,000 pixels, a zip entry
of 3 GiB of zeros, a pickle asking for ``bytearray(10**13)``) or block forever (a FIFO named
``x.png``). Every reader of user data checks against these limits and refuses with one line that
names the setting raising it:

==========================  ===============  ===============================================
environment variable        default          what it bounds
==========================  ===============  ===============================================
``MTL_MAX_PIXELS``          100,000,000      pixels of one image (``--max-pixels`` too)
``MTL_MAX_ENTRY_BYTES``     1 GiB            one archive entry, unpacked (zip, tar)
``MTL_MAX_ARCHIVE_BYTES``   2 GiB            all entries read from one archive, unpacked
``MTL_MAX_PICKLE_BYTES``    16 GiB           one pickle file
``MTL_MAX_PICKLE_DEPTH``    100              containers nested in a pickle
==========================  ===============  ===============================================

Byte limits accept a binary suffix (``MTL_MAX_ENTRY_BYTES=4G``). Text files mtl itself writes
(``manifest.json``, class lists) and split lists are read up to :data:`TEXT_BYTES`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mtl.errors import MtlError

__all__ = [
    "ARCHIVE_BYTES",
    "ENTRY_BYTES",
    "PICKLE_BYTES",
    "PICKLE_DEPTH",
    "PIXELS",
    "TEXT_BYTES",
    "Limit",
    "NotRegular",
    "human",
    "open_regular",
    "read_capped",
]

_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
TEXT_BYTES = 64 << 20  # manifests are a few KB and split lists ~100 KB; more is not such a file


@dataclass(frozen=True)
class Limit:
    """One limit: its environment variable, default and unit (``"bytes"``, ``"pixels"``, ``"levels"``)."""

    env: str
    default: int
    unit: str

    def get(self) -> int:
        """The value in force: the environment variable if set, else the default."""
        raw = os.environ.get(self.env, "").strip()
        if not raw:
            return self.default
        text, scale = raw.replace("_", ""), 1
        if self.unit == "bytes" and text[-1:].upper() in _SUFFIXES:
            text, scale = text[:-1], _SUFFIXES[text[-1].upper()]
        if not text.isdigit() or int(text) < 1:
            suffix = " (a K, M, G or T suffix may follow)" if self.unit == "bytes" else ""
            raise MtlError(f"{self.env} must be a positive whole number of {self.unit}{suffix}, got {raw!r}")
        return int(text) * scale

    def refuse(self, what: str, amount: int | None, limit: int) -> MtlError:
        """The one-line refusal: ``what`` needs ``amount`` (``None``: more than ``limit``) of this limit."""
        need = f"more than {human(limit, self.unit)}" if amount is None else human(amount, self.unit)
        return MtlError(f"{what} {need}, over the limit of {human(limit, self.unit)} ({self.env} raises it)")


PIXELS = Limit("MTL_MAX_PIXELS", 100_000_000, "pixels")
ENTRY_BYTES = Limit("MTL_MAX_ENTRY_BYTES", 1 << 30, "bytes")
ARCHIVE_BYTES = Limit("MTL_MAX_ARCHIVE_BYTES", 2 << 30, "bytes")
PICKLE_BYTES = Limit("MTL_MAX_PICKLE_BYTES", 16 << 30, "bytes")
PICKLE_DEPTH = Limit("MTL_MAX_PICKLE_DEPTH", 100, "levels")


def human(n: int, unit: str = "bytes") -> str:
    """``n`` for a message: ``1.5 GiB``, ``900 megapixels``, ``100 levels``."""
    if unit == "pixels":
        return f"{n / 1e6:.3g} megapixels" if n >= 1_000_000 else f"{n:,} pixels"
    if unit != "bytes":
        return f"{n:,} {unit}"
    for name, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {name}"
    return f"{n} bytes"


class NotRegular(MtlError):
    """A path that names a FIFO, device, socket or folder where a regular file is read."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(f"{path} is a {kind}, not a regular file")
        self.kind = kind


_KINDS = (
    (stat.S_ISDIR, "folder"),
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for binary reading, only if it is a regular file (a symlink to one is fine).

    Opened non-blocking and checked on the open descriptor, so a FIFO is refused at once instead of
    waiting for a writer, and nothing can swap the file between the check and the read. Raises
    :class:`NotRegular`, or ``OSError`` if it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(Path(path), next((k for test, k in _KINDS if test(mode)), "special file"))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # meaningless for a regular file; restores ordinary semantics
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(f: BinaryIO, cap: int) -> bytes | None:
    """All of ``f`` if it holds at most ``cap`` bytes, else ``None``: never more than ``cap + 1`` bytes
    are read, whatever the file (or an archive entry's declared size) claims."""
    chunks, size = [], 0
    while size <= cap:
        # In chunks: a buffered file's read(n) allocates n bytes up front, however short the file.
        chunk = f.read(min(cap + 1 - size, 1 << 20))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None
