"""Stage 3: accuracy ± 95% CI of the meta-trained model on fixed, seeded test episodes.

Every method in the table is scored on the same episodes, from features computed once per encoder:
MTL (SS encoder, meta-learned θ adapted on the support set), θ fine-tuned on the pretrained features
without meta-training, and nearest-centroid on pretrained features and on raw pixels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mtl import ss
from mtl.config import Config
from mtl.data.episodes import check_episode_shape, fixed_episodes
from mtl.data.sources import load_splits
from mtl.evaluate import finetune, mean_ci, nearest_centroid, raw_pixels
from mtl.report import results_table
from mtl.stages.run import Run

MTL = "MTL (SS + meta-learned θ)"
FT = "θ fine-tuned on pretrained features (no meta-training)"
NC_FEATURES = "nearest centroid, pretrained features"
NC_PIXELS = "nearest centroid, raw pixels"


def metatest(cfg: Config, checkpoints: str | Path = "checkpoints", *, quiet: bool = False) -> dict:
    """Evaluate; writes ``metatest/results.json`` and returns the same dict."""
    run = Run.open(cfg, "metatest", checkpoints, quiet=quiet)
    m, t, dev = cfg.meta, cfg.test, run.device
    meta_ckpt = run.previous("metatrain")
    pre_ckpt = run.previous("pretrain")
    test = load_splits(cfg.data, ("test",))["test"]
    check_episode_shape(test.labels, m.way, m.shot, t.query, split="test", class_names=test.class_names)
    # The episodes depend only on the test split and test.seed, so every method and run sees the same tasks.
    episodes = torch.from_numpy(
        fixed_episodes(test.labels, m.way, m.shot, t.query, t.episodes, seed=t.seed)
    ).to(dev)
    steps = t.inner_steps if t.inner_steps is not None else m.inner_steps

    pretrained = run.backbone()
    pretrained.load_state_dict(pre_ckpt["encoder"])
    meta_encoder = ss.attach(run.backbone(), train_bn=m.bn == "affine")
    meta_encoder.load_state_dict(meta_ckpt["encoder"])
    W, b = (meta_ckpt["theta"][k].to(dev) for k in ("W", "b"))
    if W.shape[0] != m.way:
        W, b = W.mean(0, keepdim=True).expand(m.way, -1), b.mean().expand(m.way)

    pre_feats = run.features(pretrained.to(dev), test.images)
    meta_feats = run.features(meta_encoder.to(dev), test.images)
    zeros = torch.zeros_like(W), torch.zeros_like(b)
    scores = {
        MTL: finetune(meta_feats, episodes, m.shot, W, b, steps=steps, lr=m.inner_lr),
        FT: finetune(pre_feats, episodes, m.shot, *zeros, steps=steps, lr=m.inner_lr),
        NC_FEATURES: nearest_centroid(pre_feats, episodes, m.shot),
        NC_PIXELS: nearest_centroid(raw_pixels(test.images).to(dev), episodes, m.shot),
    }
    rows = []
    for method, acc in scores.items():
        mean, ci = mean_ci(acc)
        rows.append({"method": method, "acc": round(mean, 2), "ci95": round(ci, 2)})
        run.monitor.scalars(0, **{f"test/{method}": mean})
    results = {
        "pipeline": cfg.name,
        "way": m.way,
        "shot": m.shot,
        "query": t.query,
        "episodes": t.episodes,
        "rows": rows,
        "paper": cfg.paper.__dict__ if cfg.paper.acc is not None else None,
    }
    table = results_table(results)
    run.monitor.text("test/results", table)
    run.monitor.close()
    run.save_config()
    tmp = run.out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, run.out / "results.json")
    if not quiet:
        print(table)
        if meta_ckpt["metric"]["epoch"] == 0:
            print(
                "note: meta-validation never improved on the untrained start, so the kept metatrain model is "
                "the pretrained encoder with identity SS and θ = 0, and MTL equals the fine-tuned θ row."
            )
    return results
