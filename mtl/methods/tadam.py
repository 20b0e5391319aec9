"""TADAM (Oreshkin et al. 2018): task-dependent adaptive metric, as ElementAI/TADAM's ``model/tadam.py``
trains it. Three parts on top of a ProtoNet:

- **metric scaling**: logits ``−α‖z − c_k‖`` (a norm, not squared) to the class prototypes ``c_k``; the
  code fixes α = 7.5 (``tadam.learn_scale: false``), the paper calls it learned (``true``).
- **task conditioning** (TEN + FiLM, ``tadam.film``): the support set is embedded without FiLM, its
  task embedding ``c̄`` is the mean of the class prototypes; for every conditioned batch norm two
  residual MLPs give ``β = β₀·g(c̄)`` and ``γ = γ₀·h(c̄) + 1`` (scalars β₀, γ₀ start at 0, under an L2
  penalty ``tadam.film_penalty``), applied after the norm and before the activation:
  conv → BN → FiLM → activation. Support and query are then embedded again, with FiLM. With
  β₀ = γ₀ = 0 the method is exactly a scaled-distance ProtoNet.
- **co-training** (``tadam.cotrain``): beside each meta-update, with probability 0.9^(⌊20t/T⌋ + 1)
  (``cotrain_schedule: code``; the paper's 0.9^⌊20t/T⌋: ``paper``), one step of a
  (number of base classes)-way linear head on the same encoder, on ``tadam.aux_batch`` base-class
  images, with its own momentum optimiser on the same learning-rate schedule.

FiLM is generic over the pipeline's backbone: a forward hook on every batch norm of the main path
(those under a ``downsample`` or ``shortcut`` module are left alone, as TADAM's shortcut has no FiLM)
scales and shifts its output per image with the parameters set for the current forward. The tasks
of a meta-batch are batched, never looped over: one encoder forward embeds every task's support set
without FiLM, then one forward every support set and one every query set, each image with its own
task's FiLM parameters. Batch norm normalises with each forward's batch statistics in training
(pooled over the meta-batch's tasks, the supports and the queries apart, as the code's three
feature-extractor calls do) and with running averages at test (TF's decay 0.95: torch momentum
``tadam.bn_momentum`` = 0.05).

Optimisation (``optimizer``, ``lr_factor``): SGD with momentum 0.9, lr 0.1, weight decay 5e-4 on the
convolution and linear weights (TF's ``l2_regularizer`` on weights only), ×0.1 after each of
``tadam.lr_drops`` × T meta-updates: the code's T/2, T/2 + 2,500 and T/2 + 5,000 of T = 30,000 are the
fractions 1/2, 7/12, 2/3, so a short run has the same shape. The gradient norm is clipped to 1.0.

Differences from the official code (what it does → what mtl does, why):

- ResNet-12 with swish, 3 max-pools and conv weights N(0, 0.2 / (k²·C_out)) → the pipeline's backbone
  with its own activation, pooling and initialisation (FiLM is placed after its batch norms): one
  backbone for every method of a comparison.
- weight decay and the post-multipliers' penalty are added to the loss before the gradient is
  clipped → SGD's ``weight_decay`` adds them after clipping (the same update whenever the clip is
  inactive); the logged query loss stays the cross-entropy.
- the auxiliary step runs before the few-shot step of an iteration, on 90% of the base images (10%
  held out to monitor it) → after the meta-update, on all base images (metatrain's hook order;
  the held-out part only fed a log).
- ⌊step / (T // 20)⌋ → ⌊20t/T⌋: the same when 20 divides T, defined for any T.

Memory of a training step in fp32 (84×84, ``resnet12_tf`` 64-128-256-512), from the bytes autograd
saves for backward (a ``saved_tensors_hooks`` count on the CPU, at 1 task × 5 × (1 + 2 or 4) images:
35 MiB per image forward, linear in the image count; 11 MiB at 42×42): 5 tasks × (5 + 60) images are
350 image forwards (the supports twice), about 12 GiB; the code's 5 tasks × (5 + 12) about 3.8 GiB.
The auxiliary step (64 images, 28 MiB each: 1.8 GiB) runs after the meta-step's graph is freed.
Weights, gradients and both momenta add about 0.2 GiB (encoder 31 MiB, FiLM MLPs 27 MiB), the
backward's transient gradients of the largest maps some 10-20%: an estimated 14 GiB on a GPU for the
first setting and 5 GiB for the code's (not measured on a GPU; bf16 autocast should about halve it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mtl.config import Config
from mtl.config.validation import option
from mtl.data.augment import Preprocess
from mtl.data.episodes import ImageRows, episode_targets
from mtl.data.store import ImageStore
from mtl.errors import MtlError
from mtl.methods.base import SCHEDULE_KEYS, Encode, Method
from mtl.methods.episodic import chunked_accuracy
from mtl.methods.registry import register
from mtl.runtime import checkpoint
from mtl.runtime import device as devices

__all__ = [
    "FiLMGenerator",
    "FiLMHooks",
    "TADAM",
    "TADAMSettings",
    "class_prototypes",
    "cotraining_probability",
    "lr_drop_factor",
    "metric_logits",
]


@dataclass
class TADAMSettings:
    """The ``tadam:`` section."""

    lr: float = option(0.1, above=0.0, max=10.0, doc="SGD lr of every weight (the code: 0.1)")
    momentum: float = option(0.9, min=0.0, below=1.0, doc="SGD momentum, also the auxiliary optimiser's")
    weight_decay: float = option(5e-4, min=0.0, max=1.0, doc="L2 on conv and linear weights (the code: 5e-4)")
    lr_drops: list[float] = option(
        [0.5, 7 / 12, 2 / 3], min=0.0, max=1.0,
        doc="lr ×0.1 after each of these fractions of the meta-updates (the code: T/2, T/2 + 2,500, "
        "T/2 + 5,000 of T = 30,000)",
    )  # fmt: skip
    max_grad_norm: float | None = option(1.0, above=0.0, doc="gradient-norm clip of both steps (null: none)")
    metric_scale: float = option(7.5, above=0.0, max=1e4, doc="α of the logits −α‖z − c_k‖ (the code: 7.5)")
    learn_scale: bool = option(False, doc="learn α (the paper); false: fixed (the code)")
    film: bool = option(True, doc="task conditioning: TEN and FiLM after each batch norm of the main path")
    film_layers: int = option(3, min=1, max=16, doc="layers of each residual FiLM MLP (the code: 3)")
    film_penalty: float = option(0.01, min=0.0, max=10.0, doc="L2 penalty on the post-multipliers β₀, γ₀")
    cotrain: bool = option(True, doc="co-training: auxiliary steps of a base-class head on the encoder")
    cotrain_schedule: str = option(
        "code", choices=("code", "paper"),
        doc="its probability: code 0.9^(⌊20t/T⌋ + 1), paper 0.9^⌊20t/T⌋",
    )  # fmt: skip
    cotrain_decay: float = option(0.9, above=0.0, max=1.0, doc="the base of that probability (0.9)")
    cotrain_decays: int = option(20, min=1, max=10**6, doc="how many times it decays over the run (20)")
    aux_batch: int = option(64, min=1, max=65536, doc="images of an auxiliary step (the code: 64)")
    bn_momentum: float = option(
        0.05, above=0.0, max=1.0, doc="torch momentum of batch norm's running averages (TF decay 0.95)"
    )
    pretrained: bool = option(False, doc="start from the pretrain stage's encoder; false: random (the paper)")


# ----------------------------------------------------------------------------- the maths


def class_prototypes(z: Tensor, y: Tensor, way: int) -> Tensor:
    """Embeddings ``(T, n, D)`` with labels ``y (n,)`` in ``[0, way)`` -> class means ``(T, way, D)``."""
    onehot = (y.unsqueeze(-1) == torch.arange(way, device=y.device)).to(z.dtype)  # (n, way)
    return torch.matmul(onehot.T, z) / onehot.sum(0).unsqueeze(-1)


def metric_logits(query: Tensor, prototypes: Tensor, alpha: Tensor | float) -> Tensor:
    """``−α‖q − c_k‖``: query ``(T, m, D)``, prototypes ``(T, way, D)`` -> ``(T, m, way)``. The
    differences are taken pair by pair (no ‖q‖² + ‖c‖² − 2q·c cancellation); the gradient at a zero
    distance is 0."""
    return -alpha * torch.cdist(query, prototypes, compute_mode="donot_use_mm_for_euclid_dist")


def cotraining_probability(
    update: int, total: int, schedule: str, decay: float = 0.9, decays: int = 20
) -> float:
    """The chance of an auxiliary step at meta-update ``update`` of ``total``: ``decay^(⌊decays·t/T⌋ + 1)``
    (``schedule="code"``) or ``decay^⌊decays·t/T⌋`` (``"paper"``)."""
    k = decays * update // max(total, 1)
    return decay ** (k + (schedule == "code"))


def lr_drop_factor(update: int, total: int, drops: list[float]) -> float:
    """0.1 to the number of drops passed: a drop at fraction f acts after ``round(f·T)`` updates, as
    TF's ``piecewise_constant`` (the rate changes at the update after the boundary)."""
    return 0.1 ** sum(update > round(f * total) for f in drops)


