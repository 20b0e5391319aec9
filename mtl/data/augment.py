"""Batched, on-device image preprocessing and augmentation.

Images travel as uint8 ``(B, H, W, C)`` tensors (what the dataset cache stores) and are turned into
normalised float ``(B, C, S, S)`` batches on the target device, so no per-sample Python work runs in
a training loop. Random-resized-crop and flip draw independent parameters per image and are applied
in one ``grid_sample`` call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from mtl.runtime import device as devices

if TYPE_CHECKING:
    from mtl.config import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocess:
    """uint8 ``(B, H, W, C_in)`` -> normalised float ``(B, C, S, S)`` in the device's memory format.

    ``mean``/``std`` default to ImageNet statistics for RGB and 0.5/0.5 for grey. Images whose size or
    channel count differs from the model's (e.g. an 84×84 cache fed to an 80×80 ResNet-25) are resized
    with antialiasing and converted RGB<->grey here. With ``resize``, images are first resized to
    ``resize × resize`` and then centre-cropped to ``image_size`` (the official PyTorch code's
    ``Resize(92)`` + ``CenterCrop(80)``).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        resize: int | None = None,
    ) -> None:
        self.size = image_size
        self.resize = resize
        self.channels = channels
        self.mean = list(mean or (IMAGENET_MEAN if channels == 3 else (0.5,)))
        self.std = list(std or (IMAGENET_STD if channels == 3 else (0.5,)))
        self.memory_format = memory_format

    @classmethod
    def for_data(cls, data: DataConfig) -> Preprocess:
        """What a pipeline's ``data:`` section asks for (size, channels, normalisation, resize), in the
        memory format mtl runs its encoders in."""
        return cls(data.image_size, data.channels, data.mean, data.std, devices.memory_format(), data.resize)

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, C_in)`` -> float ``(B, C, H, W)`` in [0, 1] with the model's channel count."""
        x = TF.to_dtype(images.permute(0, 3, 1, 2), torch.float32, scale=True)
        if x.shape[1] != self.channels:
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        x = TF.normalize(x, self.mean, self.std)
        return x.contiguous(memory_format=self.memory_format)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self.to_float(images)
        if self.resize is not None:
            x = F.interpolate(
                x, size=(self.resize, self.resize), mode="bilinear", antialias=True, align_corners=False
            )
            x = TF.center_crop(x, [self.size, self.size])
        return self.normalize(x)


class TrainAugment:
    """Per-image random-resized-crop (+ optional horizontal flip) for a whole batch at once.

    Crop area is drawn from ``scale`` (fraction of the image), aspect ratio log-uniform in [3/4, 4/3],
    position uniform, as in ``torchvision``'s RandomResizedCrop; parameters come from ``generator`` so
    a run is reproducible from its seed.
    """

    def __init__(
        self, preprocess: Preprocess, scale: Sequence[float], flip: bool, generator: torch.Generator
    ):
        self.pre = preprocess
        self.scale = (float(scale[0]), float(scale[1]))
        self.flip = flip
        self.generator = generator

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pre.to_float(images)
        b = x.shape[0]
        g = self.generator
        area = torch.empty(b).uniform_(*self.scale, generator=g)
        ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g).exp()
        w, h = (area * ratio).sqrt(), (area / ratio).sqrt()
        # A crop wider or taller than the image keeps its area with the long side clipped.
        w, h = (
            torch.where(w > 1, 1.0, torch.where(h > 1, area, w)),
            torch.where(h > 1, 1.0, torch.where(w > 1, area, h)),
        )
        cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
        sign = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if self.flip else torch.ones(b)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        theta = theta.to(x.device, non_blocking=True)
        size = (b, x.shape[1], self.pre.size, self.pre.size)
        grid = F.affine_grid(theta, list(size), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return self.pre.normalize(x)
