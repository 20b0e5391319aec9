"""One run per run folder: a second ``mtl`` process into a folder in use stops at once, in one line
naming the holder's process id, and leaves the first run's files alone; a lock left by a killed run
is taken over with a note; every stage releases its folder when it ends."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import wait_for_mid_epoch_checkpoint

from mtl.cli import main
from mtl.errors import MtlError
from mtl.runtime.run_lock import LOCK_NAME, acquire

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "pipelines/glyphs-1shot.yaml"
# A metatrain that runs long enough to be met mid-run (it is stopped by a signal, never waited for).
LONG = ["meta.epochs=500", "checkpoint_every=1"]

# Another process holding a folder's lock as mtl does: flock, then its pid in the file.
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, (sys.argv[2] if len(sys.argv) > 2 else str(os.getpid())).encode() + b"\\n")
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def held(folder: Path, holder: str | None = None) -> Iterator[subprocess.Popen]:
    """A helper process holds ``folder``'s lock until the block ends (writing ``holder`` in it, as a
    process of another node would, else its pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder / LOCK_NAME), *([holder] if holder else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def one_line_refusal(code: int, output: str, pattern: str) -> None:
    lines = output.strip().splitlines()
    assert code == 2 and "Traceback" not in output, output
    assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), output


def in_use(folder: Path, pid: int) -> str:
    return (
        rf"error: {re.escape(str(folder))} is in use by another mtl run \(process {pid}\); wait for it to "
        r"end or stop it, or give this run another name or --checkpoints"
    )


def start(stage: str, sets: list[str], ckpts: Path, *extra: str) -> subprocess.Popen:
    """``mtl STAGE`` as its own process (its pid is the one the lock names)."""
    args = [sys.executable, "-m", "mtl", stage, PIPELINE, *sets, *extra, "--checkpoints", str(ckpts)]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_mid_run(proc: subprocess.Popen, out: Path) -> None:
    """Until ``proc`` holds ``out`` (its lock file names it) and has written a mid-epoch ``last.pt``."""
    deadline = time.monotonic() + 300
    lock = out / LOCK_NAME
    while time.monotonic() < deadline and proc.poll() is None:
        if lock.is_file() and lock.read_text().split()[:1] == [str(proc.pid)]:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate(timeout=60)[0][-3000:]
    wait_for_mid_epoch_checkpoint(proc, out / "last.pt")


@pytest.mark.parametrize(
    ("stage", "folder", "extra"),
    [
        ("pretrain", "pretrain", ["--fresh"]),
        ("metatrain", "metatrain", ["--fresh"]),
        ("metatest", "metatest", []),
    ],
)
def test_a_run_into_a_folder_in_use_stops_naming_the_holder(tiny_copy, stage, folder, extra):
    sets, ckpts = tiny_copy
    out = ckpts / "tiny" / folder
    with held(out) as holder:
        before = snapshot(ckpts)
        one_line_refusal(
            *invoke(stage, PIPELINE, *sets, *extra, "--checkpoints", ckpts), in_use(out, holder.pid)
        )
        assert snapshot(ckpts) == before


def test_two_metatrain_runs_with_different_settings_into_one_folder(tiny_copy):
    """The second refuses before it writes anything; the first's files are all its own."""
    sets, ckpts = tiny_copy
    out = ckpts / "tiny" / "metatrain"
    first = start("metatrain", [*sets, *(a for o in LONG for a in ("--set", o))], ckpts, "--fresh")
    try:
        wait_mid_run(first, out)
        code, output = invoke("metatrain", PIPELINE, *sets, "--set", "mtl.inner_steps=3", "--fresh",
                              "--checkpoints", ckpts)  # fmt: skip
        one_line_refusal(code, output, in_use(out, first.pid))
    finally:
        first.send_signal(signal.SIGTERM)
        output = first.communicate(timeout=300)[0]
    assert first.returncode == 128 + signal.SIGTERM, output
    assert yaml.safe_load((out / "config.yaml").read_text())["mtl"]["inner_steps"] == 10
    for name in ("best.pt", "last.pt"):
        saved = torch.load(out / name, weights_only=True)["config"]
        assert (saved["mtl"]["inner_steps"], saved["meta"]["epochs"]) == (10, 500), name
    assert not (out / LOCK_NAME).exists()


def test_the_lock_of_a_killed_run_is_taken_over_with_a_note(tiny_copy):
    """SIGKILL gives a run no chance to clean up: the kernel drops its lock, its lock file stays."""
    sets, ckpts = tiny_copy
    out = ckpts / "tiny" / "metatrain"
    long = [*sets, *(a for o in LONG for a in ("--set", o))]
    killed = start("metatrain", long, ckpts, "--fresh")
    wait_mid_run(killed, out)
    killed.kill()
    killed.communicate(timeout=60)
    assert (out / LOCK_NAME).read_text() == f"{killed.pid} {socket.gethostname()}\n"

    second = start("metatrain", [*long, "--set", "meta.epochs=1"], ckpts, "--fresh")
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    note = (
        f"[metatrain] took over {out / LOCK_NAME} from process {killed.pid}, which ended without releasing it"
    )
    assert note in output.splitlines(), output
    assert not (out / LOCK_NAME).exists()


def test_every_stage_releases_its_folder(finished_tiny):
    _, ckpts = finished_tiny
    assert not list(ckpts.rglob(LOCK_NAME))


def test_the_lock_is_per_process_and_reentrant_within_one(tmp_path):
    """ablate and compare hold their folder while the runs inside them take it again."""
    folder = tmp_path / "run" / "metatrain"
    outer = acquire(folder)
    inner = acquire(folder)
    assert inner is outer and (folder / LOCK_NAME).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from mtl.runtime.run_lock import acquire; acquire(Path(sys.argv[1]))", str(folder)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert other.returncode != 0 and f"is in use by another mtl run (process {os.getpid()})" in other.stderr
    inner.release()
    assert (folder / LOCK_NAME).is_file()
    outer.release()
    assert not (tmp_path / "run").exists()  # the folders made for the lock go with it


def test_a_folder_made_for_the_lock_goes_when_the_run_fails(tiny_copy):
    """A stage that fails its checks (here: no metatrain of that name) leaves no folder behind."""
    sets, ckpts = tiny_copy
    code, output = invoke("metatest", PIPELINE, *sets, "--set", "name=other", "--checkpoints", ckpts)
    assert code == 2 and "no metatrain checkpoint" in output, output
    assert not (ckpts / "other").exists()


def test_a_holder_on_another_node_is_named_with_its_host(tmp_path):
    """Nodes of a cluster share the run folder: the holder's line names its host where it is not this
    one, and a lock file left by a lost node is taken over naming that node."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text("4242 node-b\n")
    with held(folder, "4343 node-b"), pytest.raises(MtlError) as err:
        acquire(folder)
    assert str(err.value).startswith(f"{folder} is in use by another mtl run (process 4343 on node-b); ")
    (folder / LOCK_NAME).write_text("4242 node-b\n")  # what a node that was lost leaves
    lock = acquire(folder)
    assert lock.stale == "4242 on node-b"
    assert (folder / LOCK_NAME).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    lock.release()
