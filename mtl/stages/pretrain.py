"""Stage 1: many-shot pretraining of the feature extractor Θ on all base (train-split) classes.

SGD with Nesterov momentum and weight decay, a step or cosine LR schedule, batched on-device
augmentation. After every epoch the encoder is scored by few-shot nearest-centroid accuracy on fixed
validation episodes (features computed once per epoch), and ``best.pt`` keeps the best encoder — the
few-shot validation curve users of the official code asked for.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mtl import checkpoint
from mtl import device as devices
from mtl.config import Config
from mtl.data.augment import TrainAugment
from mtl.data.sources import load_splits
from mtl.distributed import sync_batch_norm
from mtl.errors import MtlError
from mtl.evaluate import mean_ci, nearest_centroid
from mtl.monitor import timer
from mtl.stages import resume
from mtl.stages.run import Run


def _scheduler(cfg: Config, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    p = cfg.pretrain
    if p.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.epochs)
    return torch.optim.lr_scheduler.StepLR(opt, step_size=p.step_size, gamma=p.gamma)


def _setting(config: dict) -> tuple:
    """What a pretrain's result depends on; pipelines equal here can share one pretrain run."""
    p = {k: v for k, v in config["pretrain"].items() if k != "name"}
    shot = p["val_shot"] or config["meta"]["shot"]
    return (
        config["seed"],
        config["data"],
        config["backbone"],
        p,
        config["meta"]["way"],
        shot,
        config["test"]["query"],
    )


def _matters(cfg: Config):
    """The config keys a pretrain reads (its resume refuses a last.pt that differs in one of them)."""
    keys = ("seed", "precision", "data.", "backbone.", "pretrain.", "meta.way", "test.query")
    keys += ("meta.shot",) if cfg.pretrain.val_shot is None else ()
    return lambda key: key.startswith(keys) and key != "pretrain.name"


def finished(run: Run) -> dict | None:
    """The kept metric of a finished pretrain of the same setting in this run folder, else None."""
    try:
        last = checkpoint.load(run.out / "last.pt", stage="pretrain")
        done = last["metric"]["epoch"] == run.cfg.pretrain.epochs
        if done and _setting(last["config"]) == _setting(run.cfg.to_dict()):
            return checkpoint.load(run.out / "best.pt", stage="pretrain")["metric"]
    except (MtlError, KeyError, TypeError):
        pass  # no, unreadable or foreign checkpoint: train
    return None


def classifier(features: int, classes: int, hidden: int = 0) -> nn.Module:
    """Pretraining's head on ``(B, features)``: linear, or with ``hidden`` units the official PyTorch
    code's ``Linear(features, hidden) -> ReLU -> Linear(hidden, classes)``. Thrown away after pretraining."""
    if hidden == 0:
        return nn.Linear(features, classes)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, classes))


