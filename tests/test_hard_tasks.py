import io
import json

import numpy as np
import pytest
import torch

from mtl import checkpoint, config
from mtl.data.episodes import EpisodeSampler
from mtl.hard_tasks import HardTaskPool, failure_classes, per_class_scores
from mtl.stages.hard_batches import HardTasks
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain


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


def test_pool_adds_each_tasks_failure_class_and_forgets_the_oldest():
    pool = HardTaskPool(20, 3, capacity=3, seed=0)
    classes = np.array([[4, 7, 9], [1, 2, 3]])
    acc = np.array([[0.9, 0.1, 0.5], [0.3, 0.6, 0.3]])
    loss = np.array([[0.1, 2.0, 0.7], [0.5, 0.2, 0.8]])
    assert pool.add(classes, acc, loss).tolist() == [7, 3]
    assert dict(pool.entries) == {7: 0.1, 3: 0.3}
    pool.add(np.array([[5, 6, 8], [10, 11, 12]]), np.array([[0.2, 0.4, 0.9]] * 2), np.zeros((2, 3)))
    assert list(pool.entries) == [3, 5, 10]  # capacity 3: class 7, the oldest, is gone
    assert pool.failures[[7, 3, 5, 10]].tolist() == [1, 1, 1, 1]


def test_sampling_favours_lower_accuracy():
    pool = HardTaskPool(50, 2, capacity=10, temperature=0.2, seed=0)
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
    uniform = HardTaskPool(50, 2, capacity=10, mode="uniform", seed=0)
    uniform.entries.update(pool.entries)
    assert np.allclose(uniform.probabilities()[1], 0.2)


def test_small_pool_is_topped_up_with_other_base_classes():
    pool = HardTaskPool(30, 5, seed=0)
    pool.add(np.array([[3, 4, 5, 6, 7]]), np.array([[0.1, 0.5, 0.5, 0.5, 0.5]]), np.zeros((1, 5)))
    for _ in range(20):
        picked = pool.sample()
        assert 3 in picked and len(set(picked.tolist())) == 5 and picked.max() < 30


def test_pool_survives_a_checkpoint_round_trip():
    pool = HardTaskPool(30, 3, capacity=5, seed=1)
    for k in range(4):
        pool.add(np.array([[k, k + 10, k + 20]]), np.array([[0.1 * k, 0.9, 0.8]]), np.zeros((1, 3)))
    pool.sample()
    buffer = io.BytesIO()
    torch.save(pool.state_dict(), buffer)
    buffer.seek(0)
    again = HardTaskPool(30, 3, capacity=5, seed=99)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert again.entries == pool.entries and again.updates == pool.updates
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
        "meta.hard_tasks.capacity=2", "meta.hard_tasks.temperature=5.0",
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
    import mtl.stages.metatrain as mt

    calls = []

    class Counting(mt.MetaLearner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.encoder.register_forward_hook(
                lambda mod, inp, out: calls.append(len(inp[0])) if torch.is_grad_enabled() else None
            )

    monkeypatch.setattr(mt, "MetaLearner", Counting)
    cfg = config.load(None, [*tiny_overrides, "meta.hard_tasks.enabled=true", "meta.hard_tasks.per_batch=2"])
    metatrain(cfg, pretrained, quiet=True)
    m = cfg.meta
    updates = m.epochs * (m.episodes_per_epoch // m.meta_batch)
    # One forward per meta-update, holding every normal and hard task's support and query images.
    assert calls == [(m.meta_batch + 2) * m.way * (m.shot + m.query)] * updates
