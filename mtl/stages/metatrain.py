"""Stage 2: meta-transfer learning of the SS weights Φ_S and the base-learner initialisation θ.

The pretrained encoder Θ is frozen and every convolution gets SS weights. For each task of a
meta-batch, θ is adapted on the support features by ``inner_steps`` gradient steps (closed-form
gradient, second-order by default), and the query loss of the adapted θ' updates Φ_S and θ with Adam.
With frozen batch norm (the default) all tasks of a meta-batch, hard tasks included, share one
encoder forward.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtl import base_learner, ss
from mtl import device as devices
from mtl.config import Config, MetaConfig
from mtl.data.augment import TrainAugment
from mtl.data.cache import Split
from mtl.data.episodes import EpisodeSampler, check_episode_shape, episode_targets, fixed_episodes
from mtl.data.sources import load_splits
from mtl.evaluate import finetune, mean_ci
from mtl.monitor import timer
from mtl.stages.hard_batches import HardTasks
from mtl.stages.run import Run


class MetaLearner(nn.Module):
    """The SS encoder plus θ = (W (way, D), b (way,)): everything meta-training learns."""

    def __init__(self, encoder: nn.Module, way: int, *, train_bn: bool, precision: str = "fp32") -> None:
        super().__init__()
        self.encoder = ss.attach(encoder, train_bn=train_bn)
        self.train_bn = train_bn
        self.precision = precision  # of the encoder's forward (see mtl.device.autocast)
        W, b = base_learner.init_theta(way, encoder.num_features)
        self.W, self.b = nn.Parameter(W), nn.Parameter(b)

    def encoder_train(self, mode: bool = True) -> None:
        # Frozen BN keeps running statistics (eval mode) even while SS weights train.
        self.encoder.train(mode and self.train_bn)


def task_outputs(
    learner: MetaLearner,
    m: MetaConfig,
    images: torch.Tensor,
    tasks: np.ndarray,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt θ on each task's support set and score its queries.

    images: uint8 ``(N, H, W, C)`` on the device; tasks: ``(T, way, shot + query)`` image indices;
    ``transform`` turns uint8 batches into model input. Returns query logits ``(T, way * query, way)``
    of the adapted θ' and their targets ``(way * query,)``.
    """
    dev = images.device
    T, way, n = tasks.shape
    idx = torch.from_numpy(tasks).to(dev)
    with devices.autocast(dev, learner.precision):
        if learner.train_bn:
            # Batch statistics: support and query sets are normalised separately.
            sup = learner.encoder(transform(images[idx[:, :, : m.shot].reshape(-1)]))
            qry = learner.encoder(transform(images[idx[:, :, m.shot :].reshape(-1)]))
            sup, qry = sup.float().view(T, way * m.shot, -1), qry.float().view(T, way * (n - m.shot), -1)
        else:
            # Frozen BN: every task of the meta-batch, hard tasks included, in one encoder forward.
            feats = learner.encoder(transform(images[idx.reshape(-1)])).float().view(T, way, n, -1)
            sup = feats[:, :, : m.shot].reshape(T, way * m.shot, -1)
            qry = feats[:, :, m.shot :].reshape(T, way * (n - m.shot), -1)
    y_s = episode_targets(way, m.shot, device=dev)
    W, b = base_learner.adapt(
        sup, y_s, learner.W, learner.b, steps=m.inner_steps, lr=m.inner_lr, first_order=m.first_order
    )
    return base_learner.logits(qry, W, b), episode_targets(way, n - m.shot, device=dev)


