"""Stage 3: accuracy ± 95% CI of the meta-trained model on fixed, seeded test episodes.

Every method in the table is scored on the same episodes, from features computed once per encoder:
MTL (SS encoder, meta-learned θ adapted on the support set), θ fine-tuned on the pretrained features
without meta-training, and nearest-centroid on pretrained features and on raw pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mtl import ss
from mtl.config import Config
from mtl.data.episodes import ImageRows
from mtl.data.sources import load_splits
from mtl.evaluate import finetune, mean_ci, nearest_centroid, raw_pixels
from mtl.report import results_table
from mtl.stages.run import Run

MTL = "MTL (SS + meta-learned θ)"
FT = "θ fine-tuned on pretrained features (no meta-training)"
NC_FEATURES = "nearest centroid, pretrained features"
NC_PIXELS = "nearest centroid, raw pixels"


def test_episodes(run: Run, episodes: int) -> tuple[ImageRows, torch.Tensor]:
    """``episodes`` fixed test episodes ``(E, way, shot + query)`` on the device, indexing the test
    images they use (returned too).

    The episodes depend only on the test split and ``test.seed``: every method and run sees the same tasks.
    """
    test = load_splits(run.cfg.data, ("test",))["test"]
    return run.eval_episodes(test, "test", episodes, shot=run.cfg.meta.shot, seed=run.cfg.test.seed)


def inner_steps(cfg: Config) -> int:
    return cfg.test.inner_steps if cfg.test.inner_steps is not None else cfg.meta.inner_steps


def pretrained_features(run: Run, pre_ckpt: dict, images: ImageRows) -> torch.Tensor:
    encoder = run.backbone()
    encoder.load_state_dict(pre_ckpt["encoder"])
    return run.features(encoder.to(run.device), images)


def mtl_accuracy(run: Run, meta_ckpt: dict, images: ImageRows, episodes: torch.Tensor) -> torch.Tensor:
    """Per-episode accuracy ``(E,)`` of a meta-trained checkpoint: SS features, θ adapted per episode.

    If the test ``way`` differs from meta-training's, every class starts from the mean of θ's rows.
    """
    m = run.cfg.meta
    encoder = ss.attach(run.backbone(), train_bn=m.bn == "affine")
    encoder.load_state_dict(meta_ckpt["encoder"])
    W, b = (meta_ckpt["theta"][k].to(run.device) for k in ("W", "b"))
    if W.shape[0] != m.way:
        W, b = W.mean(0, keepdim=True).expand(m.way, -1), b.mean().expand(m.way)
    feats = run.features(encoder.to(run.device), images)
    return finetune(feats, episodes, m.shot, W, b, steps=inner_steps(run.cfg), lr=m.inner_lr)


def finetuned_accuracy(run: Run, feats: torch.Tensor, episodes: torch.Tensor) -> torch.Tensor:
    """θ fine-tuned from zero on fixed features, no meta-training (the paper's "FT" row)."""
    m = run.cfg.meta
    W, b = torch.zeros(m.way, feats.shape[1], device=feats.device), torch.zeros(m.way, device=feats.device)
    return finetune(feats, episodes, m.shot, W, b, steps=inner_steps(run.cfg), lr=m.inner_lr)


def publish(
    run: Run, scores: dict[str, torch.Tensor], episodes: int, *, quiet: bool, extra: dict | None = None
) -> dict:
    """Turn per-episode accuracies into ``results.json`` (written atomically) and print the table."""
    cfg = run.cfg
    rows = []
    for method, acc in scores.items():
        mean, ci = mean_ci(acc)
        rows.append({"method": method, "acc": round(mean, 2), "ci95": round(ci, 2)})
        run.monitor.scalars(0, **{f"test/{method}": mean})
    results = {
        "pipeline": cfg.name,
        "way": cfg.meta.way,
        "shot": cfg.meta.shot,
        "query": cfg.test.query,
        "episodes": episodes,
        "rows": rows,
        "paper": cfg.paper.__dict__ if cfg.paper.acc is not None else None,
        **(extra or {}),
    }
    table = results_table(results)
    run.monitor.text("test/results", table)
    run.monitor.close()
    run.write_text("results.json", json.dumps(results, indent=2) + "\n")
    if not quiet:
        print(table)
    return results


def metatest(cfg: Config, checkpoints: str | Path = "checkpoints", *, quiet: bool = False) -> dict:
    """Evaluate; writes ``metatest/results.json`` and returns the same dict."""
    run = Run.open(cfg, "metatest", checkpoints, quiet=quiet)
    meta_ckpt = run.previous("metatrain")
    pre_ckpt = run.previous("pretrain")
    images, episodes = test_episodes(run, cfg.test.episodes)
    pre_feats = pretrained_features(run, pre_ckpt, images)
    scores = {
        MTL: mtl_accuracy(run, meta_ckpt, images, episodes),
        FT: finetuned_accuracy(run, pre_feats, episodes),
        NC_FEATURES: nearest_centroid(pre_feats, episodes, cfg.meta.shot),
        NC_PIXELS: nearest_centroid(raw_pixels(images).to(run.device), episodes, cfg.meta.shot),
    }
    results = publish(run, scores, cfg.test.episodes, quiet=quiet)
    if not quiet and meta_ckpt["metric"]["epoch"] == 0:
        print(
            "note: meta-validation never improved on the untrained start, so the kept metatrain model is "
            "the pretrained encoder with identity SS and θ = 0, and MTL equals the fine-tuned θ row."
        )
    return results
