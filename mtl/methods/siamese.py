"""Siamese networks (Koch et al. 2015): a twin embedding h scores an image pair by
p(same) = σ(Σ_j α_j |h(x₁)_j − h(x₂)_j| + β), trained with binary cross-entropy on same / different
pairs. A query takes the class whose support images score highest against it: the mean p(same) over
the class's support images (one image in 1-shot, as in the paper's one-shot test).

Training pairs are every (query, support image) pair of each task; the positives (1 in ``way``) are
weighted by ``way − 1``, as balanced same / different sampling would weigh them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.config import Config
from mtl.config.validation import option
from mtl.data.episodes import episode_targets
from mtl.methods.base import FeatureMethod
from mtl.methods.registry import register
from mtl.runtime import checkpoint

__all__ = ["Siamese", "SiameseSettings"]


@dataclass
class SiameseSettings:
    """The ``siamese:`` section."""

    lr: float = option(1e-3, above=0.0, doc="Adam lr (decayed like the meta-LRs)")
    pretrained: bool = option(
        False, doc="start the encoder from the pretrain stage; false: random (the paper)"
    )


@register
class Siamese(FeatureMethod):
    name = "siamese"
    label = "Siamese networks"
    settings = SiameseSettings

    def __init__(self, encoder: nn.Module, cfg: Config) -> None:
        super().__init__(encoder, cfg)
        self.lr = cfg.siamese.lr
        self.alpha = nn.Linear(encoder.num_features, 1)  # α (the component weights) and β

    @classmethod
    def needs_pretrained(cls, cfg: Config) -> bool:
        return cfg.siamese.pretrained

    def pair_logits(self, support: Tensor, query: Tensor) -> Tensor:
        """support ``(E, n_s, D)``, query ``(E, n_q, D)`` -> logit of p(same) ``(E, n_q, n_s)``."""
        dist = (query.unsqueeze(2) - support.unsqueeze(1)).abs()  # (E, n_q, n_s, D)
        return self.alpha(dist).squeeze(-1)

    def episode_logits(self, support: Tensor, y_support: Tensor, query: Tensor, way: int) -> Tensor:
        """Class scores ``(E, n_q, way)``: the logit of the mean p(same) over each class's support images."""
        p = torch.sigmoid(self.pair_logits(support, query))
        onehot = (y_support.unsqueeze(-1) == torch.arange(way, device=y_support.device)).to(p.dtype)
        mean = (p @ onehot) / onehot.sum(0)
        return torch.logit(mean.clamp(1e-7, 1 - 1e-7))

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Binary cross-entropy of class scores (what multi-process runs log; in 1-shot it equals the
        pair loss)."""
        way = logits.shape[-1]
        same = (targets.unsqueeze(-1) == torch.arange(way, device=targets.device)).to(logits.dtype)
        weight = torch.tensor(float(way - 1), device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, same.expand_as(logits), pos_weight=weight)

    def task_loss(self, images, tasks: np.ndarray, transform) -> tuple[Tensor, Tensor, Tensor]:
        """Binary cross-entropy over every (query, support image) pair of each task."""
        T, way, n = tasks.shape
        support, query = self.encode_tasks(images, tasks, transform)
        y_s = episode_targets(way, self.shot, device=support.device)
        y_q = episode_targets(way, n - self.shot, device=support.device)
        pairs = self.pair_logits(support, query)
        same = (y_q.unsqueeze(-1) == y_s).to(pairs.dtype).expand_as(pairs)
        weight = torch.tensor(float(way - 1), device=pairs.device)
        loss = F.binary_cross_entropy_with_logits(pairs, same, pos_weight=weight)
        return loss, self.episode_logits(support, y_s, query, way), y_q

    def param_groups(self) -> list[dict]:
        return [{"name": "encoder", "params": list(self.parameters()), "lr": self.lr}]

    def state(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "alpha": self.alpha.state_dict()}

    def load_state(self, state: dict) -> None:
        checkpoint.load_weights(self.encoder, state["encoder"], "encoder")
        checkpoint.load_weights(self.alpha, state["alpha"], "alpha")

    def init_note(self, way: int) -> str:
        return "pair scores against the support set"
