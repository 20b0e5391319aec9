"""FT, the MTL paper's baseline: θ = (W, b) from zero, fine-tuned by gradient steps on each support set
of the frozen pretrained features; nothing is meta-trained. It is MTL's base-learner without the
meta-learning, so it takes MTL's test-time inner loop (``mtl.test_inner_steps``, ``mtl.inner_lr``):
the two differ in what is meta-learned and nothing else."""

from __future__ import annotations

import torch
from torch import nn

from mtl.config import Config
from mtl.methods.base import FeatureMethod
from mtl.methods.episodic import finetune_theta
from mtl.methods.registry import register
from mtl.models import base_learner

__all__ = ["FineTune"]


@register
class FineTune(FeatureMethod):
    name = "ft"
    label = "FT: θ fine-tuned on pretrained features (no meta-training)"
    trains = False
    borrows = ("mtl",)

    def __init__(self, encoder: nn.Module, cfg: Config) -> None:
        super().__init__(encoder, cfg)
        inner = cfg.section("mtl")  # MTL's base-learner, see the module's docstring
        self.test_steps = inner.eval_steps
        self.lr = inner.inner_lr

    def _zeros(self, way: int, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return base_learner.init_theta(way, dim, device=device)

    def episode_logits(
        self, support: torch.Tensor, y_support: torch.Tensor, query: torch.Tensor, way: int
    ) -> torch.Tensor:
        W, b = self._zeros(way, support.shape[-1], support.device)
        W, b = base_learner.adapt_theta(support, y_support, W, b, steps=self.test_steps, lr=self.lr)
        return base_learner.logits(query, W, b)

    def fit(self, support: torch.Tensor, y_support: torch.Tensor, way: int) -> dict[str, torch.Tensor]:
        """The fine-tuned θ' = (W' (way, D), b' (way,)) of one task."""
        W, b = self._zeros(way, support.shape[-1], support.device)
        W, b = base_learner.adapt_theta(support, y_support, W, b, steps=self.test_steps, lr=self.lr)
        return {"W": W.detach(), "b": b.detach()}

    def predict(self, fitted: dict[str, torch.Tensor], query: torch.Tensor, way: int) -> torch.Tensor:
        return base_learner.logits(query, fitted["W"], fitted["b"])

    @torch.no_grad()
    def evaluate(self, features: torch.Tensor, episodes: torch.Tensor, shot: int) -> torch.Tensor:
        W, b = self._zeros(episodes.shape[1], features.shape[1], features.device)
        return finetune_theta(features, episodes, shot, W, b, steps=self.test_steps, lr=self.lr)

    def init_note(self, way: int) -> str:
        return "zero"
