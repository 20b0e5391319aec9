"""Nearest centroid on fixed features, nothing trained: a query goes to the class whose support mean is
nearest (squared Euclidean distance). On pretrained features it is the pretrain stage's validation
metric; on raw pixels it is the floor every learned method must clear."""

from __future__ import annotations

import torch

from mtl.data.episodes import ImageRows
from mtl.methods.base import Encode, Method
from mtl.methods.episodic import nearest_centroid, raw_pixels

__all__ = ["NearestCentroid", "PixelCentroid", "prototype_logits"]


def prototype_logits(
    support: torch.Tensor, y_support: torch.Tensor, query: torch.Tensor, way: int
) -> torch.Tensor:
    """support ``(E, n_s, D)`` with labels ``(n_s,)``, query ``(E, n_q, D)`` -> ``-‖q − c_k‖²``
    ``(E, n_q, way)``, where ``c_k`` is the mean of class ``k``'s support rows (any shot per class)."""
    onehot = (y_support.unsqueeze(-1) == torch.arange(way, device=y_support.device)).to(support.dtype)
    protos = torch.matmul(onehot.T, support) / onehot.sum(0).unsqueeze(-1)  # (E, way, D)
    return -torch.cdist(query, protos).square()


class NearestCentroid(Method):
    name = "nc"
    label = "nearest centroid, pretrained features"
    trains = False
    variants = {"nc": (label, {})}

    def episode_logits(self, support, y_support, query, way) -> torch.Tensor:
        return prototype_logits(support, y_support, query, way)

    @torch.no_grad()
    def evaluate(self, features: torch.Tensor, episodes: torch.Tensor, shot: int) -> torch.Tensor:
        return nearest_centroid(features, episodes, shot)

    def init_note(self, way: int) -> str:
        return "support means"


class PixelCentroid(NearestCentroid):
    name = "pixels"
    label = "nearest centroid, raw pixels"
    variants = {"pixels": (label, {})}

    @classmethod
    def needs_pretrained(cls, cfg) -> bool:
        return False

    def features(self, images: ImageRows, encode: Encode, device: torch.device) -> torch.Tensor:
        return raw_pixels(images).to(device)
