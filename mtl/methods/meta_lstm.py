"""Meta-LSTM (Ravi & Larochelle 2017): an LSTM whose cell state is the learner's parameters θ. Its
input gate acts as a learned step size and its forget gate as a learned shrinkage; the learner's
initialisation θ_0 (its cell state at the start) is meta-learned with it.

As the official Lua code (``twitter/meta-learning-lstm``) does:

- Learner: the pipeline's backbone + ``Linear(num_features, way)``; every parameter (batch norm γ/β
  included) is a coordinate of the cell state, flattened into one vector θ ``(n,)``.
- Meta-learner, shared by all coordinates: layer 1 an LSTM of ``hidden_size`` units on the
  preprocessed loss and gradient ``(n, 4)``; layer 2 the gates
  f_t = W_F·[h_t, θ_{t−1}, f_{t−1}] + b_F, i_t = W_I·[h_t, θ_{t−1}, i_{t−1}] + b_I (previous gates kept
  before the sigmoid) and θ_t = σ(f_t)⊙θ_{t−1} − σ(i_t)⊙∇_t with the raw gradient. Init: every weight
  U(−0.01, 0.01), b_F ~ U(4, 5), b_I ~ U(−5, −4), so that it starts as gradient descent with a small step.
- ∇_t and L_t come from a detached copy of θ_{t−1}: they are inputs of the meta-learner, and the
  meta-gradient flows through θ (and the gates) only. Each inner step takes the whole support set; the
  gradient is that of the mean loss divided once more by the support size, as the official code's
  ``gradParameters:div(batch)`` after a size-averaged criterion (``divide_gradient``; false: the paper's
  plain gradient).
- Batch norm of the learner (:class:`EpisodeBatchNorm2d`): statistics reset every episode (mean 0,
  variance 1); the inner steps normalise with the support batch's statistics and fold them into running
  averages (``bn_momentum``: the weight of the newest statistics, Torch's convention, 0.9 / 0.95 in the
  1 / 5-shot configs; the variance unbiased). The query normalises with its own batch statistics in
  meta-training and with the support-only running averages at validation, test, ``mtl adapt`` and
  ``mtl predict``: a test query's prediction does not depend on the other queries.

Written functionally (``torch.func.functional_call`` and ``grad``) and batched over the tasks of a
meta-batch with ``vmap``: no Python loop runs per task (one runs per inner step).

Memory, the paper's setting (84×84, Conv-4 with 32 filters, 5-way 5-shot, 8 steps, 15 queries; n =
32,773 coordinates, mtl's Conv-4 having no conv bias). Per task, meta-training keeps for the backward
pass the meta-learner's activations of every step (layer 1's ``(n, 24)`` input, ``(n, 80)`` gates and
``(n, 20)`` states, layer 2's gates: about 150 floats a coordinate, ≈ 20 MB a step, 160 MB for 8) and
the query's forward through Conv-4 at θ_8 (75 images, dominated by the first block's 84×84×32 maps);
each step's support forward and backward are freed once ∇_t is taken. Measured on the CPU at that
very size in fp32 (``bench_meta_lstm``, growth of the resident memory over one meta-update): 0.98 GB
for a meta-batch of 1 task, 1.51 GB for 2, so ≈ 0.53 GB per task plus ≈ 0.45 GB once (weights,
images, one step's transient support pass). Expect about the same on a GPU: a meta-batch of 4 in
≈ 2.6 GB, less in bf16.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from mtl.config import Config
from mtl.config.limits import MAX_STEPS, MAX_WIDTH
from mtl.config.validation import option
from mtl.data.augment import Preprocess
from mtl.data.episodes import ImageRows
from mtl.data.store import ImageStore
from mtl.errors import MtlError
from mtl.methods.base import SCHEDULE_KEYS, Encode, Method
from mtl.methods.episodic import chunked_accuracy
from mtl.methods.maml import EncoderWithHead, replace_batch_norms_, task_images
from mtl.methods.registry import register
from mtl.runtime import checkpoint
from mtl.runtime import device as devices

__all__ = ["EpisodeBatchNorm2d", "LSTMState", "MetaLSTM", "MetaLSTMSettings", "MetaLearner", "preprocess"]


@dataclass
class MetaLSTMSettings:
    """The ``meta-lstm:`` section."""

    inner_steps: int | None = option(
        None, min=1, max=MAX_STEPS,
        doc="meta-learner steps on each support set in meta-training; null: 12 for 1-shot, 8 otherwise "
        "(the official configs)",
    )  # fmt: skip
    test_inner_steps: int | None = option(
        None, min=0, max=MAX_STEPS, doc="the same at validation and test; null: as inner_steps's null"
    )
    lr: float = option(1e-3, above=0.0, doc="Adam lr of θ_0 and the meta-learner (the official code: 1e-3)")
    lr_decay: bool = option(
        False, doc="decay the lr like the meta-LRs (meta.step_size, meta.gamma); false: constant (official)"
    )
    max_grad_norm: float = option(0.25, above=0.0, doc="the meta-gradient's norm is clipped to this")
    hidden_size: int = option(20, min=1, max=MAX_WIDTH, doc="units of the meta-learner's first LSTM layer")
    preprocess_p: float = option(
        10.0, above=0.0, max=80.0, doc="P of the loss and gradient preprocessing (log|x|/P, sign x)"
    )
    bn_eps: float = option(1e-3, above=0.0, below=1.0, doc="ε of the learner's batch norm (official: 1e-3)")
    bn_momentum: float | None = option(
        None, above=0.0, max=1.0,
        doc="weight of a step's support statistics in the running averages; null: 0.9 for 1-shot, "
        "0.95 otherwise (the official configs)",
    )  # fmt: skip
    divide_gradient: bool = option(
        True, doc="divide the mean loss's gradient by the support size again (the official code); "
        "false: the plain gradient (the paper)",
    )  # fmt: skip
    second_order: bool = option(
        False, doc="refused: the meta-gradient does not flow through the learner's gradients"
    )
    pretrained: bool = option(
        False, doc="start θ_0 from the pretrain stage's encoder; false: random (the paper)"
    )

    def __post_init__(self) -> None:
        if self.second_order:
            raise MtlError(
                "meta-lstm.second_order: must be false: in Meta-LSTM the meta-gradient does not flow "
                "through the learner's gradients (they are inputs of the meta-learner)"
            )


Params = dict[str, Tensor]
Stats = list[tuple[Tensor, Tensor]]  # per batch norm, in forward order: mean (C,), unbiased variance (C,)


def preprocess(x: Tensor, p: float) -> Tensor:
    """``x`` ``(...)`` -> ``(..., 2)``: ``(log|x| / p, sign x)`` where ``|x| > e^−p``, else
    ``(−1, e^p · x)`` (Andrychowicz et al. 2016; the two agree at ``|x| = e^−p``)."""
    big = x.abs() > math.exp(-p)
    scaled = x.abs().clamp_min(math.exp(-p)).log() / p  # clamped: no log(0) in the branch not taken
    first = torch.where(big, scaled, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.stack([first, second], dim=-1)


class LSTMState(NamedTuple):
    """The meta-learner's state over the ``n`` coordinates of θ."""

    h: Tensor  # (n, H) layer 1's output
    c: Tensor  # (n, H) layer 1's cell
    f: Tensor  # (n,) layer 2's forget gate, before the sigmoid
    i: Tensor  # (n,) layer 2's input gate, before the sigmoid


