"""`mtl report`: every finished metatest, ablation and compare in one table laid out like the paper's."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from test_figures import CLOSE, FAR, NC, PIXELS, compare_results, metatest_results, write_results

from mtl.cli import main


def fake_metatest(ckpts: Path, name: str, dataset: str, shot: int, mtl: float, paper: float | None) -> None:
    out = ckpts / name / "metatest"
    out.mkdir(parents=True)
    rows = [
        {"method": "MTL (SS + meta-learned θ)", "acc": mtl, "ci95": 0.8},
        {"method": "nearest centroid, raw pixels", "acc": 25.0, "ci95": 0.5},
    ]
    results = {
        "pipeline": name,
        "way": 5,
        "shot": shot,
        "query": 15,
        "episodes": 600,
        "rows": rows,
        "paper": {"method": "MTL + HT", "acc": paper, "ci95": 1.8} if paper is not None else None,
    }
    (out / "results.json").write_text(json.dumps(results))
    (out / "config.yaml").write_text(f"name: {name}\ndata:\n  dataset: {dataset}\n")


def test_report_lays_out_datasets_by_shot_with_the_paper_and_the_difference(tmp_path):
    fake_metatest(tmp_path, "fc100-1shot", "fc100", 1, 44.0, 45.1)
    fake_metatest(tmp_path, "miniimagenet-5shot", "miniimagenet", 5, 76.0, 75.5)
    fake_metatest(tmp_path, "miniimagenet-1shot", "miniimagenet", 1, 60.25, 61.2)
    fake_metatest(tmp_path, "mine", "folder", 1, 90.0, None)
    (tmp_path / "unfinished" / "metatest").mkdir(parents=True)  # no results.json: not listed
    out = tmp_path / "report.md"
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "| method | miniImageNet 1-shot | miniImageNet 5-shot | FC100 1-shot | folder 1-shot |"
    assert (
        lines[2]
        == "| MTL (SS + meta-learned θ) | 60.25 ± 0.80 | 76.00 ± 0.80 | 44.00 ± 0.80 | 90.00 ± 0.80 |"
    )
    assert lines[3].startswith("| nearest centroid, raw pixels | 25.00 ± 0.50 |")
    assert lines[4] == "| paper | 61.20 ± 1.80 | 75.50 ± 1.80 | 45.10 ± 1.80 | — |"
    assert lines[5] == "| ours (MTL) − paper | -0.95 | +0.50 | -1.10 | — |"
    assert "600 fixed test episodes; 4 finished metatest run(s)" in result.output
    assert out.read_text().splitlines()[:6] == lines[:6]


def test_report_without_finished_runs_or_with_a_corrupt_file(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "error: no finished metatest under" in result.output and "Traceback" not in result.output
    bad = tmp_path / "x" / "metatest"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text("{not json")
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert f"error: {bad / 'results.json'} is not a metatest results file" in result.output


def test_report_tables_a_folder_with_only_compare_results(tmp_path):
    published = {NC: {"acc": 49.4, "ci95": 0.8, "source": "Snell et al. 2017"}}
    write_results(tmp_path, "glyphs-1shot", "compare", compare_results(FAR, published))
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "| method | glyphs 1-shot (compare) |"
    for method, acc, ci in FAR:
        assert f"| {method} | {acc:.2f} ± {ci:.2f} |" in lines
    assert "5-way accuracy (%) ± 95% CI over 600 fixed test episodes; 1 finished compare run(s) under" in (
        result.output
    )


def test_report_puts_ablation_and_compare_columns_beside_the_metatests(tmp_path):
    fake_metatest(tmp_path, "miniimagenet-1shot", "miniimagenet", 1, 60.25, 61.2)
    ablation = {**metatest_results(CLOSE), "seconds": {"total": 9.0}, "kept_epoch": {}}
    write_results(tmp_path, "ablated", "ablation", {**ablation, "query_acc_per_epoch": {}}, "miniimagenet")
    ht = ("MTL + HT: hard-task meta-batches", 84.6, 0.3)  # compare's label: placed beside the MTL row
    write_results(tmp_path, "compared", "compare", compare_results([*FAR, ht]), "fc100")
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        "| method | miniImageNet 1-shot | miniImageNet 1-shot (ablation) | FC100 1-shot (compare) |"
    )
    assert lines[2] == "| MTL (SS + meta-learned θ) | 60.25 ± 0.80 | 84.77 ± 0.64 | 84.77 ± 0.64 |"
    assert lines[3] == "| MTL + HT: hard-task meta-batches |  |  | 84.60 ± 0.30 |"
    assert f"| {PIXELS} | 25.00 ± 0.50 |  | 20.29 ± 0.36 |" in lines
    assert (
        "1 finished metatest run(s), 1 finished ablation run(s), 1 finished compare run(s)" in result.output
    )


def test_a_negative_ci_or_a_way_of_zero_is_not_a_results_file(tmp_path):
    bad = {"ci": compare_results([(NC, 80.0, -0.5)]), "way": {**metatest_results(), "way": 0}}
    messages = {
        "ci": "(rows[0] is not a row of method, acc and ci95)",
        "way": "('way' is not a positive integer)",
    }
    for name, results in bad.items():
        path = write_results(tmp_path / name, "run", "compare", results)
        result = CliRunner().invoke(main, ["report", str(tmp_path / name)])
        assert result.exit_code == 2
        assert f"error: {path} is not a metatest results file {messages[name]}" in result.output
