"""The paper's pipelines: each loads, carries the published number, and shots share one pretrain.

The figures of each recipe (meta-updates, tasks per update, LR drops, pretrain steps) are checked
through ``mtl config`` in test_recipe.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl import config
from mtl.training.keys import setting

PIPELINES = Path(__file__).parent.parent / "pipelines"
# (dataset, shot, published accuracy, ci95): the MTL + HT rows of REFERENCE §6, produced by the
# official TF code's recipe; tieredImageNet from the official TF code's README.
PAPER = {
    "miniimagenet-1shot": ("miniimagenet", 1, 61.2, 1.8),
    "miniimagenet-5shot": ("miniimagenet", 5, 75.5, 0.8),
    "fc100-1shot": ("fc100", 1, 45.1, 1.8),
    "fc100-5shot": ("fc100", 5, 57.6, 0.9),
    "fc100-10shot": ("fc100", 10, 63.4, 0.8),
    "tieredimagenet-1shot": ("tieredimagenet", 1, 65.6, 1.8),
    "tieredimagenet-5shot": ("tieredimagenet", 5, 80.6, 0.9),
}
# The official PyTorch code's recipe and the numbers of its README (REFERENCE §6); none for tieredImageNet.
PYTORCH = {
    "miniimagenet-1shot-resnet25": ("miniimagenet", 1, 61.8, 0.8),
    "miniimagenet-5shot-resnet25": ("miniimagenet", 5, 78.1, 0.6),
    "fc100-1shot-resnet25": ("fc100", 1, 45.6, 1.8),
    "fc100-5shot-resnet25": ("fc100", 5, 60.8, 0.9),
    "tieredimagenet-1shot-resnet25": ("tieredimagenet", 1, None, None),
    "tieredimagenet-5shot-resnet25": ("tieredimagenet", 5, None, None),
}


@pytest.mark.parametrize("name", sorted(PAPER) + sorted(PYTORCH))
def test_paper_pipeline(name):
    cfg = config.load(PIPELINES / f"{name}.yaml")
    tf = name in PAPER
    dataset, shot, acc, ci = (PAPER if tf else PYTORCH)[name]
    assert cfg.name == name and cfg.data.dataset == dataset
    assert (cfg.meta.way, cfg.meta.shot, cfg.meta.query, cfg.test.query, cfg.test.episodes) == (
        5,
        shot,
        15,
        15,
        600,
    )
    assert (cfg.paper.acc, cfg.paper.ci95) == (acc, ci)
    assert cfg.data.root == f"~/.cache/mtl/{dataset}"
    if tf:
        assert cfg.backbone.name == "resnet12_tf" and cfg.meta.hard_tasks.enabled
        assert cfg.data.image_size == (32 if dataset == "fc100" else 84) and cfg.data.resize is None
        # The TF inner loop (20 steps at 0.01 on a loss summed over the 5-way support set / shot) and
        # meta-optimiser (Adam 1e-3 on SS and θ).
        assert (cfg.meta.inner_steps, cfg.meta.inner_lr, cfg.meta.lr_ss, cfg.meta.lr_theta) == (
            20,
            0.05,
            1e-3,
            1e-3,
        )
        assert cfg.run_name("pretrain") == dataset
    else:
        assert cfg.backbone.name == "resnet25" and not cfg.meta.hard_tasks.enabled
        assert (cfg.data.image_size, cfg.data.resize, cfg.meta.bn, cfg.pretrain.head_hidden) == (
            80,
            92,
            "affine",
            1000,
        )
        # The official PyTorch inner loop and meta-optimiser.
        assert (cfg.meta.inner_steps, cfg.meta.inner_lr, cfg.meta.lr_ss, cfg.meta.lr_theta) == (
            100,
            0.01,
            1e-4,
            1e-3,
        )
        assert cfg.run_name("pretrain") == f"{dataset}-resnet25"
    assert cfg.run_name("metatrain") == name


@pytest.mark.parametrize("dataset", ["miniimagenet", "fc100", "tieredimagenet"])
@pytest.mark.parametrize("recipe", [PAPER, PYTORCH], ids=["tf", "pytorch"])
def test_all_shots_of_a_dataset_share_one_pretrain(dataset, recipe):
    configs = [config.load(PIPELINES / f"{n}.yaml") for n in recipe if n.startswith(dataset)]
    assert len(configs) >= 2
    assert len({c.run_name("pretrain") for c in configs}) == 1
    assert len({repr(setting(c.to_dict())) for c in configs}) == 1
