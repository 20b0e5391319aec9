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
    with _full_precision(x.device):
        x = x.to(W.dtype)
        for _ in range(steps):
            dW, db = support_grad(x, y, W, b)
            if first_order:
                dW, db = dW.detach(), db.detach()
            W = W - lr * dW
            b = b - lr * db
    return W, b
