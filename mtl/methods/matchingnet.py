"""Matching Networks (Vinyals et al. 2016): a query's class distribution is attention over the support
set, ŷ = Σ_i a(x̂, x_i) y_i with a = softmax_i(cos(f(x̂), g(x_i))); the encoder (f = g) is trained
episodically on −log ŷ of the true class.

Full-context embeddings (``matchingnet.fce``): g is a bidirectional LSTM over the support embeddings
(g(x_i) = g'(x_i) + h→_i + h←_i), and f an attention LSTM run for ``matchingnet.fce_steps`` steps over
g(S): h_k, c_k = LSTM(f'(x̂), h_{k−1} + r_{k−1}, c_{k−1}) + f'(x̂), r_k = Σ_i softmax_i(h_kᵀ g(x_i)) g(x_i).
The paper feeds the concatenation [h, r] as the LSTM state; summing keeps the state at the embedding's
width, as common re-implementations do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.config import Config
from mtl.config.limits import MAX_STEPS
from mtl.config.validation import option
from mtl.methods.base import FeatureMethod
from mtl.methods.registry import register
from mtl.runtime import checkpoint

__all__ = ["MatchingNet", "MatchingNetSettings", "attention_logits"]


@dataclass
class MatchingNetSettings:
    """The ``matchingnet:`` section."""

    lr: float = option(1e-3, above=0.0, doc="Adam lr (decayed like the meta-LRs)")
    fce: bool = option(False, doc="full-context embeddings: support bi-LSTM, attention LSTM for queries")
    fce_steps: int = option(5, min=1, max=MAX_STEPS, doc="processing steps K of the attention LSTM")
    pretrained: bool = option(
        False, doc="start the encoder from the pretrain stage; false: random (the paper)"
    )


def attention_logits(support: Tensor, y_support: Tensor, query: Tensor, way: int) -> Tensor:
    """support ``(E, n_s, D)``, labels ``(n_s,)``, query ``(E, n_q, D)`` -> ``log ŷ`` ``(E, n_q, way)``."""
    cos = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)  # (E, n_q, n_s)
    onehot = (y_support.unsqueeze(-1) == torch.arange(way, device=y_support.device)).to(cos.dtype)
    probs = torch.softmax(cos, dim=-1) @ onehot  # (E, n_q, way), rows sum to 1
    return probs.clamp_min(1e-12).log()


class FullContext(nn.Module):
    """The FCE embeddings of one episode set, batched over episodes."""

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(dim, dim)
        self.steps = steps

    def forward(self, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """support ``(E, n_s, D)``, query ``(E, n_q, D)`` -> g(S) ``(E, n_s, D)``, f(x̂) ``(E, n_q, D)``."""
        out, _ = self.support_lstm(support)
        d = support.shape[-1]
        g = support + out[..., :d] + out[..., d:]
        E, n_q, _ = query.shape
        f_x = query.reshape(E * n_q, d)
        h, c = torch.zeros_like(f_x), torch.zeros_like(f_x)
        r = torch.zeros_like(f_x)
        for _ in range(self.steps):
            h, c = self.query_cell(f_x, (h + r, c))
            h = h + f_x
            attn = torch.softmax(torch.bmm(h.view(E, n_q, d), g.transpose(1, 2)), dim=-1)  # (E, n_q, n_s)
            r = torch.bmm(attn, g).reshape(E * n_q, d)
        return g, h.view(E, n_q, d)


@register
class MatchingNet(FeatureMethod):
    name = "matchingnet"
    label = "Matching Networks"
    settings = MatchingNetSettings

    def __init__(self, encoder: nn.Module, cfg: Config) -> None:
        super().__init__(encoder, cfg)
        s = cfg.matchingnet
        self.lr = s.lr
        self.fce = FullContext(encoder.num_features, s.fce_steps) if s.fce else None

    @classmethod
    def needs_pretrained(cls, cfg: Config) -> bool:
        return cfg.matchingnet.pretrained

    def episode_logits(self, support: Tensor, y_support: Tensor, query: Tensor, way: int) -> Tensor:
        if self.fce is not None:
            support, query = self.fce(support, query)
        return attention_logits(support, y_support, query, way)

    def param_groups(self) -> list[dict]:
        return [{"name": "encoder", "params": list(self.parameters()), "lr": self.lr}]

    def state(self) -> dict:
        state = {"encoder": self.encoder.state_dict()}
        if self.fce is not None:
            state["fce"] = self.fce.state_dict()
        return state

    def load_state(self, state: dict) -> None:
        checkpoint.load_weights(self.encoder, state["encoder"], "encoder")
        if self.fce is not None:
            checkpoint.load_weights(self.fce, state["fce"], "fce")

    def init_note(self, way: int) -> str:
        return "attention over the support set"
