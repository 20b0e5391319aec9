"""Shipped pipelines: listed by ``mtl pipelines``, named bare from any folder."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from mtl import config
from mtl.cli import main
from mtl.pipeline_file import DEFAULT, resolve, shipped

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