class _ResidualMLP(nn.Module):
    """TADAM's FiLM predictor: ``layers`` linear maps ``D -> C -> ... -> C``, each after the first
    added to its input, swish between them: ``(T, D) -> (T, C)``."""

    def __init__(self, dim: int, channels: int, layers: int) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(nn.Linear(dim if i == 0 else channels, channels) for i in range(layers))
        for fc in self.fcs:  # the code's ScaledVarianceRandomNormal(factor=0.1): std √(0.2 / fan-out)
            nn.init.normal_(fc.weight, std=math.sqrt(0.2 / channels))
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        for i, fc in enumerate(self.fcs):
            x = fc(x) + (x if i > 0 else 0)
            if i < len(self.fcs) - 1:
                x = F.silu(x)
        return x


class FiLMGenerator(nn.Module):
    """The FiLM parameters of one ``channels``-wide layer from task embeddings ``c̄ (T, D)``:
    ``γ = γ₀·h(c̄) + 1`` and ``β = β₀·g(c̄)``, each ``(T, C)``; the post-multipliers β₀, γ₀ start at 0."""

    def __init__(self, dim: int, channels: int, layers: int) -> None:
        super().__init__()
        self.g, self.h = _ResidualMLP(dim, channels, layers), _ResidualMLP(dim, channels, layers)
        self.beta0, self.gamma0 = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))

    def forward(self, cbar: Tensor) -> tuple[Tensor, Tensor]:
        return self.gamma0 * self.h(cbar) + 1, self.beta0 * self.g(cbar)


