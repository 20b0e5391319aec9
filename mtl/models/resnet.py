"""ResNet backbones used by Meta-Transfer Learning, registered with timm.

* ``resnet12``: four residual blocks of three 3x3 convs (BN + LeakyReLU(0.1)), a 1x1-conv + BN shortcut
  and a 2x2 max-pool per block, then global average pooling. Widths default to the modern 64-160-320-640
  (MetaOptNet / RFS / FEAT, 640-d features); ``resnet12_paper`` is the MTL paper's 64-128-256-512 (512-d).
* ``resnet12_tf`` (:mod:`mtl.models.resnet12_tf`): exactly the network of the official MTL TensorFlow
  code, also 64-128-256-512. Unlike ``resnet12_paper`` its 3x3 convs have biases, its batch norms no
  scale γ (eps 1e-3), the third conv is followed by LeakyReLU too while the residual sum is not, the
  shortcut is a bare 1x1 conv without BN (and gets no SS weights), each block ends with dropout 0.1 in
  pretraining, and the convs are Glorot-uniform initialised.
* ``resnet25``: the official MTL PyTorch network. A 3x3 stem conv (80 ch), three stages of four
  BasicBlocks (160-320-640, stride 2 each), ReLU, global average pooling (640-d). 1 + 3 x 4 x 2 = 25 convs.
  Its SS layout is the official code's: every convolution (the three 1x1 shortcuts too) gets a scale,
  and only the stem a shift (the official stem is the one convolution with a bias; mtl's stem has none,
  because the batch norm after it cancels a bias: an imported one is folded into its running mean).

After ``import mtl``: ``timm.create_model("resnet12", num_classes=0)`` returns a feature extractor whose
``forward`` gives ``(B, num_features)``; ``widths``, ``in_chans`` and ``drop_rate`` are accepted as usual.
No pretrained weights are published, so the default cfgs have no download source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from mtl.errors import MtlError

__all__ = ["ResNet12", "ResNet25"]

_LEAKY_SLOPE = 0.1


def _cfg(input_size: int, pool_size: int, first_conv: str) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, input_size, input_size),
        "pool_size": (pool_size, pool_size),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "first_conv": first_conv,
        "classifier": "fc",
    }


# Must exist before the entrypoints below are decorated: register_model reads it from this module.
default_cfgs = generate_default_cfgs(
    {
        "resnet12": _cfg(84, 5, "layer1.conv1"),
        "resnet12_paper": _cfg(84, 5, "layer1.conv1"),
        "resnet25": _cfg(80, 10, "conv1"),
    }
)


def _check_widths(widths: Sequence[int], count: int, name: str) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if len(widths) != count or min(widths) < 1:
        raise MtlError(f"{name} needs {count} positive widths, got {widths}")
    return widths


def _init_weights(model: nn.Module, nonlinearity: str, slope: float = 0.0) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=slope, mode="fan_out", nonlinearity=nonlinearity)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_chs),
    )


class _ResNetBase(nn.Module):
    """timm's classifier interface shared by both networks (global average pool -> dropout -> fc)."""

    num_features: int
    num_classes: int
    drop_rate: float
    fc: nn.Module
    # Subclasses define forward_features(x): (B, in_chans, H, W) -> (B, num_features, h, w).

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) feature map -> (B, C) pooled features, or (B, num_classes) logits."""
        x = x.mean(dim=(2, 3))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_classes), or (B, num_features) when ``num_classes == 0``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


class _FourBlocks(_ResNetBase):
    """The ResNet-12 body of both official codes: four blocks, each halving the resolution."""

    def _add_blocks(
        self, block: Callable[[int, int], nn.Module], widths: Sequence[int], in_chans: int, name: str
    ) -> None:
        """``layer1`` .. ``layer4`` of ``block(in_chs, out_chs)`` at ``widths``, and timm's feature info."""
        widths = _check_widths(widths, 4, name)
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = widths[-1]
        chans = (in_chans, *widths)
        for i in range(4):
            self.add_module(f"layer{i + 1}", block(chans[i], chans[i + 1]))
        self.feature_info = [
            {"num_chs": w, "reduction": 2 ** (i + 1), "module": f"layer{i + 1}"} for i, w in enumerate(widths)
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, widths[-1], H // 16, W // 16)."""
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


class Resnet12Block(nn.Module):
    """Three 3x3 conv-BN layers with LeakyReLU, a projected shortcut, then 2x2 max-pool (halves h, w)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv3 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act = nn.LeakyReLU(_LEAKY_SLOPE, inplace=True)
        self.downsample = _shortcut(in_chs, out_chs, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.pool(self.act(x + shortcut))


class ResNet12(_FourBlocks):
    """ResNet-12: four :class:`Resnet12Block` (each halves the resolution), 84x84 -> 5x5 feature map."""

    def __init__(
        self,
        widths: Sequence[int] = (64, 160, 320, 640),
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self._add_blocks(Resnet12Block, widths, in_chans, "resnet12")
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(self, "leaky_relu", _LEAKY_SLOPE)


class BasicBlock(nn.Module):
    """The standard two-conv ResNet block; the shortcut is projected when the shape changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        needs_proj = stride != 1 or in_chs != out_chs
        self.downsample = _shortcut(in_chs, out_chs, stride) if needs_proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act(x + shortcut)


class ResNet25(_ResNetBase):
    """The official MTL PyTorch "ResNet-25": stem + 3 stages x 4 BasicBlocks, 80x80 -> 10x10 feature map."""

    def __init__(
        self,
        widths: Sequence[int] = (160, 320, 640),
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        widths = _check_widths(widths, 3, "resnet25")
        stem_chs = max(widths[0] // 2, 1)  # 80 for the default widths, as in the official code
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = widths[-1]
        self.conv1 = nn.Conv2d(in_chans, stem_chs, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = nn.ReLU(inplace=True)
        chans = (stem_chs, *widths)
        for i in range(3):
            blocks = [BasicBlock(chans[i], chans[i + 1], stride=2)]
            blocks += [BasicBlock(chans[i + 1], chans[i + 1]) for _ in range(3)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.feature_info = [{"num_chs": stem_chs, "reduction": 1, "module": "act1"}] + [
            {"num_chs": w, "reduction": 2 ** (i + 1), "module": f"layer{i + 1}"} for i, w in enumerate(widths)
        ]
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(self, "relu")
        for m in self.modules():  # the official SS layout: a shift on the stem only
            if isinstance(m, nn.Conv2d) and m is not self.conv1:
                m.ss_shift = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, widths[-1], H / 8, W / 8) (rounded up at each stride-2 conv)."""
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)


def _create(cls: type[nn.Module], variant: str, pretrained: bool, **kwargs) -> nn.Module:
    if pretrained:
        raise MtlError(f"no pretrained weights are published for {variant}: pretrain it with mtl instead")
    return build_model_with_cfg(cls, variant, pretrained, feature_cfg={"out_indices": (0, 1, 2, 3)}, **kwargs)


@register_model
def resnet12(pretrained: bool = False, **kwargs) -> ResNet12:
    """ResNet-12, widths 64-160-320-640 (640-d features)."""
    return _create(ResNet12, "resnet12", pretrained, **kwargs)


@register_model
def resnet12_paper(pretrained: bool = False, **kwargs) -> ResNet12:
    """ResNet-12 as in the MTL paper, widths 64-128-256-512 (512-d features)."""
    kwargs.setdefault("widths", (64, 128, 256, 512))
    return _create(ResNet12, "resnet12_paper", pretrained, **kwargs)


@register_model
def resnet25(pretrained: bool = False, **kwargs) -> ResNet25:
    """The official MTL PyTorch "ResNet-25", widths 160-320-640 (640-d features)."""
    return _create(ResNet25, "resnet25", pretrained, **kwargs)
