"""Shipped pipelines: listed by ``mtl pipelines``, named bare from any folder."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from mtl import config
from mtl.cli import main
from mtl.config.pipeline_file import DEFAULT, resolve, shipped

REPO_PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def test_mtl_pipelines_lists_every_shipped_file_with_its_first_comment():
    result = CliRunner().invoke(main, ["pipelines"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    files = sorted(REPO_PIPELINES.glob("*.yaml"))
    assert [line.split()[0] for line in lines] == [p.stem for p in files]
    first = REPO_PIPELINES.joinpath("glyphs-1shot.yaml").read_text().splitlines()[0].lstrip("# ")
    assert any(line.startswith("glyphs-1shot ") and line.endswith(first) for line in lines)
    paths = CliRunner().invoke(main, ["pipelines", "--paths"]).output.splitlines()
    assert all(Path(line.split()[-1]).is_file() for line in paths)


def test_a_bare_name_resolves_to_the_shipped_file_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set(shipped()) == {p.stem for p in REPO_PIPELINES.glob("*.yaml")}
    for name in ("glyphs-5shot", "glyphs-5shot.yaml"):
        assert resolve(name) == REPO_PIPELINES / "glyphs-5shot.yaml"
    assert config.load("glyphs-5shot") == config.load(REPO_PIPELINES / "glyphs-5shot.yaml")
    assert config.load(DEFAULT).name == "glyphs-1shot"
    # A file of that name in the working folder wins: a path is always taken as given.
    (tmp_path / "glyphs-5shot").write_text(
        "extends: " + str(REPO_PIPELINES / "glyphs-5shot.yaml") + "\nname: mine\n"
    )
    assert config.load("glyphs-5shot").name == "mine"


def test_stage_help_says_what_pipeline_may_be():
    out = " ".join(CliRunner().invoke(main, ["metatest", "--help"]).output.split())
    assert "mtl pipelines" in out and "glyphs-1shot" in out


def _metatest_output(tmp_path: Path, tty: bool) -> str:
    """A tiny run's metatest as a user's shell runs it: under a pseudo-terminal or into a pipe."""
    import subprocess
    import sys

    from conftest import TINY

    sets = [a for o in [*TINY, f"data.root={tmp_path / 'data'}", "test.episodes=3000"] for a in ("--set", o)]
    base = [sys.executable, "-m", "mtl"]
    ckpts = ["--checkpoints", str(tmp_path / "ck")]
    for stage in ("pretrain", "metatrain"):
        subprocess.run([*base, stage, *sets, *ckpts, "--quiet"], check=True, cwd=tmp_path)
    cmd = [*base, "metatest", "glyphs-1shot", *sets, *ckpts]
    if tty:
        import shlex

        cmd = ["script", "-qec", shlex.join(cmd), "/dev/null"]
    out = subprocess.run(cmd, capture_output=True, cwd=tmp_path, check=True)  # bytes: keep every \r
    return (out.stdout + out.stderr).decode()


def test_metatest_shows_a_progress_bar_on_a_terminal_and_none_in_a_pipe(tmp_path):
    import shutil

    if shutil.which("script") is None:
        import pytest

        pytest.skip("util-linux `script` (a pseudo-terminal) is not installed")
    piped = _metatest_output(tmp_path, tty=False)
    assert not any(c in piped for c in "\r\x1b\b"), repr(piped)
    assert "episodes  [" not in piped and "metatest: wrote" in piped
    on_tty = _metatest_output(tmp_path, tty=True)
    assert "\r" in on_tty and "3000 episodes  [" in on_tty and "metatest: wrote" in on_tty


def test_a_folder_named_like_a_shipped_pipeline_does_not_shadow_it(tmp_path, monkeypatch):
    """``--checkpoints .`` makes ``./glyphs-1shot/``: the bare name still means the shipped pipeline."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "glyphs-1shot" / "metatrain").mkdir(parents=True)
    assert resolve("glyphs-1shot") == shipped()["glyphs-1shot"]
    result = CliRunner().invoke(main, ["config", "glyphs-1shot"])
    assert result.exit_code == 0 and result.stdout.startswith("name: glyphs-1shot\n")
    note = "note: ./glyphs-1shot is a folder, not a pipeline; using the shipped pipeline glyphs-1shot\n"
    assert result.stderr == note
    (tmp_path / "mine").mkdir()
    refused = CliRunner().invoke(main, ["config", "mine"])
    assert refused.exit_code == 2 and "mine is a folder, not a pipeline file" in refused.output
