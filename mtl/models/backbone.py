"""Build the feature extractor Θ by name: one of mtl's ResNets or any timm model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import timm
import torch
import torch.nn as nn

from mtl.errors import MtlError

if TYPE_CHECKING:
    from mtl.config import Config

__all__ = ["TimmBackbone", "backbone_for", "build_backbone", "own_backbones"]

_TIMM_PREFIX = "timm:"
# Keyword arguments that switch off a backbone's own pretraining-only regularisers (its block dropout).
_NOT_PRETRAINING = {"resnet12_tf": {"block_drop_rate": 0.0}}


def own_backbones() -> list[str]:
    """The backbones mtl registers with timm (``resnet12``, ``conv4``, ...), read off timm's registry."""
    return sorted(
        n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith(_OURS)
    )


_OURS = "mtl.models."


class TimmBackbone(nn.Module):
    """A headless timm model whose ``num_features`` is the width of what ``forward`` returns.

    timm's own ``num_features`` is the width *before* any pre-logits layer (e.g. MobileNetV3's 1x1 head
    conv), which can differ from the pooled output; timm's code relies on it, so it is not overwritten.
    The timm model stays reachable as ``.model`` (load timm checkpoints there).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_features: int = getattr(model, "head_hidden_size", None) or model.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the model's unpooled features (usually (B, C', h, w))."""
        return self.model.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_features)."""
        return self.model(x)


def build_backbone(
    name: str,
    *,
    in_chans: int = 3,
    widths: Sequence[int] | None = None,
    drop_rate: float = 0.0,
    pretraining: bool = False,
    image_size: int = 84,
) -> nn.Module:
    """A randomly initialised feature extractor without classifier head.

    Args:
        name: one of :func:`own_backbones` (``resnet12``, ``resnet12_paper``, ``resnet12_tf``,
            ``resnet25``, ``conv4``) or ``timm:<timm model name>``.
        in_chans: input channels (1 for Omniglot).
        widths: stage widths, only for mtl's ResNets (4 values for resnet12*, 3 for resnet25).
        drop_rate: dropout on the pooled features (active in train mode only), when ``pretraining``.
        pretraining: build the network for pretraining. Dropout is a pretraining regulariser: only then
            are ``drop_rate`` and ``resnet12_tf``'s dropout after each block (p = 0.1, as in the TF code)
            applied; otherwise every dropout rate is 0. Dropout has no parameters or buffers, so both
            builds have the same state dict and a pretrained checkpoint loads into either.
        image_size: the input side; passed to mtl's models whose feature width depends on it (those
            registered with ``fixed_input_size``, e.g. ``conv4``, which flattens its last map).

    Returns:
        A module mapping ``(B, in_chans, H, W)`` images to ``(B, num_features)`` features; its
        ``num_features`` attribute is the feature dimension D. mtl's ResNets are returned as they are,
        timm models wrapped in :class:`TimmBackbone` (state-dict keys start with ``model.``).
    """
    kwargs: dict = {"pretrained": False, "num_classes": 0, "in_chans": in_chans}
    # Not every timm model accepts drop_rate, so only pass it when asked for.
    if drop_rate > 0.0 and pretraining:
        kwargs["drop_rate"] = drop_rate

    own = own_backbones()
    if name in own:
        if widths is not None:
            kwargs["widths"] = tuple(widths)
        if not pretraining:
            kwargs.update(_NOT_PRETRAINING.get(name, {}))
        if timm.models.get_pretrained_cfg(name).fixed_input_size:
            kwargs["img_size"] = image_size
        return timm.create_model(name, **kwargs)

    if not name.startswith(_TIMM_PREFIX):
        raise MtlError(f"unknown backbone '{name}': use {', '.join(own)} or timm:<model>")
    model_name = name[len(_TIMM_PREFIX) :]
    if widths is not None:
        raise MtlError(f"widths only applies to {', '.join(own)}, not to backbone '{name}'")
    if not model_name or not timm.is_model(model_name):
        raise MtlError(f"unknown timm model '{model_name}' (backbone '{name}'): see timm.list_models()")
    return TimmBackbone(timm.create_model(model_name, **kwargs))


def backbone_for(cfg: Config, *, pretraining: bool = False) -> nn.Module:
    """The feature extractor pipeline ``cfg`` describes (``backbone:`` and the input of ``data:``),
    randomly initialised; with its dropout only if ``pretraining``."""
    b, d = cfg.backbone, cfg.data
    return build_backbone(
        b.name,
        in_chans=d.channels,
        widths=b.widths,
        drop_rate=b.drop_rate,
        pretraining=pretraining,
        image_size=d.image_size,
    )