def conditioned_norms(encoder: nn.Module) -> list[_BatchNorm]:
    """The batch norms FiLM follows: every one of ``encoder`` except those of a shortcut branch."""
    return [
        m
        for name, m in encoder.named_modules()
        if isinstance(m, _BatchNorm) and not {"downsample", "shortcut"} & set(name.split("."))
    ]


class FiLMHooks:
    """Per-image FiLM after each of ``norms``, for the forwards inside :meth:`conditioned`; outside,
    the norms are untouched."""

    def __init__(self, norms: list[_BatchNorm]) -> None:
        self.params: list[tuple[Tensor, Tensor]] | None = None
        for i, norm in enumerate(norms):
            norm.register_forward_hook(lambda _m, _x, out, i=i: self._apply(i, out))

    def _apply(self, i: int, out: Tensor) -> Tensor:
        if self.params is None:
            return out
        gamma, beta = self.params[i]  # (T, C): one row per task, the batch is task-major
        per = out.shape[0] // gamma.shape[0]
        gamma, beta = gamma.repeat_interleave(per, 0), beta.repeat_interleave(per, 0)
        return out * gamma[:, :, None, None].to(out.dtype) + beta[:, :, None, None].to(out.dtype)

    @contextlib.contextmanager
    def conditioned(self, params: list[tuple[Tensor, Tensor]] | None) -> Iterator[None]:
        """Within: layer ``i`` applies ``params[i] = (γ, β)``, each ``(T, C)``, to a batch of ``T``
        tasks' images in equal, task-major shares (None: no FiLM)."""
        self.params = params
        try:
            yield
        finally:
            self.params = None


