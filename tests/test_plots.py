"""``mtl report --plot``: PNG figures of a tiny run's curves, results and hard-task pool."""

from __future__ import annotations

import struct

from click.testing import CliRunner
from conftest import TINY
from test_figures import FAR, NC, PAPER, compare_results, metatest_results, write_curves, write_results

from mtl.cli import main
from mtl.results.plots import plot_all

PIPELINE = "pipelines/glyphs-1shot.yaml"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_report_plot_writes_sensible_pngs(tmp_path):
    sets = [
        a
        for o in [*TINY, f"data.root={tmp_path / 'data'}", "meta.hard_tasks.enabled=true"]
        for a in ("--set", o)
    ]
    ckpts = tmp_path / "ck"
    for stage in ("pretrain", "metatrain", "metatest"):
        result = CliRunner().invoke(main, [stage, PIPELINE, *sets, "--checkpoints", str(ckpts), "--quiet"])
        assert result.exit_code == 0, result.output
    figures = tmp_path / "figures"
    result = CliRunner().invoke(main, ["report", str(ckpts), "--plot", str(figures)])
    assert result.exit_code == 0, result.output
    assert "| method |" in result.output or "MTL" in result.output  # the table still prints
    assert result.output.strip().splitlines()[-1].startswith(f"report: wrote 3 figures to {figures} in ")
    names = sorted(p.name for p in figures.iterdir())
    assert names == ["tiny-curves.png", "tiny-metatest.png", "tiny-metatrain-hard-tasks.png"]
    for name in names:
        width, height = png_size(figures / name)
        assert 300 <= width <= 2500 and 200 <= height <= 1500, (name, width, height)
        assert (figures / name).stat().st_size > 5_000  # drawn, not blank


def test_report_plot_into_a_file_is_one_line(tmp_path):
    (tmp_path / "run" / "tb").mkdir(parents=True)
    (tmp_path / "f.png").write_bytes(b"x")
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--plot", str(tmp_path / "f.png")])
    assert result.exit_code == 2 and result.output.strip().endswith(
        "is a file; give a folder for the figures"
    )


def test_report_plot_of_hand_made_results_and_curves(tmp_path):
    ckpts, figures = tmp_path / "ck", tmp_path / "figures"
    published = {NC: {"acc": 49.4, "ci95": 0.8, "source": "Snell et al. 2017"}}
    write_results(ckpts, "glyphs-1shot", "compare", compare_results(FAR, published))
    write_results(ckpts, "glyphs-1shot", "metatest", metatest_results(FAR, paper=PAPER))
    write_curves(ckpts / "glyphs-1shot", "metatrain", [(0, 70.0, 1.5), (5, 80.0, 1.0)], pool=[3, 5, 4])
    write_curves(ckpts / "glyphs-1shot", "pretrain", [(1, 60.0, 2.0)])  # a one-epoch run
    write_results(ckpts, "compare-only", "compare", compare_results(FAR))
    result = CliRunner().invoke(main, ["report", str(ckpts), "--plot", str(figures)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "| method | glyphs 1-shot | glyphs 1-shot (compare, compare-only) "
        "| glyphs 1-shot (compare, glyphs-1shot) |"
    )
    written = plot_all(ckpts, tmp_path / "again")
    names = ["compare-only-compare.png", "glyphs-1shot-compare.png", "glyphs-1shot-curves.png"]
    names.append("glyphs-1shot-metatest.png")
    assert sorted(p.name for p in figures.iterdir()) == names == sorted(p.name for p in written)
    for name in names:
        width, height = png_size(figures / name)
        assert 300 <= width <= 2500 and 200 <= height <= 1500, (name, width, height)
