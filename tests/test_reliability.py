"""Reliability as a careless or hostile user meets it: a full disk mid-write, the umask, NaN and
infinite settings, run names that climb out of the checkpoints folder, TensorBoard folders that cannot
be written, a run that fell back to ``last.prev.pt``. Each mistake ends in one line and exit status 2,
without a traceback, and leaves a finished run's files exactly as they were. (Hand-made checkpoints,
results and pipeline files: test_hand_made_inputs.py.)"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import finished_run

from mtl import config
from mtl.cli import key_reference, main
from mtl.errors import MtlError
from mtl.runtime import atomic
from mtl.runtime.monitor import Monitor

PIPELINE = "pipelines/glyphs-1shot.yaml"
SECRET = "SECRET-CONTENT-42"  # planted in refused files: no message may quote it


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished tiny run (all three stages) and the ``--set`` arguments that made it."""
    root = tmp_path_factory.mktemp("reliable")
    sets, ckpts = finished_run(root)
    return root, sets, ckpts


@pytest.fixture
def run(done, tmp_path):
    """A copy of the finished run that a test may damage: ``(sets, checkpoints folder)``."""
    _, sets, ckpts = done
    copy = tmp_path / "ckpts"
    shutil.copytree(ckpts, copy)
    return sets, copy


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None): what a failed command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def refused(code: int, output: str, pattern: str) -> str:
    """Exit 2, one ``error:`` line matching ``pattern``, no traceback; returns the line."""
    lines = output.strip().splitlines()
    assert code == 2, output
    assert "Traceback" not in output, output
    assert lines and lines[-1].startswith("error: "), output
    assert sum("error: " in line for line in lines) == 1, output
    assert re.search(pattern, lines[-1]), lines[-1]
    return lines[-1]


def stage(name: str, sets: list[str], ckpts: Path, *extra: str) -> tuple[int, str]:
    return cli(name, PIPELINE, *sets, *extra, "--checkpoints", ckpts)


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".probe"))]


# ----------------------------------------------------------------------------------- full disk


def fail_writes_of(monkeypatch, name: str, code: int = errno.ENOSPC) -> None:
    """Every write into the temp file of ``name`` fails as a full (or read-only) disk fails it."""
    write = atomic._TempFile.write

    def failing(self, data):
        if self.path.name.startswith(f".{name}."):
            self.error = OSError(code, os.strerror(code))
            raise self.error
        return write(self, data)

    monkeypatch.setattr(atomic._TempFile, "write", failing)


def test_a_full_disk_while_writing_best_pt_keeps_it_and_says_so(run, monkeypatch):
    """``torch.save`` turns the failed write into a RuntimeError of its own; it is caught all the same."""
    sets, ckpts = run
    before = snapshot(ckpts)
    fail_writes_of(monkeypatch, "best.pt")
    line = refused(*stage("metatrain", sets, ckpts, "--fresh"), r"could not write checkpoint ")
    out = ckpts / "tiny" / "metatrain"
    want = f"could not write checkpoint {out}/best.pt: No space left on device; the previous best.pt is kept"
    assert line == f"error: {want}"
    assert snapshot(ckpts) == before and no_temp_files(ckpts)


def test_a_full_disk_while_writing_last_pt_keeps_it_and_the_one_before(run, monkeypatch):
    sets, ckpts = run
    out = ckpts / "tiny" / "metatrain"
    kept = {name: (out / name).read_bytes() for name in ("last.pt", "last.prev.pt")}
    fail_writes_of(monkeypatch, "last.pt")
    refused(
        *stage("metatrain", sets, ckpts, "--fresh"),
        rf"could not write checkpoint {re.escape(str(out))}/last\.pt: No space left on device; "
        r"the previous last\.pt is kept$",
    )
    assert {name: (out / name).read_bytes() for name in kept} == kept
    assert no_temp_files(ckpts)


