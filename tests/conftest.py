"""Shared fixtures: a tiny pipeline that runs all three stages in seconds on the CPU."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
from pathlib import Path

import pytest
import torch

import mtl.methods  # noqa: F401  (the methods register their pipeline sections)
from mtl import config

PIPELINE = "pipelines/glyphs-1shot.yaml"

torch.set_num_threads(2)

TINY = [
    "name=tiny",
    "device=cpu",
    "data.image_size=16",
    "data.glyphs.classes=30",
    "data.glyphs.images_per_class=10",
    "backbone.widths=[8,8,16,16]",
    "pretrain.epochs=2",
    "pretrain.batch_size=32",
    "pretrain.val_episodes=20",
    "meta.way=3",
    "meta.query=3",
    "meta.epochs=2",
    "meta.updates_per_epoch=2",
    "meta.meta_batch=2",
    "mtl.inner_steps=10",
    "mtl.inner_lr=0.1",
    "meta.val_episodes=20",
    "test.episodes=30",
    "test.query=3",
]


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    """``--set`` overrides for a tiny run whose dataset cache lives in the test's temp dir."""
    return [*TINY, f"data.root={tmp_path / 'data'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides: list[str]) -> config.Config:
    return config.load(None, tiny_overrides)


def digests(folder: Path) -> dict[str, str | None]:
    """The sha256 of every file under ``folder`` and every sub-folder (``None``), by relative path:
    equal before and after a refused command means it added, changed and removed nothing."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def wait_for_mid_epoch_checkpoint(proc: subprocess.Popen, last: Path) -> None:
    """Return once ``last`` (a ``last.pt``) was written in the middle of an epoch, with ``proc`` still
    running, so that a signal sent now interrupts a run that has something to resume."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, RuntimeError, EOFError, KeyError):
            if torch.load(last, weights_only=True)["resume"]["step"] > 0:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"


def finished_run(root: Path) -> tuple[list[str], Path]:
    """A tiny run of all three stages under ``root``, through the command line: the ``--set``
    arguments that made it, and its checkpoints folder (tests that damage it work on a copy)."""
    from click.testing import CliRunner

    from mtl.cli import main

    sets = [a for o in [*TINY, f"data.root={root / 'data'}"] for a in ("--set", o)]
    ckpts = root / "ckpts"
    for stage in ("pretrain", "metatrain", "metatest"):
        result = CliRunner().invoke(main, [stage, PIPELINE, *sets, "--checkpoints", str(ckpts)])
        assert result.exit_code == 0, result.output
    return sets, ckpts


@pytest.fixture(scope="module")
def finished_tiny(tmp_path_factory) -> tuple[list[str], Path]:
    """:func:`finished_run` once per test module: ``(sets, checkpoints folder)``, not to be damaged."""
    return finished_run(tmp_path_factory.mktemp("finished"))


@pytest.fixture
def tiny_copy(finished_tiny, tmp_path) -> tuple[list[str], Path]:
    """A copy of :func:`finished_tiny` that a test may damage: ``(sets, checkpoints folder)``."""
    import shutil

    sets, ckpts = finished_tiny
    shutil.copytree(ckpts, tmp_path / "ckpts")
    return sets, tmp_path / "ckpts"
