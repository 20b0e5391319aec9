import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl import config
from mtl.data.episodes import EpisodeSampler
from mtl.hard_tasks import HardTasks
from mtl.hard_tasks.pool import HardTaskPool, failure_classes, per_class_scores
from mtl.runtime import checkpoint
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain

PIPELINES = Path(__file__).parent.parent / "pipelines"


def test_failure_class_is_the_lowest_accuracy_ties_broken_by_loss():
    acc = torch.tensor([[0.8, 0.2, 0.6], [0.5, 0.5, 0.9], [1.0, 1.0, 1.0]])
    loss = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.9, 0.1], [0.3, 0.2, 0.25]])
    assert failure_classes(acc, loss).tolist() == [1, 1, 0]


def test_per_class_scores_match_a_plain_loop():
    torch.manual_seed(0)
    way, query, T = 3, 4, 2
    logits = torch.randn(T, way * query, way)
    targets = torch.arange(way).repeat_interleave(query)
    acc, loss = per_class_scores(logits, targets, way)
    for t in range(T):
        for c in range(way):
            rows = logits[t, c * query : (c + 1) * query]
            assert acc[t, c] == (rows.argmax(1) == c).float().mean()
            ref = torch.nn.functional.cross_entropy(rows, torch.full((query,), c))
            torch.testing.assert_close(loss[t, c], ref)


def test_pool_holds_the_failures_of_the_last_window_meta_batches():
    pool = HardTaskPool(20, 3, window=2, seed=0)
    classes = np.array([[4, 7, 9], [1, 2, 3]])
    acc = np.array([[0.9, 0.1, 0.5], [0.3, 0.6, 0.3]])
    loss = np.array([[0.1, 2.0, 0.7], [0.5, 0.2, 0.8]])
    assert pool.add(classes, acc, loss).tolist() == [7, 3]
    assert {c: f.acc for c, f in pool.entries.items()} == {7: 0.1, 3: 0.3}
    pool.add(np.array([[5, 6, 8], [10, 11, 12]]), np.array([[0.2, 0.4, 0.9]] * 2), np.zeros((2, 3)))
    assert list(pool.entries) == [7, 3, 5, 10]  # window 2: both meta-batches
    pool.add(np.array([[3, 13, 14]]), np.array([[0.0, 0.5, 0.5]]), np.zeros((1, 3)))
    # The first meta-batch left the window; class 3 failed again, so it stays with its new accuracy.
    assert {c: (f.acc, f.batch) for c, f in pool.entries.items()} == {5: (0.2, 2), 10: (0.2, 2), 3: (0.0, 3)}
    assert pool.failures[[7, 3, 5, 10]].tolist() == [1, 2, 1, 1] and pool.batches == 3


def test_sampling_favours_lower_accuracy():
    pool = HardTaskPool(50, 2, window=10, temperature=0.2, seed=0)
    accs = [0.0, 0.2, 0.4, 0.6, 0.8]
    for c, a in enumerate(accs):
        pool.add(np.array([[c, 40]]), np.array([[a, 1.0]]), np.zeros((1, 2)))
    counts = np.zeros(50, int)
    for _ in range(3000):
        picked = pool.sample()
        assert len(set(picked.tolist())) == 2
        counts[picked] += 1
    assert counts[40] == 0  # never a failure class, never drawn once the pool holds >= way classes
    assert all(counts[c] > counts[c + 1] for c in range(4)), counts[:5]
    uniform = HardTaskPool(50, 2, window=10, mode="uniform", seed=0)
    uniform.entries.update(pool.entries)
    assert np.allclose(uniform.probabilities()[1], 0.2)


def _pool_of(accs: list[float], temperature: float, way: int = 2) -> HardTaskPool:
    pool = HardTaskPool(50, way, window=len(accs), temperature=temperature, seed=3)
    for c, a in enumerate(accs):
        pool.add(np.array([[c, 40]]), np.array([[a, 1.0]]), np.zeros((1, 2)))
    return pool


