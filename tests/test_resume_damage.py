"""A damaged ``last.pt`` never restarts a run silently, a run that starts over keeps the ``best.pt`` it
finds as ``best.prev.pt``, and a glyphs cache on a read-only disk is named as read-only.

Refusals end in exit status 2 with one ``error:`` line and leave every file as it was (the digests of
the checkpoints folder are compared)."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from conftest import PIPELINE, digests

from mtl.cli import main
from mtl.data.glyphs.dataset import ensure_glyphs
from mtl.data.prepare import disk
from mtl.errors import MtlError
from mtl.runtime import checkpoint
from mtl.training import resume


def stage(name: str, sets: list[str], ckpts: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [name, PIPELINE, *sets, *extra, "--checkpoints", str(ckpts)])
    return result.exit_code, result.output


def refused(code: int, output: str) -> str:
    """Exit 2, exactly one ``error:`` line, the last, no traceback; returns it without ``error: ``."""
    lines = output.strip().splitlines()
    assert code == 2, output
    assert "Traceback" not in output, output
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]], output
    assert lines[-1].startswith("error: "), output
    return lines[-1].removeprefix("error: ")


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def metric(path: Path, name: str) -> dict:
    return checkpoint.load(path, stage=name)["metric"]


# ------------------------------------------------------------------------------ a damaged last.pt


@pytest.mark.parametrize("name", ["pretrain", "metatrain"])
def test_a_truncated_last_pt_without_last_prev_pt_is_refused_and_changes_nothing(tiny_copy, name):
    sets, ckpts = tiny_copy
    out = ckpts / "tiny" / name
    (out / "last.prev.pt").unlink()
    truncate(out / "last.pt")
    best = metric(out / "best.pt", name)
    before = digests(ckpts)
    line = refused(*stage(name, sets, ckpts))
    assert line == (
        f"cannot resume {name}: {out / 'last.pt'} is not a readable mtl checkpoint (truncated or corrupt), "
        f"and there is no last.prev.pt to resume from; nothing was changed, best.pt (epoch "
        f"{best['epoch']}, val {best['val_acc']:.2f} ± {best['val_ci95']:.2f}%) is kept; run with --fresh "
        "to start over (best.pt is then kept as best.prev.pt)"
    )
    assert digests(ckpts) == before


@pytest.mark.parametrize("name", ["pretrain", "metatrain"])
def test_a_damaged_last_pt_and_last_prev_pt_are_both_named_and_nothing_changes(tiny_copy, name):
    sets, ckpts = tiny_copy
    out = ckpts / "tiny" / name
    truncate(out / "last.pt")
    (out / "last.prev.pt").write_bytes(b"")
    (out / "best.pt").unlink()  # and no best.pt either: the line says only that nothing changed
    before = digests(ckpts)
    line = refused(*stage(name, sets, ckpts))
    assert line == (
        f"cannot resume {name}: {out / 'last.pt'} is not a readable mtl checkpoint (truncated or corrupt); "
        f"{out / 'last.prev.pt'} is empty, not a {name} checkpoint; nothing was changed; run with --fresh "
        "to start over"
    )
    assert digests(ckpts) == before


@pytest.mark.parametrize("name", ["pretrain", "metatrain"])
def test_a_damaged_last_pt_with_a_good_last_prev_pt_resumes_from_it(tiny_copy, name):
    sets, ckpts = tiny_copy
    out = ckpts / "tiny" / name
    truncate(out / "last.pt", keep=0.3)
    code, output = stage(name, sets, ckpts)
    assert code == 0, output
    assert f"{out / 'last.pt'} is not a readable mtl checkpoint (truncated or corrupt); trying the " in output
    assert f"resuming from {out / 'last.prev.pt'} at epoch 2, step 0" in output
    assert checkpoint.load(out / "last.pt", stage=name)["resume"]["epoch"] == 2
    # The best.pt there is this training's own: a better one replaces it, none is set aside.
    assert not (out / "best.prev.pt").exists()


# ------------------------------------------------------------------- starting over keeps best.pt


@pytest.mark.parametrize(
    ("name", "shorter"), [("pretrain", "pretrain.epochs=1"), ("metatrain", "meta.epochs=1")]
)
def test_fresh_keeps_the_earlier_best_pt_as_best_prev_pt(tiny_copy, name, shorter):
    sets, ckpts = tiny_copy
    out = ckpts / "tiny" / name
    truncate(out / "last.pt")
    (out / "last.prev.pt").unlink()
    old, best = (out / "best.pt").read_bytes(), metric(out / "best.pt", name)
    code, output = stage(name, sets, ckpts, "--set", shorter, "--fresh")
    assert code == 0, output
    said = (
        f"--fresh: training from the start; best.pt (epoch {best['epoch']}, val {best['val_acc']:.2f} ± "
        f"{best['val_ci95']:.2f}%) is kept as best.prev.pt once this run writes its own"
    )
    assert said in output
    assert (out / "best.prev.pt").read_bytes() == old
    assert metric(out / "best.pt", name)["epoch"] <= 1  # the new run's own
    # A second --fresh says that it replaces that best.prev.pt.
    code, output = stage(name, sets, ckpts, "--set", shorter, "--fresh")
    assert code == 0 and "is kept as best.prev.pt (replacing the best.prev.pt there) once" in output, output


def test_a_run_with_no_last_pt_beside_a_best_pt_says_it_starts_over_and_keeps_it(tiny_copy):
    """As after ``mtl import``, or when last.pt was deleted to save space."""
    sets, ckpts = tiny_copy
    out = ckpts / "tiny" / "pretrain"
    (out / "last.pt").unlink()
    (out / "last.prev.pt").unlink()
    old = (out / "best.pt").read_bytes()
    code, output = stage("pretrain", sets, ckpts)
    assert code == 0, output
    assert re.search(
        rf"no last\.pt in {re.escape(str(out))}: training from the start; best\.pt \(epoch 2, val [\d.]+ ± "
        r"[\d.]+%\) is kept as best\.prev\.pt once this run writes its own",
        output,
    ), output
    assert (out / "best.prev.pt").read_bytes() == old


def test_a_resumed_run_that_had_not_kept_a_best_pt_yet_keeps_the_earlier_one(tiny_copy):
    """A --fresh run stopped before the end of its first epoch resumes: the best.pt in the folder is still
    the earlier training's, so its first best.pt sets that one aside too."""
    sets, ckpts = tiny_copy
    out = ckpts / "tiny" / "pretrain"
    old = (out / "best.pt").read_bytes()
    ckpt = torch.load(out / "last.prev.pt", weights_only=True)  # epoch 1 done; pretend none was kept
    ckpt["resume"]["best"] = {"val_acc": -1.0, "val_ci95": 0.0, "epoch": -1}
    checkpoint.save(out / "last.pt", ckpt)
    (out / "last.prev.pt").unlink()
    code, output = stage("pretrain", sets, ckpts)
    assert code == 0, output
    assert f"resuming from {out / 'last.pt'} at epoch 2, step 0" in output
    assert (out / "best.prev.pt").read_bytes() == old
    assert metric(out / "best.pt", "pretrain")["epoch"] == 2


