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

from mtl.config import Config
from mtl.data.augment import TrainAugment
from mtl.data.prepared import Split
from mtl.data.sources import load_splits
from mtl.errors import MtlError
from mtl.methods.episodic import mean_ci, nearest_centroid
from mtl.runtime import checkpoint
from mtl.runtime import device as devices
from mtl.runtime.distributed import sync_batch_norm
from mtl.runtime.tb_layout import LEARNING_RATE, THROUGHPUT
from mtl.training import keys
from mtl.training.loop import Training
from mtl.training.run import Run
from mtl.training.schedule import pretrain_factor


def _scheduler(cfg: Config, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    p = cfg.pretrain
    if p.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda epochs: pretrain_factor(p, epochs))


def finished(run: Run) -> dict | None:
    """The kept metric of a finished pretrain of the same setting in this run folder, else None."""
    try:
        last = checkpoint.load(run.out / "last.pt", stage="pretrain")
        done = last["metric"]["epoch"] == run.cfg.pretrain.epochs
        if done and keys.setting(last["config"]) == keys.setting(run.cfg.to_dict()):
            metric = checkpoint.load(run.out / "best.pt", stage="pretrain")["metric"]
            f"{metric['val_acc']:.2f} {metric['val_ci95']:.2f} {metric['epoch']:d}"  # what the note shows
            return metric
    except (MtlError, KeyError, TypeError, ValueError):
        pass  # no, unreadable or foreign checkpoint: train
    return None


def pretraining_head(features: int, classes: int, hidden: int = 0) -> nn.Module:
    """Pretraining's head on ``(B, features)``: linear, or with ``hidden`` units the official PyTorch
    code's ``Linear(features, hidden) -> ReLU -> Linear(hidden, classes)``. Thrown away after pretraining."""
    if hidden == 0:
        return nn.Linear(features, classes)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, classes))


