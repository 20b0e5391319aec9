"""The linear base-learner θ = (W, b) of MTL, written functionally so θ' stays in the autograd graph.

The inner loop runs plain gradient descent on the support cross-entropy. Its gradient has a closed form
for a linear classifier, so no autograd call is needed per step: with ``P = softmax(x Wᵀ + b)`` and
``G = (P − onehot(y)) / n``, ``∇W = Gᵀ x`` and ``∇b = Σ_rows G``. The formula is built from
differentiable ops, so the meta-gradient ``d L_query(θ') / d(θ, x_support)`` is exact second order.
:func:`adapt_theta` runs the steps in the span of the support rows (on their ``(n, n)`` Gram matrix), so an
inner step costs the same for 64-d and 640-d features.

Every function broadcasts over leading (episode) dimensions: features ``(E, n, D)`` with a shared
initialisation ``W (N, D)`` give per-episode ``W' (E, N, D)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adapt_theta", "init_theta", "logits", "support_grad"]


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


def adapt_theta(
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
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)
        n, num_classes = x.shape[-2], W.shape[-2]
        onehot = (y.unsqueeze(-1) == torch.arange(num_classes, device=y.device)).to(W.dtype)
        # Each step adds to θ a combination of the support rows: θ_t = θ_0 + (C_tᵀ x, 1ᵀ C_t) with C_t
        # (E, n, N), so the support logits are x W_0ᵀ + b_0 + (x xᵀ + 1) C_t. The loop then runs on the
        # (n, n) Gram matrix, whatever D: two small products per step instead of two (n, D) ones, and the
        # meta-gradient through every step is the same maths, exact second order.
        gram = torch.baddbmm(x.new_ones(1, 1, 1), x, x.transpose(1, 2))  # (E, n, n)
        start = torch.matmul(x, W.transpose(-1, -2)) + b.unsqueeze(-2)  # (E, n, N)
        C = x.new_zeros(x.shape[0], n, num_classes)
        for _ in range(steps):
            # support_grad's G = softmax(logits) − onehot, with its 1/n moved into the step size
            g = torch.softmax(torch.baddbmm(start, gram, C), dim=-1) - onehot
            C = torch.add(C, g.detach() if first_order else g, alpha=-lr / n)
        # first order: the update reaches neither x nor (through the steps) θ_0
        W = W + torch.matmul(C.transpose(1, 2), x.detach() if first_order else x)
        b = b + C.sum(dim=-2)
    return (W.squeeze(0), b.squeeze(0)) if single else (W, b)
