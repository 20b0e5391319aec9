"""The meta-learner of MTL: the SS encoder plus the base learner's initialisation θ, and one
meta-gradient step over a meta-batch of tasks (inner loop on each support set, loss on the queries).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtl import base_learner, ss
from mtl import device as devices
from mtl.config import MetaConfig
from mtl.data.episodes import episode_targets
from mtl.data.store import ImageStore
from mtl.recipe import lr_factor

__all__ = ["MetaLearner", "meta_optimizer", "meta_scheduler", "meta_update", "task_outputs"]


class MetaLearner(nn.Module):
    """The SS encoder plus θ = (W (way, D), b (way,)): everything meta-training learns."""

    def __init__(self, encoder: nn.Module, way: int, *, train_bn: bool, precision: str = "fp32") -> None:
        super().__init__()
        self.encoder = ss.attach(encoder, train_bn=train_bn)
        self.train_bn = train_bn
        self.precision = precision  # of the encoder's forward (see mtl.device.autocast)
        W, b = base_learner.init_theta(way, encoder.num_features)
        self.W, self.b = nn.Parameter(W), nn.Parameter(b)

    def encoder_train(self, mode: bool = True) -> None:
        # Frozen BN keeps running statistics (eval mode) even while SS weights train.
        self.encoder.train(mode and self.train_bn)


def task_outputs(
    learner: MetaLearner,
    m: MetaConfig,
    images: torch.Tensor | ImageStore,
    tasks: np.ndarray,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt θ on each task's support set and score its queries.

    images: uint8 ``(N, H, W, C)`` on the device, or an :class:`~mtl.data.store.ImageStore`;
    tasks: ``(T, way, shot + query)`` image indices;
    ``transform`` turns uint8 batches into model input. Returns query logits ``(T, way * query, way)``
    of the adapted θ' and their targets ``(way * query,)``.
    """
    dev = images.device
    T, way, n = tasks.shape
    idx = torch.from_numpy(tasks)  # host ids: gathering moves them (or the batch) to the device
    with devices.autocast(dev, learner.precision):
        if learner.train_bn:
            # Batch statistics of each task's support set and of its query set on their own, as both
            # official codes normalise them: pooling the tasks of a meta-batch would mix their statistics.
            sup = torch.stack([learner.encoder(transform(images[i[:, : m.shot].reshape(-1)])) for i in idx])
            qry = torch.stack([learner.encoder(transform(images[i[:, m.shot :].reshape(-1)])) for i in idx])
            sup, qry = sup.float(), qry.float()
        else:
            # Frozen BN: every task of the meta-batch, hard tasks included, in one encoder forward.
            feats = learner.encoder(transform(images[idx.reshape(-1)])).float().view(T, way, n, -1)
            sup = feats[:, :, : m.shot].reshape(T, way * m.shot, -1)
            qry = feats[:, :, m.shot :].reshape(T, way * (n - m.shot), -1)
    y_s = episode_targets(way, m.shot, device=dev)
    W, b = base_learner.adapt(
        sup, y_s, learner.W, learner.b, steps=m.inner_steps, lr=m.inner_lr, first_order=m.first_order
    )
    return base_learner.logits(qry, W, b), episode_targets(way, n - m.shot, device=dev)


def meta_update(
    learner: MetaLearner,
    m: MetaConfig,
    opt: torch.optim.Optimizer,
    images: torch.Tensor | ImageStore,
    tasks: np.ndarray,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    loss_scale: float = 1.0,
    sync: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One meta-gradient step of SS and θ on the mean query loss of ``tasks`` ``(T, way, shot + query)``.

    ``loss_scale`` multiplies the loss before backward and ``sync`` runs between backward and the
    optimiser step: a rank of a multi-process run weighs its share of the meta-batch and averages
    the meta-gradient over the ranks there. Returns the (unscaled) loss (0-d), the detached query
    logits ``(T, way * query, way)`` and their targets.
    """
    logits, targets = task_outputs(learner, m, images, tasks, transform)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.repeat(len(logits)))
    opt.zero_grad(set_to_none=True)
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    if sync is not None:
        sync()
    opt.step()
    return loss.detach(), logits.detach(), targets


def meta_scheduler(opt: torch.optim.Optimizer, m: MetaConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The step schedule of both meta-LRs, stepped after every epoch (see :func:`mtl.recipe.lr_factor`)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: lr_factor(m, epoch))


def meta_optimizer(learner: MetaLearner, m: MetaConfig) -> torch.optim.Optimizer:
    """Adam on SS (and BN affine, if trained) at ``lr_ss`` and on θ at ``lr_theta``."""
    return torch.optim.Adam(
        [
            {"params": [*ss.parameters(learner.encoder), *ss.bn_parameters(learner.encoder)], "lr": m.lr_ss},
            {"params": [learner.W, learner.b], "lr": m.lr_theta},
        ]
    )
