"""Meta-Transfer's scaling and shifting (SS) of a frozen, pretrained network.

Every convolution of the pretrained feature extractor is kept frozen and modulated by two small learnable
tensors::

    conv_SS(X) = (W ⊙ Φ_S1) * X + (b + Φ_S2)

``Φ_S1`` (:attr:`SSConv2d.scale`) has one scalar per 2-D kernel slice, shape ``(C_out, C_in / groups, 1, 1)``,
broadcast over the kernel's spatial extent; it starts at 1. ``Φ_S2`` (:attr:`SSConv2d.shift`) has one scalar
per output channel, shape ``(C_out,)``; it starts at 0. At initialisation the network therefore computes
exactly what it computed before :func:`attach`.

Usage::

    backbone.load_state_dict(pretrained)  # a plain (un-attached) checkpoint
    ss.attach(backbone)                   # in place; everything except SS is now frozen
    opt = torch.optim.Adam(ss.parameters(backbone), lr=1e-4)

Batch norm is the caller's business. :func:`attach` only decides which parameters are trainable:
by default BN affine weights are frozen like every other pretrained parameter, and the caller normally
keeps BN in eval mode (``model.eval()``) so running statistics stay frozen too. ``train_bn=True`` makes
the BN affine weights trainable (:func:`bn_parameters`), which is what the official MTL PyTorch code
does; whether running statistics are updated then depends on the caller putting BN in train mode.

State dicts: an attached model's keys are the plain model's keys with ``.conv`` inserted before each
convolution's ``weight``/``bias``, plus ``.scale`` and ``.shift``. Load pretrained weights *before*
attaching; load a meta-trained (attached) checkpoint into a freshly attached model of the same architecture.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from mtl.errors import MtlError

__all__ = ["SSConv2d", "attach", "bn_parameters", "parameters", "ss_modules"]


class SSConv2d(nn.Module):
    """A frozen convolution (``.conv``) modulated by learnable ``.scale`` (Φ_S1) and ``.shift`` (Φ_S2).

    Any ``nn.Conv2d`` is accepted, including subclasses that pad in their own ``forward`` (e.g. timm's
    ``Conv2dSame``): their forward runs with the modulated weight and bias, so padding semantics are kept.
    The wrapped convolution's parameters are set to ``requires_grad=False``.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"SSConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        weight = conv.weight
        conv.requires_grad_(False)
        self.conv = conv
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.scale = nn.Parameter(torch.ones(*weight.shape[:2], *([1] * (weight.dim() - 2)), **factory))
        self.shift = nn.Parameter(torch.zeros(weight.shape[0], **factory))
        # Plain convolutions (any padding_mode) go straight to Conv2d._conv_forward; subclasses that
        # override forward are called through functional_call to keep their own padding logic.
        self._plain = type(conv).forward is nn.Conv2d.forward

    def modulated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective weight ``W ⊙ Φ_S1`` (C_out, C_in/groups, kh, kw) and bias ``b + Φ_S2`` (C_out,)."""
        bias = self.conv.bias
        return self.conv.weight * self.scale, self.shift if bias is None else bias + self.shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W'), exactly as the wrapped convolution would shape it."""
        weight, bias = self.modulated()
        if self._plain:
            return self.conv._conv_forward(x, weight, bias)
        return functional_call(self.conv, {"weight": weight, "bias": bias}, (x,))

    def extra_repr(self) -> str:
        return f"scale={tuple(self.scale.shape)}, shift={tuple(self.shift.shape)}"


def _is_bn_affine(module: nn.Module, name: str) -> bool:
    return isinstance(module, _BatchNorm) and name in ("weight", "bias")


def attach(model: nn.Module, *, train_bn: bool = False) -> nn.Module:
    """Wrap every ``nn.Conv2d`` of ``model`` in :class:`SSConv2d` and freeze all other parameters.

    Works in place and returns ``model``. Calling it again is harmless: existing SS convolutions are kept
    (their scale and shift untouched) and only the trainable set is recomputed from ``train_bn``.

    Args:
        model: any network containing convolutions (mtl's ResNets, timm models, ...).
        train_bn: also train batch-norm affine weights and biases (the official PyTorch recipe).
    """
    if isinstance(model, nn.Conv2d):
        raise MtlError("ss.attach needs a network that contains convolutions; wrap a bare conv with SSConv2d")
    wrapped: dict[int, SSConv2d] = {}  # one wrapper per conv, even if the conv is shared
    for parent in list(model.modules()):
        if isinstance(parent, SSConv2d):
            continue
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                if id(child) not in wrapped:
                    wrapped[id(child)] = SSConv2d(child)
                setattr(parent, child_name, wrapped[id(child)])

    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, SSConv2d):
                param.requires_grad_(True)
            else:
                param.requires_grad_(train_bn and _is_bn_affine(module, name))
    return model


def ss_modules(model: nn.Module) -> Iterator[tuple[str, SSConv2d]]:
    """``(qualified name, module)`` of every SS convolution, e.g. to log scale/shift histograms."""
    for name, module in model.named_modules():
        if isinstance(module, SSConv2d):
            yield name, module


def parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Exactly the SS scales and shifts (Φ_S1, Φ_S2) of ``model``, in module order."""
    for _, module in ss_modules(model):
        yield module.scale
        yield module.shift


def bn_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The trainable batch-norm affine weights and biases: empty unless ``attach(..., train_bn=True)``."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            for name, param in module.named_parameters(recurse=False):
                if _is_bn_affine(module, name) and param.requires_grad:
                    yield param
