"""mtl.methods.episodic: batched nearest centroid and fine-tuning against per-episode loops, the 95% CI,
feature extraction and the raw-pixel baseline."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl.data.episodes import fixed_episodes
from mtl.errors import MtlError
from mtl.methods.episodic import extract_features, finetune_theta, mean_ci, nearest_centroid, raw_pixels

WAY, SHOT, QUERY = 5, 3, 6


def _data(num_classes: int = 10, per_class: int = 20, dim: int = 12, episodes: int = 37):
    """Clustered random features (so accuracies are neither 0 nor 1) and fixed episodes over them."""
    g = torch.Generator().manual_seed(0)
    labels = np.repeat(np.arange(num_classes), per_class)
    centres = torch.randn(num_classes, dim, generator=g)
    features = centres[torch.from_numpy(labels)] + 1.5 * torch.randn(len(labels), dim, generator=g)
    eps = fixed_episodes(labels, WAY, SHOT, QUERY, episodes, seed=1)
    return features, torch.from_numpy(eps)


def _reference_nearest_centroid(features, eps, shot):
    acc = []
    for ep in eps:
        protos = torch.stack([features[row[:shot]].mean(0) for row in ep])
        correct = 0
        for c, row in enumerate(ep):
            for i in row[shot:]:
                d = ((features[i] - protos) ** 2).sum(-1)
                correct += int(d.argmin() == c)
        acc.append(correct / (len(ep) * (ep.shape[1] - shot)))
    return torch.tensor(acc)


def _reference_finetune(features, eps, shot, W0, b0, steps, lr):
    acc = []
    for ep in eps:
        xs = features[ep[:, :shot].reshape(-1)]
        ys = torch.arange(len(ep)).repeat_interleave(shot)
        W, b = W0.detach().clone().requires_grad_(), b0.detach().clone().requires_grad_()
        for _ in range(steps):
            loss = F.cross_entropy(xs @ W.T + b, ys)
            dW, db = torch.autograd.grad(loss, (W, b))
            W, b = (W - lr * dW).detach().requires_grad_(), (b - lr * db).detach().requires_grad_()
        xq = features[ep[:, shot:].reshape(-1)]
        yq = torch.arange(len(ep)).repeat_interleave(ep.shape[1] - shot)
        acc.append(((xq @ W.T + b).argmax(-1) == yq).float().mean())
    return torch.stack(acc).detach()


@pytest.mark.parametrize("chunk", [256, 8])
def test_nearest_centroid_matches_loop(chunk):
    features, eps = _data()
    acc = nearest_centroid(features, eps, SHOT, chunk=chunk)
    want = _reference_nearest_centroid(features, eps, SHOT)
    assert acc.shape == (len(eps),) and acc.dtype == torch.float32
    assert 0.2 < acc.mean() < 0.95  # a non-trivial task, so the comparison means something
    torch.testing.assert_close(acc, want)
    # numpy episodes work the same
    torch.testing.assert_close(nearest_centroid(features, eps.numpy(), SHOT, chunk=chunk), want)


@pytest.mark.parametrize("chunk", [256, 5])
def test_finetune_matches_loop(chunk):
    features, eps = _data()
    g = torch.Generator().manual_seed(2)
    W0 = (0.2 * torch.randn(WAY, features.shape[1], generator=g)).requires_grad_()
    b0 = 0.2 * torch.randn(WAY, generator=g)
    acc = finetune_theta(features, eps, SHOT, W0, b0, steps=20, lr=0.3, chunk=chunk)
    want = _reference_finetune(features, eps, SHOT, W0, b0, steps=20, lr=0.3)
    assert acc.shape == (len(eps),)
    assert 0.2 < acc.mean() < 0.95
    torch.testing.assert_close(acc, want)
    # No graph is kept, even though W0 requires grad.
    assert not acc.requires_grad and acc.grad_fn is None
    assert W0.grad is None


def test_finetune_zero_steps_is_the_initial_classifier():
    features, eps = _data()
    W0 = torch.randn(WAY, features.shape[1], generator=torch.Generator().manual_seed(4))
    b0 = torch.zeros(WAY)
    acc = finetune_theta(features, eps, SHOT, W0, b0, steps=0, lr=0.1)
    torch.testing.assert_close(acc, _reference_finetune(features, eps, SHOT, W0, b0, steps=0, lr=0.1))


def test_finetune_rejects_a_mismatched_base_learner():
    features, eps = _data()
    with pytest.raises(MtlError, match="5-way"):
        finetune_theta(
            features, eps, SHOT, torch.zeros(4, features.shape[1]), torch.zeros(4), steps=1, lr=0.1
        )


def test_mean_ci_formula():
    acc = np.array([0.2, 0.4, 0.4, 0.6, 1.0])
    mean, ci = mean_ci(acc)
    std = math.sqrt(sum((a - 0.52) ** 2 for a in acc) / 5)  # population std
    assert mean == pytest.approx(52.0)
    assert ci == pytest.approx(1.96 * std / math.sqrt(5) * 100)
    assert ci == pytest.approx(23.78, abs=0.01)
    m2, c2 = mean_ci(torch.tensor(acc, dtype=torch.float32))
    assert m2 == pytest.approx(mean, rel=1e-6) and c2 == pytest.approx(ci, rel=1e-5)
    assert mean_ci([0.5, 0.5]) == (50.0, 0.0)


def test_extract_features_batches_and_order():
    images = np.random.default_rng(0).integers(0, 256, size=(23, 4, 5, 3), dtype=np.uint8)
    batch_sizes = []

    def encode(x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1:] == (4, 5, 3)
        batch_sizes.append(len(x))
        return x.double().mean(dim=(1, 2))  # (B, 3)

    feats = extract_features(encode, images, batch_size=10)
    assert batch_sizes == [10, 10, 3]
    assert feats.dtype == torch.float32 and feats.shape == (23, 3)
    torch.testing.assert_close(feats, torch.from_numpy(images).float().mean(dim=(1, 2)))
    torch.testing.assert_close(extract_features(encode, torch.from_numpy(images), batch_size=7), feats)
    with pytest.raises(MtlError):
        extract_features(encode, images[:0])


def test_extract_features_returns_an_ordinary_tensor():
    """Encoded in inference mode, returned as a tensor autograd can use (MAML adapts on the images)."""
    images = np.random.default_rng(2).integers(0, 256, size=(5, 2, 2, 3), dtype=np.uint8)
    feats = extract_features(lambda x: x.float().reshape(len(x), -1), images, batch_size=2)
    assert not feats.is_inference()
    w = torch.ones(12, requires_grad=True)
    (feats @ w).sum().backward()
    torch.testing.assert_close(w.grad, feats.sum(0))


def test_extract_features_reads_a_memmap(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(9, 2, 2, 1), dtype=np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    mm = np.load(path, mmap_mode="r")
    feats = extract_features(lambda x: x.reshape(len(x), -1), mm, batch_size=4)
    np.testing.assert_array_equal(feats.numpy(), images.reshape(9, -1).astype(np.float32))


def test_raw_pixels():
    images = np.random.default_rng(2).integers(0, 256, size=(7, 8, 8, 3), dtype=np.uint8)
    full = raw_pixels(images, batch_size=3)
    assert full.shape == (7, 192) and full.dtype == torch.float32
    torch.testing.assert_close(full, torch.from_numpy(images.reshape(7, -1)).float() / 255)
    small = raw_pixels(images, size=4, batch_size=3)
    assert small.shape == (7, 48)
    assert small.min() >= 0 and small.max() <= 1
    # Halving the side by area resampling is 2×2 averaging.
    pooled = images.reshape(7, 4, 2, 4, 2, 3).mean(axis=(2, 4)) / 255
    torch.testing.assert_close(small, torch.from_numpy(pooled.reshape(7, -1)).float(), atol=1e-5, rtol=0)


def test_raw_pixel_baseline_end_to_end():
    # Two colours per class: nearest-centroid on raw pixels separates them perfectly.
    labels = np.repeat(np.arange(6), 8)
    images = np.zeros((len(labels), 4, 4, 3), dtype=np.uint8)
    images[:] = (labels * 40)[:, None, None, None]
    eps = fixed_episodes(labels, 3, 2, 4, 10, seed=0)
    acc = nearest_centroid(raw_pixels(images), eps, 2)
    assert torch.equal(acc, torch.ones(10))
