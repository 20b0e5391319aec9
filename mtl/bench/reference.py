"""Plain per-episode, per-task implementations of MTL's evaluation and meta-gradient.

These follow the structure of the official code: the encoder runs once per episode on that episode's
images, and the inner loop calls ``torch.autograd.grad`` on the support cross-entropy at every step.
They compute exactly the quantities of the fast paths (:func:`mtl.methods.episodic.finetune_theta`,
metatrain's batched closed-form inner loop), so tests compare the two for equality and ``mtl bench``
times both. Nothing in the stages uses them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.data.augment import Preprocess
from mtl.data.episodes import episode_targets
from mtl.models import ss

__all__ = ["adapt_autograd", "episode_accuracy", "meta_loss", "plain_encode", "plain_ss_encoder"]


def plain_ss_encoder(model: nn.Module) -> nn.Module:
    """``model`` with SS, written plainly as the official code has it: ``nn.BatchNorm2d`` in eval mode
    with its affine weights frozen (not folded into the convolutions), fp32, contiguous tensors."""
    encoder = ss.attach(model.to(memory_format=torch.contiguous_format), bn="affine")
    for p in ss.bn_parameters(encoder):
        p.requires_grad_(False)
    for p in ss.parameters(encoder):  # eval-mode BN cancels no shift: all of SS trains, as when frozen
        p.requires_grad_(True)
    return encoder.eval()


def plain_encode(encoder: nn.Module, image_size: int) -> Callable[[Tensor], Tensor]:
    """uint8 ``(B, H, W, C)`` -> features, through default preprocessing (fp32, no autocast)."""
    pre = Preprocess(image_size, 3)
    return lambda batch: encoder(pre(batch))


def adapt_autograd(
    x: Tensor, y: Tensor, W: Tensor, b: Tensor, *, steps: int, lr: float, create_graph: bool
) -> tuple[Tensor, Tensor]:
    """``steps`` gradient steps of θ = (W (N, D), b (N,)) on ``cross_entropy(x Wᵀ + b, y)``, by autograd.

    x: ``(n, D)`` support features; y: ``(n,)``. ``create_graph`` keeps the graph of every step, so the
    result is differentiable to second order (the official meta-training); evaluation passes False.
    """
    for _ in range(steps):
        if not create_graph:
            W, b = W.detach().requires_grad_(), b.detach().requires_grad_()
        loss = F.cross_entropy(x @ W.T + b, y)
        gW, gb = torch.autograd.grad(loss, (W, b), create_graph=create_graph)
        W, b = W - lr * gW, b - lr * gb
    return W, b


def episode_accuracy(
    encode: Callable[[Tensor], Tensor],
    images: Tensor,
    episode: Tensor,
    shot: int,
    W0: Tensor,
    b0: Tensor,
    *,
    steps: int,
    lr: float,
) -> Tensor:
    """Query accuracy (0-d tensor in [0, 1]) of one episode, encoder forward included.

    encode: uint8 ``(B, H, W, C)`` -> ``(B, D)`` features (eval mode, no grad: its caller's business);
    images: the split, uint8 ``(N, H, W, C)``; episode: ``(way, shot + query)`` indices into it;
    W0 ``(way, D)``, b0 ``(way,)``: the initialisation adapted on the support set.
    """
    way, n = episode.shape
    with torch.no_grad():
        support = encode(images[episode[:, :shot].reshape(-1)]).float()
        query = encode(images[episode[:, shot:].reshape(-1)]).float()
    W0 = W0.detach().float().requires_grad_()
    b0 = b0.detach().float().requires_grad_()
    with torch.enable_grad():
        W, b = adapt_autograd(
            support, episode_targets(way, shot, device=support.device), W0, b0,
            steps=steps, lr=lr, create_graph=False,
        )  # fmt: skip
    with torch.no_grad():
        pred = (query @ W.T + b).argmax(-1)
        return (pred == episode_targets(way, n - shot, device=pred.device)).float().mean()


def meta_loss(
    encode: Callable[[Tensor], Tensor],
    images: Tensor,
    tasks: Tensor,
    shot: int,
    W: Tensor,
    b: Tensor,
    *,
    steps: int,
    lr: float,
    first_order: bool = False,
) -> Tensor:
    """Mean query cross-entropy over ``tasks``, one task at a time, differentiable w.r.t. SS and θ.

    encode: uint8 images -> features through the SS encoder (frozen BN), with grad;
    tasks: ``(T, way, shot + query)`` indices into ``images``; W ``(way, D)``, b ``(way,)``: θ.
    Each task gets its own encoder forward on query and then support images (the official order) and
    an autograd inner loop. The mean over tasks of the per-task mean query loss equals metatrain's
    loss over the flattened meta-batch (every task has the same number of queries).
    """
    T, way, n = tasks.shape
    losses = []
    for task in tasks:
        query = encode(images[task[:, shot:].reshape(-1)]).float()
        support = encode(images[task[:, :shot].reshape(-1)]).float()
        y_s = episode_targets(way, shot, device=support.device)
        if first_order:
            Wt, bt = W, b
            for _ in range(steps):
                loss = F.cross_entropy(support @ Wt.T + bt, y_s)
                gW, gb = torch.autograd.grad(loss, (Wt, bt), retain_graph=True)
                Wt, bt = Wt - lr * gW, bt - lr * gb
        else:
            Wt, bt = adapt_autograd(support, y_s, W, b, steps=steps, lr=lr, create_graph=True)
        y_q = episode_targets(way, n - shot, device=query.device)
        losses.append(F.cross_entropy(query @ Wt.T + bt, y_q))
    return torch.stack(losses).mean()
