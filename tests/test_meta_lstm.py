"""Meta-LSTM: its update against a plain float64 reference, the task-batched meta-gradient against a
per-task loop on a learner with torch's own batch norm, episode statistics, bad input, and the stages
end to end on glyphs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from fakes import write_image
from torch import nn

from mtl import config, methods
from mtl.bench.benchmark import Setup
from mtl.bench.meta_lstm import bench_meta_lstm
from mtl.cli import main
from mtl.data.augment import Preprocess
from mtl.data.episodes import EpisodeSampler, episode_targets
from mtl.data.glyphs.dataset import render_class
from mtl.data.sources import load_splits
from mtl.errors import MtlError
from mtl.inference.adapt import adapt_folders
from mtl.inference.predict import predict
from mtl.methods.meta_lstm import EpisodeBatchNorm2d, MetaLearner, MetaLSTM, preprocess
from mtl.runtime import checkpoint
from mtl.stages.compare import compare
from mtl.stages.metatest import metatest
from mtl.stages.metatrain import metatrain
from mtl.training.run import Run

SETS = ["method=meta-lstm", "backbone.name=conv4", "backbone.widths=[4,4,4,4]", "precision=fp32"]


# 1. The update rule, coordinate by coordinate.


def _pre(v: float, p: float) -> list[float]:
    if abs(v) >= math.exp(-p):
        return [math.log(abs(v)) / p, math.copysign(1.0, v)]
    return [-1.0, math.exp(p) * v]


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def reference_update(ml: MetaLearner, theta, grads, loss, state, p=10.0):
    """θ_t and the state ``(h, c, f, i)`` as Python lists, one coordinate at a time."""
    H, w1, b1 = ml.hidden_size, ml.w1.tolist(), ml.b1.tolist()
    wf, wi, bf, bi = ml.w_f.tolist(), ml.w_i.tolist(), ml.b_f.item(), ml.b_i.item()
    h_prev, c_prev, f_prev, i_prev = state
    out = ([], [], [], [], [])
    for k in range(len(theta)):
        x = _pre(loss, p) + _pre(grads[k], p) + h_prev[k]
        z = [sum(x[j] * w1[j][u] for j in range(4 + H)) + b1[u] for u in range(4 * H)]
        c = [_sigmoid(z[H + u]) * c_prev[k][u] + _sigmoid(z[u]) * math.tanh(z[3 * H + u]) for u in range(H)]
        h = [_sigmoid(z[2 * H + u]) * math.tanh(c[u]) for u in range(H)]
        f = sum(h[u] * wf[u] for u in range(H)) + theta[k] * wf[H] + f_prev[k] * wf[H + 1] + bf
        i = sum(h[u] * wi[u] for u in range(H)) + theta[k] * wi[H] + i_prev[k] * wi[H + 1] + bi
        for lst, v in zip(out, (_sigmoid(f) * theta[k] - _sigmoid(i) * grads[k], h, c, f, i), strict=True):
            lst.append(v)
    return out[0], out[1:]


def test_preprocessing_takes_both_branches():
    x = torch.tensor([math.exp(-3), -math.exp(-20), 0.0, 2.0], dtype=torch.float64)
    want = torch.tensor(
        [[-0.3, 1.0], [-1.0, -math.exp(-10)], [-1.0, 0.0], [math.log(2) / 10, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(preprocess(x, 10.0), want, rtol=1e-12, atol=1e-12)


def test_update_equals_the_equations_coordinate_by_coordinate_in_float64():
    torch.manual_seed(0)
    ml = MetaLearner(hidden_size=3).double()
    with torch.no_grad():  # weights far from their init, so that every path matters
        for w in ml.parameters():
            w.normal_(0.0, 0.7)
    # Gradients and losses on both sides of e^-10 ≈ 4.54e-5, zero included.
    grads = torch.tensor([0.5, -2.0, 3e-3, -1e-4, 4e-5, -1e-7, 0.0, 2e-5], dtype=torch.float64)
    theta = torch.randn(8, dtype=torch.float64)
    state = ml.initial_state(theta)
    ref_theta, ref_state = theta.tolist(), [t.tolist() for t in state]
    for step, loss in enumerate([1.3, 2e-5, 0.7]):
        g = grads * (step + 1)
        theta, state = ml(theta, g, torch.tensor(loss, dtype=torch.float64), state)
        ref_theta, ref_state = reference_update(ml, ref_theta, g.tolist(), loss, ref_state)
        torch.testing.assert_close(
            theta, torch.tensor(ref_theta, dtype=torch.float64), rtol=1e-12, atol=1e-12
        )
        for got, want in zip(state, ref_state, strict=True):
            torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_initialisation_starts_as_small_gradient_steps():
    torch.manual_seed(0)
    ml = MetaLearner()
    assert ml.w1.shape == (24, 80) and ml.w_f.shape == ml.w_i.shape == (22,)
    for w in (ml.w1, ml.b1, ml.w_f, ml.w_i):
        assert w.abs().max() <= 0.01 and w.std() > 0.003
    assert 4 <= ml.b_f.item() <= 5 and -5 <= ml.b_i.item() <= -4
    # From the zero state: σ(f) ≈ 0.99 keeps θ, σ(i) ≈ 0.01 steps along −∇.
    theta, grads = torch.randn(50), torch.randn(50)
    new, _ = ml(theta, grads, torch.tensor(1.0), ml.initial_state(theta))
    keep, step = torch.sigmoid(ml.b_f), torch.sigmoid(ml.b_i)
    torch.testing.assert_close(new, keep * theta - step * grads, rtol=0.05, atol=1e-3)


# 2-4. The learner's inner loop, batched, against a per-task loop on torch's own batch norm.


@pytest.fixture
def setup(tiny_overrides, tmp_path):
    sets = [*SETS, "meta.shot=2", "meta-lstm.inner_steps=3", "meta-lstm.test_inner_steps=3"]
    cfg = config.load(None, [*tiny_overrides, *sets])
    run = Run.open(cfg, "metatrain", tmp_path / "ck", quiet=True)
    train = load_splits(cfg.data, ("train",))["train"]
    sampler = EpisodeSampler(train.labels, 3, 2, 3, seed=0)
    tasks = np.stack([sampler.sample() for _ in range(3)])
    images = torch.from_numpy(train.images.copy())
    return cfg, run, images, tasks


def _method(cfg, run) -> MetaLSTM:
    torch.manual_seed(0)
    method = methods.build(cfg, run.backbone()).double().train()
    with torch.no_grad():  # a meta-learner that takes real steps, so that the learner moves
        method.meta.b_i.fill_(-1.0)
    return method


def _pre64(run):
    return lambda batch: run.pre(batch).double()


def torch_learner(method: MetaLSTM) -> nn.Module:
    """The learner with ``nn.BatchNorm2d`` (the method's ε and momentum, running statistics kept)."""
    plain = copy.deepcopy(method.net)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, EpisodeBatchNorm2d):
                bn = nn.BatchNorm2d(child.weight.numel(), eps=child.eps, momentum=method.bn_momentum)
                setattr(module, name, bn.double())
            else:
                swap(child)

    swap(plain)
    return plain


