"""Stage 2: meta-transfer learning of the SS weights Φ_S and the base-learner initialisation θ.

The pretrained encoder Θ is frozen and every convolution gets SS weights. For each task of a
meta-batch, θ is adapted on the support features by ``inner_steps`` gradient steps (closed-form
gradient, second-order by default), and the query loss of the adapted θ' updates Φ_S and θ with Adam.
With frozen batch norm (the default) all tasks of a meta-batch, hard tasks included, share one
encoder forward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtl import device as devices
from mtl import ss
from mtl.config import Config
from mtl.data.augment import TrainAugment
from mtl.data.episodes import EpisodeSampler, ImageRows, check_episode_shape
from mtl.data.sources import load_splits
from mtl.errors import MtlError
from mtl.evaluate import finetune, mean_ci
from mtl.meta_learner import MetaLearner, meta_optimizer, meta_scheduler, meta_update
from mtl.monitor import timer
from mtl.stages import resume
from mtl.stages.hard_batches import HardTasks
from mtl.stages.run import Run


def meta_validate(
    learner: MetaLearner, run: Run, images: ImageRows, episodes: torch.Tensor
) -> tuple[float, float]:
    """Few-shot accuracy (mean %, CI %) on fixed validation episodes (indexing ``images``) from cached
    SS features."""
    cfg = run.cfg
    feats = run.features(learner.encoder, images)
    steps = cfg.test.inner_steps if cfg.test.inner_steps is not None else cfg.meta.inner_steps
    W, b = learner.W.detach(), learner.b.detach()
    return mean_ci(finetune(feats, episodes, cfg.meta.shot, W, b, steps=steps, lr=cfg.meta.inner_lr))


def metatrain(
    cfg: Config,
    checkpoints: str | Path = "checkpoints",
    *,
    quiet: bool = False,
    fresh: bool = False,
    folder: str = "metatrain",
    from_scratch: bool = False,
) -> dict:
    """Run meta-training from the pretrain ``best.pt``; returns the kept (best) validation metric.

    An unfinished run of the same config resumes from its ``last.pt`` exactly where it stopped (a
    finished one returns its result); ``fresh`` starts over. ``folder`` redirects the outputs (the
    ablation keeps its variants apart); ``from_scratch`` starts from a randomly initialised encoder
    instead of the pretrained one (the paper's "train from scratch").
    """
    run = Run.open(cfg, "metatrain", checkpoints, quiet=quiet, folder=folder)
    m, dev = cfg.meta, run.device
    pre_ckpt = run.previous("pretrain")
    splits = load_splits(cfg.data, ("train", "val"))
    train, val = splits["train"], splits["val"]
    check_episode_shape(train.labels, m.way, m.shot, m.query, split="train", class_names=train.class_names)
    val_images, val_episodes = run.eval_episodes(val, "val", m.val_episodes, shot=m.shot, seed=cfg.seed + 1)

    encoder = run.backbone()
    if not from_scratch:
        encoder.load_state_dict(pre_ckpt["encoder"])
    learner = MetaLearner(encoder, m.way, train_bn=m.bn == "affine", precision=cfg.precision).to(dev)
    learner.encoder.to(memory_format=devices.memory_format(dev))
    learner.encoder = devices.maybe_compile(learner.encoder, cfg.compile)
    opt = meta_optimizer(learner, m)
    sched = meta_scheduler(opt, m)
    sampler = EpisodeSampler(train.labels, m.way, m.shot, m.query, seed=cfg.seed)
    images = run.to_device(train.images)
    batches = m.updates_per_epoch
    aug = cfg.pretrain.augment
    transform = (
        TrainAugment(run.pre, aug.crop_scale, aug.flip, torch.Generator().manual_seed(cfg.seed))
        if m.augment and aug.enabled
        else run.pre
    )

    ht = m.hard_tasks
    hard = HardTasks(cfg, train) if ht.enabled else None
    every, world = cfg.checkpoint_every, run.world
    if world.size > m.meta_batch + ht.enabled * ht.per_batch:
        raise MtlError(f"{world.size} processes need at least as many tasks per meta-batch (meta.meta_batch)")
    trained = [p for p in learner.parameters() if p.requires_grad]

    def sync() -> None:
        world.average_gradients(trained)

    generators = {"sampler": sampler.rng}
    if isinstance(transform, TrainAugment):
        generators["augment"] = transform.generator
    if hard is not None:
        generators.update(hard_tasks=hard, hard_images=hard.sampler.rng)
    best = {"val_acc": -1.0, "val_ci95": 0.0, "epoch": 0}
    metric = dict(best)
    sums = torch.zeros(3, device=dev)  # query loss, query accuracy, hard-task accuracy: epoch sums
    watch = resume.FiniteWatch(dev)

    def weights() -> dict:
        """What best.pt and last.pt both hold: SS encoder, θ, the pool, the last epoch's metric."""
        state = {
            "encoder": learner.encoder.state_dict(),
            "theta": {"W": learner.W.detach(), "b": learner.b.detach()},
            "class_names": train.class_names,
            "metric": metric,
        }
        if hard is not None:
            state["hard_tasks"] = hard.pool.state_dict()
        return state

    def save_last(epoch: int, step: int) -> None:
        """``last.pt`` with everything needed to continue after ``step`` meta-batches of ``epoch``."""
        watch.check("metatrain", batches, run.out, world)
        position = {"epoch": epoch, "step": step, "sums": sums, "best": best}
        state = {**weights(), "resume": resume.training_state(opt, sched, generators, **position)}
        run.save("last.pt", state, keep_previous=True)

    def keep(epoch: int, acc: float, ci: float) -> bool:
        """After an epoch: ``best.pt`` if validation improved (the untrained start competes too), then
        ``last.pt``."""
        nonlocal metric
        metric = {"val_acc": acc, "val_ci95": ci, "epoch": epoch}
        improved = acc > best["val_acc"]
        if improved:
            best.update(metric)
            run.save("best.pt", weights())
        if hard is not None:
            run.write_text("hard_tasks.json", hard.summary_json(train.class_names))
        save_last(epoch, 0)
        return improved

    start_epoch, start_step = 0, 0
    resumed = resume.load_resume(run.out, "metatrain", cfg.to_dict(), fresh=fresh, note=run.monitor.line)
    if resumed is not None:
        r = resumed["resume"]
        learner.encoder.load_state_dict(resumed["encoder"])
        with torch.no_grad():
            learner.W.copy_(resumed["theta"]["W"])
            learner.b.copy_(resumed["theta"]["b"])
        resume.restore_training(r, opt, sched, generators, run=run, epochs=m.epochs, steps_per_epoch=batches)
        best, metric, sums = r["best"], resumed["metric"], r["sums"].to(dev)
        start_epoch, start_step = r["epoch"], r["step"]
    else:
        acc, ci = meta_validate(learner, run, val_images, val_episodes)
        keep(0, acc, ci)
        run.monitor.line(f"before meta-training: val {acc:.2f} ± {ci:.2f}%")
        run.monitor.scalars(0, **{"val/acc": acc, "val/ci95": ci})
    with resume.graceful_stop() as stop:
        for epoch in range(start_epoch, m.epochs):
            learner.encoder_train(True)
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                sums = torch.zeros(3, device=dev)
            with timer() as elapsed:
                for i in run.monitor.progress(
                    range(first, batches), length=batches - first, label=f"metatrain {epoch + 1}/{m.epochs}"
                ):
                    step = epoch * batches + i
                    tasks = np.stack([sampler.sample() for _ in range(m.meta_batch)])
                    batch_tasks = tasks if hard is None else np.concatenate([tasks, hard.draw(tasks)])
                    n = len(batch_tasks)
                    if world.active:  # every rank drew the same tasks; each runs its share
                        mine = world.slice(n)
                        scale = (mine.stop - mine.start) * world.size / n
                        loss, logits, targets = meta_update(
                            learner, m, opt, images, batch_tasks[mine], transform, loss_scale=scale, sync=sync
                        )
                        logits = world.gather(logits, n)
                        loss = F.cross_entropy(logits.flatten(0, 1), targets.repeat(n))
                    else:
                        loss, logits, targets = meta_update(learner, m, opt, images, batch_tasks, transform)
                    watch.update(loss, step)
                    acc = (logits[: m.meta_batch].argmax(-1) == targets).float().mean()
                    hard_acc = torch.zeros((), device=dev)
                    if hard is not None:
                        hard_acc = (logits[m.meta_batch :].argmax(-1) == targets).float().mean()
                        hard.add(train.labels, tasks, logits[: m.meta_batch], targets)
                        # The pool update already synchronised with the host: per-step logging is free.
                        hard.log(run.monitor, step, acc, hard_acc, images, batch_tasks[m.meta_batch :])
                    sums += torch.stack([loss, acc, hard_acc])
                    if step == 0:
                        run.monitor.images(
                            "train/task", images[torch.from_numpy(tasks[0]).flatten()], 0, nrow=tasks.shape[2]
                        )
                    boundary = bool(every) and (step + 1) % every == 0
                    if i + 1 < batches and (boundary or (stop["signum"] and not world.active)):
                        save_last(epoch, i + 1)
                        if signum := resume.agreed_signal(stop, world, dev):
                            raise resume.Stopped.at("metatrain", epoch, i + 1, run.out, signum)
            lrs = [g["lr"] for g in opt.param_groups]
            sched.step()
            watch.check("metatrain", batches, run.out, world)
            train_loss, train_acc, hard_acc_mean = (sums / batches).unbind()
            acc, ci = meta_validate(learner, run, val_images, val_episodes)
            step = (epoch + 1) * batches
            # Hard tasks count: they cost an encoder forward and backward like any other task.
            tasks_per_s = (batches - first) * (m.meta_batch + ht.enabled * ht.per_batch)
            tasks_per_s /= max(elapsed[0], 1e-9)
            run.monitor.scalars(
                step,
                **{
                    "train/query_loss": train_loss,
                    "train/query_acc": train_acc,
                    "train/lr_ss": lrs[0],
                    "train/lr_theta": lrs[1],
                    "train/tasks_per_s": tasks_per_s,
                    "val/acc": acc,
                    "val/ci95": ci,
                },
            )
            scales = torch.cat([mod.scale.detach().flatten() for _, mod in ss.ss_modules(learner.encoder)])
            shifts = torch.cat([mod.shift.detach().flatten() for _, mod in ss.ss_modules(learner.encoder)])
            run.monitor.histogram("ss/scale", scales, step)
            run.monitor.histogram("ss/shift", shifts, step)
            if hard is not None:
                hard.record_epoch(epoch + 1, 100 * float(train_acc), 100 * float(hard_acc_mean))
            improved = keep(epoch + 1, acc, ci)
            if hard is not None:
                hard.log_epoch(run.monitor, step, train.class_names)
            extra = "random-extra-acc" if ht.mode == "random" else "hard-acc"
            hard_note = f"  {extra} {float(hard_acc_mean):.1%}" if hard is not None else ""
            run.monitor.line(
                f"epoch {epoch + 1}/{m.epochs}  query-loss {float(train_loss):.3f}  "
                f"query-acc {float(train_acc):.1%}{hard_note}  val {acc:.2f} ± {ci:.2f}%"
                f"{'  (best)' if improved else ''}  {tasks_per_s:.1f} tasks/s"
            )
            if (signum := resume.agreed_signal(stop, world, dev)) and epoch + 1 < m.epochs:
                raise resume.Stopped.at("metatrain", epoch + 1, 0, run.out, signum)
    run.monitor.close()
    return best
