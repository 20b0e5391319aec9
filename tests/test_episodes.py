import io

import numpy as np
import pytest
import torch

from mtl.data.episodes import (
    EpisodeSampler,
    check_episode_shape,
    episode_images,
    episode_targets,
    fixed_episodes,
)
from mtl.errors import MtlError


def _labels(num_classes: int = 12, per_class: int = 30, seed: int = 0) -> np.ndarray:
    # Shuffled, with non-contiguous ids, so indices and class ids are not trivially related.
    labels = np.repeat(np.arange(num_classes) * 3 + 7, per_class)
    return np.random.default_rng(seed).permutation(labels)


def _check_episode(ep: np.ndarray, labels: np.ndarray, way: int, shot: int, query: int) -> None:
    assert ep.shape == (way, shot + query)
    assert ep.dtype == np.int64
    ep_labels = labels[ep]
    # Every row is one class, and the rows are distinct classes.
    assert np.all(ep_labels == ep_labels[:, :1])
    assert len(np.unique(ep_labels[:, 0])) == way
    # No image appears twice, so support and query are disjoint.
    assert len(np.unique(ep)) == ep.size
    support, query = ep[:, :shot].ravel(), ep[:, shot:].ravel()
    assert not set(support.tolist()) & set(query.tolist())


def test_sample_episodes_are_valid():
    labels = _labels()
    sampler = EpisodeSampler(labels, way=5, shot=3, query=7, seed=1)
    for _ in range(50):
        _check_episode(sampler.sample(), labels, 5, 3, 7)


def test_sample_covers_classes_and_images_uniformly():
    labels = _labels(num_classes=6, per_class=10)
    sampler = EpisodeSampler(labels, way=2, shot=1, query=1, seed=0)
    eps = np.stack([sampler.sample() for _ in range(3000)])
    class_counts = np.unique(labels[eps[:, :, 0]], return_counts=True)[1]
    image_counts = np.bincount(eps.ravel(), minlength=len(labels))
    # 6000 class draws over 6 classes, 12000 image draws over 60 images.
    assert len(class_counts) == 6 and np.all(np.abs(class_counts - 1000) < 150)
    assert np.all(image_counts > 120) and np.all(image_counts < 280)


def test_sample_is_deterministic_by_seed():
    labels = _labels()
    a = [EpisodeSampler(labels, 5, 1, 15, seed=3).sample() for _ in range(2)]
    s1, s2, s3 = (EpisodeSampler(labels, 5, 1, 15, seed=s) for s in (3, 3, 4))
    seq1 = np.stack([s1.sample() for _ in range(10)])
    seq2 = np.stack([s2.sample() for _ in range(10)])
    seq3 = np.stack([s3.sample() for _ in range(10)])
    np.testing.assert_array_equal(a[0], a[1])
    np.testing.assert_array_equal(seq1, seq2)
    assert not np.array_equal(seq1, seq3)


def test_sample_accepts_a_generator():
    labels = _labels()
    a = EpisodeSampler(labels, 5, 1, 5, seed=np.random.default_rng(9)).sample()
    b = EpisodeSampler(labels, 5, 1, 5, seed=9).sample()
    np.testing.assert_array_equal(a, b)


def test_sample_respects_given_classes():
    labels = _labels()
    sampler = EpisodeSampler(labels, way=4, shot=2, query=3, seed=0)
    classes = np.array([40, 7, 19, 10])
    for _ in range(20):
        ep = sampler.sample(classes=classes)
        _check_episode(ep, labels, 4, 2, 3)
        np.testing.assert_array_equal(labels[ep[:, 0]], classes)
    with pytest.raises(ValueError):
        sampler.sample(classes=np.array([7, 7, 10, 13]))
    with pytest.raises(ValueError):
        sampler.sample(classes=np.array([7, 8, 10, 13]))  # 8 is not a class of the split
    with pytest.raises(ValueError):
        sampler.sample(classes=np.array([7, 10, 13]))


