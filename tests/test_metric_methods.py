"""Matching Networks and Siamese networks: their scores against plain references of the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from mtl import config, methods
from mtl.methods.matchingnet import attention_logits


def _cfg(tiny_overrides, *sets):
    return config.load(None, [*tiny_overrides, "backbone.name=conv4", "backbone.widths=[4,4,4,4]", *sets])


def test_matching_attention_equals_the_formula():
    torch.manual_seed(0)
    way, shot = 3, 2
    support, query = torch.randn(2, way * shot, 5), torch.randn(2, 4, 5)
    y = torch.arange(way).repeat_interleave(shot)
    got = attention_logits(support, y, query, way)
    for e in range(2):
        for i, q in enumerate(query[e]):
            cos = [float(q @ s / (q.norm() * s.norm())) for s in support[e]]
            a = [math.exp(c) / sum(math.exp(d) for d in cos) for c in cos]
            want = [math.log(sum(a[j] for j in range(len(a)) if y[j] == k)) for k in range(way)]
            torch.testing.assert_close(got[e, i], torch.tensor(want), rtol=1e-5, atol=1e-6)


def test_full_context_embeddings_batch_equals_one_query_at_a_time(tiny_overrides):
    cfg = _cfg(tiny_overrides, "method=matchingnet", "matchingnet.fce=true", "matchingnet.fce_steps=3")
    torch.manual_seed(0)
    from mtl.models.backbone import build_backbone

    net = methods.build(cfg, build_backbone("conv4", widths=[4, 4, 4, 4], image_size=16)).eval()
    d = net.encoder.num_features
    support, query = torch.randn(2, 6, d), torch.randn(2, 4, d)
    y = torch.arange(3).repeat_interleave(2)
    together = net.episode_logits(support, y, query, 3)
    for e in range(2):
        for i in range(4):
            alone = net.episode_logits(support[e : e + 1], y, query[e : e + 1, i : i + 1], 3)
            torch.testing.assert_close(alone[0, 0], together[e, i], rtol=1e-5, atol=1e-6)
    # g(S) sees the whole support set: changing one support image changes another's embedding.
    g1, _ = net.fce(support, query)
    moved = support.clone()
    moved[:, 0] += 1
    g2, _ = net.fce(moved, query)
    assert not torch.allclose(g1[:, 1], g2[:, 1])


def test_siamese_scores_and_pair_loss_equal_the_formulas(tiny_overrides):
    cfg = _cfg(tiny_overrides, "method=siamese")
    from mtl.models.backbone import build_backbone

    torch.manual_seed(0)
    net = methods.build(cfg, build_backbone("conv4", widths=[4, 4, 4, 4], image_size=16))
    d = net.encoder.num_features
    way, shot = 3, 2
    support, query = torch.randn(1, way * shot, d), torch.randn(1, 4, d)
    y = torch.arange(way).repeat_interleave(shot)
    alpha, beta = net.alpha.weight[0], net.alpha.bias[0]
    p = [[torch.sigmoid((alpha * (q - s).abs()).sum() + beta) for s in support[0]] for q in query[0]]
    got = torch.sigmoid(net.episode_logits(support, y, query, way))[0]
    for i in range(4):
        for k in range(way):
            mean = sum(p[i][j] for j in range(way * shot) if y[j] == k) / shot
            torch.testing.assert_close(got[i, k], mean, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["matchingnet", "siamese"])
def test_metric_methods_run_through_metatrain_and_metatest(tiny_overrides, tmp_path, name):
    from mtl.stages.metatest import metatest
    from mtl.stages.metatrain import metatrain

    cfg = _cfg(tiny_overrides, f"method={name}", "test.baselines=[pixels]", f"{name}.lr=0.003")
    best = metatrain(cfg, tmp_path, quiet=True)
    assert 0 <= best["val_acc"] <= 100
    rows = metatest(cfg, tmp_path, quiet=True)["rows"]
    assert [r["method"] for r in rows] == [methods.get(name).label, "nearest centroid, raw pixels"]
