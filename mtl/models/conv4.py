"""Conv-4, the backbone of Matching Networks, MAML and ProtoNets: four blocks of 3x3 conv -> BN -> ReLU
-> 2x2 max-pool, 64 filters each, with the last feature map flattened (84x84 -> 5x5x64 = 1,600-d,
28x28 -> 1x1x64 = 64-d, as in Snell et al. 2017 and Vinyals et al. 2016).

Because its features are flattened, their width depends on the input size: the model is registered
with ``fixed_input_size`` and takes ``img_size`` (mtl passes ``data.image_size``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from mtl.errors import MtlError
from mtl.models.resnet import _cfg, _check_widths, _create, _ResNetBase

__all__ = ["Conv4"]

# Must exist before the entrypoint below is decorated: register_model reads it from this module.
default_cfgs = generate_default_cfgs({"conv4": {**_cfg(84, 5, "blocks.0.0"), "fixed_input_size": True}})


def _block(in_chs: int, out_chs: int) -> nn.Sequential:
    # No conv bias: batch norm's shift takes its place.
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Conv4(_ResNetBase):
    """Four conv blocks; ``forward`` maps ``(B, in_chans, S, S)`` to ``(B, widths[-1] * (S // 16)²)``."""

    def __init__(
        self,
        widths: Sequence[int] = (64, 64, 64, 64),
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        img_size: int = 84,
    ) -> None:
        super().__init__()
        widths = _check_widths(widths, 4, "conv4")
        side = img_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise MtlError(f"conv4 needs images of at least 16x16 (four 2x2 poolings), got {img_size}")
        self.in_chans, self.num_classes, self.drop_rate = in_chans, num_classes, drop_rate
        self.num_features = self.head_hidden_size = widths[-1] * side * side
        chans = (in_chans, *widths)
        self.blocks = nn.Sequential(*(_block(chans[i], chans[i + 1]) for i in range(4)))
        self.feature_info = [
            {"num_chs": w, "reduction": 2 ** (i + 1), "module": f"blocks.{i}"} for i, w in enumerate(widths)
        ]
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, S, S) -> (B, widths[-1], S // 16, S // 16)."""
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) feature map -> (B, C·h·w) flattened features (not pooled), or logits."""
        x = x.flatten(1)
        if self.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)


@register_model
def conv4(pretrained: bool = False, **kwargs) -> Conv4:
    """Conv-4, 64 filters per block (MAML's miniImageNet network: ``widths: [32, 32, 32, 32]``)."""
    return _create(Conv4, "conv4", pretrained, **kwargs)