@pytest.mark.parametrize("temperature", [0.0, 1e-6])
def test_zero_and_tiny_temperatures_take_the_lowest_accuracies_ties_at_random(temperature):
    # Classes 1 and 3 tie for the lowest accuracy, class 0 is next: 2-way tasks are always {1, 3};
    # 3-way tasks add class 0.
    pool = _pool_of([0.3, 0.1, 0.9, 0.1, 0.6], temperature)
    assert {frozenset(pool.sample().tolist()) for _ in range(50)} == {frozenset({1, 3})}
    three = _pool_of([0.3, 0.1, 0.9, 0.1, 0.6], temperature, way=3)
    assert {frozenset(three.sample().tolist()) for _ in range(50)} == {frozenset({0, 1, 3})}
    # A tie at the boundary is broken at random: both classes get drawn.
    tie = _pool_of([0.1, 0.5, 0.5, 0.9], temperature)
    seconds = [set(tie.sample().tolist()) - {0} for _ in range(200)]
    assert all(len(s) == 1 for s in seconds) and set.union(*seconds) == {1, 2}
    classes, p = _pool_of([0.3, 0.1, 0.9, 0.1, 0.6], temperature).probabilities()
    assert p.tolist() == [0.0, 0.5, 0.0, 0.5, 0.0] and classes.tolist() == [0, 1, 2, 3, 4]


def test_a_large_temperature_draws_nearly_uniformly():
    pool = _pool_of([0.0, 0.2, 0.4, 0.6, 0.8], 1e6)
    counts = np.zeros(5)
    for _ in range(5000):
        counts[pool.sample()] += 1
    assert np.abs(counts / counts.sum() - 0.2).max() < 0.02, counts


def test_metatrain_runs_with_temperature_zero(tiny_overrides, pretrained):
    ckpt = run_metatrain(
        tiny_overrides, pretrained, "meta.hard_tasks.enabled=true", "meta.hard_tasks.temperature=0"
    )
    assert ckpt["hard_tasks"]["updates"] == 4


def test_small_pool_is_topped_up_with_other_base_classes():
    pool = HardTaskPool(30, 5, seed=0)
    pool.add(np.array([[3, 4, 5, 6, 7]]), np.array([[0.1, 0.5, 0.5, 0.5, 0.5]]), np.zeros((1, 5)))
    for _ in range(20):
        picked = pool.sample()
        assert 3 in picked and len(set(picked.tolist())) == 5 and picked.max() < 30


def test_pool_survives_a_checkpoint_round_trip():
    pool = HardTaskPool(30, 3, window=3, seed=1)
    for k in range(4):
        tasks = np.arange(9).reshape(1, 3, 3) + 9 * k
        pool.add(np.array([[k, k + 10, k + 20]]), np.array([[0.1 * k, 0.9, 0.8]]), np.zeros((1, 3)), tasks)
    pool.sample()
    buffer = io.BytesIO()
    torch.save(pool.state_dict(), buffer)
    buffer.seek(0)
    again = HardTaskPool(30, 3, window=3, seed=99)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert again.entries.keys() == pool.entries.keys() and again.updates == pool.updates
    for c, f in pool.entries.items():
        g = again.entries[c]
        assert (g.acc, g.batch) == (f.acc, f.batch) and np.array_equal(g.images, f.images)
    assert np.array_equal(again.failures, pool.failures) and np.array_equal(again.chosen, pool.chosen)
    assert [again.sample().tolist() for _ in range(5)] == [pool.sample().tolist() for _ in range(5)]


