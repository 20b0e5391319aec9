"""Prototypical Networks (Snell et al. 2017): a class's prototype is the mean of its support
embeddings, a query's logits are its negative squared Euclidean distances to the prototypes, and the
whole encoder is trained episodically on the query cross-entropy (Adam). Training tasks may have more
classes than test tasks (``protonet.train_way``; the paper trains 30-way for 5-way 1-shot on
miniImageNet). The encoder starts random (``protonet.pretrained: false``, the paper's setting, on
Conv-4) or from the pretrain stage."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtl.config import Config
from mtl.config.validation import option
from mtl.methods.base import FeatureMethod
from mtl.methods.episodic import nearest_centroid, prototype_logits
from mtl.methods.registry import register

__all__ = ["ProtoNet", "ProtoNetSettings"]


@dataclass
class ProtoNetSettings:
    """The ``protonet:`` section."""

    lr: float = option(
        1e-3, above=0.0, doc="Adam lr of the encoder (decayed like the meta-LRs: meta.step_size)"
    )
    train_way: int | None = option(None, min=2, doc="classes per training task (default: meta.way)")
    pretrained: bool = option(
        False, doc="start from the pretrain stage's encoder; false: a random one (the paper)"
    )


@register
class ProtoNet(FeatureMethod):
    name = "protonet"
    label = "ProtoNet"
    settings = ProtoNetSettings

    def __init__(self, encoder: nn.Module, cfg: Config) -> None:
        super().__init__(encoder, cfg)
        self.lr = cfg.protonet.lr
        self._train_way = cfg.protonet.train_way or cfg.meta.way

    @classmethod
    def needs_pretrained(cls, cfg: Config) -> bool:
        return cfg.protonet.pretrained

    @property
    def train_way(self) -> int:
        return self._train_way

    def episode_logits(self, support, y_support, query, way) -> torch.Tensor:
        return prototype_logits(support, y_support, query, way)

    @torch.no_grad()
    def evaluate(self, features: torch.Tensor, episodes: torch.Tensor, shot: int) -> torch.Tensor:
        return nearest_centroid(features, episodes, shot)  # the argmax of the logits above

    def param_groups(self) -> list[dict]:
        return [{"name": "encoder", "params": list(self.encoder.parameters()), "lr": self.lr}]

    def init_note(self, way: int) -> str:
        return "support means"
