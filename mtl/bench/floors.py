"""``mtl bench``'s floors and its paper-protocol meta-test: what the hardware allows, measured in the
same run as mtl's paths, and the meta-test speed-up at the reuse of a real test split.

- meta-train floor: one bare forward + backward of the SS encoder over the meta-batch's images (what a
  meta-train step cannot avoid); efficiency = floor time / mtl's meta-update time;
- meta-test floor, at the paper's protocol: one bare inference forward per distinct image;
  efficiency = floor time per image / mtl's time per distinct image (its feature pass and every
  episode's inner loop);
- paper protocol: 600 episodes over a split of 20 classes × 600 images (each image drawn ~4 times),
  ``--quick`` with as many images per class as the quick setup and the episodes scaled to keep the
  same images-per-episode reuse; mtl's metatest path (only the images the episodes draw are encoded)
  against the per-episode reference on the same episodes.

Each efficiency times mtl's path and its floor in turn, call by call, and takes the medians, so both
see the same machine load.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from mtl import config
from mtl.bench import reference
from mtl.data.augment import Preprocess
from mtl.data.episodes import EpisodeSampler, episode_images, fixed_episodes
from mtl.methods import meta_update
from mtl.methods.episodic import extract_features, finetune_theta
from mtl.methods.mtl import MTL, MTLSettings
from mtl.models import ss
from mtl.runtime import device as devices
from mtl.runtime.timing import timed, timed_pair

__all__ = ["PAPER_IMAGES_PER_CLASS", "bench_floors", "bench_paper_protocol", "encode_fn"]

PAPER_IMAGES_PER_CLASS, PAPER_EPISODES, PAPER_CLASSES = 600, 600, 20


def encode_fn(encoder, pre: Preprocess, dev: torch.device, precision: str = "auto"):
    """uint8 batch ``(B, H, W, C)`` -> ``(B, D)`` float32 features, as metatest's feature pass runs."""

    def encode(batch: torch.Tensor) -> torch.Tensor:
        with devices.autocast(dev, precision):
            return encoder(pre(batch)).float()

    return encode


def bench_floors(s, images: np.ndarray, labels: np.ndarray, dev: torch.device, encoder_fn) -> dict:
    """mtl's meta-update against the bare encoder forward + backward it contains."""
    from mtl.config import MetaConfig

    pre = Preprocess(s.image_size, 3, memory_format=devices.memory_format())
    on_device = torch.from_numpy(images).to(dev)
    m = MetaConfig(way=s.way, shot=s.shot, query=s.query)
    inner = MTLSettings(inner_steps=s.inner_steps, inner_lr=s.inner_lr)
    cfg = config.Config(meta=m, precision=s.precision, sections={"mtl": inner})
    learner = MTL(encoder_fn(s, dev), cfg).to(dev).train()
    opt = torch.optim.Adam(learner.param_groups())
    sampler = EpisodeSampler(labels, s.way, s.shot, s.query, seed=0)
    tasks = np.stack([sampler.sample() for _ in range(s.meta_batch)])
    x = pre(on_device[torch.from_numpy(tasks).reshape(-1).to(dev)])

    def bare_step() -> None:
        learner.encoder.zero_grad(set_to_none=True)
        with devices.autocast(dev, s.precision):
            out = learner.encoder(x)
        out.float().sum().backward()

    floor_s, mtl_s = timed_pair(
        bare_step, lambda: meta_update(learner, opt, on_device, tasks, pre), dev, s.min_seconds
    )
    train = {"floor_s": floor_s, "mtl_s": mtl_s, "images": int(x.shape[0])}
    train["efficiency"] = train["floor_s"] / train["mtl_s"]

    return {"metatrain": train, "precision": devices.encoder_precision(dev, s.precision)}


# 63 lines: one benchmark, read top to bottom: its episodes, the two closures it times, the figures.
def bench_paper_protocol(s, dev: torch.device, quick: bool, images_fn, encoder_fn, plain_encoder_fn) -> dict:
    """The meta-test speed-up over the per-episode reference at the paper's images-per-episode reuse."""
    per_class = s.images_per_class if quick else PAPER_IMAGES_PER_CLASS
    p = replace(s, classes=PAPER_CLASSES, images_per_class=per_class)
    episodes_n = max(1, round(PAPER_EPISODES * per_class / PAPER_IMAGES_PER_CLASS))
    images, labels = images_fn(p)
    episodes = fixed_episodes(labels, s.way, s.shot, s.query, episodes_n, seed=1)
    used, local = episode_images(images, episodes)
    pre = Preprocess(s.image_size, 3, memory_format=devices.memory_format())
    encoder = ss.attach(encoder_fn(p, dev)).eval()
    plain = reference.plain_encode(plain_encoder_fn(p, dev), s.image_size)
    on_device = torch.from_numpy(images).to(dev)
    W0, b0 = torch.zeros(s.way, encoder.num_features, device=dev), torch.zeros(s.way, device=dev)
    ref_n = min(s.ref_episodes, episodes_n)
    out: dict = {}

    def fast(precision: str = s.precision) -> None:
        feats = extract_features(encode_fn(encoder, pre, dev, precision), used, batch_size=256, device=dev)
        idx = torch.from_numpy(local).to(dev)
        out[precision] = finetune_theta(feats, idx, s.shot, W0, b0, steps=s.inner_steps, lr=s.inner_lr)

    def slow() -> None:
        eps = torch.from_numpy(episodes[:ref_n]).to(dev)
        out["ref"] = torch.stack(
            [
                reference.episode_accuracy(
                    plain, on_device, ep, s.shot, W0, b0, steps=s.inner_steps, lr=s.inner_lr
                )
                for ep in eps
            ]
        )

    batch = pre(on_device[: min(256, len(images))])

    @torch.inference_mode()
    def bare_forward() -> None:
        with devices.autocast(dev, s.precision):
            encoder(batch)

    fast_s, fwd_s = timed_pair(fast, bare_forward, dev, s.min_seconds)
    t_ref, n_ref = timed(slow, dev, s.min_seconds)
    floor, per_image = fwd_s / len(batch), fast_s / len(used)
    fast("fp32")
    fp32, ref = out["fp32"][:ref_n].cpu(), out["ref"].cpu()
    fast_eps, ref_eps = episodes_n / fast_s, n_ref * ref_n / t_ref
    return {
        "classes": PAPER_CLASSES,
        "images_per_class": per_class,
        "episodes": episodes_n,
        "distinct_images": len(used),
        "draws_per_image": float(episodes.size / len(used)),
        "fast_episodes_per_s": fast_eps,
        "reference_episodes_per_s": ref_eps,
        "speedup": fast_eps / ref_eps,
        "episodes_compared": ref_n,
        "identical_accuracies_fp32": bool(torch.equal(fp32, ref)),
        "accuracy_reference": float(ref.mean() * 100),
        "accuracy_fast_fp32": float(fp32.mean() * 100),
        "floor_s_per_image": floor,
        "mtl_s_per_image": per_image,
        "efficiency": floor / per_image,
        "precision": devices.encoder_precision(dev, s.precision),
    }