def test_whose_best_pt_it_is_after_a_resume(tmp_path):
    run = SimpleNamespace(out=tmp_path, own_best=False)
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    last.write_bytes(b"x")
    resume.settle_best(run, last, {"val_acc": 40.0})
    assert run.own_best  # the training had kept one: it is the folder's
    best.write_bytes(b"x")
    os.utime(best, ns=(1_000_000_000, 1_000_000_000))
    os.utime(last, ns=(2_000_000_000, 2_000_000_000))
    resume.settle_best(run, last, {"val_acc": -1.0})
    assert not run.own_best  # older than the checkpoint resumed from: an earlier training's
    os.utime(best, ns=(3_000_000_000, 3_000_000_000))
    resume.settle_best(run, last, {"val_acc": -1.0})
    assert run.own_best  # written after it: the run stopped between best.pt and last.pt


# ------------------------------------------------------------------ the glyphs cache, read-only

GLYPHS = dict(classes=10, images_per_class=3, image_size=16, channels=1, preset="easy", seed=0)


def read_only_below(monkeypatch, folder: Path) -> None:
    """``os.statvfs`` reports the file system of ``folder`` (and below) as mounted read-only, with no
    free space, as a read-only mount often does; elsewhere it answers as usual."""
    real_statvfs, real_usage = os.statvfs, disk.shutil.disk_usage

    def statvfs(path):
        real = real_statvfs(path)
        if Path(os.fsdecode(path)).is_relative_to(folder):
            return SimpleNamespace(f_frsize=real.f_frsize, f_bsize=real.f_bsize, f_flag=os.ST_RDONLY)
        return real

    def disk_usage(path):
        if Path(os.fsdecode(path)).is_relative_to(folder):
            return SimpleNamespace(total=0, used=0, free=0)
        return real_usage(path)

    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.setattr(disk.shutil, "disk_usage", disk_usage)


def probe_fails_below(monkeypatch, folder: Path, code: int) -> None:
    """Making a file in ``folder`` fails with ``code``, as a mount that the flags do not show read-only."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).is_relative_to(folder):
            raise OSError(code, os.strerror(code))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("how", ["mount flag", "probe"])
def test_a_glyphs_cache_on_a_read_only_disk_is_named_read_only(tiny_overrides, tmp_path, monkeypatch, how):
    root = tmp_path / "data"  # the --set data.root of tiny_overrides
    root.mkdir()
    if how == "mount flag":
        read_only_below(monkeypatch, root)
    else:
        probe_fails_below(monkeypatch, root, errno.EROFS)
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    ckpts = tmp_path / "ckpts"
    line = refused(*stage("pretrain", sets, ckpts))
    assert line == (
        f"cannot write the glyphs dataset cache: {root} is read-only; nothing was written; "
        "use --set data.root=DIR with a writable folder"
    )
    assert list(root.iterdir()) == []
    assert not ckpts.exists() or [p for p in ckpts.rglob("*") if p.is_file()] == []


def test_a_glyphs_cache_below_a_read_only_folder_names_that_folder(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only_below(monkeypatch, ro)
    with pytest.raises(MtlError) as err:
        ensure_glyphs(ro / "a" / "b", **GLYPHS)
    assert str(err.value) == (
        f"cannot write the glyphs dataset cache: {ro / 'a' / 'b'} cannot be made, {ro} is read-only; nothing "
        "was written; use --set data.root=DIR with a writable folder"
    )
    assert list(ro.iterdir()) == []


def test_a_glyphs_cache_in_a_folder_without_write_permission_says_so(tmp_path, monkeypatch):
    probe_fails_below(monkeypatch, tmp_path, errno.EACCES)
    with pytest.raises(MtlError, match=r"^cannot write the glyphs dataset cache: .* is not writable "):
        ensure_glyphs(tmp_path, **GLYPHS)
    assert list(tmp_path.iterdir()) == []


def test_the_space_check_names_a_read_only_file_system_rather_than_no_room(tmp_path, monkeypatch):
    read_only_below(monkeypatch, tmp_path)
    with pytest.raises(MtlError) as err:
        disk.check_space(tmp_path, 1_000_000)
    assert str(err.value) == f"cannot write in {tmp_path}: a read-only file system; nothing was written"
