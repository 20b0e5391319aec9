"""MANN: the memory's equations against a plain float64 reference, the task-batched recurrence against a
per-task loop, the episodes' label offset and independent queries, bad input, and a tiny run through
metatrain, metatest (accuracy by presentation), compare, adapt and ``mtl report --plot``."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import TINY
from fakes import write_image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtl import config, methods
from mtl.cli import main
from mtl.data.episodes import EpisodeSampler, episode_targets, fixed_episodes
from mtl.data.prepare.manifest import source_format
from mtl.data.sources import load_splits
from mtl.errors import MtlError
from mtl.methods.mann import MANN, MANNSettings, MemoryCore, State, by_presentation, sequence_inputs
from mtl.results.published import published_breakdowns
from mtl.results.report import breakdown_table, ordinal, results_table, summarize_breakdowns
from mtl.results.results_file import read_results
from mtl.training.run import Run

PIPELINE = str(Path(__file__).resolve().parents[1] / "pipelines" / "glyphs-1shot.yaml")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A recurrence of small kernels runs fastest on one thread (two spin against each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A plain float64 reference of one step, loops over heads, rows and columns.


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _params(core: MemoryCore) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in core.state_dict().items()}


def reference_step(p: dict, s: MANNSettings, n: int, x: np.ndarray, st: dict) -> tuple[np.ndarray, dict]:
    """One step of one sequence: input ``x`` (image, previous label), state ``st`` (numpy) -> logits
    and the next state, from the paper's equations."""
    U, H, W, R = s.controller, s.read_heads, s.memory_width, s.memory_rows
    inp = np.concatenate([x, st["r"]])
    gates = (
        p["controller.weight_ih"] @ inp + p["controller.bias_ih"]
        + p["controller.weight_hh"] @ st["h"] + p["controller.bias_hh"]
    )  # fmt: skip
    i, f = 1 / (1 + np.exp(-gates[:U])), 1 / (1 + np.exp(-gates[U : 2 * U]))
    g, o = np.tanh(gates[2 * U : 3 * U]), 1 / (1 + np.exp(-gates[3 * U :]))
    c = f * st["c"] + i * g
    h = o * np.tanh(c)
    head = p["heads.weight"] @ h + p["heads.bias"]
    keys = [np.tanh(head[j * (W + 1) : j * (W + 1) + W]) for j in range(H)]
    gates_w = [_sigmoid(head[j * (W + 1) + W]) for j in range(H)]
    rows = sorted(range(R), key=lambda r: (st["w_u"][r], r))  # least used first, ties: lower row
    lu_rows, lu = set(rows[:n]), rows[0]
    w_w = [
        [gates_w[j] * st["w_r"][j][r] + (1 - gates_w[j]) * (r in lu_rows) for r in range(R)] for j in range(H)
    ]
    M = [
        [
            (0.0 if r == lu else st["M"][r][w]) + sum(w_w[j][r] * keys[j][w] for j in range(H))
            for w in range(W)
        ]
        for r in range(R)
    ]
    source = M if s.read_after_write else st["M"]
    w_r, reads = [], []
    for j in range(H):
        k_norm = max(math.sqrt(sum(v * v for v in keys[j])), 1e-8)
        cos = []
        for r in range(R):
            m_norm = max(math.sqrt(sum(v * v for v in source[r])), 1e-8)
            cos.append(sum(keys[j][w] * source[r][w] for w in range(W)) / (k_norm * m_norm + 1e-8))
        e = [math.exp(v) for v in cos]
        w_r.append([v / sum(e) for v in e])
        reads += [sum(w_r[j][r] * source[r][w] for r in range(R)) for w in range(W)]
    usage = [s.gamma * st["w_u"][r] + sum(w_r[j][r] + w_w[j][r] for j in range(H)) for r in range(R)]
    logits = p["out.weight"] @ np.concatenate([h, reads]) + p["out.bias"]
    new = {
        "h": h,
        "c": c,
        "r": np.array(reads),
        "M": np.array(M),
        "w_r": np.array(w_r),
        "w_u": np.array(usage),
    }
    return logits, new


