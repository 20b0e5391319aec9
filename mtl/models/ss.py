"""Meta-Transfer's scaling and shifting (SS) of a frozen, pretrained network.

Every convolution of the pretrained feature extractor is kept frozen and modulated by two small learnable
tensors::

    conv_SS(X) = (W ⊙ Φ_S1) * X + (b + Φ_S2)

``Φ_S1`` (:attr:`SSConv2d.scale`) has one scalar per 2-D kernel slice, shape ``(C_out, C_in / groups, 1, 1)``,
broadcast over the kernel's spatial extent; it starts at 1. ``Φ_S2`` (:attr:`SSConv2d.shift`) has one scalar
per output channel, shape ``(C_out,)``; it starts at 0. At initialisation the network therefore computes
exactly what it computed before :func:`attach`.

A network declares its SS layout on its convolutions, as the official code of each recipe has it:
``conv.ss_exempt = True`` keeps a convolution out of SS (``resnet12_tf``'s 1x1 shortcuts, which the
official TF code neither scales nor shifts): :func:`attach` leaves it a plain ``nn.Conv2d``, frozen like
every other pretrained parameter; ``conv.ss_shift = False`` gives it a scale but no shift
(``resnet25``: the official PyTorch code shifts only its stem, the one convolution with a bias).

A batch norm that normalises with batch statistics cancels the shift of the conv before it (a zero
gradient, rounding noise in float32, full-size steps under Adam): with ``bn="affine"`` or ``"batch"``
such shifts are kept (one checkpoint layout in every mode) but not trained.

Usage::

    backbone.load_state_dict(pretrained)  # a plain (un-attached) checkpoint
    ss.attach(backbone)  # in place; everything except SS is now frozen
    opt = torch.optim.Adam(ss.parameters(backbone, trainable=True), lr=1e-4)

Batch norm comes in three modes (``bn``): ``"frozen"`` (default) freezes it at the pretrained running
statistics and folds it into the convolution before it; ``"affine"`` (``train_bn=True``) makes its affine
weights trainable (:func:`bn_parameters`), the official MTL PyTorch code's mode, whose batch statistics
and running-statistics updates depend on the caller putting BN in train mode; ``"batch"`` is the official
TF code's: every BN normalises with the statistics of its own input batch in every mode, test included,
keeps its running statistics untouched, and trains nothing (:class:`BatchStatsNorm2d`).

State dicts: an attached model's keys are the plain model's keys with ``.conv`` inserted before each
SS convolution's ``weight``/``bias``, plus ``.scale`` and ``.shift``. Load pretrained weights *before*
attaching; load a meta-trained (attached) checkpoint into a freshly attached model of the same architecture.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d, unfreeze_batch_norm_2d
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops import FrozenBatchNorm2d

from mtl.errors import MtlError
from mtl.models.norm import fix_scale, has_fixed_scale

__all__ = [
    "BN_MODES",
    "BatchStatsNorm2d",
    "FoldedBatchNorm2d",
    "SSConv2d",
    "attach",
    "bn_parameters",
    "parameters",
    "ss_modules",
]

# Batch norm in meta-training (:func:`attach`): frozen statistics, trained affine, batch statistics.
BN_MODES = ("frozen", "affine", "batch")


class SSConv2d(nn.Module):
    """A frozen convolution (``.conv``) modulated by learnable ``.scale`` (Φ_S1) and ``.shift`` (Φ_S2).

    Any ``nn.Conv2d`` is accepted, including subclasses that pad in their own ``forward`` (e.g. timm's
    ``Conv2dSame``): their forward runs with the modulated weight and bias, so padding semantics are kept.
    The wrapped convolution's parameters are set to ``requires_grad=False``. ``shift=False`` (or
    ``conv.ss_shift = False``) leaves Φ_S2 out: ``.shift`` is then None.
    """

    def __init__(self, conv: nn.Conv2d, shift: bool | None = None) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"SSConv2d wraps an nn.Conv2d, got {type(conv).__name__}")
        weight = conv.weight
        conv.requires_grad_(False)
        self.conv = conv
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.scale = nn.Parameter(torch.ones(*weight.shape[:2], *([1] * (weight.dim() - 2)), **factory))
        if shift is None:
            shift = getattr(conv, "ss_shift", True)
        self.shift = nn.Parameter(torch.zeros(weight.shape[0], **factory)) if shift else None
        # Plain convolutions (any padding_mode) go straight to Conv2d._conv_forward; subclasses that
        # override forward are called through functional_call to keep their own padding logic.
        self._plain = type(conv).forward is nn.Conv2d.forward
        self._bn: list[FoldedBatchNorm2d] = []  # a list: the BN stays registered where it was

    def modulated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective weight ``W ⊙ Φ_S1`` (C_out, C_in/groups, kh, kw) and bias ``b + Φ_S2`` (C_out,),
        with the frozen batch norm that follows folded in (``a · W ⊙ Φ_S1``, ``a · (b + Φ_S2) + c``)."""
        weight, bias = self.conv.weight * self.scale, self.conv.bias
        if self.shift is not None:
            bias = self.shift if bias is None else bias + self.shift
        if self._bn:
            a, c = self._bn[0].scale_bias()
            weight = weight * a.view(-1, *([1] * (weight.dim() - 1)))
            bias = c if bias is None else bias * a + c
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W'), exactly as the wrapped convolution would shape it."""
        weight, bias = self.modulated()
        if self._plain:
            return self.conv._conv_forward(x, weight, bias)
        return functional_call(self.conv, {"weight": weight, "bias": bias}, (x,))

    def extra_repr(self) -> str:
        shift = None if self.shift is None else tuple(self.shift.shape)
        return f"scale={tuple(self.scale.shape)}, shift={shift}"


