"""What every few-shot method is to the stages, and the two families of methods.

A method owns an encoder and whatever it learns on top of it. The stages never look inside: metatrain
asks it for the loss of a meta-batch of tasks and for its optimiser groups, saves what
:meth:`Method.state` returns and logs what :meth:`Method.log_epoch` logs; metatest, compare and adapt
ask it for features and per-episode accuracies. A method names no stage, file or command.

Two families share that interface:

- :class:`FeatureMethod`: a task is classified on features of one encoder, fixed while the task is
  solved (nearest centroid, FT, ProtoNet, Matching and Siamese networks, MTL — whose SS and θ are
  meta-learned, but whose encoder a task does not change). Such a method defines one thing,
  :meth:`FeatureMethod.episode_logits`; every image of an evaluation is encoded once.
- a method that adapts the network itself to each task (MAML) subclasses :class:`Method` directly:
  it classifies images, not features.

Shapes: an episode has ``way`` classes, ``shot`` support and ``query`` query images per class, class
major (``way * shot`` support rows, then ``way * query`` query rows, labels ``i // shot``).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtl.config import Config
from mtl.data.episodes import ImageRows, episode_targets
from mtl.data.store import ImageStore
from mtl.methods.episodic import episode_accuracy
from mtl.runtime import checkpoint
from mtl.runtime import device as devices
from mtl.runtime.monitor import Monitor

__all__ = ["SCHEDULE_KEYS", "Encode", "FeatureMethod", "Method", "meta_update"]

# The stage's feature pass: (model, images (N, H, W, C) uint8) -> (N, D) float32 on the device, no grad.
Encode = Callable[[nn.Module, ImageRows], torch.Tensor]


# The ``meta:`` learning-rate schedule's keys (:meth:`Method.lr_factor`'s ``default``): a method with a
# schedule of its own does not read them.
SCHEDULE_KEYS = ("meta.step_size", "meta.gamma", "meta.first_drop", "meta.lr_floor")


class Method(nn.Module, metaclass=ABCMeta):
    """Base of every method: what the stages call. A method that adapts the network to each task
    subclasses it directly; one on fixed features subclasses :class:`FeatureMethod`.

    Class attributes: ``name`` (its key in :data:`mtl.methods.METHODS` and the value of ``method:``),
    ``label`` (its row in results tables), ``trains`` (False: evaluation only, nothing to meta-train),
    ``settings`` (the dataclass of its own pipeline section, named like the method; None: it has none),
    ``reads_instead`` (keys of the shared sections ``meta:``/``test:`` it does not read: ``{key: the
    key it reads instead}``; :meth:`unread`), ``former_keys`` (keys earlier versions had in the shared
    sections that are now fields of its settings: ``{old dotted key: field}``), ``max_grad_norm`` (the
    meta-gradient's norm is clipped to it before each step; None: no clipping), ``borrows`` (other
    methods' sections it reads).

    A method whose official recipe differs from metatrain's (Adam on :meth:`param_groups`, the
    ``meta:`` learning-rate schedule) says so in :meth:`optimizer`, :meth:`lr_factor` and
    :meth:`auxiliary_update`.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    settings: ClassVar[type | None] = None
    reads_instead: ClassVar[dict[str, str]] = {}
    former_keys: ClassVar[dict[str, str]] = {}
    borrows: ClassVar[tuple[str, ...]] = ()
    max_grad_norm: ClassVar[float | None] = None

    @classmethod
    def unread(cls, cfg: Config) -> dict[str, str]:
        """The keys of the shared sections that this method, configured as ``cfg``, does not read, each
        with the key it reads instead: a pipeline that sets one for it is refused in one line
        (:func:`mtl.config.load`). Default: :attr:`reads_instead`."""
        return dict(cls.reads_instead)

    def __init__(self, encoder: nn.Module, cfg: Config) -> None:
        """``encoder``: the configured backbone, already holding the pretrained weights when
        :meth:`needs_pretrained` (a method may rebuild it, as MTL does by attaching SS)."""
        super().__init__()
        self.encoder = encoder
        self.way, self.shot, self.precision = cfg.meta.way, cfg.meta.shot, cfg.precision
        # Gradient steps a validation, test or user task takes (None: the method does not descend).
        self.test_steps: int | None = None

    @classmethod
    def figures(cls, cfg: Config, final_factor: float) -> dict:
        """The method's own figures of what ``cfg`` will run, for ``mtl config`` (the learning rates
        times the schedule's last factor ``final_factor``, the inner steps); JSON-ready. None by
        default."""
        return {}

    @classmethod
    def needs_pretrained(cls, cfg: Config) -> bool:
        """Whether the encoder starts from the pretrain stage's ``best.pt`` (else: random)."""
        return True

    @property
    def train_way(self) -> int:
        """Classes per meta-training task (ProtoNets train with more than they test)."""
        return self.way

    # Meta-training.

    @abstractmethod
    def task_logits(
        self,
        images: torch.Tensor | ImageStore,
        tasks: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Query logits ``(T, way * query, way)`` of tasks ``(T, way, shot + query)`` (ids into the
        uint8 ``images``; ``transform`` makes model input of a batch) and their targets
        ``(way * query,)``; differentiable in training mode."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of query logits ``(T, n_q, way)`` with targets ``(n_q,)``: cross-entropy."""
        return F.cross_entropy(logits.flatten(0, 1), targets.repeat(len(logits)))

    def task_loss(
        self,
        images: torch.Tensor | ImageStore,
        tasks: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss of tasks ``(T, way, shot + query)`` (0-d), their query logits and the targets."""
        logits, targets = self.task_logits(images, tasks, transform)
        return self.loss(logits, targets), logits, targets

    def param_groups(self) -> list[dict]:
        """Adam parameter groups, each with its ``lr`` and a ``name`` (TensorBoard's chart
        ``4 learning rate/metatrain <name>``)."""
        return []  # evaluation-only methods (``trains = False``) learn nothing

    def optimizer(self) -> torch.optim.Optimizer:
        """The meta-optimiser metatrain steps: Adam on :meth:`param_groups`."""
        return torch.optim.Adam(self.param_groups())

    def lr_factor(self, update: int, total: int, default: float) -> float:
        """The learning rates' factor at meta-update ``update`` of ``total``; ``default`` is the
        ``meta:`` schedule's (:func:`mtl.training.schedule.meta_factor`), which most methods keep."""
        return default

    def auxiliary_update(
        self,
        images: torch.Tensor | ImageStore,
        labels: np.ndarray,
        update: int,
        total: int,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor | None:
        """A step of the method's own beside meta-update ``update`` of ``total``, on the base classes'
        labelled images (``labels (N,)`` of ``images``), e.g. TADAM's co-training; returns its loss
        (0-d) or None when it took none. Its random draws come from :meth:`generators`."""
        return None

    def generators(self) -> dict[str, torch.Generator | np.random.Generator]:
        """The method's own random generators and step state (torch or numpy generators, or anything
        with ``state_dict``, such as an optimiser of its own), saved in ``last.pt`` so that a resumed
        run continues as an uninterrupted one would."""
        return {}

    def state(self) -> dict:
        """What ``best.pt`` and ``last.pt`` keep of the method (tensors and builtins)."""
        return {"encoder": self.encoder.state_dict()}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned (a checkpoint holds it among other entries)."""
        checkpoint.load_weights(self.encoder, state["encoder"], "encoder")

    def log_epoch(self, monitor: Monitor, step: int) -> None:
        """TensorBoard extras after each meta-training epoch."""

    # Evaluation on fixed episodes (validation, metatest, compare).

    @abstractmethod
    def features(self, images: ImageRows, encode: Encode, device: torch.device) -> torch.Tensor:
        """What :meth:`evaluate` indexes with episode ids: ``(N, D)`` features of ``images`` (computed
        once), or the images themselves for a method that encodes each episode on its own."""

    @abstractmethod
    def evaluate(self, features: torch.Tensor, episodes: torch.Tensor, shot: int) -> torch.Tensor:
        """Accuracy ``(E,)`` in ``[0, 1]`` on episodes ``(E, way, shot + query)`` indexing ``features``."""

    def evaluate_breakdowns(
        self, features: torch.Tensor, episodes: torch.Tensor, shot: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`evaluate`'s accuracy ``(E,)`` and the method's extra per-episode breakdowns,
        ``{name: (E, K) accuracies in [0, 1]}`` (MANN's ``"by_presentation"``, ``(E, shot)``: its
        prediction at each class's k-th presentation in the support sequence); none by default."""
        return self.evaluate(features, episodes, shot), {}

    # One task at a time, as ``mtl adapt`` uses a method: embed, fit once, predict any number of times.

    @abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(B, C, H, W)`` -> what :meth:`fit` and :meth:`predict` take."""

    @abstractmethod
    def fit(self, support: torch.Tensor, y_support: torch.Tensor, way: int) -> dict[str, torch.Tensor]:
        """Adapt to one task: support embeddings ``(n, ...)``, labels ``(n,)`` in ``[0, way)`` -> the
        task's tensors, all that :meth:`predict` needs besides the method. Uses the test-time settings."""

    @abstractmethod
    def predict(self, fitted: dict[str, torch.Tensor], query: torch.Tensor, way: int) -> torch.Tensor:
        """Query embeddings ``(m, ...)`` -> logits ``(m, way)`` of the task :meth:`fit` adapted to."""

    def init_note(self, way: int) -> str:
        """How a ``way``-way task starts (``mtl adapt`` prints it)."""
        return "no initialisation to adapt"


class FeatureMethod(Method):
    """A method on fixed features: one encoder embeds every image of a task, and the method classifies
    the episode from those features (:meth:`episode_logits`, the one thing a subclass defines)."""

    @abstractmethod
    def episode_logits(
        self, support: torch.Tensor, y_support: torch.Tensor, query: torch.Tensor, way: int
    ) -> torch.Tensor:
        """support ``(E, n_s, D)`` features with labels ``y_support (n_s,)`` in ``[0, way)``, query
        ``(E, n_q, D)`` -> logits ``(E, n_q, way)``. Differentiable in training mode; in eval mode
        (validation, test, adapt) it may take its test-time settings."""

    def encode_tasks(
        self,
        images: torch.Tensor | ImageStore,
        tasks: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tasks ``(T, way, shot + query)`` image ids -> support ``(T, way * shot, D)`` and query
        ``(T, way * query, D)`` float32 features, every task in one encoder forward."""
        T, way, n = tasks.shape
        idx = torch.from_numpy(tasks)  # host ids: gathering moves them (or the batch) to the device
        feats = devices.encode(self.encoder, transform(images[idx.reshape(-1)]), self.precision)
        feats = feats.view(T, way, n, -1)
        return feats[:, :, : self.shot].flatten(1, 2), feats[:, :, self.shot :].flatten(1, 2)

    def task_logits(self, images, tasks, transform) -> tuple[torch.Tensor, torch.Tensor]:
        T, way, n = tasks.shape
        support, query = self.encode_tasks(images, tasks, transform)
        y_s = episode_targets(way, self.shot, device=images.device)
        targets = episode_targets(way, n - self.shot, device=y_s.device)
        return self.episode_logits(support, y_s, query, way), targets

    def features(self, images: ImageRows, encode: Encode, device: torch.device) -> torch.Tensor:
        """``(N, D)`` features of ``images`` for evaluation (computed once, then indexed by episodes)."""
        return encode(self.encoder, images)

    @torch.no_grad()
    def evaluate(self, features: torch.Tensor, episodes: torch.Tensor, shot: int) -> torch.Tensor:
        return episode_accuracy(self.episode_logits, features, episodes, shot)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images ``(B, C, H, W)`` -> ``(B, D)`` float32 features of the encoder."""
        return devices.encode(self.encoder, x, self.precision)

    def fit(self, support: torch.Tensor, y_support: torch.Tensor, way: int) -> dict[str, torch.Tensor]:
        """The support set itself (a metric method classifies against it)."""
        return {"support": support, "labels": y_support}

    def predict(self, fitted: dict[str, torch.Tensor], query: torch.Tensor, way: int) -> torch.Tensor:
        return self.episode_logits(fitted["support"][None], fitted["labels"], query[None], way)[0]


def meta_update(
    method: Method,
    opt: torch.optim.Optimizer,
    images: torch.Tensor | ImageStore,
    tasks: np.ndarray,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    loss_scale: float = 1.0,
    sync: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on the loss of ``tasks`` ``(T, way, shot + query)`` (:meth:`Method.task_loss`).

    The gradient's norm is clipped to ``method.max_grad_norm`` (if set) after ``sync``.
    ``loss_scale`` multiplies the loss before backward and ``sync`` runs between backward and the
    optimiser step: a rank of a multi-process run weighs its share of the meta-batch and averages
    the gradient over the ranks there. Returns the (unscaled) loss (0-d), the detached query
    logits ``(T, way * query, way)`` and their targets.
    """
    loss, logits, targets = method.task_loss(images, tasks, transform)
    opt.zero_grad(set_to_none=True)
    (loss * loss_scale if loss_scale != 1.0 else loss).backward()
    if sync is not None:
        sync()
    if method.max_grad_norm is not None:
        params = [p for group in opt.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, method.max_grad_norm)
    opt.step()
    return loss.detach(), logits.detach(), targets