def test_hard_tasks_draw_fresh_images_of_pool_classes(tiny_cfg):
    from mtl.data.sources import load_splits

    cfg = config.from_dict({**tiny_cfg.to_dict(), "meta": {**tiny_cfg.to_dict()["meta"], "query": 2}})
    train = load_splits(cfg.data, ("train",))["train"]
    hard = HardTasks(cfg, train)
    tasks = np.stack([EpisodeSampler(train.labels, 3, 1, 2, seed=s).sample() for s in range(2)])
    targets = torch.arange(3).repeat_interleave(2)
    logits = torch.zeros(2, 6, 3)
    logits[:, :, 0] = 1.0  # every query predicted as class 0: classes 1 and 2 fail, 2 has the higher loss
    logits[:, 4:, 1] = 2.0
    for _ in range(3):
        hard_tasks = hard.draw(tasks)
        assert hard_tasks.shape == (1, 3, 3)
        assert not np.isin(hard_tasks, tasks).any()  # fresh images, not those of this meta-batch
        hard.add(train.labels, tasks, logits, targets)
        assert set(train.labels[hard.draw(tasks)[0, :, 0]]) >= set(hard.pool.entries)
    failed = train.labels[tasks[:, 2, 0]]
    assert set(hard.pool.entries) == set(failed.tolist())


def test_hard_tasks_avoid_the_images_their_classes_failed_on(tiny_cfg):
    from mtl.data.sources import load_splits

    cfg = config.from_dict({**tiny_cfg.to_dict(), "meta": {**tiny_cfg.to_dict()["meta"], "query": 2}})
    train = load_splits(cfg.data, ("train",))["train"]
    hard = HardTasks(cfg, train)
    failed_batch = np.stack([EpisodeSampler(train.labels, 3, 1, 2, seed=s).sample() for s in range(2)])
    targets = torch.arange(3).repeat_interleave(2)
    logits = torch.zeros(2, 6, 3)
    logits[:, :, 0] = 1.0
    logits[:, 4:, 1] = 2.0  # class 2 of each task fails
    hard.add(train.labels, failed_batch, logits, targets)
    failed = {int(train.labels[t[2, 0]]): t[2] for t in failed_batch}
    assert {c: f.images.tolist() for c, f in hard.pool.entries.items()} == {
        c: v.tolist() for c, v in failed.items()
    }
    later_batch = np.stack([EpisodeSampler(train.labels, 3, 1, 2, seed=s).sample() for s in (5, 6)])
    for _ in range(30):
        (task,) = hard.draw(later_batch)
        assert not np.isin(task, later_batch).any()
        for row in task:
            assert not np.isin(row, failed.get(int(train.labels[row[0]]), [])).any()


def test_pool_with_the_paper_settings_holds_a_few_recently_failed_classes(tmp_path, monkeypatch):
    """The paper pipelines' task settings on glyphs (64 base classes): at steady state the pool holds the
    failure classes of the last ceil(5 / 2) = 3 meta-batches only, at most 6 of 64 classes (9.4%)."""
    paper = config.load(PIPELINES / "miniimagenet-1shot.yaml").meta
    sets = [
        "name=steady", "device=cpu", f"data.root={tmp_path / 'data'}", "data.image_size=16",
        "data.glyphs.classes=100", "data.glyphs.images_per_class=20", "backbone.widths=[8,8,16,16]",
        "pretrain.epochs=1", "pretrain.val_episodes=10", "meta.epochs=2", "meta.updates_per_epoch=20",
        "mtl.inner_steps=5", "meta.val_episodes=10", "test.query=3",
        *(f"meta.{k}={getattr(paper, k)}" for k in ("way", "shot", "query", "meta_batch")),
        *(f"meta.hard_tasks.{k}={v}" for k, v in asdict(paper.hard_tasks).items() if v is not None),
    ]  # fmt: skip
    cfg = config.load(None, sets)
    assert cfg.meta.hard_tasks.enabled and (cfg.meta.way, cfg.meta.meta_batch) == (5, 2)
    failures: list[list[int]] = []  # the failure classes of every meta-batch, in order
    add = HardTaskPool.add
    monkeypatch.setattr(HardTaskPool, "add", lambda self, *a: failures.append(add(self, *a).tolist()) or None)
    ckpts = tmp_path / "ckpts"
    pretrain(cfg, ckpts, quiet=True)
    metatrain(cfg, ckpts, quiet=True)
    pool = HardTaskPool(64, 5)
    pool.load_state_dict(
        checkpoint.load(ckpts / "steady" / "metatrain" / "last.pt", stage="metatrain")["hard_tasks"]
    )
    recent = {c for batch in failures[-3:] for c in batch}
    assert len(failures) == 40 and set(pool.entries) == recent
    assert len(pool) <= 6 and len(pool) / 64 <= 0.094
    assert all(pool.batches - f.batch < 3 for f in pool.entries.values())
    # Over the run many more classes failed than the pool holds: a pool that kept them all would hold
    # most base classes by now.
    assert len({c for batch in failures for c in batch}) >= 30
    summary = json.loads((ckpts / "steady" / "metatrain" / "hard_tasks.json").read_text())
    assert summary["pool_size"] == len(pool) and summary["window"] == 3
    assert summary["pool_share_of_base_classes"] == round(len(pool) / 64, 4)
    assert all(e["meta_batches_ago"] < 3 for e in summary["pool"])
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2]


