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
        # The TF inner loop (run_experiment.py: UPDATE_NUM = 20, BASE_LR = 0.001, on a loss summed over
        # the 5-way support set / shot, i.e. 0.001 x 5 on the mean) and meta-optimiser (Adam 1e-3 on SS
        # and θ); its batch norm is offered (mtl.bn: batch) but the TF pipelines keep it frozen.
        assert (cfg.mtl.inner_steps, cfg.mtl.inner_lr, cfg.mtl.lr_ss, cfg.mtl.lr_theta) == (
            20,
            0.001 * 5,
            1e-3,
            1e-3,
        )
        assert cfg.mtl.bn == "frozen" and not cfg.meta.augment
        assert cfg.run_name("pretrain") == dataset
    else:
        assert cfg.backbone.name == "resnet25" and not cfg.meta.hard_tasks.enabled
        # pytorch/trainer/meta.py: Dataset('train', self.args) -- the loader's train_aug=False default.
        assert not cfg.meta.augment
        assert (cfg.data.image_size, cfg.data.resize, cfg.mtl.bn, cfg.pretrain.head_hidden) == (
            80,
            92,
            "affine",
            1000,
        )
        # The official PyTorch inner loop and meta-optimiser.
        assert (cfg.mtl.inner_steps, cfg.mtl.inner_lr, cfg.mtl.lr_ss, cfg.mtl.lr_theta) == (
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


def _layouts() -> dict[tuple, str]:
    """One paper pipeline per (backbone, image size, mtl.bn) they use, plus the TF code's batch norm
    (mtl.bn: batch), which the TF pipelines offer as a setting."""
    out = {}
    for name in sorted(PAPER) + sorted(PYTORCH):
        cfg = config.load(PIPELINES / f"{name}.yaml")
        out.setdefault((cfg.backbone.name, cfg.data.image_size, cfg.mtl.bn), name)
    out[("resnet12_tf", 84, "batch")] = "miniimagenet-1shot"
    return out


@pytest.mark.parametrize(("layout", "name"), sorted(_layouts().items()), ids=lambda v: str(v))
def test_no_optimised_parameter_is_cancelled_by_a_following_norm(layout, name):
    """In float64, every parameter meta-training optimises gets a gradient from the meta-loss, and
    every SS shift it leaves out gets none: a normalisation with batch statistics cancels it."""
    import torch

    from mtl import methods
    from mtl.models import ss
    from mtl.models.backbone import build_backbone

    backbone, size, bn = layout
    cfg = config.load(PIPELINES / f"{name}.yaml", [f"mtl.bn={bn}", "precision=fp32", "mtl.inner_steps=3"])
    torch.manual_seed(0)
    encoder = build_backbone(cfg.backbone.name, widths=cfg.backbone.widths, image_size=size)
    method = methods.get("mtl")(encoder, cfg).double().train()
    groups = [(g["name"], list(g["params"])) for g in method.param_groups()]
    optimised = {id(p) for _, params in groups for p in params}
    shifts = [m.shift for _, m in ss.ss_modules(method.encoder) if m.shift is not None]
    for p in shifts:
        p.requires_grad_(True)  # to see the gradient of the shifts that are not optimised too
    with torch.no_grad():
        for _, m in ss.ss_modules(method.encoder):
            m.scale.mul_(1 + 0.1 * torch.randn_like(m.scale))
        method.W.normal_(0, 0.01)
    n = 5 * (cfg.meta.shot + 2)  # 5-way, 2 queries per class
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8)
    tasks = torch.randperm(n).view(1, 5, -1).numpy()
    loss, _, _ = method.task_loss(images, tasks, lambda x: x.permute(0, 3, 1, 2).double() / 255)
    loss.backward()
    for group, params in groups:
        for p in params:
            assert p.grad is not None and p.grad.abs().max() > 1e-8, group
    for p in shifts:
        if id(p) not in optimised:
            assert bn != "frozen" and p.grad.abs().max() < 1e-12  # cancelled: left out, rightly
    if bn == "frozen":  # running statistics cancel nothing: every shift is optimised
        assert all(id(p) in optimised for p in shifts)


def test_resnet25_ss_layout_has_the_official_parameter_count():
    """pytorch/models/resnet_mtl.py: every convolution is a Conv2dMtl with ``mtl_weight`` of shape
    (C_out, C_in, 1, 1); ``mtl_bias`` (C_out,) exists only where the conv has a bias::

        self.conv1 = self.Conv2d(3, iChannels, kernel_size=3, stride=1, padding=1)   # bias=True default
        def conv3x3mtl(in_planes, out_planes, stride=1):
            return Conv2dMtl(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        downsample = nn.Sequential(self.Conv2d(self.inplanes, planes * block.expansion,
                                               kernel_size=1, stride=stride, bias=False), ...)

    with cfg = [160, 320, 640], iChannels = 80 and four BasicBlockMtl per stage."""
    from mtl import methods
    from mtl.models import ss
    from mtl.models.backbone import build_backbone

    weights, biases, inplanes = [(80, 3)], [80], 80  # the stem
    for planes in (160, 320, 640):
        weights += [(planes, inplanes), (planes, planes), (planes, inplanes)]  # block 0 + downsample
        weights += [(planes, planes), (planes, planes)] * 3
        inplanes = planes
    official = sum(o * i for o, i in weights) + sum(biases)
    assert len(weights) + len(biases) == 29

    cfg = config.load(PIPELINES / "miniimagenet-1shot-resnet25.yaml")
    method = methods.get("mtl")(build_backbone("resnet25", image_size=80), cfg)
    ours = list(ss.parameters(method.encoder))
    assert len(ours) == 29 and sum(p.numel() for p in ours) == official
    assert [name for name, m in ss.ss_modules(method.encoder) if m.shift is not None] == ["conv1"]
    # The stem's shift feeds the batch norm after it, which normalises with batch statistics in
    # meta-training (mtl.bn: affine): it exists, as in the official code, but is not optimised.
    assert not method.encoder.conv1.shift.requires_grad