class _Auxiliary:
    """Co-training's head (one output per base class) and its momentum optimiser, made at the first
    auxiliary step; ``state_dict`` makes them part of the resume state (``last.pt``)."""

    def __init__(self, method: TADAM, generator: torch.Generator) -> None:
        self.method, self.generator = method, generator
        self.head: nn.Linear | None = None
        self.opt: torch.optim.Optimizer | None = None

    def build(self, classes: int) -> None:
        m = self.method
        device = next(m.encoder.parameters()).device
        head = nn.Linear(m.encoder.num_features, classes).to(device)
        with torch.no_grad():  # slim.fully_connected's defaults: Glorot-uniform weight, zero bias
            head.weight.copy_(nn.init.xavier_uniform_(torch.empty_like(head.weight, device="cpu"),
                                                      generator=self.generator))  # fmt: skip
            head.bias.zero_()
        groups = m.decay_groups(m.encoder, "auxiliary", m.opts.weight_decay) + [
            {"name": "auxiliary head", "params": list(head.parameters()), "weight_decay": 0.0}
        ]
        self.head = head
        self.opt = torch.optim.SGD(groups, lr=m.opts.lr, momentum=m.opts.momentum)

    def state_dict(self) -> dict:
        if self.head is None:
            return {}
        return {"head": self.head.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self.head = self.opt = None
            return
        self.build(state["head"]["weight"].shape[0])
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["opt"])


# ----------------------------------------------------------------------------- the method