def adapt_task(root: Path) -> list[str]:
    """``mtl adapt`` arguments for a two-class task of fresh images, without the checkpoint."""
    from fakes import pattern_images, write_image

    for split in ("support", "query"):
        for c, cls in enumerate(("a", "b")):
            for i, img in enumerate(pattern_images(2, 16, seed=c)):
                write_image(root / "task" / split / cls / f"{i}.png", img)
    return ["--support", str(root / "task" / "support"), "--query", str(root / "task" / "query")]


def _adapt(option: str, name: str):
    def args(sets: list[str], ckpts: Path, tmp: Path) -> list:
        best = ckpts / "tiny" / "metatrain" / "best.pt"
        return ["adapt", "--checkpoint", best, *adapt_task(tmp), option, tmp / name]

    return args


WRITES = {
    # what fails to be written: (its file name, the command, what the line says is kept)
    "results.json": (
        "results.json",
        lambda sets, c, t: ["metatest", PIPELINE, *sets, "--checkpoints", c],
        "the previous results.json is kept",
    ),
    "report --out": (
        "report.md",
        lambda sets, c, t: ["report", c, "--out", t / "report.md"],
        "the previous report.md is kept",
    ),
    "report --plot": (
        "tiny-metatest.png",
        lambda sets, c, t: ["report", c, "--plot", t / "figures"],
        "figures written: tiny-curves.png; not written: tiny-metatest.png",  # the curves come first
    ),
    "adapt --out": ("p.csv", _adapt("--out", "p.csv"), "nothing was written"),
    "adapt --save": ("c.pt", _adapt("--save", "c.pt"), "nothing was written"),
}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("case", list(WRITES))
def test_every_write_path_turns_a_disk_error_into_one_line(run, tmp_path, monkeypatch, case, code):
    sets, ckpts = run
    name, command, kept = WRITES[case]
    (tmp_path / "report.md").write_text("| method | an earlier report |\n")  # one mtl report wrote
    args = command(sets, ckpts, tmp_path)
    before, outside = snapshot(ckpts), (tmp_path / "report.md").read_bytes()
    fail_writes_of(monkeypatch, name, code)
    refused(*cli(*args), rf"could not write .*{re.escape(name)}: {re.escape(os.strerror(code))}; {kept}$")
    assert snapshot(ckpts) == before and (tmp_path / "report.md").read_bytes() == outside
    assert no_temp_files(tmp_path)
    if kept == "nothing was written" or kept.endswith(f"not written: {name}"):
        assert not list(tmp_path.rglob(name))


