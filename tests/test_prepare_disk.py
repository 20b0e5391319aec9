"""`mtl data prepare` and the glyphs cache on a disk that is full, read-only or unreadable, and stopped by
a signal: one line (exit 2, or 128 + signal), no hidden folder left behind, an earlier dataset intact.

A full disk is injected at the write calls (``posix_fallocate``, the file writes, ``np.save``), so these
tests run on any machine and as any user; where real permissions matter, the test checks them for real
when not run as root (root reads and writes regardless) and through an injected error always.
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY
from fakes import pattern_images, write_image

from mtl.cli import main
from mtl.data.glyphs.dataset import ensure_glyphs
from mtl.data.prepared import load_manifest
from mtl.errors import MtlError

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def own_images(root: Path, classes: int = 10, per_class: int = 4) -> Path:
    for c in range(classes):
        for i, img in enumerate(pattern_images(per_class, 24, seed=c)):
            write_image(root / f"class_{c}" / f"{i}.png", img)
    return root


def prepare_cli(tmp_path: Path, *options):
    """``mtl data prepare folder`` of ``tmp_path/own`` into ``tmp_path/prep``, one worker."""
    dest = tmp_path / "prep"
    return invoke(
        "data", "prepare", "folder", "--source", tmp_path / "own", "--dest", dest, "--workers", 1, *options
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture
def earlier(tmp_path: Path) -> dict[str, bytes]:
    """A source in ``tmp_path/own`` and an earlier prepared dataset of it in ``tmp_path/prep``."""
    own_images(tmp_path / "own")
    assert prepare_cli(tmp_path).exit_code == 0
    return snapshot(tmp_path / "prep")


class FullDisk:
    """``open`` for a module under test: a file whose name ends with ``suffix``, opened for writing,
    fails the first write that goes past ``allow`` bytes with ``err`` (what a full disk does)."""

    def __init__(self, suffix: str, allow: int = 0, err: int = errno.ENOSPC) -> None:
        self.suffix, self.allow, self.err = suffix, allow, err

    def __call__(self, file, mode: str = "r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)  # noqa: SIM115 (returned, closed by the caller)
        return _Failing(f, self) if "w" in mode and str(file).endswith(self.suffix) else f


class _Failing:
    def __init__(self, f, spec: FullDisk) -> None:
        self.f, self.left, self.err = f, spec.allow, spec.err

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n > self.left:
            raise OSError(self.err, os.strerror(self.err))
        self.left -= n
        return self.f.write(data)

    def __getattr__(self, name: str):
        return getattr(self.f, name)

    def __enter__(self) -> _Failing:
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def eopnotsupp(*args, **kwargs):  # posix_fallocate on a file system that cannot preallocate
    raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


# --- space -----------------------------------------------------------------------------------------------


def test_no_room_is_refused_before_any_work_and_counts_the_dataset_it_replaces(
    tmp_path, earlier, monkeypatch
):
    monkeypatch.setattr("shutil.disk_usage", lambda path: SimpleNamespace(free=100_000))
    line = one_error_line(prepare_cli(tmp_path))
    dest = tmp_path / "prep"
    assert re.fullmatch(
        rf"error: {re.escape(str(tmp_path))}: the prepared dataset needs 0\.8 MB, only 0\.1 MB are free "
        rf"\(the earlier dataset in {re.escape(str(dest))}, 0\.\d MB, stays until the new one is complete\)",
        line,
    ), line
    assert snapshot(dest) == earlier and hidden(tmp_path) == []


def test_the_space_estimate_covers_every_file_the_dataset_takes(tmp_path, monkeypatch):
    own_images(tmp_path / "own")
    assert prepare_cli(tmp_path).exit_code == 0
    dest = tmp_path / "prep"
    taken = sum(p.stat().st_blocks * 512 for p in [dest, *dest.iterdir()])  # allocated, not apparent
    (tmp_path / "again").mkdir()
    again = ["data", "prepare", "folder", "--source", tmp_path / "own", "--workers", 1]
    monkeypatch.setattr("shutil.disk_usage", lambda path: SimpleNamespace(free=taken - 1))
    line = one_error_line(invoke(*again, "--dest", tmp_path / "again" / "a"))
    assert "the prepared dataset needs" in line  # it would not have fit: refused before any work
    monkeypatch.setattr("shutil.disk_usage", lambda path: SimpleNamespace(free=taken + 64 * 4096))
    assert invoke(*again, "--dest", tmp_path / "again" / "b").exit_code == 0  # the estimate is not wild


# --- a disk that fills up while writing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["preallocation", "image write", "labels", "class names", "manifest", "read-only at write"]
)
def test_a_write_that_fails_is_one_line_naming_the_file_and_the_earlier_dataset_stays(
    tmp_path, earlier, monkeypatch, where
):
    file, reason = "train_images.npy", "No space left on device"
    if where == "preallocation":
        monkeypatch.setattr(os, "posix_fallocate", enospc, raising=False)
    elif where in ("image write", "read-only at write"):
        # A file system that cannot preallocate: the first image's write() finds the disk full.
        monkeypatch.setattr(os, "posix_fallocate", eopnotsupp, raising=False)
        err = errno.EROFS if where == "read-only at write" else errno.ENOSPC
        reason = os.strerror(err)
        monkeypatch.setattr(
            "mtl.data.prepare.preparation.open", FullDisk("_images.npy", allow=128, err=err), raising=False
        )
    elif where == "labels":
        file = "train_labels.npy"
        real = np.save
        monkeypatch.setattr(
            np, "save", lambda path, a, **k: enospc() if "labels" in str(path) else real(path, a, **k)
        )
    else:
        file = "manifest.json" if where == "manifest" else "train_classes.json"
        monkeypatch.setattr("mtl.data.prepared.open", FullDisk(file), raising=False)
    dest = tmp_path / "prep"
    line = one_error_line(prepare_cli(tmp_path))
    assert line == f"error: could not write {dest / file}: {reason}; the earlier dataset in {dest} is intact"
    assert snapshot(dest) == earlier
    assert hidden(tmp_path) == []


def test_a_full_disk_on_a_new_destination_leaves_nothing(tmp_path, monkeypatch):
    own_images(tmp_path / "own")
    monkeypatch.setattr(os, "posix_fallocate", enospc, raising=False)
    line = one_error_line(prepare_cli(tmp_path))
    dest = tmp_path / "prep"
    written = dest / "train_images.npy"
    assert line == f"error: could not write {written}: No space left on device; nothing was written to {dest}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own"]


# --- read-only and unreadable places ---------------------------------------------------------------------


def test_a_read_only_parent_is_refused_before_any_work(tmp_path, monkeypatch):
    own_images(tmp_path / "own")
    parent = tmp_path / "ro"
    parent.mkdir()
    dest = [
        "data",
        "prepare",
        "folder",
        "--source",
        tmp_path / "own",
        "--dest",
        parent / "prep",
        "--workers",
        1,
    ]
    parent.chmod(0o555)
    try:
        real = invoke(*dest)
    finally:
        parent.chmod(0o755)
    expected = f"error: cannot write in {parent}: permission denied; nothing was written"
    if ROOT:  # root writes anyway: the dataset is there
        assert real.exit_code == 0, real.output
    else:
        assert one_error_line(real) == expected and list(parent.iterdir()) == []
    # The same refusal however the test runs, through what the check asks the system.
    monkeypatch.setattr(os, "access", lambda path, mode: not (mode & os.W_OK and Path(path) == parent))
    assert one_error_line(invoke(*dest[:6], parent / "other", "--workers", 1)) == expected


def test_a_read_only_file_system_and_a_read_only_destination_are_named(tmp_path, earlier, monkeypatch):
    dest = tmp_path / "prep"
    # Only writing is denied (click checks that --dest is readable).
    monkeypatch.setattr(os, "access", lambda path, mode: not (mode & os.W_OK and Path(path) == dest))
    line = one_error_line(prepare_cli(tmp_path))
    assert line == f"error: cannot replace the dataset in {dest}: permission denied; it is left as it was"
    monkeypatch.setattr(os, "access", lambda path, mode: not (mode & os.W_OK and Path(path) == tmp_path))
    real_statvfs = os.statvfs

    def read_only(path):
        return SimpleNamespace(f_frsize=real_statvfs(path).f_frsize, f_bsize=4096, f_flag=os.ST_RDONLY)

    monkeypatch.setattr(os, "statvfs", read_only)
    line = one_error_line(prepare_cli(tmp_path))
    assert line == f"error: cannot write in {tmp_path}: a read-only file system; nothing was written"
    assert snapshot(dest) == earlier and hidden(tmp_path) == []


def test_a_file_system_turning_read_only_before_the_temporary_folder_is_made(tmp_path, earlier, monkeypatch):
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name.startswith(".prep.tmp-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    dest = tmp_path / "prep"
    line = one_error_line(prepare_cli(tmp_path))
    assert (
        line
        == f"error: could not write {dest}: Read-only file system; the earlier dataset in {dest} is intact"
    )
    assert snapshot(dest) == earlier and hidden(tmp_path) == []


def test_an_unreadable_class_folder_is_one_line(tmp_path, monkeypatch):
    own = own_images(tmp_path / "own")
    locked = own / "class_3"
    locked.chmod(0)
    try:
        real = prepare_cli(tmp_path)
    finally:
        locked.chmod(0o755)
    expected = f"error: {locked}: cannot read the folder (Permission denied)"
    if ROOT:
        assert real.exit_code == 0, real.output  # root reads it anyway
    else:
        assert one_error_line(real) == expected
    real_iterdir = pathlib.Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_iterdir(self)

    monkeypatch.setattr(pathlib.Path, "iterdir", iterdir)
    assert (
        one_error_line(invoke("data", "prepare", "folder", "--source", own, "--dest", tmp_path / "x"))
        == expected
    )
    assert not (tmp_path / "x").exists()


def test_an_unreadable_image_is_one_line(tmp_path, monkeypatch):
    own = own_images(tmp_path / "own")
    locked = own / "class_5" / "2.png"
    locked.chmod(0)
    try:
        real = prepare_cli(tmp_path)
    finally:
        locked.chmod(0o644)
    expected = (
        f"error: {locked}: cannot decode image (cannot read it: Permission denied); --skip-bad skips these"
    )
    if ROOT:
        assert real.exit_code == 0, real.output
    else:
        assert one_error_line(real) == expected
    import mtl.data.prepare.images as images

    real_open = images.open_regular

    def open_regular(path):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path)

    monkeypatch.setattr(images, "open_regular", open_regular)
    assert one_error_line(prepare_cli(tmp_path, "--image-size", 16)) == expected


# --- stop signals ------------------------------------------------------------------------------------------

_STALL = """
import pathlib, sys, time
import mtl.data.prepare.preparation as prepare

