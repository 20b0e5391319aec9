"""``mtl bench`` on a tiny setup: the JSON users read, and fast paths that agree with the reference."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from mtl.bench.benchmark import Setup, run_bench
from mtl.bench.table import bench_table
from mtl.cli import main
from mtl.runtime import device as devices

TINY = Setup(
    widths=(4, 4, 8, 8), image_size=16, classes=10, images_per_class=20, test_episodes=30,
    ref_episodes=6, meta_batch=2, min_seconds=0.01, pretrain_batch=16,
)  # fmt: skip


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = run_bench(quick=True, device="cpu", out=out, setup=TINY)
    return result, json.loads(out.read_text())


def test_bench_json_has_the_headline_ratios(bench):
    result, written = bench
    assert written == json.loads(json.dumps(result))
    for key in ("metatest_speedup", "metatrain_speedup", "pretrain_efficiency"):
        assert isinstance(written[key], float) and written[key] > 0
    assert written["metatest_speedup"] == written["metatest"]["speedup"]
    assert written["setup"]["widths"] == [4, 4, 8, 8]
    assert written["precision"] == ("bf16" if devices.bf16_by_default(torch.device("cpu")) else "fp32")
    for key in ("fast_peak_mb", "reference_peak_mb"):
        assert written["metatest"][key] >= 0 and written["metatrain"][key] >= 0


def test_bench_fast_paths_compute_what_the_reference_computes(bench):
    _, r = bench
    assert r["metatest"]["episodes_compared"] == TINY.ref_episodes
    assert r["metatest"]["identical_accuracies_fp32"]
    assert r["metatest"]["accuracy_fast_fp32"] == r["metatest"]["accuracy_reference"]
    m = r["metatrain"]
    assert m["first_step_loss_fast_fp32"] == pytest.approx(m["first_step_loss_reference"], rel=1e-5)
    assert m["first_step_loss_fast"] == pytest.approx(m["first_step_loss_reference"], rel=2e-2)


def test_bench_scaling_rows(bench):
    _, r = bench
    shapes = [(row["inner_steps"], row["way"], row["shot"]) for row in r["scaling"]]
    assert shapes == [(10, 5, 1), (50, 5, 1), (100, 5, 1), (100, 5, 5), (100, 10, 5)]
    assert all(row["fast_tasks_per_s"] > 0 and row["reference_tasks_per_s"] > 0 for row in r["scaling"])


def test_bench_command_refuses_an_unwritable_out(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--quick", "--out", str(tmp_path / "missing" / "b.json")])
    assert result.exit_code == 2
    assert "missing" in result.output and "Traceback" not in result.output


def test_bench_maml_row_batched_equals_the_per_task_loop(bench):
    _, r = bench
    q = r["maml"]
    assert r["maml_speedup"] == q["speedup"] > 0 and q["batched_tasks_per_s"] > 0
    assert q["first_step_loss_batched"] == pytest.approx(q["first_step_loss_per_task"], rel=1e-5)


def test_bench_reports_floors_and_the_paper_protocol(bench):
    _, written = bench
    for key in ("metatrain_efficiency", "metatest_efficiency", "metatest_speedup_paper_protocol"):
        assert isinstance(written[key], float) and written[key] > 0, key
    f = written["floors"]
    assert f["metatrain"]["efficiency"] == pytest.approx(f["metatrain"]["floor_s"] / f["metatrain"]["mtl_s"])
    assert f["metatrain"]["images"] == TINY.meta_batch * TINY.way * (TINY.shot + TINY.query)
    pp = written["paper_protocol"]
    assert written["metatest_efficiency"] == pytest.approx(pp["floor_s_per_image"] / pp["mtl_s_per_image"])
    pp = written["paper_protocol"]
    # the paper's reuse: 600 episodes x 80 images over 12,000 images, each drawn ~4 times
    assert pp["classes"] == 20 and pp["episodes"] == round(600 * TINY.images_per_class / 600)
    assert 3.5 <= pp["draws_per_image"] <= 5
    assert pp["identical_accuracies_fp32"]
    assert pp["precision"] == written["precision"]


def test_bench_table_leads_with_the_paper_protocol_and_the_floors(bench):
    from mtl.bench.table import bench_table

    lines = bench_table(bench[1])
    first_table = next(i for i, line in enumerate(lines) if line.startswith("| "))
    assert lines[first_table].startswith("| headline |")
    assert "paper's protocol" in lines[first_table + 2] and "against its floor" in lines[first_table + 3]


def test_bench_in_fp32_runs_every_mtl_path_in_fp32(tmp_path):
    """``--precision fp32``: the figures a CPU without native bf16 gets, on any CPU."""
    r = run_bench(quick=True, device="cpu", out=tmp_path / "b.json", setup=replace(TINY, precision="fp32"))
    assert r["precision"] == r["floors"]["precision"] == r["paper_protocol"]["precision"] == "fp32"
    m = r["metatrain"]
    assert m["fast_tasks_per_s"] == m["fast_fp32_tasks_per_s"]
    assert m["first_step_loss_fast"] == m["first_step_loss_fast_fp32"]
    assert m["first_step_loss_fast"] == pytest.approx(m["first_step_loss_reference"], rel=1e-5)
    assert r["metatest"]["episodes_equal_fast"] == TINY.ref_episodes
    bad = CliRunner().invoke(main, ["bench", "--quick", "--precision", "fp16"])
    assert bad.exit_code == 2 and "fp16" in bad.output


@pytest.mark.parametrize("key", ["meta_lstm", "tadam", "mann"])
def test_bench_rows_of_the_other_methods_batched_equal_their_per_task_loops(bench, key):
    _, r = bench
    q, out = r[key], "\n".join(bench_table(r))
    assert r[f"{key}_speedup"] == q["speedup"] > 0 and q["batched_tasks_per_s"] > 0
    assert q["first_step_loss_batched"] == pytest.approx(q["first_step_loss_per_task"], rel=1e-5)
    assert f"| {q['label']} (" in out and f"{q['label']} first-step loss: batched" in out
