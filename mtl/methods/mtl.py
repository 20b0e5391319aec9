"""MTL (Sun et al. 2019): the pretrained encoder frozen with scaling/shift (SS) weights on every
convolution, and a linear base-learner θ = (W, b) adapted on each support set by gradient steps; SS
and θ's initialisation are meta-learned through that inner loop (closed-form inner gradient, second
order by default; :mod:`mtl.base_learner`). Hard-task meta-batches are the metatrain stage's, for any
method; the paper uses them with this one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from mtl import base_learner, ss
from mtl import device as devices
from mtl.config import Config, MetaConfig
from mtl.data.episodes import episode_targets
from mtl.data.store import ImageStore
from mtl.evaluate import finetune
from mtl.methods.base import Method
from mtl.monitor import Monitor

__all__ = ["MTL", "task_outputs"]


class MTL(Method):
    """The SS encoder plus θ = (W (way, D), b (way,)): everything meta-training learns."""

    name = "mtl"
    label = "MTL (SS + meta-learned θ)"
    variants = {
        "mtl": ("MTL: SS + θ meta-trained, no HT", {"meta.hard_tasks.enabled": False}),
        "mtl-ht": ("MTL + HT: hard-task meta-batches", {"meta.hard_tasks.enabled": True}),
    }

    ablation_labels = {
        "plain": "MTL: SS + θ meta-trained, no HT",
        "random": "MTL + as many random extra tasks (control of HT)",
        "hard": "MTL + HT: hard-task meta-batches",
        "scratch": "SS + θ meta-trained on a random encoder (no pretraining)",
    }

    def __init__(self, encoder: nn.Module, cfg: Config) -> None:
        m = cfg.meta
        self.train_bn = m.bn == "affine"
        super().__init__(ss.attach(encoder, train_bn=self.train_bn), cfg)
        self.meta: MetaConfig = m
        self.test_steps = cfg.eval_inner_steps()
        W, b = base_learner.init_theta(m.way, encoder.num_features)
        self.W, self.b = nn.Parameter(W), nn.Parameter(b)

    def train(self, mode: bool = True) -> MTL:
        super().train(mode)
        # Frozen BN keeps running statistics (eval mode) even while SS weights train.
        self.encoder.train(mode and self.train_bn)
        return self

    def encoder_train(self, mode: bool = True) -> None:
        self.train(mode)

    def theta(self, way: int) -> tuple[torch.Tensor, torch.Tensor]:
        """θ's initialisation for a ``way``-way task: the meta-learned rows, or (another way) every
        class from the mean of the rows."""
        if way == self.W.shape[0]:
            return self.W, self.b
        return self.W.mean(0, keepdim=True).expand(way, -1), self.b.mean().expand(way)

    def init_note(self, way: int) -> str:
        return "meta-learned" if way == self.W.shape[0] else "mean of rows"

    def episode_logits(
        self, support: torch.Tensor, y_support: torch.Tensor, query: torch.Tensor, way: int
    ) -> torch.Tensor:
        W, b = self.theta(way)
        steps = self.meta.inner_steps if self.training else self.test_steps
        first_order = self.meta.first_order and self.training
        W, b = base_learner.adapt(
            support, y_support, W, b, steps=steps, lr=self.meta.inner_lr, first_order=first_order
        )
        return base_learner.logits(query, W, b)

    def fit(self, support: torch.Tensor, y_support: torch.Tensor, way: int) -> dict[str, torch.Tensor]:
        """The adapted θ' = (W' (way, D), b' (way,)) of one task."""
        W, b = self.theta(way)
        W, b = base_learner.adapt(support, y_support, W, b, steps=self.test_steps, lr=self.meta.inner_lr)
        return {"W": W.detach(), "b": b.detach()}

    def predict(self, fitted: dict[str, torch.Tensor], query: torch.Tensor, way: int) -> torch.Tensor:
        return base_learner.logits(query, fitted["W"], fitted["b"])

    def task_logits(self, images, tasks, transform) -> tuple[torch.Tensor, torch.Tensor]:
        return task_outputs(self, self.meta, images, tasks, transform)

    @torch.no_grad()
    def evaluate(self, features: torch.Tensor, episodes: torch.Tensor, shot: int) -> torch.Tensor:
        W, b = self.theta(episodes.shape[1])
        return finetune(features, episodes, shot, W, b, steps=self.test_steps, lr=self.meta.inner_lr)

    def param_groups(self) -> list[dict]:
        """SS (and BN affine, if trained) at ``lr_ss``, θ at ``lr_theta``."""
        return [
            {
                "name": "ss",
                "params": [*ss.parameters(self.encoder), *ss.bn_parameters(self.encoder)],
                "lr": self.meta.lr_ss,
            },
            {"name": "theta", "params": [self.W, self.b], "lr": self.meta.lr_theta},
        ]

    def state(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "theta": {"W": self.W.detach(), "b": self.b.detach()}}

    def load_state(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        with torch.no_grad():
            self.W.copy_(state["theta"]["W"])
            self.b.copy_(state["theta"]["b"])

    def log_epoch(self, monitor: Monitor, step: int) -> None:
        modules = [mod for _, mod in ss.ss_modules(self.encoder)]
        monitor.histogram("ss/scale", torch.cat([mod.scale.detach().flatten() for mod in modules]), step)
        monitor.histogram("ss/shift", torch.cat([mod.shift.detach().flatten() for mod in modules]), step)


def task_outputs(
    learner: MTL,
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
    if learner.train_bn:
        # Batch statistics of each task's support set and of its query set on their own, as both
        # official codes normalise them: pooling the tasks of a meta-batch would mix their statistics.
        with devices.autocast(dev, learner.precision):
            sup = torch.stack([learner.encoder(transform(images[i[:, : m.shot].reshape(-1)])) for i in idx])
            qry = torch.stack([learner.encoder(transform(images[i[:, m.shot :].reshape(-1)])) for i in idx])
        sup, qry = sup.float(), qry.float()
    else:
        # Frozen BN: every task of the meta-batch, hard tasks included, in one encoder forward.
        sup, qry = learner.encode_tasks(images, tasks, transform)
    y_s = episode_targets(way, m.shot, device=dev)
    W, b = base_learner.adapt(
        sup, y_s, learner.W, learner.b, steps=m.inner_steps, lr=m.inner_lr, first_order=m.first_order
    )
    return base_learner.logits(qry, W, b), episode_targets(way, n - m.shot, device=dev)