class MetaLearner(nn.Module):
    """The coordinate-wise two-layer LSTM: one update θ_{t−1} -> θ_t from ∇_t and L_t."""

    def __init__(self, hidden_size: int = 20, p: float = 10.0) -> None:
        super().__init__()
        self.hidden_size, self.p = hidden_size, p
        # Layer 1, one matrix on [x (4), h (H)] for the gates in the order input, forget, output, cell.
        self.w1 = nn.Parameter(torch.empty(4 + hidden_size, 4 * hidden_size))
        self.b1 = nn.Parameter(torch.empty(4 * hidden_size))
        # Layer 2: weights on [h_t (H), θ_{t−1}, gate_{t−1}].
        self.w_f = nn.Parameter(torch.empty(hidden_size + 2))
        self.w_i = nn.Parameter(torch.empty(hidden_size + 2))
        self.b_f = nn.Parameter(torch.empty(1))
        self.b_i = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weights U(−0.01, 0.01); b_F ~ U(4, 5) and b_I ~ U(−5, −4): the forget gate starts near 1 (θ
        kept) and the input gate near 0.01 (a small gradient step)."""
        for w in (self.w1, self.b1, self.w_f, self.w_i):
            w.uniform_(-0.01, 0.01)
        self.b_f.uniform_(4.0, 5.0)
        self.b_i.uniform_(-5.0, -4.0)

    def initial_state(self, theta: Tensor) -> LSTMState:
        """Zero state for θ ``(n,)``."""
        n, H = theta.shape[-1], self.hidden_size
        zeros = theta.new_zeros(n, H)
        return LSTMState(zeros, zeros, theta.new_zeros(n), theta.new_zeros(n))

    def forward(
        self, theta: Tensor, grads: Tensor, loss: Tensor, state: LSTMState
    ) -> tuple[Tensor, LSTMState]:
        """θ_{t−1} ``(n,)``, ∇_t ``(n,)``, L_t (0-d) and the state -> θ_t ``(n,)`` and the next state."""
        with torch.autocast(theta.device.type, enabled=False):  # σ(f) ≈ 0.99 needs fp32's resolution
            n, H = theta.shape[0], self.hidden_size
            x = torch.cat([preprocess(loss, self.p).expand(n, 2), preprocess(grads, self.p)], dim=-1)
            gates = torch.cat([x, state.h], dim=-1) @ self.w1 + self.b1  # (n, 4H)
            i1, f1, o1, g1 = gates.split(H, dim=-1)
            c = torch.sigmoid(f1) * state.c + torch.sigmoid(i1) * torch.tanh(g1)
            h = torch.sigmoid(o1) * torch.tanh(c)
            f = h @ self.w_f[:H] + theta * self.w_f[H] + state.f * self.w_f[H + 1] + self.b_f
            i = h @ self.w_i[:H] + theta * self.w_i[H] + state.i * self.w_i[H + 1] + self.b_i
            theta = torch.sigmoid(f) * theta - torch.sigmoid(i) * grads
        return theta, LSTMState(h, c, f, i)


class _Tape:
    """How the learner's batch norms normalise in one forward, shared by all of them: with the batch's
    statistics (recorded into ``seen`` when set) or with ``running`` ones, taken in forward order."""

    def __init__(self) -> None:
        self.seen: Stats | None = None
        self.running: Stats | None = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[Stats]:
        self.seen = []
        try:
            yield self.seen
        finally:
            self.seen = None

    @contextlib.contextmanager
    def using(self, running: Stats) -> Iterator[None]:
        """Normalise with ``running`` (empty: the reset statistics, mean 0 and variance 1)."""
        self.running = list(running)
        try:
            yield
        finally:
            self.running = None

    def take(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The next batch norm's running mean and variance ``(C,)`` (``like``: its input ``(B, C, ...)``)."""
        if self.running:
            return self.running.pop(0)
        return like.new_zeros(like.shape[1]), like.new_ones(like.shape[1])


