"""One process at a time in a run folder: an advisory lock on ``<folder>/.mtl.lock`` that holds the
holder's process id and host name.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on that file. The kernel drops it when the holder exits in any
way, SIGKILL included, so a run never waits on a dead one. The file itself is removed when the lock is
released; one left behind (its process was killed) is taken over with a note naming that process. A
second run into a held folder stops at once, in one line naming the holder's process id.

Locks are re-entrant within a process: ``mtl ablate`` holds its ``ablation`` folder while its
meta-training runs take their own sub-folders, and its scoring takes the ``ablation`` folder again.

Across the nodes of a cluster the lock is as good as the shared filesystem's ``flock``: NFSv4, Lustre
mounted with ``flock``, GPFS and BeeGFS lock for every node; a filesystem that locks per node only
(Lustre's ``localflock``) lets two nodes both hold it. The messages name the holder's host where it
is another one. :func:`exclusive` is the waiting kind, for work any process may do once for all (the
glyphs dataset cache).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from mtl.errors import MtlError

__all__ = ["LOCK_NAME", "RunLock", "acquire", "exclusive"]

LOCK_NAME = ".mtl.lock"


@dataclass
class RunLock:
    """A held lock on ``folder``; :meth:`release` as many times as :func:`acquire` returned it."""

    folder: Path
    fd: int
    created: list[Path] = field(default_factory=list)  # folders made to hold the lock, outermost first
    stale: str | None = None  # the process whose left-behind lock file this one took over
    count: int = 1

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def release(self) -> None:
        """Give the lock up; the last release removes the file, and the folders made for it if empty."""
        self.count -= 1
        if self.count > 0 or _HELD.get(self.folder) is not self:
            return
        del _HELD[self.folder]
        # Removed while still locked: a process that opened the file before the unlink finds, once it
        # gets the lock, that the path no longer names its file, and starts over (see _lock_file).
        with suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        for folder in reversed(self.created):  # a run that wrote nothing leaves no empty folders
            with suppress(OSError):
                folder.rmdir()


_HELD: dict[Path, RunLock] = {}


def acquire(folder: Path) -> RunLock:
    """Hold ``folder`` (made if missing) for this process, or raise one line naming the holder."""
    folder = Path(os.path.abspath(folder))
    if (held := _HELD.get(folder)) is not None:
        held.count += 1
        return held
    created = _make_folders(folder)
    try:
        fd, stale = _lock_file(folder)
    except BaseException:
        for made in reversed(created):
            with suppress(OSError):
                made.rmdir()
        raise
    lock = _HELD[folder] = RunLock(folder, fd, created, stale)
    return lock


def _make_folders(folder: Path) -> list[Path]:
    missing = []
    at = folder
    while not at.exists():
        missing.append(at)
        at = at.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MtlError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    return list(reversed(missing))


def _lock_file(folder: Path) -> tuple[int, str | None]:
    """``(fd, stale holder)`` of the locked lock file, our pid and host written in it."""
    path = folder / LOCK_NAME
    for _ in range(100):  # each retry means a holder released in between: rare, and short
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # the umask applies
        except OSError as exc:
            raise MtlError(f"cannot write to {folder}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise MtlError(
                f"{folder} is in use by another mtl run (process {holder}); wait for it to end or stop "
                "it, or give this run another name or --checkpoints"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise MtlError(f"cannot lock {path}: {exc.strerror or exc}") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder we raced with removed the file on release: lock the current one
    else:
        raise MtlError(f"cannot lock {path}: it keeps being replaced")
    stale = _holder_of(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise MtlError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    return fd, stale if stale not in (None, str(os.getpid())) else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _holder_of(fd: int) -> str | None:
    """The process written in the lock file, if any (a short file of our own format): its id, then
    ``on <host>`` where the host is not this one (a node of a cluster sharing the filesystem)."""
    try:
        pid, _, host = os.pread(fd, 300, 0).decode("ascii").strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        return None
    if not pid.isdigit():
        return None
    return pid if host in ("", socket.gethostname()) or not host.isprintable() else f"{pid} on {host}"


def _holder(fd: int) -> str:
    """The holder's process; it writes it just after locking, so wait briefly for it."""
    for _ in range(20):
        if (holder := _holder_of(fd)) is not None:
            return holder
        time.sleep(0.05)
    return "id unknown"


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an ``flock`` on the file ``path`` (made, then removed at the end), waiting while another
    process holds it: work that one process does for all, as the others wait and then find it done."""
    for _ in range(100):  # as in _lock_file: a holder that removed the file on release means retry
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise MtlError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            raise MtlError(f"cannot lock {path}: {exc.strerror or exc}") from None
        if _same_file(fd, path):
            break
        os.close(fd)
    else:
        raise MtlError(f"cannot lock {path}: it keeps being replaced")
    try:
        yield
    finally:
        with suppress(OSError):
            path.unlink()
        os.close(fd)


@atexit.register
def _release_all() -> None:
    """A process that ends without releasing (sys.exit in a stage) removes its lock files all the same."""
    for lock in list(_HELD.values()):
        lock.count = 1
        lock.release()
