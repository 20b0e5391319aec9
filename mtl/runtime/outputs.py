"""What a command may write over. Every output option is checked here, before any work is done.

The same four rules hold for every command:

1. **No output is one of the command's inputs**: not the same file (also through a symbolic or a
   hard link), not a folder it reads, and, for a folder written whole, not a folder that holds an
   input or lies inside one.
2. **Run folders belong to the stages.** Nothing but a stage (and ``mtl import``, which writes the
   ``best.pt`` a stage would) writes inside ``<checkpoints>/<run>/``, recognised by a stage folder
   holding a checkpoint or results: its checkpoints, results and curves are never replaced by
   another command's output.
3. **An existing file is replaced only by the same kind of file**, one this output wrote earlier
   (recognised by its first bytes, or a checkpoint by its stage); a folder written whole only by an
   earlier folder of its kind. Anything else is left as it is and the command stops.
4. **Two outputs of one command never land on the same path.**

A refusal is one :class:`MtlError` line naming the option, the path and what it is, and nothing has
been written yet. The options, what each may replace, and where its kind is defined:

=====================  ===========================================  ==================================
option                 may replace                                  kind
=====================  ===========================================  ==================================
adapt ``--out``        a predictions CSV (and its confusion matrix)  :mod:`mtl.inference.predictions`
adapt ``--save``       a classifier checkpoint (``adapt --save``)    :mod:`mtl.inference.classifier`
predict ``--out``      a predictions CSV (and its confusion matrix)  :mod:`mtl.inference.predictions`
report ``--out``       a report table (``| method |`` ...)           :mod:`mtl.results.report`
report ``--plot``      the PNG figures of the same names             :mod:`mtl.results.plots`
export ``OUT``         with ``--force``, an earlier export folder    :mod:`mtl.weights.export`
import                 with ``--force``, the stage's ``best.pt``     :mod:`mtl.weights.importer`
data prepare --dest    a prepared dataset folder                     :mod:`mtl.data.prepared`
bench ``--out``        a benchmark JSON                              :mod:`mtl.bench.benchmark`
=====================  ===========================================  ==================================
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from mtl.errors import MtlError
from mtl.runtime.stage_folders import CHECKPOINT_FILE, FOLDERS, RESULTS_FILE

__all__ = [
    "Input",
    "Kind",
    "check_file",
    "check_folder",
    "check_not_input",
    "check_run_folder",
    "nearest_folder",
    "read_only",
    "run_folder",
    "starts_with",
    "unwritable",
]

# What a stage folder holds once its stage has run (``best.prev.pt``: the best.pt a --fresh run set aside).
STAGE_FILES = (CHECKPOINT_FILE, "best.prev.pt", "last.pt", "last.prev.pt", RESULTS_FILE)


@dataclass(frozen=True)
class Input:
    """A file or folder a command reads, and how its command line names it (``--checkpoint``)."""

    option: str
    path: Path


@dataclass(frozen=True)
class Kind:
    """What an output writes (``"a predictions CSV"``) and how an earlier one is recognised."""

    what: str
    recognise: Callable[[Path], bool]


def starts_with(what: str, *prefixes: bytes) -> Kind:
    """A kind of file recognised by its first bytes: a regular file that begins with one of
    ``prefixes`` (a file that cannot be read is not recognised)."""

    def recognise(path: Path) -> bool:
        return _head(path, max(map(len, prefixes))).startswith(prefixes)

    return Kind(what, recognise)


def run_folder(path: Path) -> Path | None:
    """The run folder (``<checkpoints>/<run>/``) that ``path`` is or lies in, if any: the nearest
    folder, ``path`` included, with a stage folder holding a checkpoint or results."""
    for folder in (path, *path.parents):
        if any((folder / s.folder / name).is_file() for s in FOLDERS for name in STAGE_FILES):
            return folder
    return None


def check_run_folder(option: str, out: Path) -> None:
    """Rule 2: refuse an ``out`` in (or that is) a run folder, which only the stages write."""
    if (run := run_folder(_resolved(out))) is not None:
        where = "is the run folder" if run == _resolved(out) else f"is inside the run folder {run}"
        raise MtlError(
            f"{option} {out} {where}, which only mtl's stages write (checkpoints, results, curves); "
            "choose a path outside it"
        )


def check_file(
    option: str,
    out: Path,
    kind: Kind,
    *,
    inputs: Iterable[Input] = (),
    others: Sequence[Input] = (),
    example: str = "",
    make_folder: bool = False,
) -> Path:
    """Refuse a file output ``out`` that breaks a rule (see the module's docstring) or cannot be
    written; ``others``: the command's other outputs, ``example``: a file name suggested when ``out``
    is a folder, ``make_folder``: a missing folder will be made. Returns ``out``."""
    inputs = list(inputs)
    check_not_input(option, out, inputs, whole=False)
    check_run_folder(option, out)
    for other in others:
        if _same(out, other.path):
            raise MtlError(f"{option} {out} is also {other.option}; give the two outputs different paths")
    if out.is_dir():
        example = f" such as {out / example}" if example else ""
        raise MtlError(f"{option} {out} is a folder; give a file name{example}")
    if (out.exists() or out.is_symlink()) and not kind.recognise(out):
        inside = next((i for i in inputs if i.path.is_dir() and _inside(out, i.path)), None)
        where = f"a file in the {inside.option} folder it reads" if inside else "an existing file"
        raise MtlError(
            f"{option} {out} is {where}, not {kind.what}{_what_is(out)}; it is left as it is: "
            "choose another path"
        )
    _probe(option, out, make_folder)
    return out


def _probe(option: str, out: Path, make_folder: bool) -> None:
    """Fail before any work if ``out`` cannot be written (:func:`unwritable`). ``make_folder``: the
    nearest existing folder is probed."""
    folder = nearest_folder(out.parent) if make_folder else out.parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise MtlError(f"{option} {out}: {folder} {problem}")
    if (why := unwritable(folder)) is not None:
        raise MtlError(f"{option} {out}: {folder} is {why}")


def nearest_folder(path: Path) -> Path:
    """``path``, or the nearest folder above it that exists (where a missing one would be made)."""
    with suppress(OSError):  # a name too long, a loop of links: the caller's check says so
        while not path.exists() and path != path.parent:
            path = path.parent
    return path


def read_only(folder: Path) -> bool:
    """Whether ``folder`` is on a file system mounted read-only (a system that cannot tell: no)."""
    try:
        return bool(os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 0))
    except OSError:
        return False


def unwritable(folder: Path) -> str | None:
    """Why no file can be made in the existing folder ``folder`` (``"read-only"``, ``"not writable
    (permission denied)"``, ...), or None. A probe file, made and removed at once, tells the truth:
    ``os.access`` says yes to root even on a read-only mount."""
    if read_only(folder):
        return "read-only"
    try:
        fd, probe = tempfile.mkstemp(prefix=".mtl-write-check.", suffix=".probe", dir=folder)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return "read-only"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "not writable (permission denied)"
        return f"not writable ({exc.strerror or exc})"
    os.close(fd)
    with suppress(OSError):
        os.unlink(probe)
    return None


def check_folder(
    option: str, out: Path, *, inputs: Iterable[Input] = (), whole: Kind | None = None, holds: str = ""
) -> Path:
    """Refuse a folder output ``out`` that breaks a rule. ``whole``: the folder is replaced as one
    (an existing one must be of that kind, and it may not hold or lie in an input); ``None``: files
    are added to it (their own kinds are checked by :func:`check_file`); ``holds``: what goes in it,
    for the message when ``out`` is a file. Returns ``out``."""
    check_run_folder(option, out)
    check_not_input(option, out, list(inputs), whole=whole is not None)
    if out.exists() and not out.is_dir():
        raise MtlError(f"{option} {out} is a file; give a folder" + (f" for {holds}" if holds else ""))
    if whole is not None and out.exists() and not whole.recognise(out):
        raise MtlError(
            f"{option} {out} is a folder but not {whole.what}{_holding(out)}; it is left as it is: "
            "choose a new folder"
        )
    return out


def check_not_input(option: str, out: Path, inputs: list[Input], *, whole: bool) -> None:
    """Rule 1: ``out`` is none of ``inputs``; written ``whole``, it neither holds nor lies in one."""
    for i in inputs:
        if _same(out, i.path):
            what = "folder" if i.path.is_dir() else "file"
            raise MtlError(f"{option} {out} is the {i.option} {what} it reads; choose another path")
        if whole and _inside(i.path, out):
            raise MtlError(f"{option} {out} holds {i.option} {i.path}, which it reads; choose another folder")
        if whole and i.path.is_dir() and _inside(out, i.path):
            raise MtlError(
                f"{option} {out} is inside {i.option} {i.path}, which it reads; choose another folder"
            )


def _resolved(path: Path) -> Path:
    """``path`` with ``~``, symbolic links and ``..`` resolved, as far as it exists."""
    return Path(os.path.realpath(path.expanduser()))


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (a hard link counts)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _resolved(a) == _resolved(b)


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies strictly inside ``folder``."""
    return _resolved(folder) in _resolved(path).parents


def _what_is(path: Path) -> str:
    """`` (it is ...)`` where mtl can tell: one of its checkpoints, or a stage's file."""
    if _head(path, 2) == b"PK":  # only then is torch worth importing
        from mtl.runtime.checkpoint import stage_of

        if (stage := stage_of(path)) is not None:
            return f" (it is a {stage} checkpoint)"
    return f" (it is a stage's {path.name})" if path.name in STAGE_FILES else ""


def _head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of a regular file; ``b""`` for anything else (a FIFO is not opened:
    that would wait for a writer) or what cannot be read."""
    try:
        if not path.is_file():
            return b""
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _holding(folder: Path) -> str:
    """`` (it holds 'x')``: the first entry of ``folder``, where it can be listed."""
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return ""
    return f" (it holds {names[0]!r})" if names else ""
