"""MAML: the functional, task-batched inner loop against a per-task autograd loop of the same maths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl import config, methods
from mtl.data.episodes import EpisodeSampler, episode_targets
from mtl.data.sources import load_splits
from mtl.methods.maml import MAML
from mtl.training.run import Run


@pytest.fixture
def setup(tiny_overrides, tmp_path):
    sets = ["method=maml", "backbone.name=conv4", "backbone.widths=[4,4,4,4]", "precision=fp32"]
    cfg = config.load(None, [*tiny_overrides, *sets, "maml.inner_steps=3", "maml.inner_lr=0.3"])
    run = Run.open(cfg, "metatrain", tmp_path / "ck", quiet=True)
    train = load_splits(cfg.data, ("train",))["train"]
    tasks = np.stack([EpisodeSampler(train.labels, 3, 1, 3, seed=0).sample() for _ in range(3)])
    images = torch.from_numpy(train.images.copy())
    return cfg, run, images, tasks


def _method(cfg, run) -> MAML:
    torch.manual_seed(0)
    return methods.build(cfg, run.backbone()).train()


def per_task_reference(maml: MAML, x_s, y_s, x_q, *, steps, lr, first_order):
    """One task at a time, θ' by torch.autograd.grad on the plain network; returns θ' and query logits."""
    params = dict(maml.net.named_parameters())
    for _ in range(steps):
        loss = F.cross_entropy(torch.func.functional_call(maml.net, params, (x_s,)), y_s)
        g = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
        params = {k: v - lr * gk for (k, v), gk in zip(params.items(), g, strict=True)}
    return params, torch.func.functional_call(maml.net, params, (x_q,))


@pytest.mark.parametrize("first_order", [False, True])
def test_batched_meta_gradient_equals_per_task_autograd(setup, first_order):
    cfg, run, images, tasks = setup
    maml = dataclasses.replace(cfg.maml, first_order=first_order)
    cfg = dataclasses.replace(cfg, sections={**cfg.sections, "maml": maml})
    s = cfg.maml

    fast = _method(cfg, run)
    logits, targets = fast.task_logits(images, tasks, run.pre)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.repeat(len(logits)))
    loss.backward()
    g_fast = [p.grad.clone() for p in fast.net.parameters()]

    slow = _method(cfg, run)
    T, way, n = tasks.shape
    y_s = episode_targets(way, 1)
    total, adapted = 0.0, []
    for t in range(T):
        x = run.pre(images[torch.from_numpy(tasks[t]).reshape(-1)]).view(
            way, n, *run.pre(images[:1]).shape[1:]
        )
        params, q = per_task_reference(
            slow, x[:, :1].flatten(0, 1), y_s, x[:, 1:].flatten(0, 1),
            steps=s.inner_steps, lr=s.inner_lr, first_order=first_order,
        )  # fmt: skip
        torch.testing.assert_close(q, logits[t].detach(), rtol=1e-4, atol=1e-5)
        adapted.append(params)
        total = total + F.cross_entropy(q, targets) / T
    total.backward()
    torch.testing.assert_close(loss.detach(), total.detach(), rtol=1e-5, atol=1e-6)
    for a, (name, p) in zip(g_fast, slow.net.named_parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert any(g.abs().sum() > 0 for g in g_fast)


def test_adapted_parameters_equal_per_task_autograd(setup):
    from mtl.methods.maml import adapt_network

    cfg, run, images, tasks = setup
    maml = _method(cfg, run)
    way, n = tasks.shape[1:]
    x = run.pre(images[torch.from_numpy(tasks[0]).reshape(-1)]).view(way, n, *run.pre(images[:1]).shape[1:])
    x_s, x_q, y_s = x[:, :1].flatten(0, 1), x[:, 1:].flatten(0, 1), episode_targets(way, 1)
    params = dict(maml.net.named_parameters())
    got = adapt_network(maml.net, params, x_s, y_s, steps=3, lr=0.3, first_order=False)
    want, _ = per_task_reference(maml, x_s, y_s, x_q, steps=3, lr=0.3, first_order=False)
    for k in params:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)
    assert all(not torch.equal(got[k], params[k]) for k in params)  # every weight adapts


def test_second_order_meta_gradient_passes_gradcheck():
    """gradcheck of the query loss after 2 inner steps w.r.t. the initialisation, in float64."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.BatchNorm2d(2, track_running_stats=False),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 2),
    ).double()  # fmt: skip
    from mtl.methods.maml import adapt_network

    names = [k for k, _ in net.named_parameters()]
    x_s, x_q = torch.randn(4, 1, 4, 4, dtype=torch.float64), torch.randn(6, 1, 4, 4, dtype=torch.float64)
    y_s, y_q = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1, 1, 1])

    def meta_loss(*flat):
        params = dict(zip(names, flat, strict=True))
        adapted = adapt_network(net, params, x_s, y_s, steps=2, lr=0.5, first_order=False)
        return F.cross_entropy(torch.func.functional_call(net, adapted, (x_q,)), y_q)

    inputs = tuple(p.detach().clone().requires_grad_() for p in net.parameters())
    assert torch.autograd.gradcheck(meta_loss, inputs, eps=1e-6, atol=1e-5)


def test_tasks_are_batched_and_equal_one_at_a_time(setup):
    cfg, run, images, tasks = setup
    maml = _method(cfg, run).eval()
    together, _ = maml.task_logits(images, tasks, run.pre)
    for t in range(len(tasks)):
        alone, _ = maml.task_logits(images, tasks[t : t + 1], run.pre)
        torch.testing.assert_close(alone[0], together[t], rtol=1e-4, atol=1e-5)
    # Evaluation in chunks gives every episode the accuracy of its own adaptation.
    acc = maml.evaluate(images, torch.from_numpy(tasks), 1, chunk=2)
    targets = episode_targets(3, 3)
    torch.testing.assert_close(acc, (together.argmax(-1) == targets).float().mean(-1))


def test_maml_runs_through_metatrain_and_metatest(setup, tmp_path):
    from mtl.runtime import checkpoint
    from mtl.stages.metatest import metatest
    from mtl.stages.metatrain import metatrain

    cfg = dataclasses.replace(setup[0], test=dataclasses.replace(setup[0].test, baselines=["pixels"]))
    metatrain(cfg, tmp_path, quiet=True)
    best = checkpoint.load(tmp_path / "tiny" / "metatrain" / "last.pt", stage="metatrain")
    assert best["method"] == "maml" and {"encoder", "head"} <= set(best)
    assert not any("running_mean" in k for k in best["encoder"])  # batch statistics only
    rows = metatest(cfg, tmp_path, quiet=True)["rows"]
    assert [r["method"] for r in rows] == ["MAML", "nearest centroid, raw pixels"]


def test_task_batch_norm_equals_torch_batch_norm_on_batch_statistics():
    from mtl.methods.maml import TaskBatchNorm2d

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3, track_running_stats=False)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    plain = TaskBatchNorm2d(bn)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    torch.testing.assert_close(plain(x), bn(x), rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(plain(x).square().sum(), (x, plain.weight))
    g2 = torch.autograd.grad(bn(x).square().sum(), (x, bn.weight))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