def train_step(
    model: nn.Module,
    head: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    label_smoothing: float = 0.0,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step of many-shot classification on a model-ready batch.

    x: ``(B, C, S, S)`` float; y: ``(B,)`` class ids. Returns the loss and the number of correct
    predictions as device tensors (no host sync).
    """
    with devices.autocast(x.device, precision):
        out = head(model(x)).float()
    loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), (out.argmax(1) == y).sum()


def pretrain(
    cfg: Config, checkpoints: str | Path = "checkpoints", *, quiet: bool = False, fresh: bool = False
) -> dict:
    """Run pretraining; returns ``{"val_acc", "val_ci95", "epoch"}`` of the kept (best) encoder.

    A finished pretrain of the same setting in the run folder (e.g. shared by a dataset's 1- and 5-shot
    pipelines through ``pretrain.name``) is reused, not repeated. An unfinished one of the same config
    is resumed from its ``last.pt`` exactly where it stopped; ``fresh`` starts over instead.
    """
    run = Run.open(cfg, "pretrain", checkpoints, quiet=quiet)
    if not fresh and (done := finished(run)) is not None:
        run.monitor.line(
            f"reusing the finished pretrain in {run.out} (same settings; kept epoch {done['epoch']}, "
            f"val {done['val_acc']:.2f} ± {done['val_ci95']:.2f}%); use --fresh to train again"
        )
        run.monitor.close()
        return done
    p, m, dev = cfg.pretrain, cfg.meta, run.device
    shot = p.val_shot or m.shot
    splits = load_splits(cfg.data, ("train", "val"))
    train, val = splits["train"], splits["val"]
    val_images, val_episodes = run.eval_episodes(val, "val", p.val_episodes, shot=shot, seed=cfg.seed + 1)

    world = run.world
    model = sync_batch_norm(run.backbone(pretraining=True), dev).to(
        dev, memory_format=devices.memory_format(dev)
    )
    head = classifier(model.num_features, train.num_classes, p.head_hidden).to(dev)
    devices.maybe_compile(model, cfg.compile)
    net = nn.Sequential(model, head)
    if world.active:  # gradients averaged over the ranks' slices of every global batch
        ids = [torch.cuda.current_device()] if dev.type == "cuda" else None  # this rank's GPU
        net = DistributedDataParallel(net, device_ids=ids)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(
        params, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov, weight_decay=p.weight_decay
    )
    sched = _scheduler(cfg, opt)

    # The whole train split lives on the device as uint8: batches are gathered by index, never by a loader.
    images = run.to_device(train.images)
    labels = torch.from_numpy(train.labels).to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)
    augment = (
        TrainAugment(run.pre, p.augment.crop_scale, p.augment.flip, gen) if p.augment.enabled else run.pre
    )
    batch = min(p.batch_size, len(train))
    steps = len(train) // batch
    if batch % world.size:
        raise MtlError(f"pretrain.batch_size={batch} must be divisible by the {world.size} processes")
    run.monitor.line(
        f"{train.num_classes} classes, {len(train)} images, {steps} steps/epoch of {batch}, device {dev.type}"
    )

    best = {"val_acc": -1.0, "val_ci95": 0.0, "epoch": -1}
    metric = dict(best)
    start_epoch, start_step, perm = 0, 0, None
    sums = torch.zeros(2, device=dev)  # loss sum, correct predictions of the epoch so far
    generators = {"batches": gen}
    resumed = resume.load_resume(
        run.out, "pretrain", cfg.to_dict(), fresh=fresh, note=run.monitor.line, matters=_matters(cfg)
    )
    if resumed is not None:
        r = resumed["resume"]
        model.load_state_dict(resumed["encoder"])
        head.load_state_dict(resumed["head"])
        resume.restore_training(r, opt, sched, generators, run=run, epochs=p.epochs, steps_per_epoch=steps)
        best, metric, start_epoch, start_step = r["best"], resumed["metric"], r["epoch"], r["step"]
        perm, sums = r["perm"].cpu(), r["sums"].to(dev)
    watch = resume.FiniteWatch(dev)

    def weights() -> dict:
        """What best.pt and last.pt both hold: the network and the metric of the last epoch."""
        return {
            "encoder": model.state_dict(),
            "head": head.state_dict(),
            "class_names": train.class_names,
            "metric": metric,
        }

    def save_last(epoch: int, step: int) -> None:
        """``last.pt`` with everything needed to continue after ``step`` steps of ``epoch``."""
        watch.check("pretrain", steps, run.out, world)
        share = world.sum(sums) / world.size  # each rank's share of the epoch's sums
        position = {"epoch": epoch, "step": step, "perm": perm, "best": best, "sums": share}
        state = {**weights(), "resume": resume.training_state(opt, sched, generators, **position)}
        run.save("last.pt", state, keep_previous=True)

    every, identity = cfg.checkpoint_every, nn.Identity()
    with resume.graceful_stop() as stop:
        for epoch in range(start_epoch, p.epochs):
            model.train()
            head.train()
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                perm = torch.randperm(len(train), generator=gen)  # host: gathering takes host ids
                sums = torch.zeros(2, device=dev)
            with timer() as elapsed:
                for i in run.monitor.progress(
                    range(first, steps), length=steps - first, label=f"pretrain {epoch + 1}/{p.epochs}"
                ):
                    idx = perm[i * batch : (i + 1) * batch]
                    # Every rank augments the whole global batch (the same random draws), then
                    # trains on its slice: together they compute one process's step.
                    x, y = augment(images[idx]), labels[idx.to(dev, non_blocking=True)]
                    x, y = x[world.slice(batch)], y[world.slice(batch)]
                    loss, hits = train_step(net, identity, opt, x, y, p.label_smoothing, cfg.precision)
                    watch.update(loss, epoch * steps + i)
                    sums += torch.stack([loss, hits.to(loss.dtype)])
                    boundary = bool(every) and (epoch * steps + i + 1) % every == 0
                    if i + 1 < steps and (boundary or (stop["signum"] and not world.active)):
                        save_last(epoch, i + 1)
                        if signum := resume.agreed_signal(stop, world, dev):
                            raise resume.Stopped.at("pretrain", epoch, i + 1, run.out, signum)
            lr = opt.param_groups[0]["lr"]
            sched.step()
            watch.check("pretrain", steps, run.out, world)
            total = world.sum(sums)
            train_loss, correct = total[0] / (steps * world.size), total[1]
            if epoch == 0:
                run.monitor.images("train/batch", images[perm[:32]], 0)

            feats = run.features(model, val_images)
            acc, ci = mean_ci(nearest_centroid(feats, val_episodes, shot))
            step = (epoch + 1) * steps
            run.monitor.scalars(
                step,
                **{
                    "train/loss": train_loss,
                    "train/acc": correct / (steps * batch),
                    "train/lr": lr,
                    "train/images_per_s": (steps - first) * batch / max(elapsed[0], 1e-9),
                    "val/acc": acc,
                    "val/ci95": ci,
                },
            )
            metric = {"val_acc": acc, "val_ci95": ci, "epoch": epoch + 1}
            improved = acc > best["val_acc"]
            if improved:
                best = dict(metric)
                run.save("best.pt", weights())
            save_last(epoch + 1, 0)
            run.monitor.line(
                f"epoch {epoch + 1}/{p.epochs}  loss {float(train_loss):.3f}  "
                f"train-acc {float(correct) / (steps * batch):.1%}  "
                f"val {m.way}-way {shot}-shot {acc:.2f} ± {ci:.2f}%{'  (best)' if improved else ''}  "
                f"{(steps - first) * batch / max(elapsed[0], 1e-9):.0f} img/s"
            )
            if (signum := resume.agreed_signal(stop, world, dev)) and epoch + 1 < p.epochs:
                raise resume.Stopped.at("pretrain", epoch + 1, 0, run.out, signum)
    run.monitor.close()
    return best
