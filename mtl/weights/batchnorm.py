"""Batch-norm running statistics for weights that come without them (the official TF pretrain weights).

The statistics are estimated as the network computed its features when it was trained: every BN in train
mode (normalising with the batch's own statistics, as TF always did), on a fixed, seeded subset of the
pipeline's train split, preprocessed as every stage preprocesses it (no augmentation), with
``momentum=None``, PyTorch's cumulative average over the batches.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mtl.config import Config
from mtl.data.augment import Preprocess
from mtl.data.sources import load_splits
from mtl.runtime import device as devices

__all__ = ["IMAGES", "recalibrate"]

IMAGES = 1024  # enough for per-channel means and variances to settle (a 0.1% change from 512 to 1,024)
_BATCH = 128


@torch.no_grad()
def recalibrate(
    model: nn.Module, cfg: Config, *, images: int = IMAGES, batch: int = _BATCH, seed: int = 0
) -> int:
    """Reset and re-estimate the running mean and variance of every batch norm of ``model`` (in place,
    on the CPU or the pipeline's device) from at most ``images`` train images; returns how many were
    used. The model is left in eval mode on the CPU."""
    train = load_splits(cfg.data, ("train",))["train"]
    n = min(images, len(train.images))
    ids = np.sort(np.random.default_rng(seed).choice(len(train.images), n, replace=False))
    d = cfg.data
    pre = Preprocess.for_data(d)
    dev = devices.resolve(cfg.device)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch counts the same
    model.to(dev).train()
    try:
        # Near-equal batches, so the cumulative average of batch means is the mean over the images.
        for chunk in np.array_split(ids, max(1, math.ceil(n / batch))):
            model(pre(torch.from_numpy(np.asarray(train.images[chunk])).to(dev)))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval().cpu()
    return n
