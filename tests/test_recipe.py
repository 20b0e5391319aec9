"""`mtl config`: every paper pipeline runs the official recipe its header names, in the figures a
researcher checks before a long run (meta-updates, tasks per update, LR drop points, pretrain steps)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtl.cli import main

PIPELINES = Path(__file__).parent.parent / "pipelines"


def official_pytorch_rates(max_epoch: int, num_batch: int, step_size: int, gamma: float) -> list[float]:
    """The learning rate of every update of the official PyTorch trainers, by running their loop with
    torch's own StepLR (pytorch/trainer/meta.py; pytorch/trainer/pre.py is the same with pre_*)::

        self.lr_scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=self.args.step_size,
                                                            gamma=self.args.gamma)
        for epoch in range(1, self.args.max_epoch + 1):
            # Update learning rate
            self.lr_scheduler.step()
            ...
            for i, batch in enumerate(tqdm_gen, 1):
                ...
                self.optimizer.step()
    """
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    rates = []
    with warnings.catch_warnings():  # torch warns about step() before optimizer.step(): the point here
        warnings.simplefilter("ignore")
        for _epoch in range(1, max_epoch + 1):
            sched.step()
            rates += [opt.param_groups[0]["lr"]] * num_batch
    return rates


def official_tf_rates(iterations: int, meta_lr: float, lr_drop_step: int, drop: float) -> list[float]:
    """The meta learning rate of every update of the official TF trainer (tensorflow/trainer/meta.py)::

    train_lr = FLAGS.meta_lr
    for train_idx in trange(FLAGS.metatrain_iterations):
        ...  feed_dict = {..., self.model.meta_lr: train_lr}; result = self.sess.run(...)
        # Reduce the meta learning rate to half after several iterations
        if (train_idx!=0) and train_idx % FLAGS.lr_drop_step == 0:
            train_lr = train_lr * FLAGS.lr_drop_rate
            if train_lr < 0.1 * FLAGS.meta_lr:
                train_lr = 0.1 * FLAGS.meta_lr
    """
    train_lr, rates = meta_lr, []
    for train_idx in range(iterations):
        rates.append(train_lr)
        if (train_idx != 0) and train_idx % lr_drop_step == 0:
            train_lr = train_lr * drop
            if train_lr < 0.1 * meta_lr:
                train_lr = 0.1 * meta_lr
    return rates


def drops(rates: list[float]) -> list[int]:
    """The update counts after which the rate changes."""
    return [n for n in range(1, len(rates)) if rates[n] != rates[n - 1]]


# tensorflow/run_experiment.py: MAX_ITER = 20000, META_BATCH_SIZE = 2, META_LR = 0.001,
# LR_DROP_STEP = 1000, UPDATE_NUM = 20, BASE_LR = 0.001; main.py: lr_drop_rate 0.5,
# test_base_epoch_num 100. Its inner loss is `xent`: softmax_cross_entropy_with_logits(...) / shot_num,
# a vector whose tf.gradients is that of its sum, so a step of base_lr on it is a step of
# base_lr x way on the mean cross-entropy (5-way: 0.001 x 5).
TF_RATES = official_tf_rates(20_000, 1e-3, 1000, 0.5)
TF = {
    "backbone": "resnet12_tf",
    "meta_updates": 20_000,
    "tasks_per_update": {"normal": 2, "hard": 1, "total": 3},
    "lr_drops_at": drops(TF_RATES),
    "final_lr": (TF_RATES[-1], TF_RATES[-1]),
    "inner": (20, 0.001 * 5, 100),
    "first_order": False,
}
# pytorch/run_meta.py and main.py: max_epoch 100, num_batch 100, step_size 10, gamma 0.5, meta_lr1
# 0.0001 (SS), meta_lr2 0.001 (θ), update_step 100, base_lr 0.01; first order (autograd.grad without
# create_graph).
PYTORCH_RATES = official_pytorch_rates(100, 100, 10, 0.5)
PYTORCH = {
    "backbone": "resnet25",
    "meta_updates": 10_000,
    "tasks_per_update": {"normal": 1, "hard": 0, "total": 1},
    "lr_drops_at": drops(PYTORCH_RATES),
    "final_lr": (1e-4 * PYTORCH_RATES[-1], 1e-3 * PYTORCH_RATES[-1]),
    "inner": (100, 0.01, 100),
    "first_order": True,
}
# pytorch/run_pre.py: max_epoch = 110, StepLR(step_size=30, gamma=0.2), stepped as above; per epoch.
PRETRAIN_RATES = official_pytorch_rates(110, 1, 30, 0.2)


def test_the_official_schedules_as_their_code_runs_them():
    """What the simulations above give, in the issue's words: the PyTorch meta-LRs halve after 900,
    1,900, ..., 9,900 updates (10 halvings), pretraining multiplies by 0.2 from its 30th, 60th and 90th
    epoch, and the TF rate halves after 1,001, 2,001, 3,001 and 4,001 updates, then stays at its floor."""
    assert PYTORCH["lr_drops_at"] == [900 + 1000 * k for k in range(10)]
    assert drops(PRETRAIN_RATES) == [29, 59, 89]
    assert TF["lr_drops_at"] == [1001, 2001, 3001, 4001] and TF_RATES[-1] == pytest.approx(1e-4)


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
    # omniglot-mann is MANN's own setting (tests/test_mann.py runs it).
    assert {p for p in shipped if p.startswith("omniglot")} == {*OMNIGLOT_PIPELINES, "omniglot-mann"}


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
    assert d["pretrain_lr_drops_at"] == drops(PRETRAIN_RATES)
    steps, lr, test_steps = recipe["inner"]
    assert (cfg["mtl"]["inner_steps"], cfg["mtl"]["inner_lr"], d["inner_steps"]["test"]) == (
        steps,
        lr,
        test_steps,
    )
    assert cfg["mtl"]["first_order"] is recipe["first_order"]
    assert (
        d["pretrain_steps"] == 110 * STEPS_PER_EPOCH[dataset]
        and d["pretrain_steps_per_epoch"] == STEPS_PER_EPOCH[dataset]
    )
    assert d["images_per_epoch"] == STEPS_PER_EPOCH[dataset] * 128
    if recipe is TF:
        assert d["hard_task_window"] == 3  # ceil(5-way / 2 tasks): the fewest meta-batches with 5 failures
    else:
        assert cfg["mtl"]["bn"] == "affine" and cfg["pretrain"]["head_hidden"] == 1000
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
    assert d["lr_drops_at"] == [1001, 2001]  # the TF schedule: after updates 1,001 and 2,001


def test_config_prints_the_resolved_yaml_and_the_figures():
    result = CliRunner().invoke(main, ["config", "pipelines/glyphs-1shot.yaml", "--set", "meta.epochs=2"])
    assert result.exit_code == 0, result.output
    assert "name: glyphs-1shot" in result.output and "# what glyphs-1shot will run" in result.output
    assert "meta_updates:" in result.output and " 40\n" in result.output  # 2 epochs x 20 updates
    bad = CliRunner().invoke(main, ["config", "pipelines/nope.yaml"])
    assert bad.exit_code == 2 and "pipeline file not found" in bad.output