def test_state_dict_resumes_the_same_continuation():
    labels = _labels()
    sampler = EpisodeSampler(labels, 5, 5, 15, seed=11)
    for _ in range(7):
        sampler.sample()
    buf = io.BytesIO()
    torch.save(sampler.state_dict(), buf)
    expected = [sampler.sample() for _ in range(5)]

    resumed = EpisodeSampler(labels, 5, 5, 15, seed=0)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for want in expected:
        np.testing.assert_array_equal(resumed.sample(), want)


def test_fixed_episodes_shape_and_purity():
    labels = _labels()
    eps = fixed_episodes(labels, way=5, shot=1, query=15, episodes=40, seed=5)
    assert eps.shape == (40, 5, 16) and eps.dtype == np.int64
    for ep in eps:
        _check_episode(ep, labels, 5, 1, 15)
    np.testing.assert_array_equal(eps, fixed_episodes(labels, 5, 1, 15, 40, 5))
    assert not np.array_equal(eps, fixed_episodes(labels, 5, 1, 15, 40, 6))
    # A longer set starts with the shorter one: the set is a prefix-stable stream.
    np.testing.assert_array_equal(fixed_episodes(labels, 5, 1, 15, 60, 5)[:40], eps)


def test_check_episode_shape_messages():
    labels = np.repeat(np.arange(8), 20)
    labels = np.delete(labels, np.flatnonzero(labels == 3)[:8])  # class 3 keeps 12 images
    names = [f"glyph-{i:04d}" for i in range(8)]
    with pytest.raises(MtlError, match=r"^way=10 but the val split has only 8 classes$"):
        check_episode_shape(labels, 10, 5, 15, split="val", class_names=names)
    msg = r"^class 'glyph-0003' in val has 12 images; shot\+query = 5\+15 = 20 needed$"
    with pytest.raises(MtlError, match=msg):
        check_episode_shape(labels, 5, 5, 15, split="val", class_names=names)
    with pytest.raises(MtlError, match=r"^class '3' in split has 12 images"):
        check_episode_shape(labels, 5, 5, 15)
    for bad in ((0, 1, 1), (5, 0, 1), (5, 1, 0)):
        with pytest.raises(MtlError, match="must be at least 1"):
            check_episode_shape(labels, *bad)
    check_episode_shape(labels, 8, 5, 7)  # 12 images suffice for 5 + 7
    with pytest.raises(MtlError):
        EpisodeSampler(labels, 5, 5, 15, seed=0)


def test_episode_targets_match_split_order():
    t = episode_targets(3, 2)
    assert t.dtype == torch.int64
    assert t.tolist() == [0, 0, 1, 1, 2, 2]
    # Target j // per_class is the class of the j-th query of a class-major episode.
    ep = np.arange(3 * 4).reshape(3, 4)
    q = ep[:, 2:].reshape(-1)
    assert (q // 4).tolist() == episode_targets(3, 2).tolist()


def test_episode_images_encode_only_what_the_episodes_use_with_the_same_result(tmp_path):
    from mtl.methods.episodic import extract_features, nearest_centroid

    labels = _labels(num_classes=12, per_class=30)
    images = np.random.default_rng(1).integers(0, 256, (len(labels), 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    on_disk = np.load(tmp_path / "x.npy", mmap_mode="r")
    episodes = fixed_episodes(labels, 5, 1, 3, 10, seed=0)  # 200 draws of 360 images
    rows, local = episode_images(on_disk, episodes)
    assert len(rows) == len(np.unique(episodes)) < len(images) and rows.shape == (len(rows), 4, 4, 3)
    assert np.array_equal(rows[:][local], images[episodes])  # the same images in the same places

    seen = []

    def encode(batch: torch.Tensor) -> torch.Tensor:
        seen.append(len(batch))
        return batch.flatten(1).float()

    subset = extract_features(encode, rows, batch_size=64)
    assert sum(seen) == len(rows)
    full = extract_features(encode, images, batch_size=64)
    local_t, episodes_t = torch.from_numpy(local), torch.from_numpy(episodes)
    assert torch.equal(nearest_centroid(subset, local_t, 1), nearest_centroid(full, episodes_t, 1))
