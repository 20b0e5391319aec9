"""MANN (Santoro et al. 2016): an LSTM controller with an external memory, written by least-recently-used
access, that learns to bind each image to the label it is shown one step later.

One step ``t`` of a sequence (``H`` read heads, memory ``M`` of ``R`` rows × ``W``)::

    (h_t, c_t) = LSTM([x_t, onehot(y_{t-1}), r_{t-1}], (h_{t-1}, c_{t-1}))
    k_t^i = tanh(W_k^i h_t + b_k^i)  (W,)        α_t^i = W_α^i h_t + b_α^i   (scalar), per head i
    w^lu_{t-1} = 1 on the n least-used rows of w^u_{t-1}, 0 elsewhere                      (eq 21)
    w^w_t^i = σ(α_t^i) w^r_{t-1}^i + (1 − σ(α_t^i)) w^lu_{t-1}                              (eq 22)
    M_t = M_{t-1} with its least-used row zeroed + Σ_i w^w_t^i k_t^iᵀ                      (eq 23)
    w^r_t^i = softmax_rows(cos(k_t^i, M_{t-1}(row)))      r_t^i = Σ_rows w^r_t^i M_{t-1}    (eqs 17-18)
    w^u_t = γ w^u_{t-1} + Σ_i w^r_t^i + Σ_i w^w_t^i                                          (eq 20)
    logits_t = W_o [h_t, r_t] + b_o   (mann.classes)

The reads address the memory as it was before this step's write (``mann.read_after_write: true``
reads ``M_t`` instead): the paper writes the key itself (eq 23), so a read after the write would
find the current image's own key first. Start: ``M = mann.memory_init`` everywhere, ``h, c, r = 0``,
``w^r`` and ``w^u`` one-hot on row 0 (as both reference ports start); least-used ties go to the lower
row. ``x_t`` is the flattened, normalised image (``mann.input: pixels``, the paper) or the
pipeline's encoder's features (``backbone``, from pretrain if ``mann.pretrained``, trained end to end
at ``mann.encoder_lr``; 0 freezes it: measured on glyphs, a pretrained encoder trained at the
controller's rate through the loss's long plateau at ln(classes) loses what it knew).

Episodes. The ``way × shot`` support images, in a random order per episode, are a sequence whose
step ``t`` carries the label of step ``t − 1`` (none at the first step); each class gets a label slot
of ``mann.classes``, re-drawn per episode. One more step, a blank image with the last support label,
shows every label before the queries. Each query is then read independently, in parallel, from the
memory and controller state after that step, with no label: a query's prediction never depends on
the other queries. Training minimises the mean cross-entropy (over the ``mann.classes`` outputs) of
every support prediction, each made before that image's label is shown, and of every query;
accuracy, validation and test score the queries, among the episode's slots. Training draws come from
the method's own generator (saved for resume); evaluation's orders and slots are seeded by
``test.seed``, the same for every run. :meth:`MANN.evaluate_breakdowns` also gives the accuracy at
each class's k-th presentation in the support sequence (the paper's Table 1); ``mtl adapt`` runs the
user's support set as such a sequence (:meth:`MANN.fit`) and reads its queries (:meth:`MANN.predict`).

Memory, the paper's setting (16 episodes × 50 steps, 20×20 pixels, 200 units, 128 × 40, 4 heads, 5
classes), float32: 0.65 M parameters (2.6 MB, with Adam's state 7.8 MB). Autograd keeps about 0.67 MB a
step, two copies of the 16 × 128 × 40 memory (0.33 MB each) and the heads' addressing: 34 MB for the
51 steps (the 50 and the last label's; measured with saved-tensor hooks). Parallel queries hold a
memory copy each for their one step: 17 MB for 25 queries per episode. Any GPU holds it; the cost is
time (51 steps of small kernels one after another), not memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.config import Config
from mtl.config.limits import MAX_WIDTH
from mtl.config.validation import option
from mtl.data.episodes import ImageRows, episode_targets
from mtl.data.store import ImageStore
from mtl.errors import MtlError
from mtl.methods.base import Encode, Method
from mtl.methods.registry import register
from mtl.runtime import checkpoint
from mtl.runtime import device as devices
from mtl.runtime.progress import progress

__all__ = [
    "MANN",
    "MANNSettings",
    "MemoryCore",
    "State",
    "by_presentation",
    "check_way",
    "least_used",
    "memory_step",
    "read_weights",
    "sequence_inputs",
]


@dataclass
class MANNSettings:
    """The ``mann:`` section."""

    controller: int = option(200, min=1, max=MAX_WIDTH, doc="LSTM controller units (the paper: 200)")
    memory_rows: int = option(128, min=2, max=MAX_WIDTH, doc="memory rows R (the paper: 128)")
    memory_width: int = option(40, min=1, max=MAX_WIDTH, doc="memory row width W (the paper: 40)")
    read_heads: int = option(4, min=1, max=64, doc="read heads, each with its own key (the paper: 4)")
    least_used: int | None = option(
        None, min=1, doc="n, the least-used rows a write may go to (eq 21); default: read_heads, as the ports"
    )
    gamma: float = option(0.95, min=0.0, max=1.0, doc="γ, the usage decay (eq 20; the paper: 0.95)")
    memory_init: float = option(1e-6, min=0.0, max=1.0, doc="every memory entry at the start of a sequence")
    read_after_write: bool = option(
        False, doc="read the memory after this step's write (M_t); false: before it (M_{t-1})"
    )
    classes: int = option(
        5, min=2, max=MAX_WIDTH, doc="output classes: one-hot label slots, re-drawn per episode (>= meta.way)"
    )
    input: str = option(
        "pixels",
        choices=("pixels", "backbone"),
        doc="pixels: the flattened image (the paper); backbone: the pipeline's encoder, trained end to end",
    )
    pretrained: bool = option(False, doc="input backbone: start the encoder from the pretrain stage")
    lr: float = option(1e-3, above=0.0, doc="Adam lr (decayed like the meta-LRs; the paper: Adam 1e-3)")
    encoder_lr: float | None = option(
        None, min=0.0, doc="input backbone: Adam lr of the encoder (default: mann.lr; 0: frozen)"
    )


class State(NamedTuple):
    """The recurrent state of ``B`` sequences: controller ``h``, ``c`` ``(B, U)``; the last reads ``r``
    ``(B, H * W)``; memory ``M`` ``(B, R, W)``; read weights ``w_r`` ``(B, H, R)``; usage ``w_u``
    ``(B, R)``."""

    h: Tensor
    c: Tensor
    r: Tensor
    M: Tensor
    w_r: Tensor
    w_u: Tensor

    def repeat(self, n: int) -> State:
        """Each sequence's state ``n`` times in a row: ``(B * n, ...)``, for ``n`` parallel steps."""
        return State(*(t.repeat_interleave(n, dim=0) for t in self))


