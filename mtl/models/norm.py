"""Batch norm without a learnable scale γ: only the shift β is a parameter.

This is tf.contrib's ``batch_norm`` with its defaults (``scale=False``), which the official MTL TensorFlow
network uses. γ is kept as a buffer of ones still named ``weight``, so everything written for
``nn.BatchNorm2d`` keeps working unchanged: ``F.batch_norm``, timm's ``freeze_batch_norm_2d``, state dicts
with the usual keys. ``parameters()``, and so optimisers and gradient all-reduces, only see β.
"""

from __future__ import annotations

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["ShiftBatchNorm2d", "fix_scale", "has_fixed_scale"]


def has_fixed_scale(module: nn.Module) -> bool:
    """Whether ``module`` is an affine batch norm whose γ (``weight``) is a fixed buffer, not a parameter."""
    return isinstance(module, _BatchNorm) and module.affine and not isinstance(module.weight, nn.Parameter)


def fix_scale(bn: _BatchNorm) -> _BatchNorm:
    """Turn ``bn``'s γ parameter into a buffer holding the same values, in place; returns ``bn``.

    Used to build γ-free variants of other batch-norm classes (e.g. for distributed training) that
    behave like :class:`ShiftBatchNorm2d`. A no-op when γ already is a buffer.
    """
    if isinstance(bn.weight, nn.Parameter):
        gamma = bn.weight.detach().clone()
        del bn.weight  # unregisters the parameter, so the name is free for the buffer
        bn.register_buffer("weight", gamma)
    return bn


class ShiftBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose scale γ is fixed at 1: ``(x - μ) / sqrt(σ² + ε) + β`` on (B, C, H, W).

    The defaults are tf.contrib's: ``eps=1e-3``. The momentum of the running statistics is PyTorch's 0.1
    (see :mod:`mtl.models.resnet12_tf` for why not TF's decay of 0.999).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-3,
        momentum: float | None = 0.1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine=True, device=device, dtype=dtype)
        fix_scale(self)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale=False"
