"""What every stage sets up the same way: device, seeds, output folder, saved config, monitor, features."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtl import atomic, checkpoint, distributed
from mtl import device as devices
from mtl.config import Config
from mtl.data.augment import Preprocess
from mtl.data.episodes import ImageRows, check_episode_shape, episode_images, fixed_episodes
from mtl.data.prepared import Split
from mtl.data.store import ImageStore
from mtl.distributed import World
from mtl.errors import MtlError
from mtl.evaluate import extract_features
from mtl.models.backbone import build_backbone
from mtl.monitor import Monitor, show_bars
from mtl.training.keys import MODEL_KEYS


@dataclass
class Run:
    """One stage's run: resolved config, device, output folder, TensorBoard and console monitor."""

    cfg: Config
    stage: str
    checkpoints: Path
    out: Path
    device: torch.device
    monitor: Monitor
    pre: Preprocess
    world: World

    @classmethod
    def open(
        cls,
        cfg: Config,
        stage: str,
        checkpoints: str | Path,
        *,
        quiet: bool = False,
        folder: str | None = None,
    ) -> Run:
        """``folder`` (default: the stage's name) is where outputs go, under ``<checkpoints>/<name>/``."""
        checkpoints = Path(checkpoints).expanduser()
        world = distributed.world(cfg.device)
        device = devices.resolve(cfg.device)
        devices.seed_everything(cfg.seed)
        folder = folder or stage
        out = checkpoint.stage_dir(checkpoints, cfg.run_name(stage), folder)
        _check_writable(out)
        log_dir = checkpoints / cfg.run_name(stage) / "tb" / folder
        monitor = Monitor(log_dir, folder, quiet=quiet, enabled=world.main)
        show_bars(not quiet and world.main)
        d = cfg.data
        pre = Preprocess(d.image_size, d.channels, d.mean, d.std, devices.memory_format(), d.resize)
        return cls(cfg, stage, checkpoints, out, device, monitor, pre, world)

    def previous(self, stage: str) -> dict:
        """The ``best.pt`` of an earlier stage of this pipeline, checked against this config."""
        path = checkpoint.stage_dir(self.checkpoints, self.cfg.run_name(stage), stage) / "best.pt"
        ckpt = checkpoint.load(path, stage=stage)
        checkpoint.check_compatible(ckpt, self.cfg.to_dict(), path, MODEL_KEYS)
        return ckpt

    def backbone(self, *, pretraining: bool = False, cfg: Config | None = None) -> nn.Module:
        """The feature extractor of ``cfg`` (default: the run's), freshly initialised; with its
        dropout only if ``pretraining``."""
        cfg = cfg or self.cfg
        b = cfg.backbone
        return build_backbone(
            b.name,
            in_chans=cfg.data.channels,
            widths=b.widths,
            drop_rate=b.drop_rate,
            pretraining=pretraining,
            image_size=cfg.data.image_size,
        )

    def features(self, model: nn.Module, images: np.ndarray) -> torch.Tensor:
        """``(N, H, W, C)`` uint8 -> ``(N, D)`` float32 features on the device; no grad, eval mode."""
        was_training = model.training
        model.eval().to(memory_format=devices.memory_format())

        def encode(batch: torch.Tensor) -> torch.Tensor:
            with devices.autocast(self.device, self.cfg.precision):
                return model(self.pre(batch)).float()

        try:
            return extract_features(encode, images, batch_size=self.cfg.test.batch_size, device=self.device)
        finally:
            model.train(was_training)

    def eval_episodes(
        self, split: Split, name: str, count: int, *, shot: int, seed: int
    ) -> tuple[ImageRows, torch.Tensor]:
        """``count`` fixed ``meta.way``-way ``shot``-shot episodes of ``split`` with ``test.query``
        queries per class, as ``(count, way, shot + query)`` ids on the device into the images they use
        (returned too, for :meth:`features`)."""
        way, query = self.cfg.meta.way, self.cfg.test.query
        check_episode_shape(split.labels, way, shot, query, split=name, class_names=split.class_names)
        episodes = fixed_episodes(split.labels, way, shot, query, count, seed=seed)
        images, local = episode_images(split.images, episodes)
        return images, torch.from_numpy(local).to(self.device)

    def to_device(self, images: np.ndarray) -> ImageStore:
        """A whole split where batches are gathered by index (on the device when it fits)."""
        store = ImageStore(images, self.device)
        if store.where == "host":
            self.monitor.line(f"{store.data.numel() / 2**30:.1f} GB of images kept in host memory")
        return store

    def save_config(self) -> None:
        """Write the resolved config beside the outputs; done with the first output, so a run that
        fails its checks leaves an earlier run's files as they were. Only rank 0 writes."""
        if not self.world.main:
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MtlError(f"cannot write to {self.out}: {exc.strerror or exc}") from None
        atomic.write_text(self.out / "config.yaml", self.cfg.to_yaml())

    def write_text(self, name: str, text: str) -> None:
        """Write ``text`` to ``name`` in the output folder, atomically. Only rank 0 writes."""
        if self.world.main:
            self.save_config()
            atomic.write_text(self.out / name, text)

    def save(self, name: str, payload: dict, *, keep_previous: bool = False) -> None:
        if not self.world.main:
            return
        self.save_config()
        payload = {"stage": self.stage, "config": self.cfg.to_dict(), **payload}
        checkpoint.save(self.out / name, payload, keep_previous=keep_previous)


def _check_writable(out: Path) -> None:
    """Fail before any work if ``out`` cannot be made, without making it yet: a command that fails
    later (a missing checkpoint, a bad dataset) leaves no empty folders behind."""
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise MtlError(f"cannot write to {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MtlError(f"cannot write to {out}: {existing} is not writable")
