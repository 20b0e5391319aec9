"""MTL (Sun et al. 2019): the pretrained encoder frozen with scaling/shift (SS) weights on every
convolution, and a linear base-learner θ = (W, b) adapted on each support set by gradient steps; SS
and θ's initialisation are meta-learned through that inner loop (closed-form inner gradient, second
order by default; :mod:`mtl.models.base_learner`). Hard-task meta-batches are the metatrain stage's, for any
method; the paper uses them with this one.

Its settings are the ``mtl:`` section (:class:`MTLSettings`); the schedule, tasks and hard tasks are
the shared ``meta:`` section's.

Batch norm (``mtl.bn``, :func:`mtl.models.ss.attach`): ``frozen`` at the pretrained statistics
(mtl's default; every image is encoded once at evaluation); ``affine``, the official PyTorch code's
(affine weights trained, batch statistics in meta-training, running statistics at evaluation);
``batch``, the official TF code's (batch statistics in every phase: at evaluation each episode's
support set and its query set are encoded on their own, so a query's features depend on the other
queries of its episode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mtl.config import Config
from mtl.config.limits import MAX_LR, MAX_STEPS
from mtl.config.validation import option
from mtl.data.augment import Preprocess
from mtl.data.episodes import ImageRows, episode_targets
from mtl.data.store import ImageStore
from mtl.methods.base import Encode, FeatureMethod
from mtl.methods.episodic import chunked_accuracy, finetune_theta
from mtl.methods.registry import register
from mtl.models import base_learner, ss
from mtl.runtime import checkpoint
from mtl.runtime import device as devices
from mtl.runtime.monitor import Monitor

__all__ = ["MTL", "MTLSettings"]


@dataclass
class MTLSettings:
    """The ``mtl:`` section: the base-learner's inner loop, the meta-learning rates and batch norm."""

    inner_steps: int = option(
        100, min=0, max=MAX_STEPS, doc="base-learner gradient steps on each support set in meta-training"
    )
    test_inner_steps: int | None = option(
        None, min=0, max=MAX_STEPS, doc="the same at validation, test and adapt; null: inner_steps"
    )
    inner_lr: float = option(0.01, min=0.0, max=MAX_LR, doc="base-learner step size")
    first_order: bool = option(False, doc="meta-gradients without the inner loop's second derivatives")
    lr_ss: float = option(1e-4, min=0.0, doc="Adam lr of the SS weights (and BN affine)")
    lr_theta: float = option(1e-3, min=0.0, doc="Adam lr of the base-learner initialisation θ")
    bn: str = option(
        "frozen",
        choices=ss.BN_MODES,
        doc="batch norm: frozen at the pretrained statistics; affine: affine weights trained, batch "
        "statistics in meta-training (official PyTorch code); batch: batch statistics in every phase, "
        "nothing trained (official TF code)",
    )

    @property
    def eval_steps(self) -> int:
        """Inner steps when adapting to a validation, test or user task."""
        return self.test_inner_steps if self.test_inner_steps is not None else self.inner_steps