def train_step(
    model: nn.Module,
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
    out = devices.encode(model, x, precision)
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
    with Run.open(cfg, "pretrain", checkpoints, quiet=quiet) as run:
        if not fresh and (done := finished(run)) is not None:
            run.monitor.line(
                f"reusing the finished pretrain in {run.out} (same settings; kept epoch {done['epoch']}, "
                f"val {done['val_acc']:.2f} ± {done['val_ci95']:.2f}%); use --fresh to train again"
            )
            return done
        with run.world.agreeing():  # each node reads its own data: one that cannot stops them all
            splits = load_splits(cfg.data, ("train", "val"))
        training = Pretraining(run, splits)
        training.start(fresh, matters=keys.pretrain_reads(cfg.to_dict()))
        return training.fit()


class Pretraining(Training):
    """SGD on shuffled batches of the whole train split, gathered on the device by index."""

    stage = "pretrain"

    def __init__(self, run: Run, splits: dict[str, Split]) -> None:
        """``splits``: the dataset's ``train`` and ``val`` splits."""
        cfg, p, dev, world = run.cfg, run.cfg.pretrain, run.device, run.world
        self.train, val = splits["train"], splits["val"]
        self.shot = p.val_shot or cfg.meta.shot
        self.val = run.eval_episodes(val, "val", p.val_episodes, shot=self.shot, seed=cfg.seed + 1)
        self.batch = min(p.batch_size, len(self.train))
        if self.batch % world.size:
            raise MtlError(
                f"pretrain.batch_size={self.batch} must be divisible by the {world.size} processes"
            )
        super().__init__(run, epochs=p.epochs, steps=len(self.train) // self.batch)
        self.model = sync_batch_norm(run.backbone(pretraining=True), dev).to(
            dev, memory_format=devices.memory_format()
        )
        self.head = pretraining_head(self.model.num_features, self.train.num_classes, p.head_hidden).to(dev)
        devices.maybe_compile(self.model, cfg.compile)
        self.net = nn.Sequential(self.model, self.head)
        if world.active:  # gradients averaged over the ranks' slices of every global batch
            ids = [torch.cuda.current_device()] if dev.type == "cuda" else None  # this rank's GPU
            self.net = DistributedDataParallel(self.net, device_ids=ids)
        params = list(self.model.parameters()) + list(self.head.parameters())
        self.opt = torch.optim.SGD(
            params, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov, weight_decay=p.weight_decay
        )
        self.sched = _scheduler(cfg, self.opt)
        # The whole train split lives on the device as uint8: batches are gathered by index, not loaded.
        self.images = run.to_device(self.train.images)
        self.labels = torch.from_numpy(self.train.labels).to(dev)
        gen = torch.Generator().manual_seed(cfg.seed)
        aug = p.augment
        self.augment = TrainAugment(run.pre, aug.crop_scale, aug.flip, gen) if aug.enabled else run.pre
        self.generators = {"batches": gen}
        self.best["epoch"] = self.metric["epoch"] = -1
        self.perm: torch.Tensor | None = None
        self.sums = torch.zeros(2, device=dev)  # loss sum, correct predictions of the epoch so far
        run.monitor.line(
            f"{self.train.num_classes} classes, {len(self.train)} images, {self.steps} steps/epoch of "
            f"{self.batch}, device {dev.type}"
        )

    def weights(self) -> dict:
        return {
            "encoder": self.model.state_dict(),
            "head": self.head.state_dict(),
            "class_names": self.train.class_names,
        }

    def position(self) -> dict:
        return {"perm": self.perm}

    def sums_to_save(self) -> torch.Tensor:
        return self.run.world.sum(self.sums) / self.run.world.size  # each rank's share of the epoch's sums

    def restore(self, ckpt: dict) -> None:
        checkpoint.load_weights(self.model, ckpt["encoder"], "encoder")
        checkpoint.load_weights(self.head, ckpt["head"], "head")
        self.perm = ckpt["resume"]["perm"].cpu()

    def begin_epoch(self, epoch: int, fresh_epoch: bool) -> None:
        self.model.train()
        self.head.train()
        if fresh_epoch:
            self.perm = torch.randperm(len(self.train), generator=self.generators["batches"])  # host ids
            self.sums = torch.zeros(2, device=self.run.device)

    def step(self, epoch: int, i: int) -> None:
        world, batch = self.run.world, self.batch
        idx = self.perm[i * batch : (i + 1) * batch]
        # Every rank augments the whole global batch (the same random draws), then trains on its slice:
        # together they compute one process's step.
        x, y = self.augment(self.images[idx]), self.labels[idx.to(self.run.device, non_blocking=True)]
        x, y = x[world.slice(batch)], y[world.slice(batch)]
        p = self.run.cfg.pretrain
        loss, hits = train_step(self.net, self.opt, x, y, p.label_smoothing, self.run.cfg.precision)
        self.watch.update(loss, epoch * self.steps + i)
        self.sums += torch.stack([loss, hits.to(loss.dtype)])

    def status(self, steps: int) -> str:
        return f"loss {float(self.sums[0]) / max(steps, 1):.3f}"

    def curve(self, sums: torch.Tensor, steps: int) -> dict[str, float]:
        world = self.run.world
        loss, hits = world.sum(sums).tolist()  # every rank's share of the global batch
        return {"loss": loss / (steps * world.size), "train accuracy": 100 * hits / (steps * self.batch)}

    def validate(self, epoch: int) -> tuple[float, float, str]:
        run, steps = self.run, self.steps
        curve = self.curve(self.sums, steps)
        train_loss, train_acc = curve["loss"], curve["train accuracy"]
        if epoch == 0:
            run.monitor.images("train batch", self.images[self.perm[:32]], 0)
        feats = run.features(self.model, self.val[0])
        acc, ci = mean_ci(nearest_centroid(feats, self.val[1], self.shot))
        run.monitor.accuracy(
            (epoch + 1) * steps, "validation accuracy", acc, ci, chart="validation accuracy ± 95% CI (%)"
        )
        run.monitor.scalars((epoch + 1) * steps, section=LEARNING_RATE, **{"encoder + head": self.lrs["0"]})
        speed = self.done * self.batch / max(self.seconds, 1e-9)
        run.monitor.scalars((epoch + 1) * steps, section=THROUGHPUT, **{"images per s": speed})
        way = run.cfg.meta.way
        line = (
            f"epoch {epoch + 1}/{self.epochs}  loss {train_loss:.3f}  "
            f"train-acc {train_acc / 100:.1%}  "
            f"val {way}-way {self.shot}-shot {acc:.2f} ± {ci:.2f}%"
        )
        return acc, ci, line

    def speed_note(self) -> str:
        return f"  {self.done * self.batch / max(self.seconds, 1e-9):.0f} img/s"