def _split(flat, like):
    parts = flat.split([p.numel() for p in like.values()])
    return {k: part.view(p.shape) for (k, p), part in zip(like.items(), parts, strict=True)}


def reference_task(method, plain, x_s, y_s, x_q, steps, *, training, second_order=False):
    """One task: the inner loop with ∇_t by autograd on a detached copy of θ (or through θ itself when
    ``second_order``), batch norm by ``plain``'s torch modules reset for the episode; query logits."""
    like = method.theta0(len(y_s.unique()))
    theta = torch.cat([p.reshape(-1) for p in like.values()])
    state = method.meta.initial_state(theta)
    bns = [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.running_mean, bn.running_var = torch.zeros_like(bn.running_mean), torch.ones_like(bn.running_var)

    def forward(params, x):
        for bn in bns:  # torch updates them in place, and a backward may need the earlier values
            bn.running_mean, bn.running_var = bn.running_mean.clone(), bn.running_var.clone()
        return torch.func.functional_call(plain, _split(params, like), (x,))

    plain.train()
    for _ in range(steps):
        p = theta if second_order else theta.detach().requires_grad_()
        loss = F.cross_entropy(forward(p, x_s), y_s)
        (g,) = torch.autograd.grad(loss, p, create_graph=second_order)
        theta, state = method.meta(theta, g / len(y_s), loss if second_order else loss.detach(), state)
    plain.train(training)
    return forward(theta, x_q)


def _task_images(run, images, task, shot):
    x = _pre64(run)(images[torch.from_numpy(task).reshape(-1)])
    x = x.view(*task.shape, *x.shape[1:])
    return x[:, :shot].flatten(0, 1), x[:, shot:].flatten(0, 1)


def _reference_grads(cfg, run, images, tasks, *, second_order=False):
    slow = _method(cfg, run)
    plain = torch_learner(slow)
    targets, y_s = episode_targets(3, 3), episode_targets(3, 2)
    total, logits = 0.0, []
    for task in tasks:
        x_s, x_q = _task_images(run, images, task, 2)
        q = reference_task(slow, plain, x_s, y_s, x_q, 3, training=True, second_order=second_order)
        logits.append(q.detach())
        total = total + F.cross_entropy(q, targets) / len(tasks)
    total.backward()
    return total.detach(), torch.stack(logits), {k: p.grad for k, p in slow.named_parameters()}


def test_batched_meta_gradient_equals_a_per_task_loop_in_float64(setup):
    cfg, run, images, tasks = setup
    fast = _method(cfg, run)
    logits, targets = fast.task_logits(images, tasks, _pre64(run))
    loss = fast.loss(logits, targets)
    loss.backward()
    want_loss, want_logits, want = _reference_grads(cfg, run, images, tasks)
    torch.testing.assert_close(logits.detach(), want_logits, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-10, atol=1e-12)
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, want[name], rtol=1e-7, atol=1e-11, msg=name)
    # Every part learns: θ_0 (convolutions, batch norm, head) and both layers of the meta-learner.
    assert all(p.grad.abs().sum() > 0 for p in fast.parameters())


