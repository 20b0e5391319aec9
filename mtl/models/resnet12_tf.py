"""``resnet12_tf``: the ResNet-12 of the official MTL TensorFlow code, which produced the paper's numbers.

It follows ``tensorflow/models/resnet12.py`` and the layer helpers of ``tensorflow/utils/misc.py``. Four
residual blocks, widths 64-128-256-512 (512-d features); each block, on (B, C_in, H, W)::

    x ─┬─ [3x3 conv + bias → BN(β) → LeakyReLU] × 3 ─ (+) ─ 2x2 max-pool ─ dropout
       └────────────────── 1x1 conv ───────────────────┘

then global average pooling (TF's 5x5 average pool over the 5x5 map of an 84x84 image).

Compared with ``resnet12_paper`` (:mod:`mtl.models.resnet`, the MetaOptNet-style block):

* every 3x3 convolution has a bias (initialised to 0), and batch norm has no scale γ: tf.contrib's
  ``batch_norm`` defaults are ``scale=False`` and ``epsilon=1e-3``
  (:class:`~mtl.models.norm.ShiftBatchNorm2d`);
* the third convolution is followed by BN *and* LeakyReLU(0.1), and nothing but the max-pool follows the
  residual sum (no activation after it);
* the shortcut is a bare 1x1 convolution (no bias, no BN), and meta-training gives it no SS weights (TF's
  ``construct_residual_block_ss_weights`` has none): it is marked ``ss_exempt`` for
  :func:`mtl.models.ss.attach`;
* dropout with keep probability 0.9 (p = 0.1, TF's ``pretrain_dropout_keep``) follows each block's pool, in
  pretraining only (meta-training keeps everything): ``block_drop_rate``, which
  :func:`mtl.models.backbone.build_backbone` sets to 0 unless it builds for pretraining;
* convolution weights are Glorot-uniform (TF's ``xavier_initializer_conv2d``) instead of Kaiming-normal.

Batch-norm running statistics are updated with PyTorch's default momentum 0.1. TF's ``batch_norm`` runs
with ``is_training=True`` in every phase, so it always normalises with the batch statistics and its moving
averages (decay 0.999) are never read. mtl normalises with the running statistics in eval mode (feature
extraction, frozen batch norm in meta-training), so they have to track the pretrained network closely.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from mtl.models.norm import ShiftBatchNorm2d
from mtl.models.resnet import _LEAKY_SLOPE, _cfg, _create, _FourBlocks

__all__ = ["ResNet12TF", "TFResnet12Block"]

_TF_BN_EPS = 1e-3  # tf.contrib.layers.batch_norm's default epsilon

# Must exist before the entrypoint below is decorated: register_model reads it from this module.
default_cfgs = generate_default_cfgs({"resnet12_tf": _cfg(84, 5, "layer1.conv1")})


class TFResnet12Block(nn.Module):
    """Three (3x3 conv + bias, γ-free BN, LeakyReLU) layers plus a 1x1-conv shortcut, summed, then a 2x2
    max-pool (floor, like TF's 'VALID') and dropout: (B, C_in, H, W) -> (B, C_out, H // 2, W // 2)."""

    def __init__(self, in_chs: int, out_chs: int, drop_rate: float = 0.1) -> None:
        super().__init__()
        # Registration order is forward order: mtl.models.ss folds each frozen BN into the conv
        # registered before it.
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=True)
        self.bn1 = ShiftBatchNorm2d(out_chs, eps=_TF_BN_EPS)
        self.act1 = nn.LeakyReLU(_LEAKY_SLOPE, inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=True)
        self.bn2 = ShiftBatchNorm2d(out_chs, eps=_TF_BN_EPS)
        self.act2 = nn.LeakyReLU(_LEAKY_SLOPE, inplace=True)
        self.conv3 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=True)
        self.bn3 = ShiftBatchNorm2d(out_chs, eps=_TF_BN_EPS)
        self.act3 = nn.LeakyReLU(_LEAKY_SLOPE, inplace=True)
        self.shortcut = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.shortcut.ss_exempt = True  # the TF code scales and shifts only the three 3x3 convs
        self.pool = nn.MaxPool2d(2)
        # Elementwise, like tf.nn.dropout; an Identity when off, so no module pretends to drop.
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.drop(self.pool(x + shortcut))


class ResNet12TF(_FourBlocks):
    """The official TF ResNet-12: four :class:`TFResnet12Block`, 84x84 -> 5x5 map -> 512-d features.

    Args:
        widths: the four block widths.
        in_chans: input channels.
        num_classes: classifier outputs (0: none, ``forward`` returns the pooled features).
        drop_rate: dropout on the pooled features (not in the TF code; as for the other backbones).
        block_drop_rate: dropout after each block's max-pool (TF's pretraining ``1 - keep = 0.1``).
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512),
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        block_drop_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.block_drop_rate = block_drop_rate
        block = functools.partial(TFResnet12Block, drop_rate=block_drop_rate)
        self._add_blocks(block, widths, in_chans, "resnet12_tf")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)  # fans as in TF: k·k·C_in and k·k·C_out
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``fc`` with TF's initialisation (Glorot-uniform weight, zero bias), or none for 0."""
        super().reset_classifier(num_classes)
        if isinstance(self.fc, nn.Linear):
            nn.init.xavier_uniform_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)


@register_model
def resnet12_tf(pretrained: bool = False, **kwargs) -> ResNet12TF:
    """The official MTL TensorFlow ResNet-12, widths 64-128-256-512 (512-d features)."""
    return _create(ResNet12TF, "resnet12_tf", pretrained, **kwargs)
