"""Stage 2: episodic meta-training of the pipeline's method (``method:``; MTL by default).

Every meta-update samples ``meta.meta_batch`` tasks of the base classes (plus hard or random extra
tasks when ``meta.hard_tasks`` is on), asks the method for their query logits and takes one Adam step
on the mean query loss. After each epoch the method is scored on fixed validation episodes and
``best.pt`` keeps the best. For MTL that means: the pretrained encoder frozen with SS weights, θ
adapted on each support set, SS and θ's initialisation meta-learned (:mod:`mtl.methods.mtl`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtl import device as devices
from mtl import methods
from mtl.config import Config
from mtl.data.augment import TrainAugment
from mtl.data.episodes import EpisodeSampler, ImageRows, check_episode_shape
from mtl.data.sources import load_splits
from mtl.errors import MtlError
from mtl.evaluate import mean_ci
from mtl.methods import Method, meta_update
from mtl.monitor import timer
from mtl.recipe import lr_factor
from mtl.stages import resume
from mtl.stages.hard_batches import HardTasks
from mtl.stages.run import Run


def validate(method: Method, run: Run, images: ImageRows, episodes: torch.Tensor) -> tuple[float, float]:
    """Few-shot accuracy (mean %, CI %) on fixed episodes (indexing ``images``), in eval mode."""
    was_training = method.training
    method.eval()
    try:
        feats = method.features(images, run.features, run.device)
        return mean_ci(method.evaluate(feats, episodes, run.cfg.meta.shot))
    finally:
        method.train(was_training)


def build_method(run: Run, *, from_scratch: bool = False) -> Method:
    """The pipeline's method on the device, its encoder from the pretrain ``best.pt`` when the method
    starts from it (and not ``from_scratch``)."""
    cfg = run.cfg
    cls = methods.get(cfg.method)
    encoder = run.backbone()
    if cls.needs_pretrained(cfg) and not from_scratch:
        encoder.load_state_dict(run.previous("pretrain")["encoder"])
    method = cls(encoder, cfg).to(run.device)
    method.encoder.to(memory_format=devices.memory_format(run.device))
    devices.maybe_compile(method.encoder, cfg.compile)
    return method


def metatrain(
    cfg: Config,
    checkpoints: str | Path = "checkpoints",
    *,
    quiet: bool = False,
    fresh: bool = False,
    folder: str = "metatrain",
    from_scratch: bool = False,
) -> dict:
    """Run meta-training; returns the kept (best) validation metric ``{"val_acc", "val_ci95", "epoch"}``.

    An unfinished run of the same config resumes from its ``last.pt`` exactly where it stopped (a
    finished one returns its result); ``fresh`` starts over. ``folder`` redirects the outputs (the
    ablation and compare keep their variants apart); ``from_scratch`` starts from a randomly
    initialised encoder even if the method would start from the pretrained one.
    """
    if not methods.get(cfg.method).trains:
        raise MtlError(f"method '{cfg.method}' has nothing to meta-train: metatest scores it as it is")
    run = Run.open(cfg, "metatrain", checkpoints, quiet=quiet, folder=folder)
    loop = MetaTraining(run, build_method(run, from_scratch=from_scratch))
    loop.start(fresh)
    with resume.graceful_stop() as stop:
        for epoch in range(loop.epoch, cfg.meta.epochs):
            loop.train_epoch(epoch, stop)
            loop.end_epoch(epoch)
            if (signum := resume.agreed_signal(stop, run.world, run.device)) and epoch + 1 < cfg.meta.epochs:
                raise resume.Stopped.at("metatrain", epoch + 1, 0, run.out, signum)
    run.monitor.close()
    return loop.best


class MetaTraining:
    """The state of one meta-training run and its steps: what ``last.pt`` saves and restores."""

    def __init__(self, run: Run, method: Method) -> None:
        cfg, m, dev = run.cfg, run.cfg.meta, run.device
        self.run, self.method, self.m = run, method, m
        splits = load_splits(cfg.data, ("train", "val"))
        self.train, val = splits["train"], splits["val"]
        way = method.train_way
        check_episode_shape(
            self.train.labels, way, m.shot, m.query, split="train", class_names=self.train.class_names
        )
        self.val = run.eval_episodes(val, "val", m.val_episodes, shot=m.shot, seed=cfg.seed + 1)
        self.opt = torch.optim.Adam(method.param_groups())
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda epoch: lr_factor(m, epoch))
        self.sampler = EpisodeSampler(self.train.labels, way, m.shot, m.query, seed=cfg.seed)
        self.images = run.to_device(self.train.images)
        aug = cfg.pretrain.augment
        self.transform = (
            TrainAugment(run.pre, aug.crop_scale, aug.flip, torch.Generator().manual_seed(cfg.seed))
            if m.augment and aug.enabled
            else run.pre
        )
        ht = m.hard_tasks
        self.hard = HardTasks(cfg, self.train, way) if ht.enabled else None
        self.tasks_per_update = m.meta_batch + ht.enabled * ht.per_batch
        if run.world.size > self.tasks_per_update:
            raise MtlError(
                f"{run.world.size} processes need at least as many tasks per meta-batch (meta.meta_batch)"
            )
        self.trained = [p for p in method.parameters() if p.requires_grad]
        self.generators = {"sampler": self.sampler.rng}
        if isinstance(self.transform, TrainAugment):
            self.generators["augment"] = self.transform.generator
        if self.hard is not None:
            self.generators.update(hard_tasks=self.hard, hard_images=self.hard.sampler.rng)
        self.best = {"val_acc": -1.0, "val_ci95": 0.0, "epoch": 0}
        self.metric = dict(self.best)
        self.sums = torch.zeros(3, device=dev)  # query loss, query accuracy, extra-task accuracy: epoch sums
        self.watch = resume.FiniteWatch(dev)
        self.epoch, self.step = 0, 0

    # ------------------------------------------------------------------ checkpoints
    def weights(self) -> dict:
        """What best.pt and last.pt both hold: the method's state, the pool, the last epoch's metric."""
        state = {"method": self.run.cfg.method, **self.method.state(), "class_names": self.train.class_names}
        state["metric"] = self.metric
        if self.hard is not None:
            state["hard_tasks"] = self.hard.pool.state_dict()
        return state

    def save_last(self, epoch: int, step: int) -> None:
        """``last.pt`` with everything needed to continue after ``step`` meta-batches of ``epoch``."""
        run = self.run
        self.watch.check("metatrain", self.m.updates_per_epoch, run.out, run.world)
        position = {"epoch": epoch, "step": step, "sums": self.sums, "best": self.best}
        training = resume.training_state(self.opt, self.sched, self.generators, **position)
        run.save("last.pt", {**self.weights(), "resume": training}, keep_previous=True)

    def keep(self, epoch: int, acc: float, ci: float) -> bool:
        """After an epoch: ``best.pt`` if validation improved (the untrained start competes too), then
        ``last.pt``."""
        self.metric = {"val_acc": acc, "val_ci95": ci, "epoch": epoch}
        improved = acc > self.best["val_acc"]
        if improved:
            self.best.update(self.metric)
            self.run.save("best.pt", self.weights())
        if self.hard is not None:
            self.run.write_text("hard_tasks.json", self.hard.summary_json(self.train.class_names))
        self.save_last(epoch, 0)
        return improved

    def start(self, fresh: bool) -> None:
        """Resume from ``last.pt``, or score the untrained start as epoch 0."""
        run, cfg = self.run, self.run.cfg
        resumed = resume.load_resume(run.out, "metatrain", cfg.to_dict(), fresh=fresh, note=run.monitor.line)
        if resumed is not None:
            r = resumed["resume"]
            self.method.load_state(resumed)
            resume.restore_training(
                r, self.opt, self.sched, self.generators, run=run, epochs=self.m.epochs,
                steps_per_epoch=self.m.updates_per_epoch,
            )  # fmt: skip
            self.best, self.metric, self.sums = r["best"], resumed["metric"], r["sums"].to(run.device)
            self.epoch, self.step = r["epoch"], r["step"]
            return
        acc, ci = validate(self.method, run, *self.val)
        self.keep(0, acc, ci)
        run.monitor.line(f"before meta-training: val {acc:.2f} ± {ci:.2f}%")
        run.monitor.scalars(0, **{"val/acc": acc, "val/ci95": ci})

    # ------------------------------------------------------------------ training
    def update(self, step: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """One meta-update; returns its normal tasks, their query logits and the targets."""
        m, world = self.m, self.run.world
        tasks = np.stack([self.sampler.sample() for _ in range(m.meta_batch)])
        batch = tasks if self.hard is None else np.concatenate([tasks, self.hard.draw(tasks)])
        n = len(batch)
        args = (self.method, self.opt, self.images)
        if world.active:  # every rank drew the same tasks; each runs its share
            mine = world.slice(n)
            scale = (mine.stop - mine.start) * world.size / n
            sync = lambda: world.average_gradients(self.trained)  # noqa: E731
            loss, logits, targets = meta_update(
                *args, batch[mine], self.transform, loss_scale=scale, sync=sync
            )
            logits = world.gather(logits, n)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.repeat(n))
        else:
            loss, logits, targets = meta_update(*args, batch, self.transform)
        self.watch.update(loss, step)
        acc = (logits[: m.meta_batch].argmax(-1) == targets).float().mean()
        extra_acc = torch.zeros((), device=self.run.device)
        if self.hard is not None:
            extra_acc = (logits[m.meta_batch :].argmax(-1) == targets).float().mean()
            self.hard.add(self.train.labels, tasks, logits[: m.meta_batch], targets)
            # The pool update already synchronised with the host: per-step logging is free.
            self.hard.log(self.run.monitor, step, acc, extra_acc, self.images, batch[m.meta_batch :])
        self.sums += torch.stack([loss, acc, extra_acc])
        return tasks, logits, targets

    def train_epoch(self, epoch: int, stop: dict[str, int]) -> None:
        """The meta-updates of ``epoch`` (from ``self.step`` if it resumed mid-epoch), with checkpoints
        at ``checkpoint_every`` boundaries and a checkpointed stop on a signal."""
        run, batches, every = self.run, self.m.updates_per_epoch, self.run.cfg.checkpoint_every
        self.method.train()
        first = self.step if epoch == self.epoch else 0
        if first == 0:
            self.sums = torch.zeros(3, device=run.device)
        label = f"metatrain {epoch + 1}/{self.m.epochs}"
        with timer() as self.elapsed:
            for i in run.monitor.progress(range(first, batches), length=batches - first, label=label):
                step = epoch * batches + i
                tasks, _, _ = self.update(step)
                if step == 0:
                    grid = self.images[torch.from_numpy(tasks[0]).flatten()]
                    run.monitor.images("train/task", grid, 0, nrow=tasks.shape[2])
                boundary = bool(every) and (step + 1) % every == 0
                if i + 1 < batches and (boundary or (stop["signum"] and not run.world.active)):
                    self.save_last(epoch, i + 1)
                    if signum := resume.agreed_signal(stop, run.world, run.device):
                        raise resume.Stopped.at("metatrain", epoch, i + 1, run.out, signum)
        self.first = first

    def end_epoch(self, epoch: int) -> None:
        """LR step, validation, logs, ``best.pt`` / ``last.pt``, and the epoch's console line."""
        run, m, batches = self.run, self.m, self.m.updates_per_epoch
        lr_tags = {f"train/lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.opt.param_groups)}
        self.sched.step()
        self.watch.check("metatrain", batches, run.out, run.world)
        train_loss, train_acc, extra_acc = (self.sums / batches).unbind()
        acc, ci = validate(self.method, run, *self.val)
        step = (epoch + 1) * batches
        # Extra tasks count: they cost an encoder forward and backward like any other task.
        tasks_per_s = (batches - self.first) * self.tasks_per_update / max(self.elapsed[0], 1e-9)
        run.monitor.scalars(
            step,
            **{"train/query_loss": train_loss, "train/query_acc": train_acc, **lr_tags},
            **{"train/tasks_per_s": tasks_per_s, "val/acc": acc, "val/ci95": ci},
        )
        self.method.log_epoch(run.monitor, step)
        note = ""
        if self.hard is not None:
            self.hard.record_epoch(epoch + 1, 100 * float(train_acc), 100 * float(extra_acc))
            extra = "random-extra-acc" if m.hard_tasks.mode == "random" else "hard-acc"
            note = f"  {extra} {float(extra_acc):.1%}"
        improved = self.keep(epoch + 1, acc, ci)
        if self.hard is not None:
            self.hard.log_epoch(run.monitor, step, self.train.class_names)
        run.monitor.line(
            f"epoch {epoch + 1}/{m.epochs}  query-loss {float(train_loss):.3f}  "
            f"query-acc {float(train_acc):.1%}{note}  val {acc:.2f} ± {ci:.2f}%"
            f"{'  (best)' if improved else ''}  {tasks_per_s:.1f} tasks/s"
        )
