"""The epoch loop pretrain and metatrain share: progress, checkpoint boundaries, graceful stop, the NaN
watch, best/last checkpoints and exact resume.

A stage subclasses :class:`Training` and says what it does in four hooks: what its checkpoints hold
(:meth:`~Training.weights`, :meth:`~Training.restore`), how an epoch starts (:meth:`~Training.begin_epoch`),
one step (:meth:`~Training.step`) and the end of an epoch (:meth:`~Training.validate`, returning the
metric ``best.pt`` is kept by, and the epoch's console line); its training curve's values come from
:meth:`~Training.curve`, written :data:`CURVE_POINTS` times an epoch. :meth:`Training.fit` does the rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from mtl.runtime import checkpoint
from mtl.runtime.timing import timer
from mtl.training import resume
from mtl.training.run import Run

__all__ = ["CURVE_POINTS", "Training"]

# Loss and train-accuracy points per epoch in TensorBoard: a curve even for a run of a few epochs.
CURVE_POINTS = 10


class Training(ABC):
    """One training run of ``epochs`` epochs of ``steps`` steps; what ``last.pt`` saves and restores.

    A subclass sets ``opt``, ``sched`` and ``generators`` (every random generator its steps draw from)
    before :meth:`fit`, and keeps its epoch's running sums in ``sums`` (a device tensor). ``sched``
    steps after every epoch, or after every step when ``schedule_per_step``.
    """

    stage: str = ""
    schedule_per_step: bool = False

    def __init__(self, run: Run, *, epochs: int, steps: int) -> None:
        self.run, self.epochs, self.steps = run, epochs, steps
        self.opt: torch.optim.Optimizer
        self.sched: Any
        self.generators: dict[str, Any] = {}
        self.best = {"val_acc": -1.0, "val_ci95": 0.0, "epoch": 0}
        self.metric = dict(self.best)
        self.sums = torch.zeros(0, device=run.device)
        self.watch = resume.FiniteWatch(run.device)
        self.epoch, self.first = 0, 0  # where training (re)starts: epoch, and step in that epoch
        self.seconds, self.done = 0.0, 0  # the last epoch's steps: their seconds and number
        self.lrs: dict[str, float] = {}  # the learning rates the last epoch ran at, by param-group name

    # ------------------------------------------------------------------ the stage's hooks
    @abstractmethod
    def weights(self) -> dict:
        """What ``best.pt`` and ``last.pt`` both hold (``metric`` is added here)."""

    def position(self) -> dict:
        """Extra entries of the resume state (e.g. the epoch's sample order)."""
        return {}

    @abstractmethod
    def restore(self, ckpt: dict) -> None:
        """Load the weights and ``position()`` entries of a ``last.pt``."""

    def begin(self) -> None:  # noqa: B027 (an optional hook)
        """Before the first epoch of a fresh (not resumed) run."""

    def begin_epoch(self, epoch: int, fresh_epoch: bool) -> None:  # noqa: B027 (an optional hook)
        """Before an epoch's steps; ``fresh_epoch`` is False when it resumes mid-epoch."""

    @abstractmethod
    def step(self, epoch: int, i: int) -> None:
        """Step ``i`` of ``epoch``."""

    @abstractmethod
    def validate(self, epoch: int) -> tuple[float, float, str]:
        """After an epoch's steps and the LR step (``lrs`` holds the rates it ran at): the kept metric
        (mean %, CI %) and the line to print (``(best)`` and :meth:`speed_note` are appended)."""

    # ------------------------------------------------------------------ checkpoints
    def sums_to_save(self) -> torch.Tensor:
        return self.sums

    def save_last(self, epoch: int, step: int) -> None:
        """``last.pt`` with everything needed to continue after ``step`` steps of ``epoch``."""
        run = self.run
        self.watch.check(self.stage, self.steps, run.out, run.world)
        position = {
            "epoch": epoch,
            "step": step,
            "sums": self.sums_to_save(),
            "best": self.best,
            **self.position(),
        }
        training = resume.training_state(self.opt, self.sched, self.generators, **position)
        run.save("last.pt", {**self.weights(), "metric": self.metric, "resume": training}, keep_previous=True)

    def keep(self, epoch: int, acc: float, ci: float) -> bool:
        """After an epoch: ``best.pt`` if the metric improved, then ``last.pt``."""
        self.metric = {"val_acc": acc, "val_ci95": ci, "epoch": epoch}
        improved = acc > self.best["val_acc"]
        if improved:
            self.best = dict(self.metric)
            self.run.save("best.pt", {**self.weights(), "metric": self.metric})
        self.saved(epoch)
        self.save_last(epoch, 0)
        return improved

    def saved(self, epoch: int) -> None:  # noqa: B027 (an optional hook)
        """After ``best.pt`` and before ``last.pt`` of an epoch: other outputs of the stage."""

    def start(self, fresh: bool, matters=None) -> None:
        """Continue from ``last.pt`` (unless ``fresh``), or :meth:`begin` a new run."""
        run, cfg = self.run, self.run.cfg
        resumed = resume.load_resume(
            run.out, self.stage, cfg.to_dict(), fresh=fresh, note=run.monitor.line, matters=matters
        )
        if resumed is None:
            self.begin()
            return
        ckpt, path = resumed
        # A checkpoint that matches the config but not the model (edited by hand, another version's
        # entries) is one line naming the file and the first keys that differ.
        with checkpoint.fitting(path, "this run"):
            r = ckpt["resume"]
            self.restore(ckpt)
            resume.restore_training(
                r, self.opt, self.sched, self.generators, run=run, epochs=self.epochs,
                steps_per_epoch=self.steps, path=path,
            )  # fmt: skip
            self.best, self.metric, self.sums = r["best"], ckpt["metric"], r["sums"].to(run.device)
            self.epoch, self.first = r["epoch"], r["step"]

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train the remaining epochs; returns the kept metric ``{"val_acc", "val_ci95", "epoch"}``."""
        run = self.run
        with resume.graceful_stop() as stop:
            for epoch in range(self.epoch, self.epochs):
                self.run_epoch(epoch, stop)
                if not self.schedule_per_step:
                    self.step_schedule()
                self.watch.check(self.stage, self.steps, run.out, run.world)
                acc, ci, line = self.validate(epoch)
                improved = self.keep(epoch + 1, acc, ci)
                run.monitor.line(line + ("  (best)" if improved else "") + self.speed_note())
                if (signum := resume.agreed_signal(stop, run.world, run.device)) and epoch + 1 < self.epochs:
                    raise resume.Stopped.at(self.stage, epoch + 1, 0, run.out, signum)
        run.monitor.close()
        return self.best

    def step_schedule(self) -> None:
        """Record the rates the last step or epoch ran at (``lrs``), then step ``sched``."""
        self.lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.opt.param_groups)}
        self.sched.step()

    def speed_note(self) -> str:
        """``"  123 img/s"``: the last epoch's throughput, for its console line."""
        return ""

    def curve(self, sums: torch.Tensor, steps: int) -> dict[str, float]:
        """The training curve's values (``loss``, ``train accuracy`` in %) over ``steps`` steps whose
        running sums are ``sums`` (a slice of the epoch's ``sums``). Called on every process at the
        same steps, so it may use a collective."""
        return {}

    def status(self, steps: int) -> str:
        """The current loss or accuracy after ``steps`` steps of the epoch, for a heartbeat line (this
        process's share of the batch: reading it costs one host sync and no collective)."""
        return ""

    def run_epoch(self, epoch: int, stop: dict[str, int]) -> None:
        """The steps of ``epoch`` (from the resumed step), with ``last.pt`` at ``checkpoint_every``
        boundaries and a checkpointed stop on a signal."""
        run, every = self.run, self.run.cfg.checkpoint_every
        first = self.first if epoch == self.epoch else 0
        self.begin_epoch(epoch, first == 0)
        label = f"{self.stage} {epoch + 1}/{self.epochs}"
        every_point = -(-self.steps // CURVE_POINTS)
        mark = (self.sums.clone(), first)  # the sums and step of the curve's last point
        with timer() as elapsed:
            steps = run.monitor.progress(
                range(first, self.steps), length=self.steps - first, label=label,
                status=lambda done: self.status(first + done),
            )  # fmt: skip
            for i in steps:
                self.step(epoch, i)
                if self.schedule_per_step:
                    self.step_schedule()
                if (i + 1) % every_point == 0 or i + 1 == self.steps:
                    run.monitor.scalars(
                        epoch * self.steps + i + 1, **self.curve(self.sums - mark[0], i + 1 - mark[1])
                    )
                    mark = (self.sums.clone(), i + 1)
                boundary = bool(every) and (epoch * self.steps + i + 1) % every == 0
                if i + 1 < self.steps and (boundary or (stop["signum"] and not run.world.active)):
                    self.save_last(epoch, i + 1)
                    if signum := resume.agreed_signal(stop, run.world, run.device):
                        raise resume.Stopped.at(self.stage, epoch, i + 1, run.out, signum)
        self.seconds, self.done = elapsed[0], self.steps - first
