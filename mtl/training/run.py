"""What every stage sets up the same way: device, seeds, output folder, saved config, monitor, features."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtl.config import Config
from mtl.data.augment import Preprocess
from mtl.data.episodes import ImageRows, check_episode_shape, episode_images, fixed_episodes
from mtl.data.prepared import Split
from mtl.data.store import ImageStore
from mtl.errors import MtlError
from mtl.methods.episodic import extract_features
from mtl.models.backbone import backbone_for
from mtl.runtime import atomic, checkpoint, distributed, run_lock
from mtl.runtime import device as devices
from mtl.runtime.distributed import World
from mtl.runtime.monitor import Monitor
from mtl.runtime.progress import show_progress
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
    lock: run_lock.RunLock | None = None
    # Whether the folder's best.pt is this training's: set on resume (resume.settle_best) and by the first
    # save of best.pt. Until then it is an earlier training's, maybe of days, that a new run's first epoch
    # must not silently replace.
    own_best: bool = False

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
        """``folder`` (default: the stage's name) is where outputs go, under ``<checkpoints>/<name>/``.

        Before any work the folder is locked for this process (:mod:`mtl.runtime.run_lock`; a second run into
        it stops with one line) and the TensorBoard folder is checked. :meth:`close` (or ``with``)
        releases the folder.
        """
        checkpoints = Path(checkpoints).expanduser()
        world = distributed.world(cfg.device)
        device = devices.resolve(cfg.device)
        folder = folder or stage
        out = checkpoint.stage_dir(checkpoints, cfg.run_name(stage), folder)
        log_dir = checkpoints / cfg.run_name(stage) / "tb" / folder
        monitor = Monitor(log_dir, folder, quiet=quiet, enabled=world.main)
        lock = take_folder(out, world)
        try:
            monitor.check()
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if lock is not None and lock.stale is not None:
            monitor.line(f"took over {lock.path} from process {lock.stale}, which ended without releasing it")
        devices.seed_everything(cfg.seed)
        show_progress(not quiet and world.main)
        d = cfg.data
        pre = Preprocess.for_data(d)
        return cls(cfg, stage, checkpoints, out, device, monitor, pre, world, lock)

    def close(self) -> None:
        """Close the TensorBoard stream and release the run folder (once; later calls do nothing)."""
        try:
            self.monitor.close()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def previous_path(self, stage: str, cfg: Config | None = None) -> Path:
        """Where the ``best.pt`` of an earlier stage of this pipeline (or of ``cfg``'s) is."""
        cfg = cfg or self.cfg
        return checkpoint.stage_dir(self.checkpoints, cfg.run_name(stage), stage) / "best.pt"

    def previous(self, stage: str, cfg: Config | None = None) -> dict:
        """The ``best.pt`` of an earlier stage of this pipeline (or of ``cfg``'s: a row of compare
        on a pretraining seed of its own), checked against that config."""
        cfg = cfg or self.cfg
        path = self.previous_path(stage, cfg)
        ckpt = checkpoint.load(path, stage=stage)
        checkpoint.check_compatible(ckpt, cfg.to_dict(), path, MODEL_KEYS)
        return ckpt

    def load_pretrained(
        self, encoder: nn.Module, ckpt: dict | None = None, cfg: Config | None = None
    ) -> None:
        """Load the pretrain ``best.pt``'s encoder (``ckpt``, if already loaded; of ``cfg``'s pretrain
        run, default the run's) into ``encoder``; a checkpoint whose tensors do not fit is one line
        naming the first keys that differ."""
        ckpt = ckpt if ckpt is not None else self.previous("pretrain", cfg)
        with checkpoint.fitting(self.previous_path("pretrain", cfg)):
            checkpoint.load_weights(encoder, ckpt["encoder"], "encoder")

    def backbone(self, *, pretraining: bool = False, cfg: Config | None = None) -> nn.Module:
        """The feature extractor of ``cfg`` (default: the run's), freshly initialised; with its
        dropout only if ``pretraining``."""
        return backbone_for(cfg or self.cfg, pretraining=pretraining)

    def features(self, model: nn.Module, images: np.ndarray) -> torch.Tensor:
        """``(N, H, W, C)`` uint8 -> ``(N, D)`` float32 features on the device; no grad, eval mode."""
        was_training = model.training
        model.eval().to(memory_format=devices.memory_format())

        def encode(batch: torch.Tensor) -> torch.Tensor:
            return devices.encode(model, self.pre(batch), self.cfg.precision)

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
        """Write checkpoint ``name`` atomically (rank 0 only); ``keep_previous`` keeps the file it replaces
        as ``<stem>.prev.pt``. The first ``best.pt`` of a run that started over keeps an earlier
        training's ``best.pt`` that way too (replacing an older ``best.prev.pt``)."""
        if not self.world.main:
            return
        self.save_config()
        payload = {"stage": self.stage, "config": self.cfg.to_dict(), **payload}
        if name == "best.pt":
            keep_previous = keep_previous or not self.own_best
        checkpoint.save(self.out / name, payload, keep_previous=keep_previous)
        if name == "best.pt":
            self.own_best = True


def take_folder(out: Path, world: World) -> run_lock.RunLock | None:
    """Lock the run folder ``out`` for this run, or raise one line naming the process that holds it.
    Under torchrun only rank 0 takes the lock (the ranks are one run) and every rank learns whether
    it got it, so all stop together. Every other rank then reads rank 0's lock file: each node reads
    the checkpoints rank 0 writes, so a node that does not see the folder stops the run at once."""
    lock, error, holder = None, None, None
    if world.main:
        try:
            _check_writable(out)
            lock = run_lock.acquire(out)
            holder = lock.path.read_text(encoding="ascii") if world.active else None
        except (MtlError, OSError, UnicodeDecodeError) as exc:
            if lock is not None:
                lock.release()
            error = (
                str(exc) if isinstance(exc, MtlError) else f"cannot read {out / run_lock.LOCK_NAME}: {exc}"
            )
    if world.active:
        error, holder = world.share((error, holder))
    if error is not None:
        raise MtlError(error)
    if world.active:
        try:
            world.agree(None if world.main else _sees(out / run_lock.LOCK_NAME, holder))
        except MtlError:
            if lock is not None:
                lock.release()
            raise
    return lock


def _sees(lock_file: Path, holder: str) -> str | None:
    """None if ``lock_file`` holds rank 0's ``holder`` line; else why not, in one line."""
    try:
        seen = lock_file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        seen = None
    if seen == holder:
        return None
    return (
        f"does not see {lock_file}, which rank 0 holds: every node must read and write one checkpoints "
        "folder (--checkpoints on a filesystem all nodes share)"
    )


@contextmanager
def holding(cfg: Config, checkpoints: str | Path, folder: str) -> Iterator[None]:
    """Hold ``<checkpoints>/<name>/<folder>`` for a command that runs several stages into it (ablate,
    compare), from before the first one starts until the last one ends."""
    out = checkpoint.stage_dir(Path(checkpoints).expanduser(), cfg.name, folder)
    lock = take_folder(out, distributed.world(cfg.device))
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _check_writable(out: Path) -> None:
    """Fail before any work if ``out`` cannot be made, naming the file in the way or the folder that
    is not writable. (The lock then makes it, and removes it again if the run writes nothing.)"""
    existing = out
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as exc:  # a name too long for the file system, a loop of links
        raise MtlError(f"cannot write to {out}: {exc.strerror or exc}") from None
    if not existing.is_dir():
        raise MtlError(f"cannot write to {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MtlError(f"cannot write to {out}: {existing} is not writable")