def test_the_meta_gradient_does_not_flow_through_the_learners_gradients(setup):
    """Equal to ∇_t taken as a constant (above), different from differentiating through it."""
    cfg, run, images, tasks = setup
    fast = _method(cfg, run)
    logits, targets = fast.task_logits(images, tasks, _pre64(run))
    fast.loss(logits, targets).backward()
    _, _, second = _reference_grads(cfg, run, images, tasks, second_order=True)
    conv = "encoder.blocks.1.0.weight"
    got = dict(fast.named_parameters())[conv].grad
    assert (got - second[conv]).abs().max() > 1e-4 * got.abs().max()


def test_test_time_queries_use_the_support_only_running_statistics(setup):
    """Eval mode: the torch reference's batch norm in eval mode after the steps in train mode (running
    averages from the reset statistics, momentum, unbiased variance)."""
    cfg, run, images, tasks = setup
    method = _method(cfg, run).eval()
    plain = torch_learner(method)
    with torch.no_grad():
        logits, _ = method.task_logits(images, tasks, _pre64(run))
    y_s = episode_targets(3, 2)
    for t, task in enumerate(tasks):
        x_s, x_q = _task_images(run, images, task, 2)
        want = reference_task(method, plain, x_s, y_s, x_q, 3, training=False)
        torch.testing.assert_close(logits[t], want.detach(), rtol=1e-9, atol=1e-10)
        # fit keeps the same running statistics as torch's buffers.
        with torch.no_grad():
            fitted = method.fit(x_s, y_s, 3)
        bns = [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
        for k, bn in enumerate(bns):
            torch.testing.assert_close(fitted[f"bn.{k}.mean"], bn.running_mean, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(fitted[f"bn.{k}.var"], bn.running_var, rtol=1e-9, atol=1e-12)


def test_statistics_reset_every_episode(setup):
    cfg, run, images, tasks = setup
    method = _method(cfg, run).eval()
    with torch.no_grad():
        together, _ = method.task_logits(images, tasks, _pre64(run))
        single = copy.deepcopy(method).float()  # evaluate's own preprocessing gives float32 images
        scores, _ = single.task_logits(images, tasks, run.pre)
        in_a_row = single.evaluate(images, torch.from_numpy(tasks), 2, chunk=1)
        alone = [method.task_logits(images, tasks[t : t + 1], _pre64(run))[0][0] for t in (2, 0, 1)]
    for t, logits in zip((2, 0, 1), alone, strict=True):
        torch.testing.assert_close(logits, together[t], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(in_a_row, (scores.argmax(-1) == episode_targets(3, 3)).float().mean(-1))
    torch.testing.assert_close(scores.double(), together, rtol=1e-4, atol=1e-5)
    x_a, _ = _task_images(run, images, tasks[0], 2)
    x_b, _ = _task_images(run, images, tasks[1], 2)
    y_s = episode_targets(3, 2)
    with torch.no_grad():
        method.fit(x_a, y_s, 3)
        after_a = method.fit(x_b, y_s, 3)
        fresh = _method(cfg, run).eval().fit(x_b, y_s, 3)
    assert after_a.keys() == fresh.keys() and len([k for k in fresh if k.startswith("bn.")]) == 8
    for k in fresh:
        torch.testing.assert_close(after_a[k], fresh[k], rtol=0, atol=0)


def test_a_test_querys_prediction_does_not_depend_on_the_other_queries(setup):
    cfg, run, images, tasks = setup
    method = _method(cfg, run)
    other = tasks.copy()
    other[:, :, 3:] = tasks[::-1, :, 3:]  # the same supports and first queries, other last queries
    with torch.no_grad():
        a, _ = method.eval().task_logits(images, tasks, _pre64(run))
        b, _ = method.task_logits(images, other, _pre64(run))
        first = [3 * c for c in range(3)]  # each class's first query
        torch.testing.assert_close(a[:, first], b[:, first], rtol=0, atol=0)
        x_s, x_q = _task_images(run, images, tasks[0], 2)
        fitted = method.fit(x_s, episode_targets(3, 2), 3)
        all_q = method.predict(fitted, x_q, 3)
        one_by_one = torch.cat([method.predict(fitted, x_q[i : i + 1], 3) for i in range(len(x_q))])
        torch.testing.assert_close(all_q, one_by_one, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(all_q.double(), a[0], rtol=1e-5, atol=1e-5)
        # In meta-training the query normalises with its own batch: the other queries matter there.
        a_train, _ = method.train().task_logits(images, tasks, _pre64(run))
        b_train, _ = method.task_logits(images, other, _pre64(run))
    assert not torch.allclose(a_train[:, first], b_train[:, first])


# 5. Bad input.


def test_second_order_is_refused_in_one_line(tiny_overrides):
    with pytest.raises(MtlError) as err:
        config.load(None, [*tiny_overrides, *SETS, "meta-lstm.second_order=true"])
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("meta-lstm.second_order: must be false: in Meta-LSTM the meta-gradient")
    result = CliRunner().invoke(main, ["config", "--set", "meta-lstm.second_order=true"])
    assert result.exit_code == 2 and result.output == f"error: {err.value}\n"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("meta-lstm.inner_steps=0", "meta-lstm.inner_steps: must be >= 1, got 0"),
        ("meta-lstm.test_inner_steps=-1", "meta-lstm.test_inner_steps: must be >= 0, got -1"),
        ("meta-lstm.bn_momentum=0", "meta-lstm.bn_momentum: must be > 0.0, got 0"),
        ("meta-lstm.bn_momentum=1.5", "meta-lstm.bn_momentum: must be <= 1.0, got 1.5"),
        ("meta-lstm.bn_eps=0", "meta-lstm.bn_eps: must be > 0.0, got 0"),
        ("meta-lstm.hidden_size=0", "meta-lstm.hidden_size: must be >= 1, got 0"),
        ("meta-lstm.lr=0", "meta-lstm.lr: must be > 0.0, got 0"),
        ("meta-lstm.preprocess_p=nan", "meta-lstm.preprocess_p: must be a finite number, got nan"),
        ("meta-lstm.hidden=3", "meta-lstm.hidden: unknown key (did you mean 'meta-lstm.hidden_size'?)"),
        ("meta-lstm.pretrained=maybe", "meta-lstm.pretrained"),
    ],
)
def test_bad_settings_are_one_line_errors(tiny_overrides, override, message):
    with pytest.raises(MtlError) as err:
        config.load(None, [*tiny_overrides, *SETS, override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_section_works_in_files_keys_and_sets(tiny_overrides, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("method: meta-lstm\nmeta-lstm:\n  hidden_size: 8\n  bn_momentum: 0.5\n")
    cfg = config.load(path, [*tiny_overrides, "meta-lstm.inner_steps=2"])
    s = cfg.section("meta-lstm")
    assert (s.hidden_size, s.bn_momentum, s.inner_steps, s.test_inner_steps) == (8, 0.5, 2, None)
    method = methods.build(cfg)
    assert (method.train_steps, method.test_steps, method.bn_momentum, method.max_grad_norm) == (
        2,
        12,
        0.5,
        0.25,
    )
    five = methods.build(config.load(None, [*tiny_overrides, *SETS, "meta.shot=5"]))
    assert (five.train_steps, five.test_steps, five.bn_momentum) == (8, 8, 0.95)
    keys = CliRunner().invoke(main, ["config", "--keys"]).output.splitlines()
    assert "# meta-lstm: settings of method 'meta-lstm'" in keys
    assert any(line.split()[:4] == ["meta-lstm.bn_eps", "float", "=", "0.001"] for line in keys)


def test_wrong_way_and_wrong_checkpoints_are_one_line_errors(setup, tiny_overrides):
    cfg, run, images, tasks = setup
    method = _method(cfg, run).float()
    with pytest.raises(MtlError, match=r"^Meta-LSTM was meta-trained for 3-way tasks: a task of 4 classes"):
        method.fit(torch.zeros(4, 3, 16, 16), torch.arange(4), 4)
    other = methods.build(config.load(None, [*tiny_overrides, *SETS, "meta-lstm.hidden_size=5"]))
    with pytest.raises(MtlError, match="meta_learner"):
        methods.build(cfg, state=other.state())


# 6. The stages end to end, and the benchmark row.


# 3-way 5-shot glyphs: with the paper's plain gradient and Adam at 1e-2, 100 meta-updates (about ten
# seconds) take Meta-LSTM from chance to 83-95% on test episodes where raw pixels get 48-54% (seeds 0-3).
# With the official gradient (divided by the support size again) or at 1-shot, this budget stays at chance.
E2E = [
    "method=meta-lstm", "backbone.name=conv4", "backbone.widths=[8,8,8,8]", "precision=fp32", "meta.shot=5",
    "meta.epochs=4", "meta.updates_per_epoch=25", "meta-lstm.lr=0.01", "meta-lstm.divide_gradient=false",
    "test.baselines=[pixels]",
]  # fmt: skip


def _write_classes(folder, images, labels, classes, take):
    for c in classes:
        for i, pixels in enumerate(images[labels == c][take]):
            write_image(folder / f"c{c}" / f"{i}.png", pixels)
    return folder


def test_metatrain_metatest_compare_and_adapt_on_glyphs(tiny_overrides, tmp_path):
    cfg = config.load(None, [*tiny_overrides, *E2E])
    assert metatrain(cfg, tmp_path, quiet=True)["epoch"] > 0
    path = tmp_path / "tiny" / "metatrain" / "best.pt"
    best = checkpoint.load(path, stage="metatrain")
    assert best["method"] == "meta-lstm" and {"encoder", "head", "meta_learner"} <= set(best)
    assert not any("running" in k for k in best["encoder"])  # statistics live only within an episode
    rows = {r["method"]: r["acc"] for r in metatest(cfg, tmp_path, quiet=True)["rows"]}
    assert list(rows) == ["Meta-LSTM", "nearest centroid, raw pixels"]
    assert rows["Meta-LSTM"] > rows["nearest centroid, raw pixels"] + 20, rows

    # compare: the paper's Conv-4 row (32 filters) beside raw pixels, a short training.
    short = config.load(
        None, [*tiny_overrides, *E2E, "meta.epochs=1", "meta.updates_per_epoch=2", "compare.episodes=30"]
    )
    table = compare(short, tmp_path / "compare", names=["meta-lstm-conv4", "pixels"], quiet=True)
    labels = [r["method"] for r in table["rows"]]
    assert labels == ["Meta-LSTM, Conv-4 (32 filters)", "nearest centroid, raw pixels"]
    row = checkpoint.load(
        tmp_path / "compare" / "tiny" / "compare" / "meta-lstm-conv4" / "best.pt", stage="metatrain"
    )
    assert row["encoder"]["blocks.3.0.weight"].shape[0] == 32 and row["method"] == "meta-lstm"

    # adapt on image files of three test classes; predict from the saved classifier.
    test = load_splits(cfg.data, ("test",))["test"]
    support = _write_classes(tmp_path / "support", test.images, test.labels, (0, 1, 2), slice(0, 5))
    query = _write_classes(tmp_path / "query", test.images, test.labels, (0, 1, 2), slice(5, 8))
    saved = tmp_path / "classifier.pt"
    res = adapt_folders(path, support, query, save=saved, quiet=True)
    assert res["steps"] == 8 and res["theta_init"] == "meta-learned θ_0, LSTM updates"
    assert res["accuracy"] >= 100 * 6 / 9, res["accuracy"]
    method = methods.build(cfg, state=best).eval()
    pre = Preprocess.for_data(cfg.data)
    x_s = pre(torch.from_numpy(np.concatenate([test.images[test.labels == c][:5] for c in range(3)])))
    fitted = method.fit(x_s, torch.arange(3).repeat_interleave(5), 3)
    for p in res["predictions"]:
        c, i = int(p["image"].split("/")[0][1:]), int(p["image"].split("/")[1][:-4])
        x_q = pre(torch.from_numpy(test.images[test.labels == c][5 + i : 6 + i]))
        want = torch.softmax(method.predict(fitted, x_q, 3), -1)[0]  # this image alone
        got = torch.tensor([p["probs"][f"c{k}"] for k in range(3)])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    again = predict(saved, [query], quiet=True)["predictions"]
    assert [p["image"] for p in again] == [p["image"] for p in res["predictions"]]
    for a, b in zip(again, res["predictions"], strict=True):
        assert a["probs"] == pytest.approx(b["probs"], rel=1e-5)


def test_bench_row_batched_equals_the_per_task_loop():
    s = Setup(
        widths=(4, 4, 8, 8), image_size=16, classes=10, images_per_class=20, test_episodes=30,
        ref_episodes=6, meta_batch=2, min_seconds=0.01, pretrain_batch=16, shot=5, query=3,
    )  # fmt: skip
    images = np.concatenate(
        [render_class(c, 20, image_size=16, channels=3, preset="easy", seed=0) for c in range(10)]
    )
    r = bench_meta_lstm(s, images, np.repeat(np.arange(10), 20), torch.device("cpu"))
    assert r["inner_steps"] == 8 and r["speedup"] > 0 and r["batched_tasks_per_s"] > 0
    assert r["first_step_loss_batched"] == pytest.approx(r["first_step_loss_per_task"], rel=1e-5)
    assert r["batched_peak_mb"] >= 0 and r["per_task_peak_mb"] >= 0