@register
class TADAM(Method):
    name = "tadam"
    label = "TADAM"
    settings = TADAMSettings
    # Its learning rate drops at fractions of the run, the official code's (:meth:`lr_factor`).
    reads_instead = dict.fromkeys(SCHEDULE_KEYS, "tadam.lr_drops (the official code's drops)")

    def __init__(self, encoder: nn.Module, cfg: Config) -> None:
        super().__init__(encoder, cfg)
        s = self.opts = cfg.tadam
        self.max_grad_norm = s.max_grad_norm
        self.pre = Preprocess.for_data(cfg.data)
        for m in encoder.modules():
            if isinstance(m, _BatchNorm):
                m.momentum = s.bn_momentum
        alpha = torch.tensor(float(s.metric_scale))
        if s.learn_scale:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)
        self.ten: nn.ModuleList | None = None
        if s.film:
            norms = conditioned_norms(encoder)
            if not norms:
                raise MtlError(
                    f"tadam.film: backbone '{cfg.backbone.name}' has no batch norm for FiLM to follow; "
                    "set tadam.film=false"
                )
            dim = encoder.num_features
            self.ten = nn.ModuleList(FiLMGenerator(dim, n.num_features, s.film_layers) for n in norms)
            self.film = FiLMHooks(norms)
        seed = np.random.SeedSequence([cfg.seed, 0x7ADA])
        self.draws = np.random.default_rng(seed)
        self.aux = _Auxiliary(self, torch.Generator().manual_seed(int(seed.generate_state(1)[0])))

    @classmethod
    def needs_pretrained(cls, cfg: Config) -> bool:
        return cfg.tadam.pretrained

    # Embedding.

    def _encode(self, x: Tensor, film: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """Images ``(B, C, H, W)`` -> ``(B, D)`` float32 (float64 for float64 input), with FiLM ``film``
        (per task, the batch in equal task-major shares) or none."""
        conditioned = self.film.conditioned(film) if film is not None else contextlib.nullcontext()
        with conditioned, devices.autocast(x.device, self.precision):
            z = self.encoder(x)
        return z if z.dtype == torch.float64 else z.float()  # float64 stays (exact tests)

    def film_params(
        self, support: Tensor, y: Tensor, tasks: int, way: int
    ) -> list[tuple[Tensor, Tensor]] | None:
        """FiLM ``[(γ, β) (T, C) per conditioned layer]`` of ``tasks`` support sets ``(T·n, C, H, W)``
        (task-major, labels ``y (n,)``), from the mean of their FiLM-free prototypes; None without FiLM."""
        if self.ten is None:
            return None
        z = self._encode(support).view(tasks, -1, self.encoder.num_features)
        cbar = class_prototypes(z, y, way).mean(1)  # (T, D)
        return [gen(cbar) for gen in self.ten]

    def episode_logits(self, support: Tensor, y: Tensor, query: Tensor, tasks: int, way: int) -> Tensor:
        """``tasks`` episodes, task-major: support ``(T·n, C, H, W)`` with labels ``y (n,)``, query
        ``(T·m, C, H, W)`` -> logits ``(T, m, way)``."""
        film = self.film_params(support, y, tasks, way)
        zs = self._encode(support, film).view(tasks, -1, self.encoder.num_features)
        zq = self._encode(query, film).view(tasks, -1, self.encoder.num_features)
        return metric_logits(zq, class_prototypes(zs, y, way), self.alpha)

    def _logits_of(self, images, tasks: np.ndarray, transform, shot: int) -> tuple[Tensor, Tensor]:
        T, way, n = tasks.shape
        x = transform(images[torch.from_numpy(tasks).reshape(-1)])
        x = x.view(T, way, n, *x.shape[1:])
        support, query = x[:, :, :shot].flatten(0, 2), x[:, :, shot:].flatten(0, 2)
        y = episode_targets(way, shot, device=x.device)
        return self.episode_logits(support, y, query, T, way), episode_targets(way, n - shot, device=x.device)

    def task_logits(
        self, images: Tensor | ImageStore, tasks: np.ndarray, transform: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        return self._logits_of(images, tasks, transform, self.shot)

    # Optimisation.

    @staticmethod
    def decay_groups(module: nn.Module, name: str, decay: float) -> list[dict]:
        """SGD groups of ``module``: its conv and linear weights under weight decay ``decay`` (TF
        regularises weights only), the rest (norms, biases) without."""
        params = [p for p in module.parameters() if p.requires_grad]
        return [
            {"name": f"{name} weights", "params": [p for p in params if p.ndim > 1], "weight_decay": decay},
            {"name": f"{name} norms and biases", "params": [p for p in params if p.ndim <= 1],
             "weight_decay": 0.0},
        ]  # fmt: skip

    def param_groups(self) -> list[dict]:
        s = self.opts
        groups = self.decay_groups(self.encoder, "encoder", s.weight_decay)
        extra: list[nn.Parameter] = [self.alpha] if s.learn_scale else []
        if self.ten is not None:
            mlps = nn.ModuleList(m for gen in self.ten for m in (gen.g, gen.h))
            groups += self.decay_groups(mlps, "FiLM", s.weight_decay)
            multipliers = [p for gen in self.ten for p in (gen.beta0, gen.gamma0)]
            groups.append(
                {"name": "FiLM post-multipliers", "params": multipliers, "weight_decay": s.film_penalty}
            )
        groups.append({"name": "metric scale", "params": extra, "weight_decay": 0.0})
        for g in groups:
            g["lr"] = s.lr
        return [g for g in groups if g["params"]]

    def optimizer(self) -> torch.optim.Optimizer:
        """SGD with momentum (the code's ``MomentumOptimizer``)."""
        return torch.optim.SGD(self.param_groups(), lr=self.opts.lr, momentum=self.opts.momentum)

    def lr_factor(self, update: int, total: int, default: float) -> float:
        """The code's drops (:func:`lr_drop_factor`); the ``meta:`` schedule is not used."""
        return lr_drop_factor(update, total, self.opts.lr_drops)

    def generators(self) -> dict:
        return {"tadam_draws": self.draws, "tadam_auxiliary": self.aux}

    def _base_classes(self, labels: np.ndarray | None, images: int) -> int:
        """The number of base classes co-training classifies, after checking what it needs."""
        s = self.opts
        if labels is None or len(labels) == 0:
            raise MtlError("tadam.cotrain: co-training needs the base classes' labelled images, the train "
                           "split has none; set tadam.cotrain=false")  # fmt: skip
        if len(labels) != images:
            raise MtlError(f"tadam.cotrain: {len(labels)} labels for {images} train images")
        classes = int(np.max(labels)) + 1
        if classes < 2 or int(np.min(labels)) < 0:
            raise MtlError(
                f"tadam.cotrain: co-training needs at least 2 base classes labelled 0.., got {classes}"
            )
        if len(labels) < s.aux_batch:
            raise MtlError(
                f"tadam.aux_batch: {s.aux_batch} images a step, but the train split has {len(labels)}"
            )
        head = self.aux.head
        if head is not None and head.out_features != classes:
            raise MtlError(f"tadam.cotrain: the co-training head has {head.out_features} classes, "
                           f"the train split {classes}")  # fmt: skip
        return classes

    def auxiliary_update(
        self,
        images: Tensor | ImageStore,
        labels: np.ndarray,
        update: int,
        total: int,
        transform: Callable[[Tensor], Tensor],
    ) -> Tensor | None:
        """With probability :func:`cotraining_probability`, one SGD step of the base-class head and the
        encoder on ``tadam.aux_batch`` base images drawn without replacement; its lr follows
        :meth:`lr_factor`. Every rank of a multi-process run draws and steps alike."""
        s = self.opts
        if not s.cotrain:
            return None
        classes = self._base_classes(labels, len(images))
        if self.aux.head is None:
            self.aux.build(classes)
        p = cotraining_probability(update, total, s.cotrain_schedule, s.cotrain_decay, s.cotrain_decays)
        if self.draws.random() >= p:
            return None
        idx = self.draws.choice(len(labels), size=s.aux_batch, replace=False)
        x = transform(images[torch.from_numpy(idx)])
        y = torch.from_numpy(np.asarray(labels)[idx]).to(x.device)
        loss = F.cross_entropy(self.aux.head(self._encode(x)), y)
        opt = self.aux.opt
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            params = [p for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        for g in opt.param_groups:
            g["lr"] = s.lr * self.lr_factor(update, total, 1.0)
        opt.step()
        return loss.detach()

    # Checkpoints.

    def state(self) -> dict:
        state = {"encoder": self.encoder.state_dict(), "alpha": self.alpha.detach().clone()}
        if self.ten is not None:
            state["ten"] = self.ten.state_dict()
        return state

    def load_state(self, state: dict) -> None:
        checkpoint.load_weights(self.encoder, state["encoder"], "encoder")
        with torch.no_grad():
            self.alpha.copy_(state["alpha"])
        if self.ten is not None:
            checkpoint.load_weights(self.ten, state["ten"], "ten")

    # Evaluation: the encoder depends on the task, so every episode is encoded on its own.

    def features(self, images: ImageRows, encode: Encode, device: torch.device) -> Tensor:
        """The images themselves, uint8 ``(N, H, W, C)`` on the device: FiLM makes the features depend
        on the task, so there are none to cache."""
        return torch.from_numpy(np.asarray(images[:])).to(device)

    def evaluate(self, features: Tensor, episodes: Tensor, shot: int, *, chunk: int = 16) -> Tensor:
        """Accuracy ``(E,)``, ``chunk`` episodes encoded at once (no graph, bounded memory)."""

        @torch.no_grad()
        def scores(idx: Tensor) -> Tensor:
            return self._logits_of(features, idx.numpy(), self.pre, shot)[0]

        return chunked_accuracy(episodes.cpu(), scores, chunk=chunk)

    # One task, as ``mtl adapt`` uses it.

    def embed(self, x: Tensor) -> Tensor:
        """The preprocessed images themselves: their features depend on the task."""
        return x

    def fit(self, support: Tensor, y_support: Tensor, way: int) -> dict[str, Tensor]:
        """Support images ``(n, C, H, W)`` -> the task's FiLM parameters (``gamma<i>``, ``beta<i>``,
        ``(1, C)``) and its prototypes ``(way, D)`` under them."""
        counts = torch.bincount(y_support, minlength=way)
        if len(counts) > way or bool((counts == 0).any()):
            raise MtlError(
                f"tadam: every one of the {way} classes needs a support image, labels 0..{way - 1}"
            )
        film = self.film_params(support, y_support, 1, way)
        protos = class_prototypes(self._encode(support, film)[None], y_support, way)[0]
        fitted = {"prototypes": protos}
        for i, (gamma, beta) in enumerate(film or []):
            fitted[f"gamma{i}"], fitted[f"beta{i}"] = gamma, beta
        return fitted

    def predict(self, fitted: dict[str, Tensor], query: Tensor, way: int) -> Tensor:
        """Query images ``(m, C, H, W)`` -> logits ``(m, way)`` under the task's FiLM."""
        film = None
        if self.ten is not None:
            film = [(fitted[f"gamma{i}"], fitted[f"beta{i}"]) for i in range(len(self.ten))]
        z = self._encode(query, film)
        return metric_logits(z[None], fitted["prototypes"][None], self.alpha)[0]

    def init_note(self, way: int) -> str:
        return "prototypes of the task-conditioned encoder" if self.ten is not None else "support means"
