"""Files written all at once: a reader, or a crash, sees the old file or the new one, never a part."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mtl.errors import MtlError

__all__ = ["atomic_write", "write_text"]


@contextmanager
def atomic_write(
    path: Path, mode: str = "w", *, keep_previous: Path | None = None, what: str = "", **open_args: Any
) -> Iterator[IO]:
    """Yield a temp file beside ``path``; when the block ends it is flushed, fsynced and renamed over
    ``path`` (which first moves to ``keep_previous``, if given and present).

    On any error the temp file is removed and ``path`` is untouched; an ``OSError`` (full disk, no
    permission) becomes one :class:`MtlError` line naming ``what`` and ``path``.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise MtlError(f"could not write {what}{path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise MtlError(f"could not write {what}{path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """``path.write_text(text)``, atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
