"""TADAM: FiLM, the task embedding, metric scaling and co-training against plain references of the
formulas (float64), the task-batched meta-batch against a per-task loop, and a tiny run end to end."""

from __future__ import annotations

import copy
import dataclasses
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import write_image

from mtl import config, methods
from mtl.data.episodes import EpisodeSampler, episode_targets
from mtl.data.sources import load_splits
from mtl.errors import MtlError
from mtl.methods.tadam import (
    TADAM,
    FiLMGenerator,
    class_prototypes,
    cotraining_probability,
    lr_drop_factor,
    metric_logits,
)
from mtl.models.backbone import build_backbone
from mtl.stages.compare import known_rows
from mtl.training import resume

SETS = ["method=tadam", "backbone.name=conv4", "backbone.widths=[4,4,4,4]", "precision=fp32"]


def _cfg(tiny_overrides, *sets: str) -> config.Config:
    return config.load(None, [*tiny_overrides, *SETS, "tadam.aux_batch=8", *sets])


def _method(cfg: config.Config, seed: int = 0) -> TADAM:
    torch.manual_seed(seed)
    return methods.build(cfg, build_backbone("conv4", widths=[4, 4, 4, 4], image_size=16))


def _perturb_film(method: TADAM, seed: int = 1) -> None:
    """Non-zero post-multipliers, so that FiLM changes the embedding."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gen in method.ten:
            gen.beta0.copy_(torch.randn((), generator=g))
            gen.gamma0.copy_(0.5 * torch.randn((), generator=g))


# ----------------------------------------------------------------------------- plain references


def mlp_reference(net, x: torch.Tensor) -> torch.Tensor:
    """TADAM's residual MLP written out: y_0 = W_0 x + b_0, y_l = W_l y_{l-1} + b_l + y_{l-1},
    swish(y) = y / (1 + e^−y) after every layer but the last."""
    for i, fc in enumerate(net.fcs):
        y = x @ fc.weight.T + fc.bias + (x if i > 0 else 0)
        x = y / (1 + torch.exp(-y)) if i < len(net.fcs) - 1 else y
    return x


def film_reference(gen: FiLMGenerator, cbar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return gen.gamma0 * mlp_reference(gen.h, cbar) + 1, gen.beta0 * mlp_reference(gen.g, cbar)


def task_reference(method: TADAM, x_s, y_s, x_q, way: int) -> torch.Tensor:
    """One task by hand: prototypes of the plain encoder, c̄ their mean, FiLM by the test's own hooks
    (γ·BN(x) + β after every batch norm of Conv-4), prototypes again, −α‖q − c_k‖ summed out by hand."""
    enc = method.encoder

    def protos(z):
        return torch.stack([z[y_s == k].mean(0) for k in range(way)])

    cbar = protos(enc(x_s)).mean(0, keepdim=True)
    params = [film_reference(gen, cbar) for gen in method.ten]
    norms = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == len(params) == 4
    handles = [
        n.register_forward_hook(lambda _m, _i, o, g=g, b=b: o * g[0, :, None, None] + b[0, :, None, None])
        for n, (g, b) in zip(norms, params, strict=True)
    ]
    try:
        c, zq = protos(enc(x_s)), enc(x_q)
    finally:
        for h in handles:
            h.remove()
    return -method.alpha * ((zq[:, None, :] - c[None, :, :]) ** 2).sum(-1).sqrt()


@pytest.fixture
def setup(tiny_overrides):
    cfg = _cfg(tiny_overrides)
    train = load_splits(cfg.data, ("train",))["train"]
    tasks = np.stack([EpisodeSampler(train.labels, 3, 1, 3, seed=0).sample() for _ in range(3)])
    return cfg, torch.from_numpy(train.images.copy()), train.labels, tasks


def _pre(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2).double() / 255


# ----------------------------------------------------------------------------- 1. the maths, float64


def test_film_of_the_task_embedding_equals_the_formula():
    torch.manual_seed(0)
    gen = FiLMGenerator(dim=5, channels=4, layers=3).double()
    cbar = torch.randn(2, 5, dtype=torch.float64)
    gamma, beta = gen(cbar)
    assert torch.equal(gamma, torch.ones(2, 4, dtype=torch.float64)) and not beta.any()  # β₀ = γ₀ = 0
    with torch.no_grad():
        gen.beta0.fill_(0.7), gen.gamma0.fill_(-1.3)
    want_gamma, want_beta = film_reference(gen, cbar)
    got_gamma, got_beta = gen(cbar)
    torch.testing.assert_close(got_gamma, want_gamma, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_beta, want_beta, rtol=1e-12, atol=1e-12)
    assert (got_gamma - 1).abs().min() > 1e-3 and got_beta.abs().min() > 1e-4


def test_prototypes_and_metric_scaling_equal_the_formula():
    torch.manual_seed(0)
    z, q = torch.randn(2, 6, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 2, 0, 2])
    protos = class_prototypes(z, y, 3)
    for t in range(2):
        for k in range(3):
            torch.testing.assert_close(protos[t, k], z[t, y == k].mean(0), rtol=1e-14, atol=1e-14)
    got = metric_logits(q, protos, 2.5)
    for t in range(2):
        for i in range(4):
            for k in range(3):
                d = math.sqrt(sum((float(q[t, i, j]) - float(protos[t, k, j])) ** 2 for j in range(3)))
                assert got[t, i, k].item() == pytest.approx(-2.5 * d, rel=1e-12)
    torch.testing.assert_close(metric_logits(q, protos, 7.5), 3 * got, rtol=1e-14, atol=1e-14)


def test_zero_post_multipliers_make_a_scaled_distance_protonet(setup):
    cfg, images, _, tasks = setup
    method = _method(cfg).double().eval()
    x = _pre(images[torch.from_numpy(tasks[0]).reshape(-1)]).view(3, 4, 3, 16, 16)
    x_s, x_q = x[:, :1].flatten(0, 1), x[:, 1:].flatten(0, 1)
    y_s = episode_targets(3, 1)
    with torch.no_grad():
        logits = method.episode_logits(x_s, y_s, x_q, 1, 3)[0]
        z_s, z_q = method.encoder(x_s), method.encoder(x_q)  # no FiLM anywhere
    want = [[-7.5 * float(((z_q[i] - z_s[k]) ** 2).sum().sqrt()) for k in range(3)] for i in range(9)]
    torch.testing.assert_close(logits, torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    _perturb_film(method)  # then FiLM does change them
    with torch.no_grad():
        assert not torch.allclose(method.episode_logits(x_s, y_s, x_q, 1, 3)[0], logits)


@pytest.mark.parametrize(
    ("t", "code", "paper"),
    [
        (0, 0.9, 1.0),
        (1499, 0.9, 1.0),
        (1500, 0.81, 0.9),
        (15000, 0.9**11, 0.9**10),
        (29999, 0.9**20, 0.9**19),
    ],
)
def test_cotraining_probability_schedules(t, code, paper):
    assert cotraining_probability(t, 30000, "code") == pytest.approx(code, rel=1e-12)
    assert cotraining_probability(t, 30000, "paper") == pytest.approx(paper, rel=1e-12)
    # ⌊20t/T⌋ as the code's ⌊t / (T // 20)⌋ where 20 divides T, at any T
    assert cotraining_probability(t // 10, 3000, "code") == pytest.approx(code, rel=1e-12)


def test_learning_rate_drops_have_the_codes_shape_at_any_length():
    drops = [0.5, 7 / 12, 2 / 3]
    code = {0: 1, 15000: 1, 15001: 0.1, 17500: 0.1, 17501: 0.01, 20000: 0.01, 20001: 1e-3, 29999: 1e-3}
    short = {0: 1, 60: 1, 61: 0.1, 70: 0.1, 71: 0.01, 80: 0.01, 81: 1e-3, 119: 1e-3}  # T = 120
    for total, expected in ((30000, code), (120, short)):
        for t, f in expected.items():
            assert lr_drop_factor(t, total, drops) == pytest.approx(f), (total, t)


# ----------------------------------------------------------------------------- 2. batched = per task


def _loss_and_grads(method: TADAM, logits: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
    loss = F.cross_entropy(logits.flatten(0, 1), targets.repeat(len(logits)))
    params = [p for p in method.parameters() if p.requires_grad]
    return [loss, *torch.autograd.grad(loss, params)]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batched_meta_batch_equals_a_per_task_loop(setup, mode):
    """Logits and gradients of every parameter. In training, batch norm pools the statistics of the
    meta-batch's tasks (as the official code does), so a per-task loop computes the same maths for a
    meta-batch of one task; with running statistics, for any number."""
    cfg, images, _, tasks = setup
    tasks = tasks if mode == "eval" else tasks[:1]
    fast, slow = _method(cfg).double(), _method(cfg).double()
    for m in (fast, slow):
        _perturb_film(m)
        m.train(mode == "train")
    logits, targets = fast.task_logits(images, tasks, _pre)
    assert logits.shape == (len(tasks), 9, 3) and logits.dtype == torch.float64
    want = []
    for task in tasks:
        x = _pre(images[torch.from_numpy(task).reshape(-1)]).view(3, 4, 3, 16, 16)
        want.append(
            task_reference(slow, x[:, :1].flatten(0, 1), episode_targets(3, 1), x[:, 1:].flatten(0, 1), 3)
        )
    want = torch.stack(want)
    torch.testing.assert_close(logits, want, rtol=1e-9, atol=1e-9)
    got_grads, want_grads = _loss_and_grads(fast, logits, targets), _loss_and_grads(slow, want, targets)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    multipliers = {id(p) for gen in fast.ten for p in (gen.beta0, gen.gamma0)}
    params = [p for p in fast.parameters() if p.requires_grad]
    assert all(g.abs().sum() > 0 for p, g in zip(params, got_grads[1:], strict=True) if id(p) in multipliers)


def test_evaluation_in_chunks_equals_the_batched_logits(setup):
    cfg, images, _, tasks = setup
    method = _method(cfg).eval()
    _perturb_film(method)
    with torch.no_grad():
        logits, targets = method.task_logits(images, tasks, method.pre)
    acc = method.evaluate(images, torch.from_numpy(tasks), 1, chunk=2)
    torch.testing.assert_close(acc, (logits.argmax(-1) == targets).float().mean(-1))


# ----------------------------------------------------------------------------- 3. co-training


def _steps(method: TADAM, images, labels, updates: range, total: int) -> list[bool]:
    pre = lambda x: x.permute(0, 3, 1, 2).float() / 255  # noqa: E731
    return [method.auxiliary_update(images, labels, t, total, pre) is not None for t in updates]


def test_cotraining_steps_with_the_scheduled_probability(setup, tiny_overrides):
    """A step happens exactly when the uniform draw of ``generators()`` falls below the schedule's
    probability (replayed here from a copy of the generator), then the batch is drawn from it."""
    cfg, images, labels, _ = setup
    cfg = _cfg(tiny_overrides, "tadam.aux_batch=2", "tadam.cotrain_decay=0.5", "tadam.cotrain_decays=2")
    method = _method(cfg).train()
    replay = copy.deepcopy(method.generators()["tadam_draws"])
    fired = _steps(method, images, labels, range(60), 60)
    want = []
    for t in range(60):
        want.append(bool(replay.random() < (0.5 if t < 30 else 0.25)))  # 0.5^(⌊2t/60⌋ + 1)
        if want[-1]:
            replay.choice(len(labels), size=2, replace=False)
    assert fired == want and 0 < sum(fired[30:]) < sum(fired[:30]) < 30
    assert fired[:30] == _steps(_method(cfg).train(), images, labels, range(30), 60)  # seeded
    other = dataclasses.replace(cfg, seed=cfg.seed + 1)
    assert fired[:30] != _steps(_method(other).train(), images, labels, range(30), 60)
    paper = _cfg(tiny_overrides, "tadam.cotrain_schedule=paper", "tadam.cotrain_decay=0.5")
    assert all(_steps(_method(paper).train(), images, labels, range(20), 400))  # 0.5^0 = 1 at the start
    assert not any(_steps(_method(_cfg(tiny_overrides, "tadam.cotrain=false")), images, labels, range(5), 9))


def test_a_cotraining_step_trains_head_and_encoder_at_the_scheduled_rate(setup, tiny_overrides):
    cfg, images, labels, _ = setup
    cfg = _cfg(tiny_overrides, "tadam.cotrain_decay=1.0")  # every update co-trains
    method = _method(cfg).train()
    assert method.aux.head is None
    assert _steps(method, images, labels, range(1), 120) == [True]
    head = method.aux.head
    assert head.out_features == int(labels.max()) + 1 == 19
    w, enc = head.weight.detach().clone(), method.encoder.blocks[0][0].weight.detach().clone()
    assert _steps(method, images, labels, range(1, 2), 120) == [True]
    assert not torch.equal(head.weight, w) and not torch.equal(method.encoder.blocks[0][0].weight, enc)
    assert [g["lr"] for g in method.aux.opt.param_groups] == pytest.approx([0.1] * 3)
    _steps(method, images, labels, range(71, 72), 120)  # after the second drop, as the meta-updates
    assert [g["lr"] for g in method.aux.opt.param_groups] == pytest.approx([1e-3] * 3)
    assert method.lr_factor(71, 120, 0.5) == pytest.approx(0.01)


def test_a_resumed_run_draws_and_steps_as_an_uninterrupted_one(setup, tiny_overrides):
    cfg, images, labels, _ = setup
    cfg = _cfg(tiny_overrides, "tadam.aux_batch=4", "tadam.cotrain_decay=0.7", "tadam.cotrain_decays=4")
    a = _method(cfg).train()
    _steps(a, images, labels, range(6), 24)
    buf = io.BytesIO()
    torch.save({"method": a.state(), "rng": resume.rng_state(a.generators())}, buf)
    fired = _steps(a, images, labels, range(6, 24), 24)
    assert 0 < sum(fired) < 18
    b = _method(cfg, seed=5).train()
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    b.load_state(saved["method"])
    resume.set_rng_state(saved["rng"], b.generators())
    assert _steps(b, images, labels, range(6, 24), 24) == fired
    torch.testing.assert_close(b.aux.head.weight, a.aux.head.weight, rtol=0, atol=0)
    for (name, p), q in zip(a.encoder.state_dict().items(), b.encoder.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


# ----------------------------------------------------------------------------- 4. bad input


def test_bad_input_is_one_line(setup, tiny_overrides):
    cfg, images, labels, _ = setup
    method = _method(cfg).train()
    pre = lambda x: x.permute(0, 3, 1, 2).float() / 255  # noqa: E731
    with pytest.raises(
        MtlError, match=r"^tadam.cotrain: co-training needs the base classes' labelled images"
    ):
        method.auxiliary_update(images[:0], np.zeros(0, np.int64), 0, 10, pre)
    with pytest.raises(MtlError, match=r"^tadam.cotrain: co-training needs at least 2 base classes"):
        method.auxiliary_update(images[:9], np.zeros(9, np.int64), 0, 10, pre)
    with pytest.raises(MtlError, match=r"^tadam.aux_batch: 8 images a step, but the train split has 5$"):
        method.auxiliary_update(images[:5], np.arange(5), 0, 10, pre)
    method.auxiliary_update(images, labels, 0, 10, pre)  # builds the 19-way head
    with pytest.raises(
        MtlError, match=r"^tadam.cotrain: the co-training head has 19 classes, the train split 9$"
    ):
        method.auxiliary_update(images[:90], labels[:90] % 9, 1, 10, pre)
    with pytest.raises(MtlError, match=r"^tadam: every one of the 3 classes needs a support image"):
        method.eval().fit(pre(images[:4]), torch.tensor([0, 0, 1, 1]), 3)

    class NoNorm(torch.nn.Module):
        num_features = 4

        def forward(self, x):
            return x.mean((2, 3))

    with pytest.raises(
        MtlError, match=r"^tadam.film: backbone 'conv4' has no batch norm .* set tadam.film=false$"
    ):
        methods.build(cfg, NoNorm())
    assert methods.build(_cfg(tiny_overrides, "tadam.film=false"), NoNorm()).ten is None
    for key, value, message in [
        ("tadam.cotrain_schedule", "tf", "is not one of code, paper"),
        ("tadam.lr_drops", "[0.5, 1.5]", "must be <= 1.0"),
        ("tadam.metric_scale", "0", "must be > 0.0"),
    ]:
        with pytest.raises(MtlError, match=rf"^{key}.*{message}"):
            _cfg(tiny_overrides, f"{key}={value}")


# ----------------------------------------------------------------------------- 5. end to end


def test_tadam_end_to_end_beats_raw_pixels(tiny_overrides, tmp_path):
    from mtl.inference.adapt import adapt_folders
    from mtl.runtime import checkpoint
    from mtl.stages.compare import compare
    from mtl.stages.metatest import metatest
    from mtl.stages.metatrain import metatrain

    run = ["meta.epochs=3", "meta.updates_per_epoch=20", "meta.val_episodes=30", "test.episodes=100"]
    cfg = _cfg(tiny_overrides, "tadam.aux_batch=32", "backbone.widths=[8,8,8,8]", "test.baselines=[pixels]",
               "compare.episodes=40", *run)  # fmt: skip
    assert metatrain(cfg, tmp_path, quiet=True)["epoch"] > 0
    best = tmp_path / "tiny" / "metatrain" / "best.pt"
    saved = checkpoint.load(best, stage="metatrain")
    assert saved["method"] == "tadam" and {"encoder", "ten", "alpha"} <= set(saved)
    rows = {r["method"]: r for r in metatest(cfg, tmp_path, quiet=True)["rows"]}
    assert list(rows) == ["TADAM", "nearest centroid, raw pixels"]
    tadam, pixels = rows["TADAM"], rows["nearest centroid, raw pixels"]
    assert tadam["acc"] - tadam["ci95"] > pixels["acc"], (tadam, pixels)  # measured: 55.7 ± 3.3 vs 37.4 ± 3.2

    short = dataclasses.replace(cfg, meta=dataclasses.replace(cfg.meta, epochs=1, updates_per_epoch=4))
    table = compare(short, tmp_path, names=["tadam"], quiet=True)
    (row,) = table["rows"]
    assert row["method"] == known_rows()["tadam"][1] and 0 <= row["acc"] <= 100
    assert table["seconds"][row["method"]] > 0

    # mtl adapt: FiLM and prototypes fitted on support images from files, queries classified.
    test = load_splits(cfg.data, ("test",))["test"]
    support, query, y_s, y_q = tmp_path / "support", tmp_path / "query", [], []
    for k, c in enumerate(np.unique(test.labels)[:3]):
        ids = np.flatnonzero(test.labels == c)
        for i, j in enumerate(ids[:5]):
            folder = support if i < 2 else query
            write_image(folder / f"c{k}" / f"{i}.png", test.images[j])
            (y_s if i < 2 else y_q).append((k, j))
    result = adapt_folders(best, support, query, quiet=True)
    assert result["theta_init"] == "prototypes of the task-conditioned encoder" and result["steps"] is None
    method = methods.build(cfg, state=saved).eval()
    x = lambda pairs: method.pre(torch.from_numpy(test.images[[j for _, j in pairs]]))  # noqa: E731
    with torch.no_grad():
        want = task_reference(method, x(y_s), torch.tensor([k for k, _ in y_s]), x(y_q), 3).softmax(-1)
    got = torch.tensor([[p["probs"][c] for c in result["classes"]] for p in result["predictions"]])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bench_row_batched_equals_the_per_task_loop():
    from mtl.bench.benchmark import Setup, _images
    from mtl.bench.tadam import bench_tadam

    s = Setup((4, 4, 4, 4), 16, 8, 6, 10, 5, 2, 0.01, 32, query=2)
    images, labels = _images(s)
    r = bench_tadam(s, images, labels, torch.device("cpu"))
    assert set(r) == {
        "batched_tasks_per_s", "per_task_tasks_per_s", "speedup", "batched_peak_mb", "per_task_peak_mb",
        "first_step_loss_batched", "first_step_loss_per_task", "inner_steps",
    }  # fmt: skip
    assert r["speedup"] == r["batched_tasks_per_s"] / r["per_task_tasks_per_s"] > 0
    assert r["first_step_loss_batched"] == pytest.approx(r["first_step_loss_per_task"], rel=1e-5)


def test_a_learned_metric_scale_is_optimised(setup, tiny_overrides):
    cfg, images, _, tasks = setup
    fixed = _method(cfg).train()
    assert "alpha" in dict(fixed.named_buffers()) and all(
        g["name"] != "metric scale" for g in fixed.param_groups()
    )
    learned = _method(_cfg(tiny_overrides, "tadam.learn_scale=true", "tadam.metric_scale=2.0")).train()
    (group,) = [g for g in learned.param_groups() if g["name"] == "metric scale"]
    assert group["params"] == [learned.alpha] and group["weight_decay"] == 0.0 and learned.alpha.item() == 2.0
    loss, logits, _ = learned.task_loss(images, tasks, _pre_float)
    loss.backward()
    d = -logits.detach() / learned.alpha.detach()  # ∂L/∂α = Σ ∂L/∂logits · (−‖q − c‖)
    assert learned.alpha.grad is not None and learned.alpha.grad.abs() > 0 and d.min() >= 0


def _pre_float(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2).float() / 255