def meta_update(
    learner: MetaLearner,
    m: MetaConfig,
    opt: torch.optim.Optimizer,
    images: torch.Tensor,
    tasks: np.ndarray,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One meta-gradient step of SS and θ on the mean query loss of ``tasks`` ``(T, way, shot + query)``.

    Returns the loss (0-d), the detached query logits ``(T, way * query, way)`` and their targets.
    """
    logits, targets = task_outputs(learner, m, images, tasks, transform)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.repeat(len(logits)))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach(), targets


def meta_optimizer(learner: MetaLearner, m: MetaConfig) -> torch.optim.Optimizer:
    """Adam on SS (and BN affine, if trained) at ``lr_ss`` and on θ at ``lr_theta``."""
    return torch.optim.Adam(
        [
            {"params": [*ss.parameters(learner.encoder), *ss.bn_parameters(learner.encoder)], "lr": m.lr_ss},
            {"params": [learner.W, learner.b], "lr": m.lr_theta},
        ]
    )


def meta_validate(learner: MetaLearner, run: Run, val: Split, episodes: torch.Tensor) -> tuple[float, float]:
    """Few-shot accuracy (mean %, CI %) on fixed validation episodes from cached SS features."""
    cfg = run.cfg
    feats = run.features(learner.encoder, val.images)
    steps = cfg.test.inner_steps if cfg.test.inner_steps is not None else cfg.meta.inner_steps
    W, b = learner.W.detach(), learner.b.detach()
    return mean_ci(finetune(feats, episodes, cfg.meta.shot, W, b, steps=steps, lr=cfg.meta.inner_lr))


def metatrain(
    cfg: Config,
    checkpoints: str | Path = "checkpoints",
    *,
    quiet: bool = False,
    folder: str = "metatrain",
    from_scratch: bool = False,
) -> dict:
    """Run meta-training from the pretrain ``best.pt``; returns the kept (best) validation metric.

    ``folder`` redirects the outputs (the ablation keeps its variants apart); ``from_scratch`` starts
    from a randomly initialised encoder instead of the pretrained one (the paper's "train from scratch").
    """
    run = Run.open(cfg, "metatrain", checkpoints, quiet=quiet, folder=folder)
    m, dev = cfg.meta, run.device
    pre_ckpt = run.previous("pretrain")
    splits = load_splits(cfg.data, ("train", "val"))
    train, val = splits["train"], splits["val"]
    check_episode_shape(train.labels, m.way, m.shot, m.query, split="train", class_names=train.class_names)
    check_episode_shape(val.labels, m.way, m.shot, cfg.test.query, split="val", class_names=val.class_names)
    val_episodes = torch.from_numpy(
        fixed_episodes(val.labels, m.way, m.shot, cfg.test.query, m.val_episodes, seed=cfg.seed + 1)
    ).to(dev)

    encoder = run.backbone()
    if not from_scratch:
        encoder.load_state_dict(pre_ckpt["encoder"])
    learner = MetaLearner(encoder, m.way, train_bn=m.bn == "affine", precision=cfg.precision).to(dev)
    learner.encoder.to(memory_format=devices.memory_format(dev))
    learner.encoder = devices.maybe_compile(learner.encoder, cfg.compile)
    opt = meta_optimizer(learner, m)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=m.step_size, gamma=m.gamma)
    sampler = EpisodeSampler(train.labels, m.way, m.shot, m.query, seed=cfg.seed)
    images = run.to_device(train.images)
    batches = max(1, m.episodes_per_epoch // m.meta_batch)
    aug = cfg.pretrain.augment
    transform = (
        TrainAugment(run.pre, aug.crop_scale, aug.flip, torch.Generator().manual_seed(cfg.seed))
        if m.augment and aug.enabled
        else run.pre
    )

    ht = m.hard_tasks
    hard = HardTasks(cfg, train) if ht.enabled else None

    def keep(epoch: int, acc: float, ci: float) -> bool:
        """Save ``last.pt`` and, if validation improved, ``best.pt``; the untrained start competes too."""
        state = {
            "encoder": learner.encoder.state_dict(),
            "theta": {"W": learner.W.detach(), "b": learner.b.detach()},
            "class_names": train.class_names,
            "metric": {"val_acc": acc, "val_ci95": ci, "epoch": epoch},
        }
        if hard is not None:
            state["hard_tasks"] = hard.pool.state_dict()
            hard.write_summary(run.out / "hard_tasks.json", train.class_names)
        improved = acc > best["val_acc"]
        if improved:
            best.update(state["metric"])
            run.save("best.pt", state)
        run.save("last.pt", state)
        return improved

    best = {"val_acc": -1.0, "val_ci95": 0.0, "epoch": 0}
    acc, ci = meta_validate(learner, run, val, val_episodes)
    keep(0, acc, ci)
    run.monitor.line(f"before meta-training: val {acc:.2f} ± {ci:.2f}%")
    run.monitor.scalars(0, **{"val/acc": acc, "val/ci95": ci})
    for epoch in range(m.epochs):
        learner.encoder_train(True)
        loss_sum = torch.zeros((), device=dev)
        acc_sum = torch.zeros((), device=dev)
        hard_acc_sum = torch.zeros((), device=dev)
        with timer() as elapsed:
            for i in run.monitor.progress(
                range(batches), length=batches, label=f"metatrain {epoch + 1}/{m.epochs}"
            ):
                step = epoch * batches + i
                tasks = np.stack([sampler.sample() for _ in range(m.meta_batch)])
                batch_tasks = tasks if hard is None else np.concatenate([tasks, hard.draw(tasks)])
                loss, logits, targets = meta_update(learner, m, opt, images, batch_tasks, transform)
                acc = (logits[: m.meta_batch].argmax(-1) == targets).float().mean()
                if hard is not None:
                    hard_tasks = batch_tasks[m.meta_batch :]
                    hard_acc = (logits[m.meta_batch :].argmax(-1) == targets).float().mean()
                    hard_acc_sum += hard_acc
                    hard.add(train.labels, tasks, logits[: m.meta_batch], targets)
                    # The pool update already synchronised with the host, so per-step logging is free here.
                    hard.log(run.monitor, step, acc, hard_acc, images, hard_tasks)
                loss_sum += loss
                acc_sum += acc
                if step == 0:
                    run.monitor.images(
                        "train/task", images[torch.from_numpy(tasks[0]).flatten()], 0, nrow=tasks.shape[2]
                    )
        lrs = [g["lr"] for g in opt.param_groups]
        sched.step()
        train_loss = loss_sum / batches
        run.check_finite(train_loss, f"epoch {epoch + 1}")
        acc, ci = meta_validate(learner, run, val, val_episodes)
        step = (epoch + 1) * batches
        # Hard tasks count: they cost an encoder forward and backward like any other task.
        tasks_per_s = batches * (m.meta_batch + ht.enabled * ht.per_batch) / max(elapsed[0], 1e-9)
        run.monitor.scalars(
            step,
            **{
                "train/query_loss": train_loss,
                "train/query_acc": acc_sum / batches,
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
        improved = keep(epoch + 1, acc, ci)
        if hard is not None:
            hard.log_epoch(run.monitor, step, train.class_names)
        hard_note = f"  hard-acc {float(hard_acc_sum) / batches:.1%}" if hard is not None else ""
        run.monitor.line(
            f"epoch {epoch + 1}/{m.epochs}  query-loss {float(train_loss):.3f}  "
            f"query-acc {float(acc_sum) / batches:.1%}{hard_note}  val {acc:.2f} ± {ci:.2f}%"
            f"{'  (best)' if improved else ''}  {tasks_per_s:.1f} tasks/s"
        )
    run.monitor.close()
    return best
