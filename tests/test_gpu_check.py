"""``make gpu-check``: one line and exit 0 without a GPU; every step's logic on the CPU at a tiny size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_bench import TINY

from mtl.bench.gpu_check import Slice, main, run

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mtl.bench.gpu_check", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.strip().splitlines() == [
        "gpu-check: no CUDA GPU on this machine; nothing to check (exit 0)"
    ]
    assert not (tmp_path / "out").exists()
    assert main([]) == 0
    make = subprocess.run(["make", "-s", "-C", str(REPO), "gpu-check"], capture_output=True, text=True)
    assert make.returncode == 0 and make.stdout.strip().endswith("nothing to check (exit 0)"), (
        make.stdout + make.stderr
    )


def test_every_step_runs_and_lands_in_the_json_and_log(tmp_path):
    tiny = Slice(
        image_size=16, classes=(64, 16, 20), images_per_class=10, pretrain_epochs=1, meta_updates=2,
        val_episodes=10, test_episodes=20, bench=TINY,
        sets=("backbone.name=resnet12", "backbone.widths=[4,4,8,8]", "data.resize=null", "data.image_size=16",
              "pretrain.batch_size=64", "mtl.inner_steps=3", "mtl.test_inner_steps=3", "meta.query=3",
              "test.query=3"),
    )  # fmt: skip
    calls = []
    result = run(
        tmp_path,
        device="cpu",
        sizes=tiny,
        tests=lambda: calls.append(1) or {"passed": True, "summary": "2 passed", "seconds": 0.1},
    )
    assert calls == [1]  # the CUDA tests are run exactly once (here by a stand-in runner)
    written = json.loads((tmp_path / "gpu-check.json").read_text())
    assert written["device"] == "cpu" and written["tests"]["passed"]
    assert set(written["bench"]) >= {"metatest_speedup", "metatrain_speedup", "maml_speedup"}
    sl = written["slice"]
    assert sl["pretrain"]["images_per_s"] > 0 and sl["metatrain"]["tasks_per_s"] > 0
    assert sl["metatest_fp32"]["episodes_per_s"] > 0 and sl["metatest_bf16"]["rows"]
    for row in sl["bf16_vs_fp32"].values():
        assert row["difference"] == pytest.approx(row["bf16"] - row["fp32"], abs=0.011)
    assert "skipped" in sl["compile_vs_eager"]  # compile is measured on CUDA only
    paper = {"miniimagenet-1shot", "miniimagenet-5shot", "fc100-1shot", "tieredimagenet-1shot"}
    assert paper <= set(written["projected"]) and all(p["hours"] > 0 for p in written["projected"].values())
    log = (tmp_path / "gpu-check.log").read_text()
    assert "pretrain:" in log and "metatest (bf16)" in log and "projected miniimagenet-1shot" in log
    assert result["seconds"] > 0
