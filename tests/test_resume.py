"""Runs that survive: killed or stopped runs resume bit for bit; bad checkpoints and losses are caught."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, wait_for_mid_epoch_checkpoint

from mtl import config
from mtl.errors import MtlError
from mtl.runtime import checkpoint
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]
# Longer epochs than TINY, so that a kill lands inside one; a checkpoint after every step; hard
# tasks on, so that the pool and its samplers must resume too.
LONGER = [
    "pretrain.epochs=3", "pretrain.batch_size=8", "meta.epochs=3", "meta.updates_per_epoch=8",
    "checkpoint_every=1", "meta.hard_tasks.enabled=true",
]  # fmt: skip


def overrides(tmp_path: Path) -> list[str]:
    return [*TINY, f"data.root={tmp_path / 'data'}", *LONGER]


def command(stage: str, sets: list[str], ckpts: Path) -> list[str]:
    args = [a for o in sets for a in ("--set", o)]
    pipeline = "pipelines/glyphs-1shot.yaml"
    return [sys.executable, "-m", "mtl", stage, pipeline, *args, "--checkpoints", str(ckpts)]


def run(stage: str, sets: list[str], ckpts: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command(stage, sets, ckpts), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def interrupt(stage: str, sets: list[str], ckpts: Path, signum: int) -> subprocess.CompletedProcess:
    """Start the stage, send ``signum`` once a mid-epoch checkpoint exists, wait for the process."""
    last = ckpts / "tiny" / stage / "last.pt"
    pipe = subprocess.PIPE
    proc = subprocess.Popen(command(stage, sets, ckpts), cwd=ROOT, stdout=pipe, stderr=pipe)
    wait_for_mid_epoch_checkpoint(proc, last)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())


def final_state(ckpts: Path, stage: str) -> dict:
    state = {}
    for name in ("best.pt", "last.pt"):
        ckpt = checkpoint.load(ckpts / "tiny" / stage / name, stage=stage)
        state[name] = {k: ckpt[k] for k in ("encoder", "theta", "head", "metric") if k in ckpt}
        if "hard_tasks" in ckpt:
            pool = ckpt["hard_tasks"]
            state[name]["pool"] = {k: pool[k] for k in ("entries", "failures", "chosen", "updates", "rng")}
    return state


def assert_identical(a, b, path="") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One uninterrupted pretrain (in a subprocess, like the interrupted runs)."""
    tmp = tmp_path_factory.mktemp("resume")
    sets = overrides(tmp)
    run("pretrain", sets, tmp / "straight")
    return tmp, sets


@pytest.mark.parametrize("stage", ["pretrain", "metatrain"])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(pretrained, stage):
    tmp, sets = pretrained
    straight, killed = tmp / "straight", tmp / f"killed-{stage}"
    if stage == "metatrain":
        shutil.copytree(straight / "tiny" / "pretrain", killed / "tiny" / "pretrain")
        run("metatrain", sets, straight)
    interrupted = interrupt(stage, sets, killed, signal.SIGKILL)
    assert interrupted.returncode == -signal.SIGKILL
    resumed = run(stage, sets, killed)
    assert "resuming from" in resumed.stdout
    assert_identical(final_state(killed, stage), final_state(straight, stage))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_the_step_writes_last_and_says_how_to_resume(pretrained, signum):
    tmp, sets = pretrained
    ckpts = tmp / f"stopped-{signum}"
    shutil.copytree(tmp / "straight" / "tiny" / "pretrain", ckpts / "tiny" / "pretrain")
    stopped = interrupt("metatrain", sets, ckpts, signum)
    assert stopped.returncode == 128 + signum
    message = stopped.stderr.strip().splitlines()
    assert len(message) == 1 and "Traceback" not in stopped.stderr
    assert f"stopped by {signal.Signals(signum).name} at epoch" in message[0] and "resumes" in message[0]
    run("metatrain", sets, ckpts)
    straight = tmp / "straight"
    if not (straight / "tiny" / "metatrain" / "last.pt").exists():
        run("metatrain", sets, straight)
    assert_identical(final_state(ckpts, "metatrain"), final_state(straight, "metatrain"))


def test_changed_config_is_refused_naming_the_keys_and_fresh_starts_over(tiny_overrides, tmp_path):
    cfg = config.load(None, tiny_overrides)
    pretrain(cfg, tmp_path, quiet=True)
    metatrain(cfg, tmp_path, quiet=True)
    changed = config.load(None, [*tiny_overrides, "mtl.lr_theta=0.01", "mtl.inner_steps=3"])
    with pytest.raises(MtlError, match=r"differs in mtl\.inner_steps, mtl\.lr_theta\); run with --fresh"):
        metatrain(changed, tmp_path, quiet=True)
    metatrain(changed, tmp_path, quiet=True, fresh=True)
    assert (
        checkpoint.load(tmp_path / "tiny" / "metatrain" / "last.pt", stage="metatrain")["config"]["mtl"][
            "inner_steps"
        ]
        == 3
    )


def test_a_corrupt_last_checkpoint_falls_back_to_the_one_before(tiny_overrides, tmp_path, capsys):
    cfg = config.load(None, [*tiny_overrides, "pretrain.epochs=3"])
    pretrain(cfg, tmp_path, quiet=True)
    out = tmp_path / "tiny" / "pretrain"
    # Pretend the run stopped after epoch 2: its last.pt.prev is epoch 2's, and last.pt got truncated.
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])
    assert checkpoint.load(out / "last.prev.pt", stage="pretrain")["resume"]["epoch"] == 2
    pretrain(cfg, tmp_path)
    printed = capsys.readouterr().out
    assert "last.pt is not a readable mtl checkpoint" in printed
    assert "trying the checkpoint before it" in printed
    assert "resuming from" in printed and "at epoch 3, step 0" in printed
    assert checkpoint.load(out / "last.pt", stage="pretrain")["resume"]["epoch"] == 3


def test_a_non_finite_loss_stops_naming_stage_and_step_and_keeps_the_last_good_checkpoint(
    tiny_overrides, tmp_path
):
    cfg = config.load(None, tiny_overrides)
    pretrain(cfg, tmp_path, quiet=True)
    last = tmp_path / "tiny" / "pretrain" / "last.pt"
    before = last.read_bytes()
    bad = config.load(None, [*tiny_overrides, "pretrain.lr=1e30", "pretrain.epochs=3"])
    with pytest.raises(MtlError, match=r"^pretrain: the loss became NaN or inf at step \d+ \(epoch \d+\)"):
        pretrain(bad, tmp_path, quiet=True, fresh=True)
    # fresh overwrote nothing it could not stand behind: the earlier run's files are intact
    assert last.read_bytes() == before


def test_a_full_disk_is_reported_and_leaves_the_previous_checkpoint(tiny_overrides, tmp_path, monkeypatch):
    cfg = config.load(None, tiny_overrides)
    pretrain(cfg, tmp_path, quiet=True)
    last = tmp_path / "tiny" / "pretrain" / "last.pt"
    before = last.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(MtlError, match=r"could not write checkpoint .*: No space left on device"):
        pretrain(cfg, tmp_path, quiet=True, fresh=True)
    assert last.read_bytes() == before
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]
