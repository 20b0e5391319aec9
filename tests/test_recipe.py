"""`mtl config`: every paper pipeline runs the official recipe its header names, in the figures a
researcher checks before a long run (meta-updates, tasks per update, LR drop points, pretrain steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mtl.cli import main

PIPELINES = Path(__file__).parent.parent / "pipelines"

# The official TensorFlow recipe (tensorflow/run_experiment.py with main.py's defaults): 20,000
# iterations of meta-batch 2, Adam 1e-3 on SS and θ halved every 1,000 iterations with a floor of
# 0.1 x 1e-3, 20 inner steps in training and 100 at test. Its inner loss is summed over the support set
# and divided by the shot: a step of 0.01 on it is a step of 0.01 x 5 on the mean cross-entropy (5-way).
TF = {
    "backbone": "resnet12_tf",
    "meta_updates": 20_000,
    "tasks_per_update": {"normal": 2, "hard": 1, "total": 3},
    "lr_drops_at": [1000, 2000, 3000, 4000],  # 1e-3 -> 5e-4 -> 2.5e-4 -> 1.25e-4 -> 1e-4 (the floor)
    "final_lr": (1e-4, 1e-4),
    "inner": (20, 0.05, 100),
    "first_order": False,
}
# The official PyTorch recipe (pytorch/run_pre.py, run_meta.py): 100 epochs x 100 updates of one task,
# StepLR(10 epochs, 0.5), 100 inner steps at 0.01, first order (autograd.grad without create_graph).
PYTORCH = {
    "backbone": "resnet25",
    "meta_updates": 10_000,
    "tasks_per_update": {"normal": 1, "hard": 0, "total": 1},
    "lr_drops_at": [1000 * k for k in range(1, 10)],
    "final_lr": (1e-4 * 0.5**9, 1e-3 * 0.5**9),
    "inner": (100, 0.01, 100),
    "first_order": True,
}
# Pretraining follows the official PyTorch recipe in both: 110 epochs of batch 128 over the train split
# (miniImageNet 64 x 600, FC100 60 x 600, tieredImageNet 448,695 images), last partial batch dropped.
STEPS_PER_EPOCH = {"miniimagenet": 38_400 // 128, "fc100": 36_000 // 128, "tieredimagenet": 448_695 // 128}
PAPER_PIPELINES = {
    **{f"{d}-{k}shot": (d, k, TF) for d in ("miniimagenet", "tieredimagenet") for k in (1, 5)},
    **{f"fc100-{k}shot": ("fc100", k, TF) for k in (1, 5, 10)},
    **{f"{d}-{k}shot-resnet25": (d, k, PYTORCH) for d in STEPS_PER_EPOCH for k in (1, 5)},
}


def config_json(path: Path, *sets: str) -> dict:
    args = [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(main, ["config", str(path), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


OMNIGLOT_PIPELINES = {f"omniglot-{w}way-{s}shot": (w, s) for w in (5, 20) for s in (1, 5)}


def test_every_paper_pipeline_is_covered():
    shipped = {p.stem for p in PIPELINES.glob("*.yaml")} - {"folder"}
    mtl_papers = {p for p in shipped if not p.startswith(("glyphs", "omniglot"))}
    assert mtl_papers == set(PAPER_PIPELINES)
    assert {p for p in shipped if p.startswith("omniglot")} == set(OMNIGLOT_PIPELINES)


@pytest.mark.parametrize("name", sorted(OMNIGLOT_PIPELINES))
def test_omniglot_pipelines_run_the_protonets_recipe_on_the_vinyals_protocol(name, tmp_path):
    way, shot = OMNIGLOT_PIPELINES[name]
    out = config_json(PIPELINES / f"{name}.yaml", f"data.root={tmp_path}")
    cfg, d = out["config"], out["derived"]
    assert (cfg["method"], cfg["backbone"]["name"], cfg["data"]["image_size"], cfg["data"]["channels"]) == (
        "protonet", "conv4", 28, 1,
    )  # fmt: skip
    assert (cfg["meta"]["way"], cfg["meta"]["shot"], cfg["protonet"]["train_way"]) == (way, shot, 60)
    assert d["meta_updates"] == 10_000 and d["lr_drops_at"] == [2000, 4000, 6000, 8000]
    assert cfg["pretrain"]["name"] == "omniglot" and cfg["data"]["root"] == str(tmp_path)


@pytest.mark.parametrize("name", sorted(PAPER_PIPELINES))
def test_paper_pipeline_runs_the_official_recipe(name, tmp_path):
    dataset, shot, recipe = PAPER_PIPELINES[name]
    # An empty data.root: the pretrain figures come from the dataset's standard size.
    out = config_json(PIPELINES / f"{name}.yaml", f"data.root={tmp_path}")
    cfg, d = out["config"], out["derived"]
    assert cfg["backbone"]["name"] == recipe["backbone"] and cfg["meta"]["shot"] == shot
    assert d["meta_updates"] == recipe["meta_updates"] >= 10_000
    assert d["tasks_per_update"] == recipe["tasks_per_update"]
    assert d["lr_drops_at"] == recipe["lr_drops_at"]
    assert (d["final_lr_ss"], d["final_lr_theta"]) == pytest.approx(recipe["final_lr"])
    steps, lr, test_steps = recipe["inner"]
    assert (cfg["meta"]["inner_steps"], cfg["meta"]["inner_lr"], d["inner_steps"]["test"]) == (
        steps,
        lr,
        test_steps,
    )
    assert cfg["meta"]["first_order"] is recipe["first_order"]
    assert (
        d["pretrain_steps"] == 110 * STEPS_PER_EPOCH[dataset]
        and d["pretrain_steps_per_epoch"] == STEPS_PER_EPOCH[dataset]
    )
    assert d["images_per_epoch"] == STEPS_PER_EPOCH[dataset] * 128
    if recipe is TF:
        assert d["hard_task_window"] == 3  # ceil(5-way / 2 tasks): the fewest meta-batches with 5 failures
    else:
        assert cfg["meta"]["bn"] == "affine" and cfg["pretrain"]["head_hidden"] == 1000
        assert (cfg["data"]["resize"], cfg["data"]["image_size"]) == (92, 80)


def test_config_counts_a_prepared_dataset_and_applies_overrides(tmp_path):
    import numpy as np

    from mtl.data.prepared import Split, save_dataset

    split = Split(
        np.zeros((1000, 8, 8, 3), np.uint8), np.repeat(np.arange(10), 100), [f"c{i}" for i in range(10)]
    )
    save_dataset(tmp_path / "mini", {"train": split, "val": split, "test": split}, source_format="test")
    out = config_json(
        PIPELINES / "miniimagenet-1shot.yaml", f"data.root={tmp_path / 'mini'}", "meta.epochs=3",
        "meta.hard_tasks.enabled=false", "pretrain.batch_size=64",
    )  # fmt: skip
    d = out["derived"]
    assert d["train_images"] == 1000 and "manifest" in d["train_images_from"]
    assert (d["pretrain_steps_per_epoch"], d["pretrain_steps"], d["images_per_epoch"]) == (15, 110 * 15, 960)
    assert d["meta_updates"] == 3000 and d["tasks_per_update"]["hard"] == 0 and d["hard_task_window"] is None
    assert d["lr_drops_at"] == [1000, 2000]


def test_config_prints_the_resolved_yaml_and_the_figures():
    result = CliRunner().invoke(main, ["config", "pipelines/glyphs-1shot.yaml", "--set", "meta.epochs=2"])
    assert result.exit_code == 0, result.output
    assert "name: glyphs-1shot" in result.output and "# what glyphs-1shot will run" in result.output
    assert "meta_updates:" in result.output and " 40\n" in result.output  # 2 epochs x 20 updates
    bad = CliRunner().invoke(main, ["config", "pipelines/nope.yaml"])
    assert bad.exit_code == 2 and "pipeline file not found" in bad.output
