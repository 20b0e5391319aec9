"""``mtl/results`` reads results as plain data: importing its modules, and ``mtl report`` (with
``--plot`` too) on a metatest's ``results.json``, import neither torch nor timm, nor the packages of
models, methods, training, stages or datasets; the stages hand it numpy arrays."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_figures import MTL, NC, PIXELS, metatest_results, write_curves

from mtl import config
from mtl.data.prepare.manifest import source_format
from mtl.results import paired, report
from mtl.results.published import VINYALS, published, published_breakdowns

HEAVY = ("torch", "timm", "torchvision")
MODULES = ("report", "paired", "figures", "plots", "bars", "published")
UNREAD = ("mtl.models", "mtl.methods", "mtl.training", "mtl.stages", "mtl.data")
ROOT = Path(__file__).resolve().parents[1]


def _imported(code: str) -> dict:
    """Run ``code`` in a fresh interpreter: what it printed, and which of :data:`HEAVY`, matplotlib
    and :data:`UNREAD` (with their sub-modules) it imported."""
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print("IMPORTED:" + json.dumps({{
            "heavy": [m for m in {HEAVY!r} if m in sys.modules],
            "matplotlib": "matplotlib" in sys.modules,
            "unread": sorted(m for m in sys.modules if m.startswith({UNREAD!r})),
        }}))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    out, _, imported = run.stdout.rpartition("IMPORTED:")
    return {"out": out, **json.loads(imported)}


def _report(args: list[str]) -> str:
    """``mtl report *args`` through the click command, in the script :func:`_imported` runs."""
    return f"""
        from click.testing import CliRunner
        from mtl.cli import main
        result = CliRunner().invoke(main, ["report", *{args!r}])
        assert result.exit_code == 0, result.output
        print(result.output)
        """


def write_metatest(ckpts: Path, run: str = "glyphs-1shot") -> Path:
    """``<ckpts>/<run>/metatest/results.json`` as :func:`mtl.stages.metatest.publish` writes it (rows,
    breakdowns, paired differences, per-episode record) from numpy per-episode accuracies, with the
    run's ``config.yaml`` beside it."""
    rng = np.random.default_rng(0)
    queries = 5 * 15
    accs = {
        MTL: rng.integers(45, 70, 600) / queries,
        NC: rng.integers(40, 65, 600) / queries,
        PIXELS: rng.integers(10, 25, 600) / queries,
    }
    rows = [(label, *paired.seed_summary(acc)[:2]) for label, acc in accs.items()]
    results = {
        **metatest_results([(m, round(a, 2), round(c, 2)) for m, a, c in rows]),
        **report.summarize_breakdowns({MTL: {"by_presentation": rng.random((600, 4))}}),
        "differences": paired.differences(accs, MTL),
        "per_episode": paired.per_episode_record(accs, queries),
    }
    out = ckpts / run / "metatest"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(f"name: {run}\ndata:\n  dataset: glyphs\n")
    (out / "results.json").write_text(paired.dumps(results) + "\n")
    return out / "results.json"


def test_the_results_modules_import_without_torch():
    got = _imported("".join(f"import mtl.results.{m}\n" for m in MODULES))
    assert got["heavy"] == [] and got["unread"] == []
    assert not got["matplotlib"]  # the figures import it when they draw


def test_report_reads_a_metatest_without_torch(tmp_path):
    import mtl.methods  # noqa: F401  (this process's table: the rows in the registry's order)

    write_metatest(tmp_path)
    got = _imported(_report([str(tmp_path)]))
    assert got["heavy"] == [] and not got["matplotlib"]
    assert not [m for m in got["unread"] if not m.startswith("mtl.data")]  # mtl.cli's `data` commands
    # the table a process that has the methods imported collects: the same rows in the same order
    assert got["out"].strip() == report.collect(tmp_path)
    lines = got["out"].splitlines()
    assert [line.split(" | ")[0] for line in lines[2:5]] == [f"| {MTL}", f"| {NC}", f"| {PIXELS}"]
    assert f"glyphs 1-shot, − {MTL} (paired 95% CI): {NC} " in got["out"]


def test_report_plot_draws_without_torch(tmp_path):
    write_metatest(tmp_path)
    write_curves(tmp_path / "glyphs-1shot", "metatrain", [(0, 50.0, 2.0), (4, 60.0, 2.0)], pool=[2, 4])
    figures = tmp_path / "figures"
    got = _imported(_report([str(tmp_path), "--plot", str(figures)]))
    assert got["heavy"] == [] and got["matplotlib"]
    assert sorted(p.name for p in figures.iterdir()) == [
        "glyphs-1shot-curves.png",
        "glyphs-1shot-metatest-by-presentation.png",
        "glyphs-1shot-metatest.png",
    ]


def test_python_m_mtl_report_and_help_import_no_torch(tmp_path):
    write_metatest(tmp_path)
    for args in (["report", str(tmp_path)], ["--help"]):
        run = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "mtl", *args], capture_output=True, text=True, cwd=ROOT
        )
        assert run.returncode == 0 and run.stdout.strip(), run.stderr[-2000:]
        imported = {line.rpartition("|")[2].strip() for line in run.stderr.splitlines()}
        assert not imported & set(HEAVY), args


def test_breakdowns_are_summarised_from_arrays_or_lists_alike():
    acc = [[0.2, 1.0, 1.0], [0.4, 0.6, 1.0]]
    summary = report.summarize_breakdowns({"MANN": {"by_presentation": np.array(acc, dtype=np.float64)}})
    assert summary == report.summarize_breakdowns({"MANN": {"by_presentation": acc}})
    assert summary["breakdowns"]["by_presentation"]["rows"]["MANN"] == {
        "mean": [30.0, 80.0, 100.0],
        "ci95": [13.86, 27.72, 0.0],
    }
    assert paired.mean_ci(np.array([0.5, 0.5])) == (50.0, 0.0)
    with pytest.raises(ValueError, match="at least one episode"):
        paired.mean_ci([])


def test_omniglot_numbers_follow_the_source_format_the_caller_read(tmp_path):
    cfg = config.load("pipelines/omniglot-5way-1shot.yaml")
    assert published("protonet-conv4", cfg, source_format=VINYALS) == {
        "acc": 98.8,
        "ci95": None,
        "source": "Snell et al. 2017",
    }
    assert source_format(tmp_path) is None  # nothing prepared there: not the paper's split
    assert published("protonet-conv4", cfg, source_format=source_format(tmp_path)) is None
    mann = config.load("pipelines/omniglot-mann.yaml")
    assert list(published_breakdowns("mann", mann, source_format=VINYALS)) == ["by_presentation"]
    assert published_breakdowns("mann", mann, source_format="omniglot") == {}
