"""MAML (Finn et al. 2017): every weight of the network (encoder + a linear head) is adapted on each
support set by ``maml.inner_steps`` gradient steps, θ' = θ − α ∇θ L_support(θ), and the initialisation
θ is meta-learned from the query loss of θ' through those steps (second order; ``maml.first_order``
drops the second derivatives: FOMAML).

Written functionally (``torch.func.functional_call`` and ``torch.func.grad``) and batched over the
tasks of a meta-batch with ``torch.func.vmap``: no module is copied and no Python loop runs per task.
Batch norm keeps no running statistics and normalises with each forward's batch statistics, the
support set and the query set of each task on their own, as the official MAML code does, also at test
time: evaluation is transductive over each task's queries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from mtl.config import Config
from mtl.config.limits import MAX_LR, MAX_STEPS
from mtl.config.validation import option
from mtl.data.augment import Preprocess
from mtl.data.episodes import ImageRows, episode_targets
from mtl.data.store import ImageStore
from mtl.methods.base import Encode, Method
from mtl.methods.episodic import chunked_accuracy
from mtl.methods.registry import register
from mtl.runtime import checkpoint
from mtl.runtime import device as devices

__all__ = [
    "MAML", "EncoderWithHead", "MAMLSettings", "TaskBatchNorm2d", "adapt_network", "replace_batch_norms_",
    "task_batch_norm_", "task_images",
]  # fmt: skip


@dataclass
class MAMLSettings:
    """The ``maml:`` section."""

    inner_steps: int = option(
        5, min=0, max=MAX_STEPS, doc="gradient steps on each support set in meta-training (the paper: 5)"
    )
    test_inner_steps: int = option(
        10, min=0, max=MAX_STEPS, doc="the same at validation and test (the paper: 10)"
    )
    inner_lr: float = option(
        0.01, min=0.0, max=MAX_LR, doc="α, the inner step size (the paper: 0.01 on miniImageNet)"
    )
    first_order: bool = option(False, doc="drop the second derivatives (first-order MAML)")
    lr: float = option(1e-3, above=0.0, doc="β, Adam's lr of the initialisation (decayed like the meta-LRs)")
    pretrained: bool = option(
        False, doc="start the encoder from the pretrain stage; false: random (the paper)"
    )


Params = dict[str, Tensor]


def task_images(
    images: Tensor | ImageStore, tasks: np.ndarray, transform: Callable[[Tensor], Tensor], shot: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Tasks ``(T, way, shot + query)`` of image ids -> model input of the support sets
    ``(T, way * shot, C, H, W)``, their labels ``(way * shot,)``, the query sets ``(T, way * query, C, H,
    W)`` and their targets ``(way * query,)``: what a method that adapts the network takes."""
    T, way, n = tasks.shape
    x = transform(images[torch.from_numpy(tasks).reshape(-1)])
    x = x.view(T, way, n, *x.shape[1:])
    support, query = x[:, :, :shot].flatten(1, 2), x[:, :, shot:].flatten(1, 2)
    return (
        support,
        episode_targets(way, shot, device=x.device),
        query,
        episode_targets(way, n - shot, device=x.device),
    )


def adapt_network(
    net: nn.Module, params: Params, x: Tensor, y: Tensor, *, steps: int, lr: float, first_order: bool
) -> Params:
    """θ' after ``steps`` gradient steps of the cross-entropy of ``net`` on ``x`` ``(n, C, H, W)``,
    ``y`` ``(n,)``. Differentiable w.r.t. ``params`` (second order) unless ``first_order``."""

    def loss(p: Params) -> Tensor:
        return F.cross_entropy(functional_call(net, p, (x,)), y)

    for _ in range(steps):
        g = grad(loss)(params)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        params = {k: params[k] - lr * g[k] for k in params}
    return params