def stall(*args, **kwargs):  # the first image: say so, then wait for the signal
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(3600)

prepare.to_pixels = stall
from mtl.cli import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize(
    ("signum", "workers"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)],
    ids=["TERM", "INT", "TERM pool"],
)
def test_a_stop_signal_removes_the_temporary_folder_and_keeps_the_earlier_dataset(tmp_path, signum, workers):
    per_class = 210 if workers > 1 else 4  # 2,100 images: decoded by worker processes
    own_images(tmp_path / "own", per_class=per_class)
    dest = tmp_path / "prep"
    assert prepare_cli(tmp_path, "--image-size", 8).exit_code == 0
    before = snapshot(dest)
    marker = tmp_path / "decoding"
    args = ["data", "prepare", "folder", "--source", tmp_path / "own", "--dest", dest, "--workers", workers]
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALL, str(marker), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and marker.exists(), proc.communicate()
        assert hidden(tmp_path) == [f".prep.tmp-{proc.pid}"]  # mid-write
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert err.strip().splitlines() == [
        f"mtl data prepare stopped by {name}; its temporary folder is removed and the earlier dataset in "
        f"{dest} is intact"
    ]
    assert snapshot(dest) == before and hidden(tmp_path) == []


# --- the glyphs cache (written under data.root on first use) -------------------------------------------