def _settings(**kw) -> MANNSettings:
    base = {"controller": 5, "memory_rows": 6, "memory_width": 3, "read_heads": 2, "classes": 3, "gamma": 0.9}
    return MANNSettings(**{**base, **kw})


def _core(s: MANNSettings, features: int = 4) -> MemoryCore:
    torch.manual_seed(0)
    return MemoryCore(features, s).double()


def _numpy_state(state: State, b: int = 0) -> dict:
    return {k: v[b].detach().numpy().copy() for k, v in state._asdict().items()}


def _assert_state(state: State, ref: dict, b: int = 0) -> None:
    for k, v in state._asdict().items():
        np.testing.assert_allclose(v[b].detach().numpy(), ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize(("read_after_write", "least_used"), [(False, None), (True, None), (False, 3)])
def test_one_step_equals_the_equations_in_float64(read_after_write, least_used):
    s = _settings(read_after_write=read_after_write, least_used=least_used)
    core = _core(s)
    g = torch.Generator().manual_seed(1)
    B, R = 2, s.memory_rows
    state = State(
        h=torch.randn(B, 5, generator=g, dtype=torch.float64),
        c=torch.randn(B, 5, generator=g, dtype=torch.float64),
        r=torch.randn(B, 6, generator=g, dtype=torch.float64),
        M=torch.randn(B, R, 3, generator=g, dtype=torch.float64),
        w_r=torch.softmax(torch.randn(B, 2, R, generator=g, dtype=torch.float64), -1),
        # ties in usage: the least-used rows are the lower of equals
        w_u=torch.tensor(
            [[0.5, 0.0, 0.2, 0.0, 1.0, 0.0], [0.1, 0.1, 0.1, 0.3, 0.0, 0.1]], dtype=torch.float64
        ),
    )
    x = torch.randn(B, 4 + 3, generator=g, dtype=torch.float64)
    logits, new = core.step(x, state)
    for b in range(B):
        want, ref = reference_step(_params(core), s, least_used or 2, x[b].numpy(), _numpy_state(state, b))
        np.testing.assert_allclose(logits[b].detach().numpy(), want, rtol=1e-10, atol=1e-12)
        _assert_state(new, ref, b)
    # the least-used row of the first sequence (row 1) was zeroed before the write
    lu_rows = {1, 3} if least_used is None else {1, 3, 5}
    written = torch.einsum("bhr,bhw->brw", *_write_parts(core, x, state, lu_rows))[0, 1]
    torch.testing.assert_close(new.M[0, 1], written)


def _write_parts(core, x, state, lu_rows):
    """w^w and the keys of the first sequence's step, for the zeroed row's check."""
    s = core.s
    h, _ = core.controller(torch.cat([x, state.r], -1), (state.h, state.c))
    head = core.heads(h).view(len(h), s.read_heads, s.memory_width + 1)
    gate = torch.sigmoid(head[..., -1])[..., None]
    lu = torch.zeros(s.memory_rows, dtype=x.dtype)
    lu[list(lu_rows)] = 1
    return gate * state.w_r + (1 - gate) * lu, torch.tanh(head[..., :-1])


def test_a_sequence_and_its_queries_equal_the_equations_in_float64():
    s = _settings()
    core = _core(s)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    slots = torch.tensor([[2, 0, 1, 2, 0], [1, 1, 0, 2, 2]])
    query = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    logits, state = core.support(x, slots)
    q_logits = core.query(query, state)
    p = _params(core)
    for b in range(2):
        st = {
            "h": np.zeros(5), "c": np.zeros(5), "r": np.zeros(6), "M": np.full((6, 3), 1e-6),
            "w_r": np.eye(6)[[0, 0]], "w_u": np.eye(6)[0],
        }  # fmt: skip
        previous = np.zeros(3)
        for t in range(5):  # step t is shown the label of step t - 1
            out, st = reference_step(p, s, 2, np.concatenate([x[b, t].numpy(), previous]), st)
            np.testing.assert_allclose(logits[b, t].detach().numpy(), out, rtol=1e-9, atol=1e-12)
            previous = np.eye(3)[slots[b, t]]
        _, st = reference_step(p, s, 2, np.concatenate([np.zeros(4), previous]), st)  # the last label
        _assert_state(state, st, b)
        for j in range(3):  # each query from the same state, with no label
            out, _ = reference_step(p, s, 2, np.concatenate([query[b, j].numpy(), np.zeros(3)]), st)
            np.testing.assert_allclose(q_logits[b, j].detach().numpy(), out, rtol=1e-9, atol=1e-12)
    assert (state.M.abs() > 1e-3).any() and not torch.allclose(state.w_u, state.w_u[:, :1])


# The method on tiny glyph tasks.


@pytest.fixture
def tiny(tiny_overrides, tmp_path):
    sets = ["method=mann", "precision=fp32", "mann.controller=8", "mann.memory_rows=8", "mann.memory_width=4"]
    cfg = config.load(None, [*tiny_overrides, *sets, "mann.read_heads=2", "mann.classes=4", "meta.shot=2"])
    run = Run.open(cfg, "metatrain", tmp_path / "ck", quiet=True)
    train = load_splits(cfg.data, ("train",))["train"]
    tasks = np.stack([EpisodeSampler(train.labels, 3, 2, 3, seed=0).sample() for _ in range(3)])
    return SimpleNamespace(cfg=cfg, run=run, images=torch.from_numpy(train.images.copy()), tasks=tasks)


def _method(cfg) -> MANN:
    torch.manual_seed(0)
    return methods.build(cfg).train()


def _features(mann: MANN, t, tasks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    T, way, n = tasks.shape
    x = mann.input_net(t.run.pre(t.images[torch.from_numpy(tasks).reshape(-1)])).view(T, way, n, -1)
    return x[:, :, :2].flatten(1, 2), x[:, :, 2:].flatten(1, 2)


def test_task_batched_logits_and_gradients_equal_a_per_task_loop(tiny):
    fast, slow = _method(tiny.cfg), _method(tiny.cfg)
    T, way = len(tiny.tasks), 3
    drawn = torch.Generator()
    drawn.set_state(fast.rng.get_state())
    slots, order = fast.draw(T, way, 6, drawn)
    loss, q_logits, targets = fast.task_loss(tiny.images, tiny.tasks, tiny.run.pre)  # draws the same
    loss.backward()
    y_s = episode_targets(way, 2)
    total = 0.0
    for t in range(T):
        support, query = _features(slow, tiny, tiny.tasks[t : t + 1])
        s_logits, labels, q = slow.episode_logits(support, y_s, query, slots[t : t + 1], order[t : t + 1])
        torch.testing.assert_close(q[0].gather(-1, slots[t].expand(9, -1)), q_logits[t].detach())
        wanted = slots[t][torch.cat([labels[0], targets])]
        total = total + F.cross_entropy(torch.cat([s_logits[0], q[0]]), wanted) / T
    total.backward()
    torch.testing.assert_close(loss.detach(), total.detach())
    for (name, a), b in zip(fast.core.named_parameters(), slow.core.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad.abs().sum() > 0 for p in fast.core.parameters())


def test_labels_are_offset_by_one_step_and_redrawn_per_episode(tiny):
    mann = _method(tiny.cfg)
    x = torch.randn(2, 4, 5)
    slots = torch.tensor([[3, 1, 1, 0], [2, 0, 3, 3]])
    inputs = sequence_inputs(x, slots, 4)
    assert inputs.shape == (2, 5, 9)
    torch.testing.assert_close(inputs[:, :4, :5], x)
    assert (inputs[:, 4, :5] == 0).all()  # the last step: a blank image with the last label
    assert (inputs[:, 0, 5:] == 0).all()  # no label before the first image
    torch.testing.assert_close(inputs[:, 1:, 5:], F.one_hot(slots, 4).float())

    seen = []  # what the controller is fed through the method's path
    hook = mann.core.controller.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    features = mann.input_net(tiny.run.pre(tiny.images[:6]))
    query = mann.input_net(tiny.run.pre(tiny.images[6:9]))
    order = torch.tensor([[4, 0, 5, 2, 1, 3]])
    y_s, slot = episode_targets(3, 2), torch.tensor([[2, 0, 3]])
    mann.episode_logits(features[None], y_s, query[None], slot, order)
    hook.remove()
    width = features.shape[1]
    shown = [step[0, width : width + 4] for step in seen[:-1]]
    expected = [torch.zeros(4)] + [F.one_hot(slot[0, y_s[order[0, t]]], 4).float() for t in range(6)]
    for got, want in zip(shown, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert (seen[-1][:, width : width + 4] == 0).all() and len(seen[-1]) == 3  # the queries: no label

    a, b = mann.draw(50, 3, 6, mann.rng), mann.draw(50, 3, 6, mann.rng)
    assert len({tuple(s) for s in a[0].tolist()}) > 5 and not torch.equal(a[0], b[0])  # per episode
    assert all(len(set(s)) == 3 and max(s) < 4 for s in a[0].tolist())  # distinct slots of 4
    assert all(sorted(o) == list(range(6)) for o in a[1].tolist()) and not torch.equal(a[1], b[1])
    for first, again in zip(mann.eval_draw(50, 3, 6), mann.eval_draw(50, 3, 6), strict=True):
        assert torch.equal(first, again)  # evaluation: the same orders and slots every time


def test_a_query_does_not_depend_on_the_other_queries(tiny):
    mann = _method(tiny.cfg).eval()
    support, query = _features(mann, tiny, tiny.tasks)
    slots, order = mann.eval_draw(3, 3, 6)
    y_s = episode_targets(3, 2)
    _, _, q = mann.episode_logits(support, y_s, query, slots, order)
    changed = query.clone()
    changed[:, 0] = torch.randn_like(changed[:, 0])
    _, _, q2 = mann.episode_logits(support, y_s, changed, slots, order)
    torch.testing.assert_close(q[:, 1:], q2[:, 1:])
    assert not torch.allclose(q[:, 0], q2[:, 0])
    _, _, alone = mann.episode_logits(support, y_s, query[:, 4:5], slots, order)
    torch.testing.assert_close(alone[:, 0], q[:, 4])


def test_by_presentation_equals_a_plain_count():
    g = torch.Generator().manual_seed(0)
    labels = torch.stack([torch.randperm(12, generator=g) % 3 for _ in range(5)])  # 3 classes × 4
    correct = (torch.rand(5, 12, generator=g) > 0.5).float()
    got = by_presentation(correct, labels, 3, 4)
    for e in range(5):
        count, want = [0, 0, 0], np.zeros(4)
        for t in range(12):
            c = int(labels[e, t])
            want[count[c]] += float(correct[e, t]) / 3
            count[c] += 1
        np.testing.assert_allclose(got[e].numpy(), want, rtol=1e-6)


def test_evaluation_scores_queries_and_presentations_in_any_chunks(tiny):
    mann = _method(tiny.cfg).eval()
    feats = mann.features(tiny.images.numpy(), tiny.run.features, torch.device("cpu"))
    train = load_splits(tiny.cfg.data, ("train",))["train"]
    episodes = torch.from_numpy(fixed_episodes(train.labels, 3, 2, 3, 7, seed=0))
    acc, extra = mann.evaluate_breakdowns(feats, episodes, 2)
    acc2, extra2 = mann.evaluate_breakdowns(feats, episodes, 2, chunk=3)
    torch.testing.assert_close(acc, acc2)
    torch.testing.assert_close(extra["by_presentation"], extra2["by_presentation"])
    slots, order = mann.eval_draw(7, 3, 6)
    support, query = feats[episodes[:, :, :2].flatten(1)], feats[episodes[:, :, 2:].flatten(1)]
    s_logits, labels, q = mann.episode_logits(support, episode_targets(3, 2), query, slots, order)
    pick = lambda logits: logits.gather(-1, slots[:, None].expand(-1, logits.shape[1], -1))  # noqa: E731
    torch.testing.assert_close(acc, (pick(q).argmax(-1) == episode_targets(3, 3)).float().mean(-1))
    presented = by_presentation((pick(s_logits).argmax(-1) == labels).float(), labels, 3, 2)
    torch.testing.assert_close(extra["by_presentation"], presented)
    assert extra["by_presentation"].shape == (7, 2)
    torch.testing.assert_close(mann.evaluate(feats, episodes, 2), acc)


def test_fit_and_predict_run_the_support_sequence(tiny):
    mann = _method(tiny.cfg).eval()
    x = mann.embed(tiny.run.pre(tiny.images[:9]))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    fitted = mann.fit(x[:6], y[:6], 3)
    got = mann.predict(fitted, x[6:], 3)
    slots, order = mann.eval_draw(1, 3, 6)
    _, _, q = mann.episode_logits(x[None, :6], y[:6], x[None, 6:], slots, order)
    torch.testing.assert_close(got, q[0].gather(-1, slots[0].expand(3, -1)))
    assert got.shape == (3, 3) and set(fitted) == {"slots", *State._fields}


@pytest.mark.parametrize(("encoder_lr", "trained"), [("0", False), ("null", True)])
def test_the_encoder_input_trains_end_to_end_or_stays_fixed(tiny_overrides, tmp_path, encoder_lr, trained):
    from mtl.methods import meta_update

    sets = ["method=mann", "precision=fp32", "mann.input=backbone", f"mann.encoder_lr={encoder_lr}"]
    cfg = config.load(None, [*tiny_overrides, *sets, "mann.controller=8", "mann.memory_rows=8"])
    run = Run.open(cfg, "metatrain", tmp_path / "ck", quiet=True)
    train = load_splits(cfg.data, ("train",))["train"]
    tasks = np.stack([EpisodeSampler(train.labels, 3, 1, 3, seed=0).sample() for _ in range(2)])
    mann = _method(cfg)
    before = {k: v.clone() for k, v in mann.encoder.state_dict().items()}
    opt = mann.optimizer()
    meta_update(mann, opt, torch.from_numpy(train.images.copy()), tasks, run.pre)
    changed = [k for k, v in mann.encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert [g["name"] for g in opt.param_groups] == ["mann", "encoder"][: 1 + trained]
    assert mann.encoder.training == trained
    # trained: weights and batch-norm statistics move; fixed: nothing of the encoder changes
    assert (any("running_mean" in k for k in changed) and any("weight" in k for k in changed)) == trained
    assert bool(changed) == trained


# Bad input.


def test_a_way_above_the_output_classes_is_one_line_before_training(tiny_overrides, tmp_path):
    sets = [a for o in [*tiny_overrides, "method=mann", "mann.classes=2"] for a in ("--set", o)]
    result = CliRunner().invoke(main, ["metatrain", PIPELINE, *sets, "--checkpoints", str(tmp_path / "ck")])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line == (
        "error: meta.way: 3 classes need as many label slots, but mann.classes is 2 "
        "(set mann.classes to at least 3)"
    )
    assert not list((tmp_path / "ck").rglob("*.pt"))


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["mann.least_used=9", "mann.memory_rows=8"], "mann.least_used: 9 is more than the 8 memory rows"),
        (["mann.pretrained=true"], "mann.pretrained: applies to mann.input: backbone"),
        (["mann.encoder_lr=0"], "mann.encoder_lr: applies to mann.input: backbone"),
        (["mann.input=conv"], "mann.input: 'conv' is not one of pixels, backbone"),
        (["mann.gamma=1.5"], "mann.gamma: must be <= 1.0"),
        (["mann.classes=1"], "mann.classes: must be >= 2"),
    ],
)
def test_bad_settings_are_one_line(tiny_overrides, sets, message):
    with pytest.raises(MtlError, match=message.replace("(", r"\(")):
        methods.build(config.load(None, [*tiny_overrides, "method=mann", *sets]))


def test_tasks_the_memory_cannot_label_are_refused(tiny):
    mann = _method(tiny.cfg).eval()  # mann.classes = 4
    x = mann.embed(tiny.run.pre(tiny.images[:10]))
    with pytest.raises(MtlError, match="the support set's classes: 5 classes need as many label slots"):
        mann.fit(x, torch.arange(10) % 5, 5)
    fitted = mann.fit(x[:6], torch.arange(6) % 3, 3)
    with pytest.raises(MtlError, match="this task was fitted to 3 classes, not 2"):
        mann.predict(fitted, x[6:], 2)
    with pytest.raises(MtlError, match="the episodes' way: 5 classes"):
        mann.evaluate(x, torch.zeros(1, 5, 2, dtype=torch.long), 1)


# End to end on glyphs: a setting where MANN learns within seconds on one thread. 40 glyph classes of
# 20 images, an encoder pretrained 10 epochs and kept frozen (mann.encoder_lr=0: trained at the
# controller's rate through the loss's plateau it forgets), 3-way 2-shot, 600 meta-updates of 8 tasks.
E2E = [
    "data.glyphs.classes=40", "data.glyphs.images_per_class=20", "pretrain.epochs=10", "meta.shot=2",
    "meta.epochs=6", "meta.updates_per_epoch=100", "meta.meta_batch=8", "method=mann",
    "mann.input=backbone", "mann.pretrained=true", "mann.encoder_lr=0", "mann.lr=5e-3", "mann.classes=3",
    "mann.controller=64", "mann.memory_rows=16", "mann.memory_width=16", "mann.read_heads=1",
    "test.baselines=[pixels]",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread) -> SimpleNamespace:
    from mtl.stages.metatest import metatest
    from mtl.stages.metatrain import metatrain
    from mtl.stages.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("mann")
    cfg = config.load(None, [*TINY, f"data.root={tmp / 'data'}", *E2E])
    ckpts = tmp / "ck"
    pretrain(cfg, ckpts, quiet=True)
    metatrain(cfg, ckpts, quiet=True)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = metatest(cfg, ckpts)
    return SimpleNamespace(tmp=tmp, ckpts=ckpts, cfg=cfg, results=results, printed=printed.getvalue())


def test_metatest_writes_and_prints_accuracy_by_presentation(trained):
    results = trained.results
    assert [r["method"] for r in results["rows"]] == ["MANN", "nearest centroid, raw pixels"]
    (name,) = results["breakdowns"]
    rows = results["breakdowns"][name]["rows"]
    assert name == "by_presentation" and list(rows) == ["MANN"]  # the baseline gives none
    mean, ci = rows["MANN"]["mean"], rows["MANN"]["ci95"]
    assert len(mean) == len(ci) == 2 and all(0 <= v <= 100 for v in mean + ci)
    assert "published" not in results["breakdowns"][name]  # glyphs: no published numbers
    lines = breakdown_table(name, results["breakdowns"][name])
    assert lines[2] == "| method | 1st | 2nd |"
    assert lines[4] == f"| MANN | {mean[0]:.1f} ± {ci[0]:.1f} | {mean[1]:.1f} ± {ci[1]:.1f} |"
    assert "\n".join(lines) in trained.printed and "\n".join(lines) in results_table(results)
    # TensorBoard: a curve over the presentations, in metatest's group
    events = EventAccumulator(str(trained.ckpts / "tiny" / "tb" / "metatest"))
    events.Reload()
    points = events.Scalars("3 metatest/MANN: accuracy by presentation")
    assert [p.step for p in points] == [1, 2] and [round(p.value, 2) for p in points] == mean


def test_mann_beats_nearest_centroid_on_raw_pixels(trained):
    rows = {r["method"]: r["acc"] for r in trained.results["rows"]}
    pixels = trained.results["differences"]["rows"]["nearest centroid, raw pixels"]
    print(f"MANN {rows['MANN']:.2f}%, pixels {rows['nearest centroid, raw pixels']:.2f}%: {pixels}")
    assert pixels["diff"] + pixels["ci95"] < 0 and pixels["p"] < 0.05  # measured: 57.4 vs 40.4 (30 episodes)


def test_compare_trains_and_scores_the_mann_row(trained):
    from mtl.stages.compare import compare

    short = dataclasses.replace(trained.cfg.meta, epochs=1, updates_per_epoch=2)
    cfg = dataclasses.replace(
        trained.cfg, meta=short, compare=dataclasses.replace(trained.cfg.compare, episodes=10)
    )
    results = compare(cfg, trained.ckpts, names=["mann"], quiet=True)
    assert [r["method"] for r in results["rows"]] == ["MANN (Santoro et al. 2016)"]
    assert (trained.ckpts / "tiny" / "compare" / "mann" / "best.pt").is_file()


def test_adapt_fits_the_support_sequence_and_predict_reads_it(trained, tmp_path):
    from mtl.inference.adapt import adapt_folders
    from mtl.inference.classifier import Classifier, embed, load_trained

    test = load_splits(trained.cfg.data, ("test",))["test"]
    files = {}
    for c in range(3):
        images = test.images[test.labels == c]
        for i in range(5):
            folder = "support" if i < 2 else "query"
            files.setdefault(folder, []).append(
                write_image(tmp_path / folder / f"c{c}" / f"{i}.png", images[i])
            )
    best = trained.ckpts / "tiny" / "metatrain" / "best.pt"
    saved = tmp_path / "classifier.pt"
    out = adapt_folders(best, tmp_path / "support", tmp_path / "query", save=saved, device="cpu", quiet=True)
    assert out["classes"] == ["c0", "c1", "c2"] and len(out["predictions"]) == 9
    assert out["steps"] is None and out["theta_init"] == "memory written by the support sequence"
    cfg, mann, dev = load_trained(best, "cpu")
    x_s = embed(cfg, mann, files["support"], dev)
    with torch.no_grad():
        probs = torch.softmax(
            mann.predict(mann.fit(x_s, torch.arange(6) // 2, 3), embed(cfg, mann, files["query"], dev), 3), -1
        )
    got = np.array([[r["probs"][c] for c in out["classes"]] for r in out["predictions"]])
    np.testing.assert_allclose(got, probs.numpy(), rtol=1e-5, atol=1e-6)
    again = Classifier.load(saved, "cpu").probabilities(files["query"])
    np.testing.assert_allclose(again, probs.numpy(), rtol=1e-5, atol=1e-6)


def test_report_plot_draws_accuracy_by_presentation(trained, tmp_path):
    from mtl.results.plots import plot_all

    written = plot_all(trained.ckpts, tmp_path / "figures")
    figure = tmp_path / "figures" / "tiny-metatest-by-presentation.png"
    assert figure in written and figure.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    from PIL import Image

    assert min(Image.open(figure).size) > 200


# The results file's breakdowns, and the published numbers beside them.


def test_breakdowns_are_summarised_checked_and_shown_beside_published_numbers(tmp_path):
    acc = np.array([[0.2, 1.0, 1.0], [0.4, 0.6, 1.0]])
    summary = summarize_breakdowns(
        {"MANN": {"by_presentation": acc}}, {"by_presentation": {"p": {"at": [1, 3], "acc": [36.4, 91.0]}}}
    )
    entry = summary["breakdowns"]["by_presentation"]
    assert entry["rows"]["MANN"] == {"mean": [30.0, 80.0, 100.0], "ci95": [13.86, 27.72, 0.0]}
    assert breakdown_table("by_presentation", entry)[-1] == "| p (published) | 36.4 | — | 91.0 |"
    assert summarize_breakdowns({}) == {} and [ordinal(k) for k in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd",
    ]  # fmt: skip
    path = tmp_path / "results.json"
    base = {
        "pipeline": "p",
        "way": 5,
        "shot": 3,
        "query": 1,
        "episodes": 2,
        "rows": [{"method": "MANN", "acc": 1, "ci95": 1}],
    }
    path.write_text(json.dumps({**base, **summary}))
    assert read_results(path)["breakdowns"] == summary["breakdowns"]
    for damaged in ({"../x": entry}, {"by_presentation": {"rows": {"MANN": {"mean": [1, 2], "ci95": [1]}}}},
                    {"by_presentation": {"rows": {"MANN": {"mean": [101], "ci95": [1]}}}}, []):  # fmt: skip
        path.write_text(json.dumps({**base, "breakdowns": damaged}))
        with pytest.raises(MtlError, match="is not a metatest results file"):
            read_results(path)


def _omniglot(root: Path) -> tuple[Path, Path]:
    """A fake Omniglot of the real layout and size per character (20 drawings of 105×105), and the
    Vinyals et al. split lists of its characters (2 per split, 4 rotations each: 8 classes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    chars = {"images_background": ["Latin", "Greek"], "images_evaluation": ["Angelic"]}
    for half, alphabets in chars.items():
        for alphabet in alphabets:
            for c in (1, 2):
                stroke = rng.random((105, 105)) > 0.03 * c  # a different density per character
                for i in range(1, 21):
                    path = root / half / alphabet / f"character{c:02d}" / f"01{c:02d}_{i:02d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(stroke ^ (rng.random((105, 105)) > 0.99)).save(path)
    lists = root / "lists"
    lists.mkdir()
    split_chars = {
        "train": ["Latin/character01", "Greek/character02"],
        "val": ["Latin/character02", "Greek/character01"],
        "test": ["Angelic/character01", "Angelic/character02"],
    }
    for split, names in split_chars.items():
        lines = [f"{name}/rot{r:03d}" for name in names for r in (0, 90, 180, 270)]
        (lists / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root, lists


def test_the_omniglot_pipeline_shows_the_papers_accuracy_by_presentation(tmp_path):
    from mtl.data.prepare.preparation import prepare
    from mtl.stages.metatest import metatest
    from mtl.stages.metatrain import metatrain

    src, lists = _omniglot(tmp_path / "src")
    data = tmp_path / "omniglot-vinyals"
    prepare("omniglot", src, data, workers=1, split_lists=lists)
    sets = [
        f"data.root={data}",
        "device=cpu",
        "meta.epochs=1",
        "meta.updates_per_epoch=2",
        "meta.meta_batch=2",
    ]
    sets += ["meta.val_episodes=4", "test.episodes=6", "mann.controller=16", "mann.memory_rows=16"]
    cfg = config.load(Path(__file__).parents[1] / "pipelines" / "omniglot-mann.yaml", sets)
    assert (cfg.method, cfg.meta.way, cfg.meta.shot, cfg.data.image_size) == ("mann", 5, 10, 20)
    assert (cfg.mann.controller, cfg.mann.memory_width, cfg.mann.read_heads, cfg.mann.input) == (
        16,
        40,
        4,
        "pixels",
    )
    metatrain(cfg, tmp_path / "ck", quiet=True)
    results = metatest(cfg, tmp_path / "ck", quiet=True)
    entry = results["breakdowns"]["by_presentation"]
    assert len(entry["rows"]["MANN"]["mean"]) == 10
    assert entry["published"]["MANN, Santoro et al. 2016 (Table 1)"] == {
        "at": [1, 2, 3, 4, 5, 10], "acc": [36.4, 82.8, 91.0, 92.6, 94.9, 98.1],
    }  # fmt: skip
    table = results_table(results)
    assert "| method | 1st | 2nd | 3rd | 4th | 5th | 10th |" in table
    assert (
        "| MANN, Santoro et al. 2016 (Table 1) (published) | 36.4 | 82.8 | 91.0 | 92.6 | 94.9 | 98.1 |"
        in table
    )
    # the same pipeline on a dataset prepared without the lists: not the paper's split, no numbers
    elsewhere = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(tmp_path)))
    assert published_breakdowns("mann", elsewhere, source_format=source_format(elsewhere.data.root)) == {}
    assert published_breakdowns("protonet", cfg) == {}


def test_bench_row_batched_equals_the_per_task_loop():
    from mtl.bench.mann import bench_mann
    from mtl.data.glyphs.dataset import render_class

    s = SimpleNamespace(image_size=16, way=5, shot=2, query=2, meta_batch=3, min_seconds=0.05)
    images = np.concatenate(
        [render_class(c, 4, image_size=16, channels=3, preset="easy", seed=0) for c in range(6)]
    )
    r = bench_mann(s, images, np.repeat(np.arange(6), 4), torch.device("cpu"))
    assert r["first_step_loss_batched"] == pytest.approx(r["first_step_loss_per_task"], rel=1e-5)
    assert r["speedup"] == r["batched_tasks_per_s"] / r["per_task_tasks_per_s"] > 0 and r["inner_steps"] == 12
