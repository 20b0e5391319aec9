"""Files written all at once: a reader, or a crash, sees the old file or the new one, never a part.

Every file mtl writes (checkpoints, results, figures, CSVs, reports, configs, exports) goes through
:func:`atomic_write`: a temp file beside the target, fsynced, then renamed over it. The file gets the
mode a plain ``open()`` would give it (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``.
A full disk, a read-only file system or a missing permission ends in one :class:`MtlError` line that
names the file and says what is kept; the temp file is removed and the previous file is untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from mtl.errors import MtlError

__all__ = ["atomic_write", "current_umask", "write_text"]


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    # /proc/self/status shows it (Linux >= 4.7). The portable way, os.umask(x) then os.umask(old), sets
    # the mask for the whole process for an instant: a file another thread creates in that instant gets
    # the wrong mode. So that is only the fallback.
    with suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _TempFile:
    """The temp file as the writer sees it. It remembers the ``OSError`` a write raised, because some
    writers (``torch.save``) turn it into an exception of their own that no longer says "disk full"."""

    def __init__(self, raw: IO, path: Path) -> None:
        self._raw, self.path = raw, path  # the temp file's path (``raw.name`` is only its descriptor)
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._raw.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


@contextmanager
def atomic_write(
    path: Path, mode: str = "w", *, keep_previous: Path | None = None, what: str = "", **open_args: Any
) -> Iterator[IO]:
    """Yield a temp file beside ``path``; when the block ends it is flushed, fsynced and renamed over
    ``path`` (which first moves to ``keep_previous``, if given and present).

    On any error the temp file is removed and ``path`` is untouched; an ``OSError`` (full disk, read-only
    file system, no permission), also one that the writer turned into another exception, becomes one
    :class:`MtlError` line naming ``what`` and ``path`` and what is kept.
    """
    path = Path(path)
    kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"

    def failed(exc: OSError) -> MtlError:
        return MtlError(f"could not write {what}{path}: {_reason(exc)}; {kept}")

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise failed(exc) from None
    guarded: _TempFile | None = None
    try:
        with suppress(OSError):  # a file system without modes (FAT) keeps its own
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, **open_args) as raw:
            guarded = _TempFile(raw, Path(tmp))
            yield guarded  # type: ignore[misc]
            raw.flush()
            os.fsync(raw.fileno())
        _replace(Path(tmp), path, keep_previous)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise failed(exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        if guarded is not None and guarded.error is not None:
            raise failed(guarded.error) from None
        raise


def _replace(tmp: Path, path: Path, keep_previous: Path | None) -> None:
    """Rename ``tmp`` over ``path``, first moving ``path`` to ``keep_previous``; if the last rename
    fails, the moved file goes back, so ``path`` is never left missing."""
    moved = False
    if keep_previous is not None and path.exists():
        os.replace(path, keep_previous)
        moved = True
    try:
        os.replace(tmp, path)
    except OSError:
        if moved:
            with suppress(OSError):
                os.replace(keep_previous, path)
        raise


def write_text(path: Path, text: str) -> None:
    """``path.write_text(text)``, atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