class EpisodeBatchNorm2d(nn.Module):
    """Batch norm in plain tensor ops, keeping no state: the statistics a forward uses come from its
    batch or from the :class:`_Tape` (the method holds the running averages of each episode).

    Plain ops because ``vmap`` over ``F.batch_norm`` is not exact in the torch this project runs on (see
    :class:`mtl.methods.maml.TaskBatchNorm2d`). ``weight`` and ``bias`` keep ``nn.BatchNorm2d``'s names;
    statistics and the output are float32 under autocast too.
    """

    def __init__(self, bn: _BatchNorm, eps: float, tape: _Tape) -> None:
        super().__init__()
        channels = bn.num_features
        self.eps, self.tape = eps, tape
        self.weight = nn.Parameter(bn.weight.detach().clone() if bn.affine else torch.ones(channels))
        self.bias = nn.Parameter(bn.bias.detach().clone() if bn.affine else torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, ...)`` -> the same, normalised per channel."""
        x = x.to(_wide(x.dtype))
        dims, shape = [0, *range(2, x.ndim)], (1, -1) + (1,) * (x.ndim - 2)
        if self.tape.running is not None:
            mean, var = self.tape.take(x)
        else:
            mean, var = x.mean(dims), x.var(dims, unbiased=False)
            if self.tape.seen is not None:
                n = x.numel() // x.shape[1]
                self.tape.seen.append((mean.detach(), var.detach() * n / max(n - 1, 1)))
        scale = torch.rsqrt(var + self.eps) * self.weight
        return (x - mean.view(shape)) * scale.view(shape) + self.bias.view(shape)


def _fold(running: Stats, seen: Stats, momentum: float) -> Stats:
    """The running averages after a step whose batch statistics were ``seen`` (``running`` empty: the
    reset ones, mean 0 and variance 1)."""
    old = running or [(torch.zeros_like(mean), torch.ones_like(var)) for mean, var in seen]
    return [
        (momentum * mean + (1 - momentum) * r_mean, momentum * var + (1 - momentum) * r_var)
        for (mean, var), (r_mean, r_var) in zip(seen, old, strict=True)
    ]


def _wide(dtype: torch.dtype) -> torch.dtype:
    """float32 for the autocast dtypes, float64 kept."""
    return torch.promote_types(dtype, torch.float32)


def _flat(params: Params) -> Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def _unflat(flat: Tensor, like: Params) -> Params:
    """The flat vector ``(n,)`` as views shaped like ``like``."""
    parts = flat.split([p.numel() for p in like.values()])
    return {k: part.view(p.shape) for (k, p), part in zip(like.items(), parts, strict=True)}


@register
class MetaLSTM(Method):
    name = "meta-lstm"
    label = "Meta-LSTM"
    settings = MetaLSTMSettings
    reads_instead = {
        "meta.inner_steps": "meta-lstm.inner_steps",
        "test.inner_steps": "meta-lstm.test_inner_steps",
    }

    def __init__(self, encoder: nn.Module, cfg: Config) -> None:
        s = cfg.section(self.name)
        self.tape = _Tape()
        replace_batch_norms_(encoder, lambda bn: EpisodeBatchNorm2d(bn, s.bn_eps, self.tape))
        super().__init__(encoder, cfg)
        self.opts = s
        self.net = EncoderWithHead(self.encoder, cfg.meta.way)
        self.meta = MetaLearner(s.hidden_size, s.preprocess_p)
        by_shot = 12 if self.shot == 1 else 8
        self.train_steps = s.inner_steps or by_shot
        self.test_steps = s.test_inner_steps if s.test_inner_steps is not None else by_shot
        self.bn_momentum = s.bn_momentum or (0.9 if self.shot == 1 else 0.95)
        self.max_grad_norm = s.max_grad_norm
        self.pre = Preprocess.for_data(cfg.data)

    @classmethod
    def unread(cls, cfg: Config) -> dict[str, str]:
        """The ``meta:`` schedule too, unless ``meta-lstm.lr_decay`` follows it."""
        constant = (
            "meta-lstm.lr_decay (false: a constant rate, the official code's; true: the meta: schedule)"
        )
        schedule = {} if cfg.section(cls.name).lr_decay else dict.fromkeys(SCHEDULE_KEYS, constant)
        return {**cls.reads_instead, **schedule}

    @classmethod
    def needs_pretrained(cls, cfg: Config) -> bool:
        return cfg.section(cls.name).pretrained

    def theta0(self, way: int) -> Params:
        """The learned initial cell state θ_0 by name; the head's first ``way`` rows for ``way`` classes."""
        params = dict(self.net.named_parameters())
        trained = self.net.head.out_features
        if way > trained:
            raise MtlError(
                f"Meta-LSTM was meta-trained for {trained}-way tasks: a task of {way} classes needs at most "
                f"{trained}"
            )
        if way < trained:
            params["head.weight"], params["head.bias"] = (
                params["head.weight"][:way],
                params["head.bias"][:way],
            )
        return params

    # One task's inner loop: plain code, batched over tasks by vmap.

    def _support_loss(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, tuple[Tensor, Stats]]:
        """The support loss at ``params`` and, as auxiliaries, its value and each batch norm's statistics."""
        with self.tape.recording() as seen:
            logits = functional_call(self.net, params, (x,))
            loss = F.cross_entropy(logits.to(_wide(logits.dtype)), y)
        return loss, (loss.detach(), seen)

    def adapt(self, theta0: Params, x_s: Tensor, y_s: Tensor, steps: int) -> tuple[Params, Stats]:
        """θ_T after ``steps`` meta-learner steps on support images ``x_s`` ``(n_s, C, H, W)``, labels
        ``y_s`` ``(n_s,)``, and the support-only running statistics of each batch norm (empty: none
        taken). Differentiable w.r.t. θ_0 and the meta-learner, not through ∇_t and L_t."""
        theta, m = _flat(theta0), self.bn_momentum
        state = self.meta.initial_state(theta)
        running: Stats = []
        divisor = len(y_s) if self.opts.divide_gradient else 1
        for _ in range(steps):
            copy = _unflat(theta.detach(), theta0)  # ∇_t and L_t are the meta-learner's inputs only
            g, (loss, seen) = grad(self._support_loss, has_aux=True)(copy, x_s, y_s)
            running = _fold(running, seen, m)
            theta, state = self.meta(theta, _flat(g) / divisor, loss, state)
        return _unflat(theta, theta0), running

    def _logits(self, params: Params, x: Tensor, running: Stats | None) -> Tensor:
        """Logits of ``x`` at ``params``: batch statistics, or ``running`` ones when given."""
        if running is None:
            return functional_call(self.net, params, (x,))
        with self.tape.using(running):
            return functional_call(self.net, params, (x,))

    def query_logits(self, support: Tensor, y_support: Tensor, query: Tensor, way: int) -> Tensor:
        """support ``(T, n_s, C, H, W)`` images, labels ``(n_s,)``, query ``(T, n_q, C, H, W)`` -> query
        logits ``(T, n_q, way)``. Training mode: the training steps and the query's batch statistics;
        eval mode: the test steps and the support-only running statistics."""
        training = self.training
        steps = self.train_steps if training else self.test_steps

        def one_task(theta0: Params, x_s: Tensor, x_q: Tensor) -> Tensor:
            theta, running = self.adapt(theta0, x_s, y_support, steps)
            return self._logits(theta, x_q, None if training else running)

        with devices.autocast(support.device, self.precision):
            logits = vmap(one_task, in_dims=(None, 0, 0), randomness="same")(self.theta0(way), support, query)
        return logits.to(_wide(logits.dtype))

    def task_logits(
        self, images: Tensor | ImageStore, tasks: np.ndarray, transform: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        support, y_s, query, targets = task_images(images, tasks, transform, self.shot)
        return self.query_logits(support, y_s, query, tasks.shape[1]), targets

    # Evaluation and mtl adapt.

    def features(self, images: ImageRows, encode: Encode, device: torch.device) -> Tensor:
        """The images themselves, uint8 ``(N, H, W, C)`` on the device: θ adapts per episode."""
        return torch.from_numpy(np.asarray(images[:])).to(device)

    def evaluate(self, features: Tensor, episodes: Tensor, shot: int, *, chunk: int = 16) -> Tensor:
        """Accuracy ``(E,)`` with the test steps, ``chunk`` episodes batched at once; no graph outlives a
        chunk, so memory does not grow with the episode count."""

        @torch.no_grad()  # torch.func.grad still takes the learner's gradients
        def scores(idx: Tensor) -> Tensor:
            return self.task_logits(features, idx.numpy(), self.pre)[0]

        return chunked_accuracy(episodes.cpu(), scores, chunk=chunk)

    def embed(self, x: Tensor) -> Tensor:
        """The preprocessed images themselves: the learner adapts to each task, so nothing is fixed."""
        return x

    def fit(self, support: Tensor, y_support: Tensor, way: int) -> dict[str, Tensor]:
        """Support images ``(n, C, H, W)`` -> θ_T by name and the support-only running statistics
        (``bn.<k>.mean``, ``bn.<k>.var`` of the k-th batch norm in forward order), after the test steps."""
        with devices.autocast(support.device, self.precision):
            theta, running = self.adapt(self.theta0(way), support, y_support, self.test_steps)
        fitted = {f"theta.{k}": v.detach() for k, v in theta.items()}
        for k, (mean, var) in enumerate(running):
            fitted[f"bn.{k}.mean"], fitted[f"bn.{k}.var"] = mean.detach(), var.detach()
        return fitted

    def predict(self, fitted: dict[str, Tensor], query: Tensor, way: int) -> Tensor:
        """Query images ``(m, C, H, W)`` -> logits ``(m, way)``, each on its own (running statistics)."""
        theta = {k.removeprefix("theta."): v for k, v in fitted.items() if k.startswith("theta.")}
        count = sum(k.startswith("bn.") for k in fitted) // 2
        running = [(fitted[f"bn.{k}.mean"], fitted[f"bn.{k}.var"]) for k in range(count)]
        return devices.encode(lambda x: self._logits(theta, x, running), query, self.precision)

    def init_note(self, way: int) -> str:
        return "meta-learned θ_0, LSTM updates"

    # Meta-training.

    def param_groups(self) -> list[dict]:
        params = [*self.net.parameters(), *self.meta.parameters()]
        return [{"name": "meta-lstm", "params": params, "lr": self.opts.lr}]

    def lr_factor(self, update: int, total: int, default: float) -> float:
        """Constant, as the official code, unless ``lr_decay``."""
        return default if self.opts.lr_decay else 1.0

    def state(self) -> dict:
        return {
            "encoder": self.encoder.state_dict(),
            "head": self.net.head.state_dict(),
            "meta_learner": self.meta.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        checkpoint.load_weights(self.encoder, state["encoder"], "encoder")
        checkpoint.load_weights(self.net.head, state["head"], "head")
        checkpoint.load_weights(self.meta, state["meta_learner"], "meta_learner")
