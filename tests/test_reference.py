"""The fast paths compute what the plain per-episode / per-task code of the official structure computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl.bench import reference
from mtl.data.augment import Preprocess
from mtl.data.episodes import EpisodeSampler, episode_targets, fixed_episodes
from mtl.data.sources import load_splits
from mtl.hard_tasks import HardTasks
from mtl.methods.episodic import extract_features, finetune_theta
from mtl.methods.mtl import MTL
from mtl.models import ss
from mtl.models.backbone import build_backbone


@pytest.fixture
def split(tiny_cfg):
    train = load_splits(tiny_cfg.data, ("train",))["train"]
    return train, torch.from_numpy(np.array(train.images))


def _encoder(cfg, seed=0):
    torch.manual_seed(seed)
    return build_backbone("resnet12", widths=cfg.backbone.widths)


def test_cached_batched_evaluation_equals_per_episode_reference(tiny_cfg, split):
    train, images = split
    pre = Preprocess(tiny_cfg.data.image_size, 3)
    encoder = ss.attach(_encoder(tiny_cfg)).eval()
    for _, mod in ss.ss_modules(encoder):  # non-trivial SS weights
        torch.nn.init.normal_(mod.scale, 1.0, 0.1)

    def encode(batch):
        return encoder(pre(batch))

    episodes = torch.from_numpy(fixed_episodes(train.labels, 3, 1, 4, 12, seed=3))
    g = torch.Generator().manual_seed(1)
    W0, b0 = 0.1 * torch.randn(3, encoder.num_features, generator=g), 0.1 * torch.randn(3, generator=g)
    feats = extract_features(encode, train.images, batch_size=64)
    fast = finetune_theta(feats, episodes, 1, W0, b0, steps=25, lr=0.5)
    slow = torch.stack(
        [reference.episode_accuracy(encode, images, ep, 1, W0, b0, steps=25, lr=0.5) for ep in episodes]
    )
    assert torch.equal(fast, slow)
    assert 0.0 < fast.mean() < 1.0  # neither trivially right nor wrong


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("bn", ["frozen", "affine", "batch"])
def test_batched_closed_form_meta_gradient_equals_per_task_autograd(tiny_cfg, split, first_order, bn):
    """With ``mtl.bn: affine`` or ``batch`` the meta-batch holds 2 normal tasks and 1 hard task, and
    batch norm must normalise each task's support and query sets on their own, as the per-task
    reference does (and in ``affine`` mode update the running statistics in the same order)."""
    train, images = split
    m, inner = tiny_cfg.meta, tiny_cfg.mtl
    inner.first_order, inner.inner_steps, inner.inner_lr = first_order, 8, 0.3
    pre = Preprocess(tiny_cfg.data.image_size, 3)
    sampler = EpisodeSampler(train.labels, m.way, m.shot, m.query, seed=0)
    tasks = np.stack([sampler.sample() for _ in range(3)])
    if bn != "frozen":
        hard = HardTasks(tiny_cfg, train)
        logits = torch.zeros(2, m.way * m.query, m.way)
        hard.add(train.labels, tasks[:2], logits, episode_targets(m.way, m.query))
        tasks = np.concatenate([tasks[:2], hard.draw(tasks[:2])])

    def grads(use_reference: bool):
        inner.bn, tiny_cfg.precision = bn, "fp32"
        learner = MTL(_encoder(tiny_cfg), tiny_cfg)
        with torch.no_grad():
            learner.W.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        learner.train(True)
        if use_reference:
            loss = reference.meta_loss(
                lambda x: learner.encoder(pre(x)), images, torch.from_numpy(tasks), m.shot,
                learner.W, learner.b, steps=inner.inner_steps, lr=inner.inner_lr, first_order=first_order,
            )  # fmt: skip
        else:
            logits, targets = learner.task_logits(images, tasks, pre)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.repeat(len(logits)))
        loss.backward()
        encoder = learner.encoder
        trained = [learner.W, learner.b, *ss.parameters(encoder, trainable=True), *ss.bn_parameters(encoder)]
        stats = [b.clone() for name, b in encoder.named_buffers() if name.endswith("running_mean")]
        return loss.detach(), [p.grad.clone() for p in trained], stats

    loss_fast, g_fast, stats_fast = grads(False)
    loss_ref, g_ref, stats_ref = grads(True)
    for a, b in zip(stats_fast, stats_ref, strict=True):  # the same running statistics, in the same order
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-5, atol=1e-6)
    assert len(g_fast) == len(g_ref) > 2
    for a, b in zip(g_fast, g_ref, strict=True):
        # float32 through 8 second-order inner steps: summation order differs between CPUs
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in g_fast[2:])  # the SS weights get a meta-gradient


def test_batch_statistics_evaluation_equals_per_episode_reference(tiny_cfg, split):
    """``mtl.bn: batch`` (the TF code's batch norm): each episode's support set and its query set are
    normalised with their own statistics, at test too; the batched evaluation equals encoding each
    episode's sets one after the other."""
    train, images = split
    tiny_cfg.mtl.bn, tiny_cfg.precision = "batch", "fp32"
    learner = MTL(_encoder(tiny_cfg), tiny_cfg).eval()
    for _, mod in ss.ss_modules(learner.encoder):
        torch.nn.init.normal_(mod.scale, 1.0, 0.1)
    with torch.no_grad():
        learner.W.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))

    def encode(batch):
        return learner.encoder(learner.pre(batch))

    x = images[:8]
    with torch.no_grad():  # eval mode, yet a query's features depend on the batch it is normalised in
        assert not torch.allclose(encode(x)[:4], encode(x[:4]), atol=1e-4)
    episodes = torch.from_numpy(fixed_episodes(train.labels, 3, 1, 4, 12, seed=3))
    feats = learner.features(train.images, None, torch.device("cpu"))
    fast = learner.evaluate(feats, episodes, 1)
    steps, lr = learner.test_steps, tiny_cfg.mtl.inner_lr
    slow = torch.stack(
        [
            reference.episode_accuracy(encode, images, ep, 1, learner.W, learner.b, steps=steps, lr=lr)
            for ep in episodes
        ]
    )
    torch.testing.assert_close(fast, slow)
    assert 0.0 < fast.mean() < 1.0
