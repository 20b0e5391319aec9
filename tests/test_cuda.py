"""The same computations on a CUDA GPU as on the CPU (``pytest -m cuda``, run by ``make gpu-check``;
skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl import config, methods
from mtl.data.augment import Preprocess
from mtl.data.episodes import EpisodeSampler, fixed_episodes
from mtl.data.store import ImageStore
from mtl.methods import meta_update
from mtl.methods.episodic import finetune_theta
from mtl.models.backbone import build_backbone

DEVICES = [
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ],
    ),
]


def _setup(method: str, backbone: str = "resnet12"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(6), 10)
    sets = [f"method={method}", "precision=fp32", "meta.way=3", "meta.query=3", "mtl.inner_steps=5"]
    sets += [
        "maml.inner_steps=2",
        f"backbone.name={backbone}",
        "backbone.widths=[4,4,8,8]",
        "data.image_size=16",
    ]
    cfg = config.load(None, sets)
    sampler = EpisodeSampler(labels, 3, 1, 3, seed=0)
    tasks = np.stack([sampler.sample() for _ in range(2)])
    return cfg, images, labels, tasks


def _meta_step(method: str, dev: str, backbone: str = "resnet12") -> tuple[float, torch.Tensor]:
    cfg, images, _, tasks = _setup(method, backbone)
    torch.manual_seed(0)
    encoder = build_backbone(backbone, widths=[4, 4, 8, 8], image_size=16)
    learner = methods.build(cfg, encoder).to(dev).train()
    opt = torch.optim.Adam(learner.param_groups())
    store = ImageStore(images, torch.device(dev))
    loss, logits, _ = meta_update(learner, opt, store, tasks, Preprocess(16, 3))
    return float(loss), logits.cpu()


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize(
    ("method", "backbone"), [("mtl", "resnet12"), ("maml", "conv4"), ("protonet", "resnet12")]
)
def test_a_meta_update_matches_the_cpu(dev, method, backbone):
    loss, logits = _meta_step(method, dev, backbone)
    want_loss, want_logits = _meta_step(method, "cpu", backbone)
    assert loss == pytest.approx(want_loss, rel=1e-4, abs=1e-5)
    torch.testing.assert_close(logits, want_logits, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dev", DEVICES)
def test_batched_meta_test_matches_the_cpu(dev):
    torch.manual_seed(0)
    feats = torch.randn(60, 8)
    labels = np.repeat(np.arange(6), 10)
    episodes = torch.from_numpy(fixed_episodes(labels, 3, 1, 3, 40, seed=0))
    W0, b0 = torch.zeros(3, 8), torch.zeros(3)
    got = finetune_theta(feats.to(dev), episodes.to(dev), 1, W0.to(dev), b0.to(dev), steps=20, lr=0.5)
    want = finetune_theta(feats, episodes, 1, W0, b0, steps=20, lr=0.5)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("dev", DEVICES)
def test_image_store_gathers_the_same_images(dev):
    images = np.random.default_rng(1).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    store = ImageStore(images, torch.device(dev))
    idx = torch.tensor([[3, 1], [19, 0]])
    assert torch.equal(store[idx].cpu(), torch.from_numpy(images)[idx])