@register
class MTL(FeatureMethod):
    """The SS encoder plus θ = (W (way, D), b (way,)): everything meta-training learns."""

    name = "mtl"
    label = "MTL (SS + meta-learned θ)"
    settings = MTLSettings
    # Earlier versions kept these in the shared sections.
    former_keys = {
        **{f"meta.{k}": k for k in ("inner_steps", "inner_lr", "first_order", "lr_ss", "lr_theta", "bn")},
        "test.inner_steps": "test_inner_steps",
    }

    def __init__(self, encoder: nn.Module, cfg: Config) -> None:
        m, d = cfg.section(self.name), cfg.data
        self.train_bn = m.bn == "affine"
        # Batch statistics in meta-training: each task's support set and query set are encoded apart.
        self.per_set = m.bn != "frozen"
        super().__init__(ss.attach(encoder, bn=m.bn), cfg)
        self.opts: MTLSettings = m
        self.pre = Preprocess.for_data(d)
        self.test_steps = m.eval_steps
        W, b = base_learner.init_theta(cfg.meta.way, encoder.num_features)
        self.W, self.b = nn.Parameter(W), nn.Parameter(b)

    @classmethod
    def figures(cls, cfg: Config, final_factor: float) -> dict:
        s = cfg.section(cls.name)
        return {
            "final_lr_ss": s.lr_ss * final_factor,
            "final_lr_theta": s.lr_theta * final_factor,
            "inner_steps": {"train": s.inner_steps, "test": s.eval_steps},
        }

    def train(self, mode: bool = True) -> MTL:
        super().train(mode)
        # Frozen BN keeps running statistics (eval mode) even while SS weights train.
        self.encoder.train(mode and self.train_bn)
        return self

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
        steps = self.opts.inner_steps if self.training else self.test_steps
        first_order = self.opts.first_order and self.training
        W, b = base_learner.adapt_theta(
            support, y_support, W, b, steps=steps, lr=self.opts.inner_lr, first_order=first_order
        )
        return base_learner.logits(query, W, b)

    def fit(self, support: torch.Tensor, y_support: torch.Tensor, way: int) -> dict[str, torch.Tensor]:
        """The adapted θ' = (W' (way, D), b' (way,)) of one task."""
        W, b = self.theta(way)
        W, b = base_learner.adapt_theta(
            support, y_support, W, b, steps=self.test_steps, lr=self.opts.inner_lr
        )
        return {"W": W.detach(), "b": b.detach()}

    def predict(self, fitted: dict[str, torch.Tensor], query: torch.Tensor, way: int) -> torch.Tensor:
        return base_learner.logits(query, fitted["W"], fitted["b"])

    def encode_tasks(self, images, tasks, transform) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen BN: every task of the meta-batch, hard tasks included, in one encoder forward. Batch
        statistics: each task's support set and query set on their own, as both official codes
        normalise them (pooling the tasks of a meta-batch would mix their statistics)."""
        if self.per_set:
            return self.encode_sets(images, tasks, transform, self.shot)
        return super().encode_tasks(images, tasks, transform)

    def features(self, images: ImageRows, encode: Encode, device: torch.device) -> torch.Tensor:
        """``(N, D)`` features computed once; with ``mtl.bn: batch``, the uint8 images ``(N, H, W, C)``
        on the device instead (features depend on the set an image is normalised with)."""
        if self.opts.bn != "batch":
            return encode(self.encoder, images)
        return torch.from_numpy(np.array(images[:])).to(device)

    @torch.no_grad()
    def evaluate(self, features: torch.Tensor, episodes: torch.Tensor, shot: int) -> torch.Tensor:
        W, b = self.theta(episodes.shape[1])
        if self.opts.bn == "batch":
            return self._evaluate_per_set(features, episodes, shot, W, b)
        return finetune_theta(features, episodes, shot, W, b, steps=self.test_steps, lr=self.opts.inner_lr)

    def _evaluate_per_set(
        self, images: torch.Tensor, episodes: torch.Tensor, shot: int, W: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        """Accuracy ``(E,)`` of episodes ``(E, way, shot + query)`` indexing uint8 ``images``, each
        episode's support set and query set encoded as batches of their own (``mtl.bn: batch``)."""
        y_s = episode_targets(episodes.shape[1], shot, device=images.device)

        def scores(idx: torch.Tensor) -> torch.Tensor:
            sup, qry = self.encode_sets(images, idx.numpy(), self.pre, shot)
            Wt, bt = base_learner.adapt_theta(sup, y_s, W, b, steps=self.test_steps, lr=self.opts.inner_lr)
            return base_learner.logits(qry, Wt, bt)

        return chunked_accuracy(episodes.cpu(), scores, chunk=64)

    def encode_sets(
        self,
        images: torch.Tensor | ImageStore,
        tasks: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor],
        shot: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tasks ``(T, way, shot + query)`` -> support ``(T, way * shot, D)`` and query
        ``(T, way * query, D)`` float32 features, each task's query set and support set a batch of
        its own, task after task and queries first as in the official code (in ``affine`` mode the
        order sets the running statistics)."""
        sup, qry = [], []
        for task in torch.from_numpy(tasks):  # host ids: gathering moves them to the device
            qry.append(
                devices.encode(self.encoder, transform(images[task[:, shot:].reshape(-1)]), self.precision)
            )
            sup.append(
                devices.encode(self.encoder, transform(images[task[:, :shot].reshape(-1)]), self.precision)
            )
        return torch.stack(sup), torch.stack(qry)

    def param_groups(self) -> list[dict]:
        """SS (and BN affine, if trained) at ``lr_ss``, θ at ``lr_theta``: what trains, nothing that a
        following batch-statistics norm cancels."""
        return [
            {
                "name": "ss",
                "params": [*ss.parameters(self.encoder, trainable=True), *ss.bn_parameters(self.encoder)],
                "lr": self.opts.lr_ss,
            },
            {"name": "theta", "params": [self.W, self.b], "lr": self.opts.lr_theta},
        ]

    def state(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "theta": {"W": self.W.detach(), "b": self.b.detach()}}

    def load_state(self, state: dict) -> None:
        checkpoint.load_weights(self.encoder, state["encoder"], "encoder")
        checkpoint.load_tensor(self.W, state["theta"]["W"], "theta.W")
        checkpoint.load_tensor(self.b, state["theta"]["b"], "theta.b")

    def log_epoch(self, monitor: Monitor, step: int) -> None:
        modules = [mod for _, mod in ss.ss_modules(self.encoder)]
        monitor.histogram("ss/scale", torch.cat([mod.scale.detach().flatten() for mod in modules]), step)
        shifts = [mod.shift.detach().flatten() for mod in modules if mod.shift is not None]
        if shifts:
            monitor.histogram("ss/shift", torch.cat(shifts), step)