_TINY = 1e-16  # floor of a squared norm: a zero row or key gets no NaN gradient


def read_weights(keys: Tensor, memory: Tensor) -> Tensor:
    """``softmax`` over rows of the cosine similarity of keys ``(B, H, W)`` with memory ``(B, R, W)``
    (eqs 17-18): ``(B, H, R)``."""
    dot = torch.einsum("bhw,brw->bhr", keys, memory)
    k_norm = keys.square().sum(-1).clamp_min(_TINY).sqrt()
    m_norm = memory.square().sum(-1).clamp_min(_TINY).sqrt()
    return torch.softmax(dot / (k_norm[..., None] * m_norm[:, None, :] + 1e-8), dim=-1)


def least_used(usage: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The ``n`` least-used rows of ``usage`` ``(B, R)`` as 0/1 weights ``(B, R)`` (eq 21) and the
    least-used row ``(B,)``; ties go to the lower row."""
    order = torch.sort(usage, dim=-1, stable=True).indices
    return torch.zeros_like(usage).scatter_(1, order[:, :n], 1.0), order[:, 0]


def memory_step(
    state: State, keys: Tensor, alpha: Tensor, *, gamma: float, n: int, read_after_write: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One memory access of keys ``(B, H, W)`` and write gates' logits ``alpha`` ``(B, H)`` after
    ``state``: the reads ``r_t`` ``(B, H * W)``, ``M_t`` ``(B, R, W)``, ``w^r_t`` ``(B, H, R)`` and
    ``w^u_t`` ``(B, R)`` (eqs 17-23)."""
    w_lu, lu = least_used(state.w_u, n)
    gate = torch.sigmoid(alpha)[..., None]
    w_w = gate * state.w_r + (1 - gate) * w_lu[:, None, :]
    kept = 1 - F.one_hot(lu, state.M.shape[1]).to(state.M.dtype)
    memory = state.M * kept[..., None] + torch.einsum("bhr,bhw->brw", w_w, keys)
    source = memory if read_after_write else state.M
    w_r = read_weights(keys, source)
    reads = torch.einsum("bhr,brw->bhw", w_r, source).flatten(1)
    return reads, memory, w_r, gamma * state.w_u + w_r.sum(1) + w_w.sum(1)


def sequence_inputs(x: Tensor, slots: Tensor, classes: int) -> Tensor:
    """Support features ``(T, n, F)`` in sequence order with their label slots ``(T, n)`` -> the
    controller's inputs ``(T, n + 1, F + classes)``: step ``t`` carries the one-hot label of step
    ``t − 1`` (zeros at ``t = 0``); the last step is a blank image with the last label."""
    labels = F.one_hot(slots, classes).to(x.dtype)
    blank = x.new_zeros(x.shape[0], 1, x.shape[2])
    shown = torch.cat([labels.new_zeros(labels.shape[0], 1, classes), labels], dim=1)
    return torch.cat([torch.cat([x, blank], dim=1), shown], dim=-1)


def by_presentation(correct: Tensor, labels: Tensor, way: int, shot: int) -> Tensor:
    """Support predictions' correctness ``(E, n)`` and classes ``(E, n)`` in sequence order (each class
    ``shot`` times) -> accuracy at each class's k-th presentation ``(E, shot)``, over the classes."""
    onehot = F.one_hot(labels, way)
    seen = ((onehot.cumsum(1) - onehot) * onehot).sum(-1)  # earlier presentations of the step's class
    out = correct.new_zeros(correct.shape[0], shot)
    return out.scatter_add_(1, seen, correct) / way


class MemoryCore(nn.Module):
    """The controller, its heads and the output layer: :meth:`step` is one time step of ``B`` sequences."""

    def __init__(self, features: int, s: MANNSettings) -> None:
        super().__init__()
        self.s = s
        self.n = s.least_used or s.read_heads
        reads = s.read_heads * s.memory_width
        self.controller = nn.LSTMCell(features + s.classes + reads, s.controller)
        self.heads = nn.Linear(s.controller, s.read_heads * (s.memory_width + 1))
        self.out = nn.Linear(s.controller + reads, s.classes)

    def initial_state(self, batch: int, like: Tensor) -> State:
        """The start of ``batch`` sequences, on ``like``'s device and dtype."""
        s, zeros = self.s, like.new_zeros
        first = zeros(s.memory_rows)
        first[0] = 1  # w^r and w^u start on row 0, as both reference ports
        return State(
            h=zeros(batch, s.controller),
            c=zeros(batch, s.controller),
            r=zeros(batch, s.read_heads * s.memory_width),
            M=zeros(batch, s.memory_rows, s.memory_width).fill_(s.memory_init),
            w_r=first.expand(batch, s.read_heads, -1).clone(),
            w_u=first.expand(batch, -1).clone(),
        )

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Inputs ``(B, F + classes)`` (image, previous label) -> logits ``(B, classes)`` and the state."""
        s = self.s
        h, c = self.controller(torch.cat([x, state.r], dim=-1), (state.h, state.c))
        head = self.heads(h).view(len(h), s.read_heads, s.memory_width + 1)
        keys, alpha = torch.tanh(head[..., :-1]), head[..., -1]
        reads, memory, w_r, w_u = memory_step(
            state._replace(h=h, c=c), keys, alpha,
            gamma=s.gamma, n=self.n, read_after_write=s.read_after_write,
        )  # fmt: skip
        return self.out(torch.cat([h, reads], dim=-1)), State(h, c, reads, memory, w_r, w_u)

    def support(self, x: Tensor, slots: Tensor) -> tuple[Tensor, State]:
        """Support features ``(T, n, F)`` in sequence order, label slots ``(T, n)`` -> the prediction of
        every support step ``(T, n, classes)`` and the state after the last label is shown."""
        inputs = sequence_inputs(x, slots, self.s.classes)
        state, logits = self.initial_state(len(x), x), []
        for t in range(inputs.shape[1]):  # the recurrence: one step after another
            out, state = self.step(inputs[:, t], state)
            logits.append(out)
        return torch.stack(logits[:-1], dim=1), state

    def query(self, x: Tensor, state: State) -> Tensor:
        """Query features ``(T, m, F)``, each read from its task's ``state`` with no label, all in one
        parallel step -> logits ``(T, m, classes)``."""
        T, m = x.shape[:2]
        inputs = torch.cat([x, x.new_zeros(T, m, self.s.classes)], dim=-1).flatten(0, 1)
        return self.step(inputs, state.repeat(m))[0].view(T, m, -1)


def _slot_logits(logits: Tensor, slots: Tensor) -> Tensor:
    """Logits ``(T, L, classes)`` -> the episode's classes ``(T, L, way)`` through slots ``(T, way)``."""
    return logits.gather(-1, slots[:, None, :].expand(-1, logits.shape[1], -1))


@register
class MANN(Method):
    name = "mann"
    label = "MANN"
    settings = MANNSettings

    def __init__(self, encoder: nn.Module, cfg: Config) -> None:
        super().__init__(encoder, cfg)
        s = self.opts = cfg.mann
        check_way(cfg.meta.way, s.classes, "meta.way")
        if s.least_used is not None and s.least_used > s.memory_rows:
            raise MtlError(f"mann.least_used: {s.least_used} is more than the {s.memory_rows} memory rows")
        for key, value in (("pretrained", s.pretrained), ("encoder_lr", s.encoder_lr is not None)):
            if value and s.input != "backbone":
                raise MtlError(f"mann.{key}: applies to mann.input: backbone (pixels have no encoder)")
        d = cfg.data
        encoder_lr = s.lr if s.encoder_lr is None else s.encoder_lr
        self.encoder_trained = s.input == "backbone" and encoder_lr > 0
        # An encoder nothing trains is a fixed function: no gradients, and batch norm on its
        # (pretrained) running statistics in every phase, so meta-training does not shift them.
        encoder.requires_grad_(self.encoder_trained)
        self.input_net = encoder if s.input == "backbone" else nn.Flatten()
        width = encoder.num_features if s.input == "backbone" else d.channels * d.image_size**2
        self.core = MemoryCore(width, s)
        self.rng = torch.Generator().manual_seed(cfg.seed)  # training's orders and slots
        self.eval_seed = cfg.test.seed

    @classmethod
    def needs_pretrained(cls, cfg: Config) -> bool:
        return cfg.mann.input == "backbone" and cfg.mann.pretrained

    def train(self, mode: bool = True) -> MANN:
        """Training or eval mode; an encoder nothing trains stays in eval mode."""
        super().train(mode)
        if not self.encoder_trained:
            self.encoder.eval()
        return self

    # Sequences.

    def draw(self, tasks: int, way: int, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Per task, the label slots of its classes ``(T, way)`` (distinct, of ``mann.classes``) and the
        order of its ``n`` support images ``(T, n)``, drawn from ``generator``."""
        slots = torch.rand(tasks, self.opts.classes, generator=generator).argsort(-1)[:, :way]
        return slots, torch.rand(tasks, n, generator=generator).argsort(-1)

    def eval_draw(self, tasks: int, way: int, n: int) -> tuple[Tensor, Tensor]:
        """:meth:`draw` from a generator seeded by ``test.seed``: the same for every evaluation."""
        return self.draw(tasks, way, n, torch.Generator().manual_seed(self.eval_seed))

    def episode_logits(
        self, support: Tensor, y_support: Tensor, query: Tensor, slots: Tensor, order: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """support ``(T, n, F)`` with classes ``y_support (n,)``, query ``(T, m, F)``, slots ``(T, way)``,
        support order ``(T, n)`` -> support logits ``(T, n, classes)`` and their classes ``(T, n)``, in
        sequence order, and query logits ``(T, m, classes)``."""
        slots, order = slots.to(support.device), order.to(support.device)
        x = support.gather(1, order[..., None].expand(-1, -1, support.shape[-1]))
        labels = y_support[order]
        logits, state = self.core.support(x, slots.gather(1, labels))
        return logits, labels, self.core.query(query, state)

    def _encode(self, x: Tensor) -> Tensor:
        """Preprocessed images ``(B, C, H, W)`` -> the controller's image input ``(B, F)`` float32."""
        return devices.encode(self.input_net, x, self.precision)

    def _tasks(
        self, images: Tensor | ImageStore, tasks: np.ndarray, transform: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Support ``(T, way * shot, F)``, its classes, query ``(T, way * query, F)`` and their classes."""
        T, way, n = tasks.shape
        x = self._encode(transform(images[torch.from_numpy(tasks).reshape(-1)])).view(T, way, n, -1)
        y_s = episode_targets(way, self.shot, device=x.device)
        support, query = x[:, :, : self.shot].flatten(1, 2), x[:, :, self.shot :].flatten(1, 2)
        return support, y_s, query, episode_targets(way, n - self.shot, device=x.device)

    def task_loss(
        self, images: Tensor | ImageStore, tasks: np.ndarray, transform: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The mean cross-entropy of every support step and every query of tasks ``(T, way, shot +
        query)`` (0-d), the query logits ``(T, way * query, way)`` and their targets."""
        support, y_s, query, targets = self._tasks(images, tasks, transform)
        T, way = len(tasks), tasks.shape[1]
        slots, order = (
            self.draw(T, way, support.shape[1], self.rng)
            if self.training
            else self.eval_draw(T, way, support.shape[1])
        )
        s_logits, labels, q_logits = self.episode_logits(support, y_s, query, slots, order)
        slots = slots.to(support.device)
        logits = torch.cat([s_logits, q_logits], dim=1)
        wanted = torch.cat([labels, targets.expand(T, -1)], dim=1)
        loss = F.cross_entropy(logits.flatten(0, 1), slots.gather(1, wanted).flatten())
        return loss, _slot_logits(q_logits, slots), targets

    def task_logits(
        self, images: Tensor | ImageStore, tasks: np.ndarray, transform: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        return self.task_loss(images, tasks, transform)[1:]

    # Evaluation on fixed episodes.

    def features(self, images: ImageRows, encode: Encode, device: torch.device) -> Tensor:
        """``(N, F)``: the flattened, normalised images (input pixels) or the encoder's features."""
        return encode(self.input_net, images)

    def evaluate(self, features: Tensor, episodes: Tensor, shot: int) -> Tensor:
        return self.evaluate_breakdowns(features, episodes, shot)[0]

    @torch.no_grad()
    def evaluate_breakdowns(
        self, features: Tensor, episodes: Tensor, shot: int, *, chunk: int = 256
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Query accuracy ``(E,)`` and ``{"by_presentation": (E, shot)}``, the accuracy of the support
        predictions at each class's k-th presentation (the 1st made before any label of that class)."""
        E, way, n = episodes.shape
        check_way(way, self.opts.classes, "the episodes' way")
        slots, order = self.eval_draw(E, way, way * shot)
        features = features.float()
        y_s, targets = (episode_targets(way, k, device=features.device) for k in (shot, n - shot))
        accs, presented = [], []
        starts = range(0, E, chunk)
        for a in progress(starts, length=len(starts), label=f"  {E} episodes"):
            idx = episodes[a : a + chunk]
            support = features[idx[:, :, :shot].flatten(1)]
            query = features[idx[:, :, shot:].flatten(1)]
            part = slots[a : a + chunk].to(features.device)
            s_logits, labels, q_logits = self.episode_logits(support, y_s, query, part, order[a : a + chunk])
            accs.append((_slot_logits(q_logits, part).argmax(-1) == targets).float().mean(-1))
            correct = (_slot_logits(s_logits, part).argmax(-1) == labels).float()
            presented.append(by_presentation(correct, labels, way, shot))
        return torch.cat(accs), {"by_presentation": torch.cat(presented)}

    # One task at a time (mtl adapt, mtl predict).

    def embed(self, x: Tensor) -> Tensor:
        """Preprocessed images ``(B, C, H, W)`` -> the controller's image input ``(B, F)``."""
        return self._encode(x)

    def fit(self, support: Tensor, y_support: Tensor, way: int) -> dict[str, Tensor]:
        """Run the support set ``(n, F)`` with labels ``(n,)`` as one sequence (order and slots seeded by
        ``test.seed``); the memory and controller state after it, and the slots, are the task."""
        check_way(way, self.opts.classes, "the support set's classes")
        slots, order = (t[0].to(support.device) for t in self.eval_draw(1, way, len(support)))
        labels = y_support.to(support.device)[order]
        _, state = self.core.support(support[order][None], slots[labels][None])
        return {"slots": slots, **state._asdict()}

    def predict(self, fitted: dict[str, Tensor], query: Tensor, way: int) -> Tensor:
        """Query features ``(m, F)`` -> logits ``(m, way)``, each read with no label from the task's state."""
        if len(fitted["slots"]) != way:
            raise MtlError(f"this task was fitted to {len(fitted['slots'])} classes, not {way}")
        state = State(*(fitted[k] for k in State._fields))
        return _slot_logits(self.core.query(query[None], state), fitted["slots"][None])[0]

    def init_note(self, way: int) -> str:
        return "memory written by the support sequence"

    # Training state.

    def param_groups(self) -> list[dict]:
        s = self.opts
        groups = [{"name": "mann", "params": list(self.core.parameters()), "lr": s.lr}]
        if self.encoder_trained:
            lr = s.lr if s.encoder_lr is None else s.encoder_lr
            groups.append({"name": "encoder", "params": list(self.encoder.parameters()), "lr": lr})
        return groups

    def generators(self) -> dict[str, torch.Generator]:
        return {"mann_sequences": self.rng}

    def state(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "mann": self.core.state_dict()}

    def load_state(self, state: dict) -> None:
        checkpoint.load_weights(self.encoder, state["encoder"], "encoder")
        checkpoint.load_weights(self.core, state["mann"], "mann")


def check_way(way: int, classes: int, what: str) -> None:
    """One line when ``way`` classes cannot each get one of ``classes`` label slots."""
    if way > classes:
        raise MtlError(
            f"{what}: {way} classes need as many label slots, but mann.classes is {classes} "
            f"(set mann.classes to at least {way})"
        )
