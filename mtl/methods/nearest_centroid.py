"""Nearest centroid on fixed features, nothing trained: a query goes to the class whose support mean is
nearest (squared Euclidean distance). On pretrained features it is the pretrain stage's validation
metric; on raw pixels it is the floor every learned method must clear."""

from __future__ import annotations

import torch

from mtl.data.episodes import ImageRows
from mtl.methods.base import Encode, FeatureMethod
from mtl.methods.episodic import nearest_centroid, prototype_logits, raw_pixels
from mtl.methods.registry import register

__all__ = ["NearestCentroid", "PixelCentroid", "prototype_logits"]


@register
class NearestCentroid(FeatureMethod):
    name = "nc"
    label = "nearest centroid, pretrained features"
    trains = False

    def episode_logits(self, support, y_support, query, way) -> torch.Tensor:
        return prototype_logits(support, y_support, query, way)

    @torch.no_grad()
    def evaluate(self, features: torch.Tensor, episodes: torch.Tensor, shot: int) -> torch.Tensor:
        return nearest_centroid(features, episodes, shot)

    def init_note(self, way: int) -> str:
        return "support means"


@register
class PixelCentroid(NearestCentroid):
    name = "pixels"
    label = "nearest centroid, raw pixels"

    @classmethod
    def needs_pretrained(cls, cfg) -> bool:
        return False

    def features(self, images: ImageRows, encode: Encode, device: torch.device) -> torch.Tensor:
        return raw_pixels(images).to(device)