GLYPHS = dict(classes=10, images_per_class=3, image_size=16, channels=1, preset="easy", seed=0)


@pytest.mark.parametrize("failure", ["full", "read-only"])
def test_the_glyphs_cache_on_a_full_or_read_only_disk_is_one_line(tmp_path, monkeypatch, failure):
    real_save, real_mkdir = np.save, pathlib.Path.mkdir
    if failure == "full":
        monkeypatch.setattr(
            np, "save", lambda p, a, **k: enospc() if str(p).endswith("_images.npy") else real_save(p, a, **k)
        )
        reason = " (train_images.npy): No space left on device"
    else:

        def mkdir(self, *args, **kwargs):
            if ".tmp-" in self.name:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
        reason = ": Read-only file system"
    dest = tmp_path / "cache" / "glyphs-easy-c10-n3-s16-ch1-seed0"
    with pytest.raises(MtlError) as err:
        ensure_glyphs(tmp_path / "cache", **GLYPHS)
    assert str(err.value) == (
        f"could not write the glyphs dataset cache {dest}{reason}; set data.root to a writable folder with "
        "room for it"
    )
    assert list((tmp_path / "cache").iterdir()) == []
    # Through a stage, where the user meets it.
    sets = [a for o in [*TINY, f"data.root={tmp_path / 'data'}"] for a in ("--set", o)]
    result = invoke("pretrain", "pipelines/glyphs-1shot.yaml", *sets, "--checkpoints", tmp_path / "ckpts")
    line = one_error_line(result)
    assert line.startswith(f"error: could not write the glyphs dataset cache {tmp_path / 'data'}/glyphs-"), (
        line
    )
    assert list((tmp_path / "data").iterdir()) == []


def test_a_valid_glyphs_cache_on_a_read_only_disk_is_used_as_it_is(tmp_path, monkeypatch):
    dest = ensure_glyphs(tmp_path, **GLYPHS)
    before = snapshot(dest)
    monkeypatch.setattr(np, "save", enospc)  # any write would fail
    assert ensure_glyphs(tmp_path, **GLYPHS) == dest
    assert snapshot(dest) == before and load_manifest(dest)["glyphs"]["seed"] == 0