@pytest.fixture
def pretrained(tiny_overrides, tmp_path):
    ckpts = tmp_path / "ckpts"
    pretrain(config.load(None, tiny_overrides), ckpts, quiet=True)
    return ckpts


def run_metatrain(tiny_overrides, ckpts, *extra):
    cfg = config.load(None, [*tiny_overrides, *extra])
    metatrain(cfg, ckpts, quiet=True, fresh=True)
    return checkpoint.load(ckpts / "tiny" / "metatrain" / "last.pt", stage="metatrain")


def test_ht_off_is_plain_mtl_bit_for_bit(tiny_overrides, pretrained):
    plain = run_metatrain(tiny_overrides, pretrained)
    off = run_metatrain(
        tiny_overrides, pretrained, "meta.hard_tasks.enabled=false", "meta.hard_tasks.per_batch=3",
        "meta.hard_tasks.window=2", "meta.hard_tasks.temperature=5.0",
    )  # fmt: skip
    assert "hard_tasks" not in plain and "hard_tasks" not in off
    for key, value in plain["encoder"].items():
        assert torch.equal(value, off["encoder"][key]), key
    assert torch.equal(plain["theta"]["W"], off["theta"]["W"]) and plain["metric"] == off["metric"]
    ht = run_metatrain(tiny_overrides, pretrained, "meta.hard_tasks.enabled=true")
    assert not torch.equal(plain["theta"]["W"], ht["theta"]["W"])  # HT on does change training


def test_ht_run_saves_the_pool_and_its_summary(tiny_overrides, pretrained):
    ckpt = run_metatrain(
        tiny_overrides, pretrained, "meta.hard_tasks.enabled=true", "meta.hard_tasks.per_batch=2"
    )
    # 2 epochs x 2 meta-batches, 2 normal tasks each -> 8 failure classes seen, 8 hard tasks trained on.
    pool = HardTaskPool(19, 3)
    pool.load_state_dict(ckpt["hard_tasks"])
    assert pool.updates == 8 and pool.failures.sum() == 8
    summary = json.loads((pretrained / "tiny" / "metatrain" / "hard_tasks.json").read_text())
    assert summary["hard_task_updates"] == 8
    assert sum(c["failures"] for c in summary["classes"].values()) == 8
    assert all(0 <= c["mean_acc_when_failed"] <= 100 for c in summary["classes"].values())


def test_normal_and_hard_tasks_share_one_encoder_forward(tiny_overrides, pretrained, monkeypatch):
    from mtl import methods
    from mtl.methods.mtl import MTL

    calls = []

    class Counting(MTL):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.encoder.register_forward_hook(
                lambda mod, inp, out: calls.append(len(inp[0])) if torch.is_grad_enabled() else None
            )

    monkeypatch.setitem(methods.METHODS, "mtl", Counting)
    cfg = config.load(None, [*tiny_overrides, "meta.hard_tasks.enabled=true", "meta.hard_tasks.per_batch=2"])
    metatrain(cfg, pretrained, quiet=True)
    m = cfg.meta
    updates = m.epochs * m.updates_per_epoch
    # One forward per meta-update, holding every normal and hard task's support and query images.
    assert calls == [(m.meta_batch + 2) * m.way * (m.shot + m.query)] * updates