class FoldedBatchNorm2d(FrozenBatchNorm2d):
    """A frozen batch norm ``x · a + c`` applied by the SS convolution before it, inside its weight and
    bias: the convolution's fused bias add then replaces two elementwise passes forward and backward.
    This module passes its input through; its buffers (and so state dicts) are those of the frozen BN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def scale_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``a = γ / sqrt(σ² + ε)`` and ``c = β − μ · a``, each (C,)."""
        a = self.weight * (self.running_var + self.eps).rsqrt()
        return a, self.bias - self.running_mean * a


class BatchStatsNorm2d(nn.BatchNorm2d):
    """Batch norm as the official TF code runs it in every phase: ``(B, C, H, W)`` normalised per channel
    with the statistics of that batch, in train and eval mode alike; the running statistics are kept
    (for the state dict) but neither read nor updated, and the affine weights are frozen."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def _conv_bn_pairs(model: nn.Module, bn_type: type | tuple[type, ...]) -> list:
    """``(parent, bn name, SS conv, bn)`` for every SS convolution registered just before a batch norm
    of ``bn_type`` with as many channels (``conv1, bn1``; ``Sequential(conv, bn)``), as ResNets and
    timm's conv-norm layers are written: the conv whose output that norm normalises."""
    pairs = []
    for parent in model.modules():
        children = list(parent.named_children())
        for (_, conv), (name, bn) in zip(children, children[1:], strict=False):
            if (
                isinstance(conv, SSConv2d)
                and isinstance(bn, bn_type)
                and bn.num_features == conv.conv.out_channels
            ):
                pairs.append((parent, name, conv, bn))
    return pairs