class TaskBatchNorm2d(nn.Module):
    """Batch norm over each forward's own batch, keeping no running statistics, in plain tensor ops.

    Plain ops because ``vmap`` over ``F.batch_norm`` gives wrong second derivatives in the torch this
    project runs on (measured: a conv bias before batch norm got a non-zero meta-gradient); these ops
    batch exactly. ``weight`` and ``bias`` keep ``nn.BatchNorm2d``'s names and values.
    """

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__()
        channels = bn.num_features
        self.eps = bn.eps
        self.weight = nn.Parameter(bn.weight.detach().clone() if bn.affine else torch.ones(channels))
        self.bias = nn.Parameter(bn.bias.detach().clone() if bn.affine else torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> the same, normalised per channel over ``(B, H, W)``."""
        mean = x.mean((0, 2, 3), keepdim=True)
        var = x.var((0, 2, 3), unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[
            :, None, None
        ]


def replace_batch_norms_(module: nn.Module, make: Callable[[_BatchNorm], nn.Module]) -> nn.Module:
    """Replace every batch norm ``bn`` of ``module`` by ``make(bn)``, in place; returns it."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm):
            setattr(module, name, make(child))
        else:
            replace_batch_norms_(child, make)
    return module


def task_batch_norm_(module: nn.Module) -> nn.Module:
    """Replace every batch norm of ``module`` by :class:`TaskBatchNorm2d`, in place; returns it."""
    return replace_batch_norms_(module, TaskBatchNorm2d)


class EncoderWithHead(nn.Module):
    """Encoder and a linear head as one module, so one ``functional_call`` runs both (the network a
    method that adapts every weight per task adapts)."""

    def __init__(self, encoder: nn.Module, way: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.num_features, way)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


@register
class MAML(Method):
    name = "maml"
    label = "MAML"
    settings = MAMLSettings
    # Keys that MTL's inner loop once had in the shared sections: MAML's own are these.
    reads_instead = {
        "meta.inner_steps": "maml.inner_steps",
        "meta.inner_lr": "maml.inner_lr",
        "meta.first_order": "maml.first_order",
        "test.inner_steps": "maml.test_inner_steps",
    }

    def __init__(self, encoder: nn.Module, cfg: Config) -> None:
        task_batch_norm_(encoder)  # batch statistics in every forward, none kept
        super().__init__(encoder, cfg)
        self.opts, d = cfg.maml, cfg.data
        self.net = EncoderWithHead(self.encoder, cfg.meta.way)
        self.test_steps = cfg.maml.test_inner_steps
        self.pre = Preprocess.for_data(d)

    @classmethod
    def needs_pretrained(cls, cfg: Config) -> bool:
        return cfg.maml.pretrained

    def _params(self, way: int) -> Params:
        """The meta-learned initialisation θ; the head's first ``way`` rows for a ``way``-way task."""
        params = dict(self.net.named_parameters())
        if way != self.net.head.out_features:
            params["head.weight"], params["head.bias"] = (
                params["head.weight"][:way],
                params["head.bias"][:way],
            )
        return params

    def query_logits(self, support: Tensor, y_support: Tensor, query: Tensor, way: int) -> Tensor:
        """support ``(T, n_s, C, H, W)`` images, labels ``(n_s,)``, query ``(T, n_q, C, H, W)`` -> the
        adapted networks' query logits ``(T, n_q, way)``; training or test steps by the module's mode."""
        s = self.opts
        steps = s.inner_steps if self.training else self.test_steps
        first_order = s.first_order or not self.training

        def one_task(params: Params, x_s: Tensor, x_q: Tensor) -> Tensor:
            adapted = adapt_network(
                self.net, params, x_s, y_support, steps=steps, lr=s.inner_lr, first_order=first_order
            )
            return functional_call(self.net, adapted, (x_q,))

        with devices.autocast(support.device, self.precision):
            return vmap(one_task, in_dims=(None, 0, 0), randomness="same")(
                self._params(way), support, query
            ).float()

    def task_logits(
        self, images: torch.Tensor | ImageStore, tasks: np.ndarray, transform: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        support, y_s, query, targets = task_images(images, tasks, transform, self.shot)
        return self.query_logits(support, y_s, query, tasks.shape[1]), targets

    def embed(self, x: Tensor) -> Tensor:
        """The preprocessed images themselves: the network adapts to each task, so nothing is fixed."""
        return x

    def fit(self, support: Tensor, y_support: Tensor, way: int) -> dict[str, Tensor]:
        """Support images ``(n, C, H, W)`` -> the adapted network θ' (every weight, by name), after
        the test-time steps."""
        s = self.opts
        with devices.autocast(support.device, self.precision):
            params = adapt_network(
                self.net, self._params(way), support, y_support,
                steps=self.test_steps, lr=s.inner_lr, first_order=True,
            )  # fmt: skip
        return {k: v.detach() for k, v in params.items()}

    def predict(self, fitted: dict[str, Tensor], query: Tensor, way: int) -> Tensor:
        """Query images ``(m, C, H, W)`` -> logits ``(m, way)``; batch norm normalises with the
        statistics of these ``m`` images (transductive, as in MAML's evaluation)."""
        return devices.encode(lambda x: functional_call(self.net, fitted, (x,)), query, self.precision)

    def features(self, images: ImageRows, encode: Encode, device: torch.device) -> Tensor:
        """The images themselves, uint8 ``(N, H, W, C)`` on the device: the network adapts per episode,
        so there are no fixed features to cache."""
        return torch.from_numpy(np.asarray(images[:])).to(device)

    def evaluate(self, features: Tensor, episodes: Tensor, shot: int, *, chunk: int = 16) -> Tensor:
        """Accuracy ``(E,)``: each episode adapts its own copy of θ (test steps), ``chunk`` episodes
        batched at once; no graph outlives a chunk, so memory does not grow with the episode count."""

        @torch.no_grad()  # torch.func.grad still differentiates the inner loop
        def scores(idx: Tensor) -> Tensor:
            return self.task_logits(features, idx.numpy(), self.pre)[0]

        return chunked_accuracy(episodes.cpu(), scores, chunk=chunk)

    def param_groups(self) -> list[dict]:
        return [{"name": "maml", "params": list(self.net.parameters()), "lr": self.opts.lr}]

    def state(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "head": self.net.head.state_dict()}

    def load_state(self, state: dict) -> None:
        checkpoint.load_weights(self.encoder, state["encoder"], "encoder")
        checkpoint.load_weights(self.net.head, state["head"], "head")

    def init_note(self, way: int) -> str:
        return "meta-learned network"
