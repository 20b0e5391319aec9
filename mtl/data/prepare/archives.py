"""Reading entries out of the archives datasets come in (zip, tar, npz) within :mod:`mtl.data.prepare.limits`.

An archive's declared sizes are checked before anything is unpacked (a 3 MB zip can declare a 3 GiB
entry of zeros), and reads stop at the limit whatever the sizes claim, since declared sizes can lie.
Entries are named by their number, never by their (untrusted) names.
"""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from mtl.data.prepare.limits import ARCHIVE_BYTES, ENTRY_BYTES, human, read_capped
from mtl.errors import MtlError

__all__ = ["UNPACK_ERRORS", "Budget", "check_npz_array", "check_zip_entry", "reason", "read_zip_entries"]

_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "LZMA",
}

try:
    from lzma import LZMAError
except ImportError:  # Python built without lzma: zipfile cannot unpack LZMA entries either
    LZMAError = zipfile.BadZipFile

# What unpacking a damaged archive raises (RuntimeError: zipfile's "encrypted", NotImplementedError:
# its "compression method not supported"), besides the MtlErrors of the checks here.
UNPACK_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    EOFError,
    zlib.error,
    LZMAError,
    NotImplementedError,
    RuntimeError,
)


def reason(exc: BaseException) -> str:
    """``exc`` for a one-line message, with anything quoted (an entry's name, i.e. the archive's own
    contents) left out."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "...", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Budget:
    """The bytes one archive may still unpack: each entry up to ``MTL_MAX_ENTRY_BYTES``, all of them
    together up to ``MTL_MAX_ARCHIVE_BYTES``."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.entry, self.total = ENTRY_BYTES.get(), ARCHIVE_BYTES.get()
        self.used = 0

    def charge(self, number: int, size: int, *, read: bool = True) -> None:
        """Count entry ``number`` (1-based) of ``size`` unpacked bytes; refuse it if over a limit.
        ``read=False``: an entry only passed over (a tar's unpacked on the way), which counts towards
        the archive's total only."""
        if read and size > self.entry:
            raise ENTRY_BYTES.refuse(f"{self.path}: entry {number} unpacks to", size, self.entry)
        if self.used + size > self.total:
            raise ARCHIVE_BYTES.refuse(f"{self.path}: its entries unpack to", self.used + size, self.total)
        self.used += size


def check_zip_entry(path: Path | str, number: int, info: zipfile.ZipInfo) -> None:
    """Refuse entry ``number`` (1-based) of the zip ``path`` if mtl cannot read it: encrypted, or
    compressed by a method Python's zipfile does not unpack."""
    if info.flag_bits & 0x1:
        raise MtlError(f"{path}: entry {number} is encrypted; mtl reads unencrypted archives only")
    if info.compress_type not in _METHODS:
        known = ", ".join(_METHODS.values())
        raise MtlError(
            f"{path}: entry {number} is compressed with method {info.compress_type}, which mtl cannot "
            f"unpack (it reads {known})"
        )


Entries = list[tuple[int, zipfile.ZipInfo]]  # (1-based number in the archive, its info)


def read_zip_entries(path: Path | str, z: zipfile.ZipFile, entries: Entries) -> list[bytes]:
    """The unpacked bytes of ``entries`` (``(number, info)`` pairs of the open zip ``z``), in order.

    Every entry is checked and its declared size charged before the first is unpacked; then each read
    stops one byte past what was declared (and zipfile's CRC check catches an entry cut short)."""
    budget = Budget(path)
    for number, info in entries:
        check_zip_entry(path, number, info)
        budget.charge(number, info.file_size)
    out = []
    for number, info in entries:
        with z.open(info) as f:
            data = read_capped(f, min(info.file_size, budget.entry))
        if data is None:  # zipfile itself stops at the declared size; this holds should it not
            raise MtlError(f"{path}: entry {number} unpacks to more than it declares; the archive is damaged")
        out.append(data)
    return out


def check_npz_array(path: Path | str, z: zipfile.ZipFile, key: str) -> None:
    """Refuse the array ``key`` of the ``.npz`` file ``path`` (open as the zip ``z``) if it is encrypted,
    unreadably compressed, or its header claims more bytes than its entry holds: numpy allocates what
    the header says before reading, so a lying header could ask for any amount of memory.

    The array itself is the dataset (tieredImageNet's train split is 9.5 GB), so no size limit applies
    beyond the entry's own declared size, which zipfile never reads past."""
    names = z.namelist()
    info = z.getinfo(f"{key}.npy")
    check_zip_entry(path, names.index(info.filename) + 1, info)
    fmt = np.lib.format
    with z.open(info) as f:
        version = fmt.read_magic(f)
        header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = header(f)
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > info.file_size:
        raise MtlError(
            f"{path}: the array {key!r} claims {human(claimed)} but its entry holds "
            f"{human(info.file_size)}; the file is corrupt"
        )