def _fold_frozen_bn(model: nn.Module) -> None:
    """Fold each frozen BN into the SS convolution registered just before it (:func:`_conv_bn_pairs`).

    The network's output on a random batch is compared before and after; any difference (e.g. the
    convolution's output also feeds something else) undoes it.
    """
    pairs = [
        pair
        for pair in _conv_bn_pairs(model, FrozenBatchNorm2d)
        if type(pair[3]) is FrozenBatchNorm2d and not pair[2]._bn
    ]
    if not pairs:
        return
    first = next(m for _, m in ss_modules(model)).conv
    x = torch.randn(2, first.in_channels, 64, 64, device=first.weight.device, dtype=first.weight.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            before = model(x)
            for parent, name, conv, bn in pairs:
                folded = FoldedBatchNorm2d(bn.num_features, bn.eps)
                folded.num_features, folded.affine = bn.num_features, getattr(bn, "affine", True)
                folded.fixed_scale = getattr(bn, "fixed_scale", False)
                for key, buf in bn.named_buffers():
                    setattr(folded, key, buf)
                setattr(parent, name, folded)
                conv._bn = [folded]
            after = model(x)
        same = (after - before).abs().max() <= 1e-4 * before.abs().max() + 1e-6
    except RuntimeError:  # the model cannot take a 64x64 input: leave the frozen BNs as they are
        same = False
    if not same:
        for parent, name, conv, bn in pairs:
            setattr(parent, name, bn)
            conv._bn = []
    model.train(was_training)


def _is_bn_affine(module: nn.Module, name: str) -> bool:
    return isinstance(module, _BatchNorm) and name in ("weight", "bias")


def _wrap_convs(model: nn.Module) -> None:
    """Replace every convolution not marked ``ss_exempt`` by an :class:`SSConv2d` (once)."""
    wrapped: dict[int, SSConv2d] = {}  # one wrapper per conv, even if the conv is shared
    for parent in list(model.modules()):
        if isinstance(parent, SSConv2d):
            continue
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and not getattr(child, "ss_exempt", False):
                if id(child) not in wrapped:
                    wrapped[id(child)] = SSConv2d(child)
                setattr(parent, child_name, wrapped[id(child)])


def _set_bn_mode(model: nn.Module, bn: str) -> None:
    """Turn the batch norms of ``model`` into ``bn``'s kind, from whatever an earlier attach left."""
    for _, module in ss_modules(model):
        module._bn = []
    for module in model.modules():  # undo an earlier attach(bn="batch")
        if type(module) is BatchStatsNorm2d:
            module.__class__ = module._plain_class
    # timm unfreezes into nn.BatchNorm2d with a γ parameter: make γ a buffer again where it was one.
    fixed = [name for name, m in model.named_modules() if getattr(m, "fixed_scale", False)]
    unfreeze_batch_norm_2d(model)
    for name in fixed:
        fix_scale(model.get_submodule(name))
    if bn == "batch":
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                # Only forward changes: the parameters, buffers and state-dict keys stay the module's own.
                module._plain_class, module.__class__ = type(module), BatchStatsNorm2d
    elif bn == "frozen":
        # Frozen batch norm is a fixed per-channel affine map x · a + c: folded into the convolution
        # before it, it costs nothing, where BatchNorm2d's eval-mode forward and backward took a
        # quarter of a meta-training step on the CPU (ResNet-12, channels_last).
        fixed = [name for name, m in model.named_modules() if has_fixed_scale(m)]
        freeze_batch_norm_2d(model)
        for name in fixed:  # every frozen BN holds γ as a buffer: remember which ones had no γ to learn
            model.get_submodule(name).fixed_scale = True
        _fold_frozen_bn(model)


def attach(model: nn.Module, *, bn: str | None = None, train_bn: bool = False) -> nn.Module:
    """Wrap every ``nn.Conv2d`` of ``model`` in :class:`SSConv2d` and freeze all other parameters.

    Works in place and returns ``model``. Calling it again is harmless: existing SS convolutions are kept
    (their scale and shift untouched) and only the batch norms and the trainable set are redone.
    Convolutions marked ``ss_exempt`` stay plain and frozen; those marked ``ss_shift = False`` get no
    shift. A batch norm without a learnable scale γ (:class:`~mtl.models.norm.ShiftBatchNorm2d`) keeps
    γ fixed at 1 in every mode.

    Args:
        model: any network containing convolutions (mtl's ResNets, timm models, ...).
        bn: ``"frozen"`` (default): every ``BatchNorm2d`` becomes a ``FrozenBatchNorm2d`` (timm's
            ``freeze_batch_norm_2d``: the same eval-mode maths from the same running statistics; the
            state dict only loses ``num_batches_tracked``), folded into the SS convolution before it
            where there is one (:class:`FoldedBatchNorm2d`). ``"affine"``: BN affine weights and biases
            train too (the official PyTorch recipe). ``"batch"``: :class:`BatchStatsNorm2d` (the
            official TF recipe). In the last two, shifts that a following BN cancels are not trained.
        train_bn: shorthand for ``bn="affine"`` (when ``bn`` is not given).
    """
    if isinstance(model, nn.Conv2d):
        raise MtlError("ss.attach needs a network that contains convolutions; wrap a bare conv with SSConv2d")
    bn = bn or ("affine" if train_bn else "frozen")
    if bn not in BN_MODES:
        raise MtlError(f"ss.attach: bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
    _wrap_convs(model)
    _set_bn_mode(model, bn)
    cancelled = set()
    if bn != "frozen":  # these norms normalise with batch statistics while SS trains
        cancelled = {id(conv.shift) for _, _, conv, _ in _conv_bn_pairs(model, nn.BatchNorm2d)}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, SSConv2d):
                param.requires_grad_(id(param) not in cancelled)
            else:
                param.requires_grad_(bn == "affine" and _is_bn_affine(module, name))
    return model


def ss_modules(model: nn.Module) -> Iterator[tuple[str, SSConv2d]]:
    """``(qualified name, module)`` of every SS convolution, e.g. to log scale/shift histograms."""
    for name, module in model.named_modules():
        if isinstance(module, SSConv2d):
            yield name, module


def parameters(model: nn.Module, *, trainable: bool = False) -> Iterator[nn.Parameter]:
    """The SS scales and shifts (Φ_S1, Φ_S2) of ``model``, in module order; ``trainable``: only those
    that train (not the shifts a following batch-statistics norm cancels)."""
    for _, module in ss_modules(model):
        for param in (module.scale, module.shift):
            if param is not None and (param.requires_grad or not trainable):
                yield param


def bn_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The trainable batch-norm affine weights and biases: empty unless ``attach(..., train_bn=True)``."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            for name, param in module.named_parameters(recurse=False):
                if _is_bn_affine(module, name) and param.requires_grad:
                    yield param
