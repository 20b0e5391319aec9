"""The linear base-learner θ = (W, b) of MTL, written functionally so θ' stays in the autograd graph.

The inner loop runs plain gradient descent on the support cross-entropy. Its gradient has a closed form
for a linear classifier, so no autograd call is needed per step: with ``P = softmax(x Wᵀ + b)`` and
``G = (P − onehot(y)) / n``, ``∇W = Gᵀ x`` and ``∇b = Σ_rows G``. The formula is built from
differentiable ops, so the meta-gradient ``d L_query(θ') / d(θ, x_support)`` is exact second order.

Every function broadcasts over leading (episode) dimensions: features ``(E, n, D)`` with a shared
initialisation ``W (N, D)`` give per-episode ``W' (E, N, D)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adapt", "init_theta", "logits", "support_grad"]


def _full_precision(device: torch.device) -> torch.autocast:
    # Autocast would run the matmuls in bf16/fp16 even on float32 inputs; the inner loop accumulates
    # many small updates, so it always runs in W's dtype.
    return torch.autocast(device_type=device.type, enabled=False)


def init_theta(
    way: int, dim: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Zero initialisation: ``W (way, dim)`` and ``b (way,)``; wrap them in ``nn.Parameter`` to meta-learn."""
    return torch.zeros(way, dim, device=device, dtype=dtype), torch.zeros(way, device=device, dtype=dtype)


def logits(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """Class scores ``x Wᵀ + b``.

    Args:
        x: ``(..., n, D)`` features (cast to ``W.dtype``).
        W: ``(..., N, D)`` weights.
        b: ``(..., N)`` biases.

    Returns:
        ``(..., n, N)`` logits; leading dimensions broadcast.
    """
    with _full_precision(x.device):
        return torch.matmul(x.to(W.dtype), W.transpose(-1, -2)) + b.unsqueeze(-2)


def support_grad(x: Tensor, y: Tensor, W: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of the mean cross-entropy over the ``n`` rows of ``x`` w.r.t. ``(W, b)``, per episode.

    Args:
        x: ``(..., n, D)`` features.
        y: ``(..., n)`` int64 targets in ``[0, N)``.
        W: ``(..., N, D)``; b: ``(..., N)``.

    Returns:
        ``dW (..., N, D)`` and ``db (..., N)`` (broadcast shapes), differentiable w.r.t. x, W and b.
    """
    with _full_precision(x.device):
        x = x.to(W.dtype)
        num_classes = W.shape[-2]
        prob = torch.softmax(logits(x, W, b), dim=-1)
        # Comparison instead of F.one_hot: no range check, hence no host sync on CUDA.
        onehot = (y.unsqueeze(-1) == torch.arange(num_classes, device=y.device)).to(prob.dtype)
        g = (prob - onehot) / x.shape[-2]
        return torch.matmul(g.transpose(-1, -2), x), g.sum(dim=-2)


def adapt(
    x: Tensor,
    y: Tensor,
    W: Tensor,
    b: Tensor,
    *,
    steps: int,
    lr: float,
    first_order: bool = False,
) -> tuple[Tensor, Tensor]:
    """Adapt θ on a support set: ``θ ← θ − lr · ∇θ L_support(θ)``, ``steps`` times.

    Args:
        x: ``(E, n, D)`` or ``(n, D)`` support features (any float dtype; computed in ``W.dtype``).
        y: ``(E, n)`` or ``(n,)`` int64 targets.
        W: ``(E, N, D)`` or ``(N, D)`` initial weights (broadcast over episodes).
        b: ``(E, N)`` or ``(N,)`` initial biases.
        steps: number of gradient steps (0 returns ``W, b`` unchanged).
        lr: inner learning rate.
        first_order: detach each step's gradient; the meta-gradient then reaches ``W, b`` only through
            the identity path (first-order MAML) and does not reach ``x``.

    Returns:
        ``W' (E, N, D)`` and ``b' (E, N)`` (or unbatched, following the inputs). Under
        ``torch.no_grad()`` no graph is kept, so memory does not grow with ``steps``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if steps == 0:
        return W, b
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be (n, D) or (E, n, D), got shape {tuple(x.shape)}")
    with _full_precision(x.device):
        x = x.to(W.dtype)
        n, num_classes = x.shape[-2], W.shape[-2]
        onehot = (y.unsqueeze(-1) == torch.arange(num_classes, device=y.device)).to(W.dtype)
        x_w = x.detach() if first_order else x  # first order: the update does not reach x
        batched = x.dim() == 3
        if batched:  # a shared initialisation starts every episode
            W, b = W.expand(x.shape[0], *W.shape[-2:]), b.expand(x.shape[0], num_classes)
        for _ in range(steps):
            # support_grad's formula with each product fused into one multiply-add, the 1/n moved into
            # the step size: G = softmax(b + x Wᵀ) − onehot, W ← W − (lr/n) Gᵀ x, b ← b − (lr/n) Σ_rows G.
            if batched:
                g = torch.softmax(torch.baddbmm(b.unsqueeze(1), x, W.transpose(1, 2)), dim=-1) - onehot
            else:
                g = torch.softmax(torch.addmm(b, x, W.T), dim=-1) - onehot
            if first_order:
                g = g.detach()
            if batched:
                W = torch.baddbmm(W, g.transpose(1, 2), x_w, alpha=-lr / n)
            else:
                W = torch.addmm(W, g.T, x_w, alpha=-lr / n)
            b = torch.add(b, g.sum(dim=-2), alpha=-lr / n)
    return W, b
