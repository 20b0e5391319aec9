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

from mtl import methods
from mtl.config import Config
from mtl.data.augment import TrainAugment
from mtl.data.episodes import EpisodeSampler, ImageRows, check_episode_shape
from mtl.data.sources import load_splits
from mtl.errors import MtlError
from mtl.hard_tasks import HardTasks
from mtl.methods import Method, meta_update
from mtl.methods.episodic import mean_ci
from mtl.runtime import device as devices
from mtl.runtime.tb_layout import LEARNING_RATE, THROUGHPUT
from mtl.training.loop import Training
from mtl.training.run import Run
from mtl.training.schedule import meta_factor


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
    encoder = run.backbone()
    if methods.get(cfg.method).needs_pretrained(cfg) and not from_scratch:
        run.load_pretrained(encoder)
    method = methods.build(cfg, encoder).to(run.device)
    method.encoder.to(memory_format=devices.memory_format())
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
    with Run.open(cfg, "metatrain", checkpoints, quiet=quiet, folder=folder) as run:
        with run.world.agreeing():  # each node reads its own data and pretrain: one that cannot stops all
            training = MetaTraining(run, build_method(run, from_scratch=from_scratch))
        training.start(fresh)
        return training.fit()


class MetaTraining(Training):
    """Meta-updates on sampled tasks (plus hard or random extra tasks), validated after each epoch."""

    stage = "metatrain"
    schedule_per_step = True  # the TF code's drops fall inside an epoch

    def __init__(self, run: Run, method: Method) -> None:
        cfg, m, dev = run.cfg, run.cfg.meta, run.device
        super().__init__(run, epochs=m.epochs, steps=m.updates_per_epoch)
        self.method, self.m = method, m
        splits = load_splits(cfg.data, ("train", "val"))
        self.train, val = splits["train"], splits["val"]
        way = method.train_way
        names = self.train.class_names
        check_episode_shape(self.train.labels, way, m.shot, m.query, split="train", class_names=names)
        self.val = run.eval_episodes(val, "val", m.val_episodes, shot=m.shot, seed=cfg.seed + 1)
        self.opt = method.optimizer()
        total = m.epochs * m.updates_per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda update: method.lr_factor(update, total, meta_factor(m, update))
        )
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
        self.generators = {"sampler": self.sampler.rng, **method.generators()}
        if isinstance(self.transform, TrainAugment):
            self.generators["augment"] = self.transform.generator
        if self.hard is not None:
            self.generators.update(hard_tasks=self.hard, hard_images=self.hard.sampler.rng)
        self.sums = torch.zeros(3, device=dev)  # query loss, query accuracy, extra-task accuracy: epoch sums

    def weights(self) -> dict:
        """The method's state, the pool and the class names."""
        state = {"method": self.run.cfg.method, **self.method.state(), "class_names": self.train.class_names}
        if self.hard is not None:
            state["hard_tasks"] = self.hard.pool.state_dict()
        return state

    def restore(self, ckpt: dict) -> None:
        self.method.load_state(ckpt)

    def saved(self, epoch: int) -> None:
        if self.hard is not None:
            self.run.write_text("hard_tasks.json", self.hard.summary_json(self.train.class_names))

    def begin(self) -> None:
        """Score the untrained start: it competes for ``best.pt`` as epoch 0."""
        acc, ci = validate(self.method, self.run, *self.val)
        self.keep(0, acc, ci)
        self.run.monitor.line(f"before meta-training: val {acc:.2f} ± {ci:.2f}%")
        self.run.monitor.accuracy(0, "validation accuracy", acc, ci, chart="validation accuracy ± 95% CI (%)")

    def begin_epoch(self, epoch: int, fresh_epoch: bool) -> None:
        self.method.train()
        if fresh_epoch:
            self.sums = torch.zeros(3, device=self.run.device)

    def step(self, epoch: int, i: int) -> None:
        """One meta-update."""
        m, world, step = self.m, self.run.world, epoch * self.steps + i
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
            loss = self.method.loss(logits, targets)
        else:
            loss, logits, targets = meta_update(*args, batch, self.transform)
        self.watch.update(loss, step)
        self.method.auxiliary_update(
            self.images, self.train.labels, step, self.epochs * self.steps, self.transform
        )
        acc = (logits[: m.meta_batch].argmax(-1) == targets).float().mean()
        extra_acc = torch.zeros((), device=self.run.device)
        if self.hard is not None:
            extra_acc = (logits[m.meta_batch :].argmax(-1) == targets).float().mean()
            self.hard.add(self.train.labels, tasks, logits[: m.meta_batch], targets)
            # The pool update already synchronised with the host: per-step logging is free.
            self.hard.log(self.run.monitor, step, acc, extra_acc, self.images, batch[m.meta_batch :])
        self.sums += torch.stack([loss, acc, extra_acc])
        if step == 0:
            self.run.monitor.task("train task", self.images[torch.from_numpy(tasks[0])], m.shot, 0)

    def curve(self, sums: torch.Tensor, steps: int) -> dict[str, float]:
        loss, acc, _ = (sums / steps).tolist()  # of the gathered logits: the same on every rank
        return {"loss": loss, "train accuracy": 100 * acc}

    def status(self, steps: int) -> str:
        loss, acc, _ = (self.sums / max(steps, 1)).tolist()
        return f"query-loss {loss:.3f}, query-acc {acc:.1%}"

    def validate(self, epoch: int) -> tuple[float, float, str]:
        """Validation, TensorBoard and the epoch's line."""
        run, m, step = self.run, self.m, (epoch + 1) * self.steps
        train_loss, train_acc, extra_acc = (self.sums / self.steps).unbind()
        acc, ci = validate(self.method, run, *self.val)
        run.monitor.accuracy(step, "validation accuracy", acc, ci, chart="validation accuracy ± 95% CI (%)")
        run.monitor.scalars(step, section=LEARNING_RATE, **self.lrs)
        run.monitor.scalars(step, section=THROUGHPUT, **{"tasks per s": self.speed()})
        self.method.log_epoch(run.monitor, step)
        note = ""
        if self.hard is not None:
            self.hard.record_epoch(epoch + 1, 100 * float(train_acc), 100 * float(extra_acc))
            self.hard.log_epoch(run.monitor, step, self.train.class_names)
            extra = "random-extra-acc" if m.hard_tasks.mode == "random" else "hard-acc"
            note = f"  {extra} {float(extra_acc):.1%}"
        line = (
            f"epoch {epoch + 1}/{m.epochs}  query-loss {float(train_loss):.3f}  "
            f"query-acc {float(train_acc):.1%}{note}  val {acc:.2f} ± {ci:.2f}%"
        )
        return acc, ci, line

    def speed(self) -> float:
        # Extra tasks count: they cost an encoder forward and backward like any other task.
        return self.done * self.tasks_per_update / max(self.seconds, 1e-9)

    def speed_note(self) -> str:
        return f"  {self.speed():.1f} tasks/s"