def test_a_disk_that_fills_at_fsync_is_one_line_too(tmp_path, monkeypatch):
    """With delayed allocation the write succeeds and the flush to disk fails."""
    path = tmp_path / "big.bin"
    path.write_bytes(b"old")

    def no_room(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(MtlError, match=r"big\.bin: No space left on device; the previous big\.bin is kept$"):
        atomic.write_text(path, "new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["big.bin"]


# ----------------------------------------------------------------------------------- the umask


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(run, umask, mode):
    sets, ckpts = run
    old = os.umask(umask)
    try:
        for command in ("metatrain", "metatest"):
            code, output = stage(command, sets, ckpts, *(["--fresh"] if command == "metatrain" else []))
            assert code == 0, output
    finally:
        os.umask(old)
    written = ["metatrain/best.pt", "metatrain/last.pt", "metatrain/config.yaml", "metatest/results.json"]
    modes = {name: stat.S_IMODE((ckpts / "tiny" / name).stat().st_mode) for name in written}
    assert modes == dict.fromkeys(written, mode)


def test_atomic_writes_take_the_umask_of_the_moment(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.write_text(tmp_path / "a.txt", "a")
        os.umask(0o022)
        atomic.write_text(tmp_path / "b.txt", "b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644


# ------------------------------------------------------------------------------- numbers


def float_keys() -> list[tuple[str, bool]]:
    """``(dotted key, is a list)`` of every float setting, however deep, the methods' sections too."""
    groups = key_reference.key_groups()
    return [(k.name, "list" in k.kind) for _, group in groups for k in group if "float" in k.kind]


def test_there_are_float_settings_to_check():
    assert len(float_keys()) >= 20


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize(("key", "is_list"), float_keys())
def test_every_float_setting_refuses_nan_and_infinity(key, is_list, value):
    setting = f"{key}=[{value}, 1.0]" if is_list else f"{key}={value}"
    where = re.escape(f"{key}[0]" if is_list else key)
    with pytest.raises(MtlError, match=rf"^{where}: must be a finite number, got (-?inf|nan)$"):
        config.load(None, [setting])


# ------------------------------------------------------------------------------------ run names


@pytest.mark.parametrize("key", ["name", "pretrain.name"])
@pytest.mark.parametrize("name", ["../escaped", "/tmp/absolute", ".", "..", "a/b", "x" * 300, "tab\there"])
def test_run_names_stay_inside_the_checkpoints_folder(tmp_path, key, name):
    ckpts = tmp_path / "in" / "ckpts"
    ckpts.mkdir(parents=True)
    message = r"characters; a run name has at most 100" if len(name) > 100 else r"is not a folder name"
    refused(
        *cli("pretrain", PIPELINE, "--set", f"{key}={name}", "--checkpoints", ckpts),
        rf"^error: {key}: .*{message}",
    )
    assert [p.name for p in tmp_path.rglob("*")] == ["in", "ckpts"]


# ---------------------------------------------------------------------------------- TensorBoard


def test_a_tensorboard_folder_that_cannot_be_written_stops_the_run_before_the_work(run):
    sets, ckpts = run
    tb = ckpts / "tiny" / "tb" / "metatest"
    shutil.rmtree(tb)
    tb.write_text("not a folder")
    before = snapshot(ckpts)
    code, output = stage("metatest", sets, ckpts)
    refused(code, output, rf"cannot write TensorBoard events to {re.escape(str(tb))}: .* is not a folder$")
    assert "scoring" not in output and snapshot(ckpts) == before


def test_the_last_stream_goes_only_once_the_new_one_exists(tmp_path, monkeypatch):
    log_dir = tmp_path / "tb"
    log_dir.mkdir()
    old = log_dir / "events.out.tfevents.1.host.1.0"
    old.write_bytes(b"the last run's curves")

    def full(**kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("mtl.runtime.monitor.SummaryWriter", full)
    with pytest.raises(
        MtlError, match=r"^cannot write TensorBoard events to .*/tb: No space left on device$"
    ):
        Monitor(log_dir, "metatest").scalars(0, acc=1.0)
    assert old.read_bytes() == b"the last run's curves"
    monkeypatch.undo()
    monitor = Monitor(log_dir, "metatest")
    monitor.scalars(0, acc=1.0)
    monitor.close()
    streams = list(log_dir.glob("events.out.tfevents.*"))
    assert len(streams) == 1 and streams[0] != old


def test_a_checkpoints_folder_whose_name_is_not_utf8_works(done, tmp_path):
    _, sets, ckpts = done
    odd = tmp_path / os.fsdecode(b"runs-\xff\xfe")
    shutil.copytree(ckpts, odd)
    code, output = stage("metatest", sets, odd)
    assert code == 0 and "Traceback" not in output, output
    assert len(list((odd / "tiny" / "tb" / "metatest").glob("events.out.tfevents.*"))) == 1


# ------------------------------------------------------------------------------------- resuming


def test_a_resume_from_last_prev_pt_names_that_file(run):
    sets, ckpts = run
    out = ckpts / "tiny" / "metatrain"
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 3])
    code, output = stage("metatrain", sets, ckpts)
    assert code == 0, output
    assert "trying the checkpoint before it" in output
    assert f"resuming from {out / 'last.prev.pt'} at epoch 2, step 0" in output
    assert f"resuming from {out / 'last.pt'}" not in output
