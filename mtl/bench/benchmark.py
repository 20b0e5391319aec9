"""``mtl bench``: mtl's fast paths against the per-episode / per-task structure of the official code.

Everything runs in one process on one device, on glyphs images rendered in memory and a randomly
initialised ResNet-12 with SS (speed does not depend on the weights; equality checks do not either):

1. meta-test episodes/s: cached features + batched closed-form inner loops (what metatest runs,
   feature extraction included) vs :func:`mtl.bench.reference.episode_accuracy` per episode;
2. meta-train tasks/s: :func:`mtl.methods.meta_update` of MTL on a whole meta-batch vs
   :func:`mtl.bench.reference.meta_loss` per task, both second order, both with the Adam step;
3. pretrain images/s: :func:`mtl.stages.pretrain.train_step` fed by the stage's uint8 gather and
   batched augmentation vs a fixed batch; 4. peak memory; 5. meta-train scaling (steps, way × shot);
6. the methods that adapt per task or run a sequence per task (MAML, Meta-LSTM, TADAM, MANN): their
   meta-update batched over a meta-batch vs a plain per-task loop of the same maths (:data:`METHOD_ROWS`).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtl.bench import reference
from mtl.bench.floors import bench_floors, bench_paper_protocol, encode_fn
from mtl.bench.maml import bench_maml
from mtl.bench.mann import bench_mann
from mtl.bench.meta_lstm import bench_meta_lstm
from mtl.bench.table import bench_table
from mtl.bench.tadam import bench_tadam
from mtl.config import Config, MetaConfig
from mtl.data.augment import Preprocess, TrainAugment
from mtl.data.episodes import EpisodeSampler, fixed_episodes
from mtl.data.glyphs.dataset import render_class
from mtl.methods import meta_update
from mtl.methods.episodic import extract_features, finetune_theta
from mtl.methods.mtl import MTL, MTLSettings
from mtl.models import ss
from mtl.models.backbone import build_backbone
from mtl.runtime import atomic, outputs
from mtl.runtime import device as devices
from mtl.runtime.timing import PeakMemory, timed
from mtl.stages.pretrain import train_step

__all__ = ["FULL", "METHOD_ROWS", "QUICK", "Setup", "run_bench"]

# bench.json key -> (the row's label, what its network and loop are, the measurement): each returns the
# keys of :func:`mtl.bench.maml.bench_maml`, its ``speedup`` also at ``<key>_speedup``.
METHOD_ROWS: dict[str, tuple[str, str, Callable[..., dict]]] = {
    "maml": ("MAML", "Conv-4, {inner_steps} steps, second order", bench_maml),
    "meta_lstm": ("Meta-LSTM", "Conv-4, {inner_steps} LSTM-learner steps", bench_meta_lstm),
    "tadam": ("TADAM", "ResNet-12 with FiLM, no inner steps", bench_tadam),
    "mann": ("MANN", "pixels, {inner_steps} recurrent steps", bench_mann),
}


@dataclass(frozen=True)
class Setup:
    widths: tuple[int, ...]
    image_size: int
    classes: int  # rendered classes; each split below uses all of them
    images_per_class: int
    test_episodes: int  # episodes of the fast meta-test path (the reference runs ref_episodes of them)
    ref_episodes: int
    meta_batch: int
    min_seconds: float  # each timed path repeats until it has run this long
    pretrain_batch: int
    way: int = 5
    shot: int = 1
    query: int = 15
    inner_steps: int = 100
    inner_lr: float = 0.01
    precision: str = "auto"  # mtl's encoder (the references run in fp32)


# ablation-sized evaluation (2,000 episodes), the paper's inner loop, a 4-task meta-batch
QUICK = Setup((16, 32, 64, 128), 32, 20, 60, 2000, 40, 4, 2.0, 128)
FULL = Setup((64, 160, 320, 640), 84, 20, 120, 2000, 100, 4, 10.0, 128)
BENCH_JSON = outputs.starts_with("a benchmark JSON (mtl bench)", b'{\n  "mode": ')  # what --out replaces


def _images(s: Setup) -> tuple[np.ndarray, np.ndarray]:
    images = np.concatenate(
        [
            render_class(c, s.images_per_class, image_size=s.image_size, channels=3, preset="hard", seed=0)
            for c in range(s.classes)
        ]
    )
    return images, np.repeat(np.arange(s.classes), s.images_per_class)


def _encoder(s: Setup, device: torch.device) -> nn.Module:
    """The same random ResNet-12 every call."""
    torch.manual_seed(0)
    model = build_backbone("resnet12", widths=list(s.widths))
    return model.to(device, memory_format=devices.memory_format())


def _plain_encoder(s: Setup, device: torch.device) -> nn.Module:
    """The reference's network: :func:`_encoder`'s weights, written plainly."""
    torch.manual_seed(0)
    return reference.plain_ss_encoder(build_backbone("resnet12", widths=list(s.widths)).to(device))


def bench_metatest(s: Setup, images: np.ndarray, labels: np.ndarray, dev: torch.device) -> dict:
    pre = Preprocess(s.image_size, 3, memory_format=devices.memory_format())
    encoder = ss.attach(_encoder(s, dev)).eval()
    plain_encode = reference.plain_encode(_plain_encoder(s, dev), s.image_size)
    episodes = torch.from_numpy(fixed_episodes(labels, s.way, s.shot, s.query, s.test_episodes, seed=0))
    W0, b0 = torch.zeros(s.way, encoder.num_features, device=dev), torch.zeros(s.way, device=dev)
    on_device = torch.from_numpy(images).to(dev)
    out: dict = {}

    def fast(precision: str = s.precision) -> None:
        feats = extract_features(encode_fn(encoder, pre, dev, precision), images, batch_size=256, device=dev)
        idx, steps, lr = episodes.to(dev), s.inner_steps, s.inner_lr
        out[precision] = finetune_theta(feats, idx, s.shot, W0, b0, steps=steps, lr=lr)

    def slow() -> None:
        out["ref"] = torch.stack(
            [
                reference.episode_accuracy(
                    plain_encode, on_device, ep.to(dev), s.shot, W0, b0, steps=s.inner_steps, lr=s.inner_lr
                )
                for ep in episodes[: s.ref_episodes]
            ]
        )

    with PeakMemory(dev) as mem_fast:
        t_fast, n_fast = timed(fast, dev, s.min_seconds)
    with PeakMemory(dev) as mem_ref:
        t_ref, n_ref = timed(slow, dev, s.min_seconds)
    fast("fp32")  # the same maths as the reference, for the equality check
    k = s.ref_episodes
    fp32, auto, ref = out["fp32"][:k].cpu(), out[s.precision][:k].cpu(), out["ref"].cpu()
    fast_eps, ref_eps = n_fast * s.test_episodes / t_fast, n_ref * k / t_ref
    return {
        "fast_episodes_per_s": fast_eps,
        "reference_episodes_per_s": ref_eps,
        "speedup": fast_eps / ref_eps,
        "fast_peak_mb": mem_fast.mb,
        "reference_peak_mb": mem_ref.mb,
        "episodes_compared": k,
        "accuracy_reference": float(ref.mean() * 100),
        "accuracy_fast_fp32": float(fp32.mean() * 100),
        "identical_accuracies_fp32": bool(torch.equal(fp32, ref)),
        "accuracy_fast": float(auto.mean() * 100),
        "episodes_equal_fast": int((auto == ref).sum()),
    }


def bench_metatrain(s: Setup, images: np.ndarray, labels: np.ndarray, dev: torch.device) -> dict:
    """Tasks/s of meta_update in fp32 and in the default precision, and of the reference (fp32)."""
    m = MetaConfig(way=s.way, shot=s.shot, query=s.query)
    inner = MTLSettings(inner_steps=s.inner_steps, inner_lr=s.inner_lr)
    pre = Preprocess(s.image_size, 3, memory_format=devices.memory_format())
    on_device = torch.from_numpy(images).to(dev)
    sampler = EpisodeSampler(labels, s.way, s.shot, s.query, seed=0)
    tasks = np.stack([sampler.sample() for _ in range(s.meta_batch)])
    result: dict = {}

    def measure(name: str, step: Callable[[], torch.Tensor]) -> None:
        first: list[torch.Tensor] = []
        with PeakMemory(dev) as mem:
            seconds, calls = timed(lambda: first.append(step()) if not first else step(), dev, s.min_seconds)
        result[name] = {
            "tasks_per_s": calls * s.meta_batch / seconds,
            "peak_mb": mem.mb,
            "loss": float(first[0]),
        }

    bf16 = devices.encoder_precision(dev, s.precision) == "bf16"
    for precision in ("fp32", s.precision) if bf16 else ("fp32",):
        cfg = Config(meta=m, precision=precision, sections={"mtl": inner})
        learner = MTL(_encoder(s, dev), cfg).to(dev).train()
        opt = torch.optim.Adam(learner.param_groups())
        measure(
            precision, lambda learner=learner, opt=opt: meta_update(learner, opt, on_device, tasks, pre)[0]
        )

    ref_encoder = _plain_encoder(s, dev)
    ref_encode = reference.plain_encode(ref_encoder, s.image_size)
    W = nn.Parameter(torch.zeros(s.way, ref_encoder.num_features, device=dev))
    b = nn.Parameter(torch.zeros(s.way, device=dev))
    ref_opt = torch.optim.Adam(
        [
            {"params": list(ss.parameters(ref_encoder)), "lr": inner.lr_ss},
            {"params": [W, b], "lr": inner.lr_theta},
        ]
    )
    idx = torch.from_numpy(tasks).to(dev)

    def slow() -> torch.Tensor:
        loss = reference.meta_loss(
            ref_encode, on_device, idx, s.shot, W, b, steps=s.inner_steps, lr=s.inner_lr
        )
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        ref_opt.step()
        return loss.detach()

    measure("reference", slow)
    fast = result.get(s.precision, result["fp32"])
    return {
        "fast_tasks_per_s": fast["tasks_per_s"],
        "fast_fp32_tasks_per_s": result["fp32"]["tasks_per_s"],
        "reference_tasks_per_s": result["reference"]["tasks_per_s"],
        "speedup": fast["tasks_per_s"] / result["reference"]["tasks_per_s"],
        "speedup_fp32": result["fp32"]["tasks_per_s"] / result["reference"]["tasks_per_s"],
        "fast_peak_mb": fast["peak_mb"],
        "reference_peak_mb": result["reference"]["peak_mb"],
        "first_step_loss_fast": fast["loss"],
        "first_step_loss_fast_fp32": result["fp32"]["loss"],
        "first_step_loss_reference": result["reference"]["loss"],
    }


def bench_pretrain(s: Setup, images: np.ndarray, labels: np.ndarray, dev: torch.device) -> dict:
    pre = Preprocess(s.image_size, 3, memory_format=devices.memory_format())
    augment = TrainAugment(pre, (0.6, 1.0), True, torch.Generator().manual_seed(0))
    on_device, y_all = torch.from_numpy(images).to(dev), torch.from_numpy(labels).to(dev)
    gen = torch.Generator().manual_seed(0)
    x_fixed = torch.randn(s.pretrain_batch, 3, s.image_size, s.image_size, device=dev)
    x_fixed = x_fixed.contiguous(memory_format=devices.memory_format())
    y_fixed = torch.randint(0, s.classes, (s.pretrain_batch,), device=dev)

    def parts() -> tuple[nn.Module, torch.optim.Optimizer]:
        model = _encoder(s, dev).train()
        net = nn.Sequential(model, nn.Linear(model.num_features, s.classes).to(dev))
        return net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    pipe, bare = parts(), parts()

    def pipeline() -> None:
        idx = torch.randperm(len(images), generator=gen)[: s.pretrain_batch].to(dev)
        train_step(*pipe, augment(on_device[idx]), y_all[idx], precision=s.precision)

    def synthetic() -> None:
        train_step(*bare, x_fixed, y_fixed, precision=s.precision)

    # Both paths warm up first (the first steps of a new shape pay for kernel selection and the
    # allocator), then run in interleaved rounds, so that a slow spell of a shared machine hits both.
    for step in (pipeline, synthetic):
        timed(step, dev, s.min_seconds / 4)
    t = {"pipeline": 0.0, "bare": 0.0}
    n = {"pipeline": 0, "bare": 0}
    mem = {}
    for _ in range(3):
        for name, step in (("pipeline", pipeline), ("bare", synthetic)):
            with PeakMemory(dev) as peak:
                dt, calls = timed(step, dev, s.min_seconds / 3)
            t[name], n[name] = t[name] + dt, n[name] + calls
            mem[name] = max(mem.get(name, 0.0), peak.mb)
    ips = {k: n[k] * s.pretrain_batch / t[k] for k in t}
    return {
        "pipeline_images_per_s": ips["pipeline"],
        "bare_images_per_s": ips["bare"],
        "efficiency": ips["pipeline"] / ips["bare"],
        "pipeline_peak_mb": mem["pipeline"],
        "bare_peak_mb": mem["bare"],
    }


def bench_scaling(s: Setup, images: np.ndarray, labels: np.ndarray, dev: torch.device) -> list[dict]:
    """meta-train against inner steps (5-way 1-shot) and against way x shot (100 steps)."""
    rows = []
    quick = replace(s, min_seconds=s.min_seconds / 2)
    for steps, way, shot in ((10, 5, 1), (50, 5, 1), (100, 5, 1), (100, 5, 5), (100, 10, 5)):
        r = bench_metatrain(replace(quick, inner_steps=steps, way=way, shot=shot), images, labels, dev)
        rows.append({"inner_steps": steps, "way": way, "shot": shot, **r})
    return rows


def run_bench(
    *, quick: bool, device: str = "auto", out: str | Path = "bench.json", setup: Setup | None = None
) -> dict:
    """Run every measurement, print the table, write ``out`` (JSON); returns what was written.

    ``setup`` replaces the QUICK / FULL sizes (tests use a tiny one; its ``precision`` is mtl's).
    """
    s = setup or (QUICK if quick else FULL)
    out = outputs.check_file("--out", Path(out).expanduser(), BENCH_JSON, example="bench.json")
    dev = devices.resolve(device)
    started = time.perf_counter()
    images, labels = _images(s)
    result = {
        "mode": "quick" if quick else "full",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "precision": devices.encoder_precision(dev, s.precision),
        "torch": torch.__version__,
        "setup": asdict(s),
        "metatest": bench_metatest(s, images, labels, dev),
        "metatrain": bench_metatrain(s, images, labels, dev),
        "pretrain": bench_pretrain(s, images, labels, dev),
        "scaling": bench_scaling(s, images, labels, dev),
        **{
            key: {**bench(s, images, labels, dev), "label": label, "what": what}
            for key, (label, what, bench) in METHOD_ROWS.items()
        },
        "floors": bench_floors(s, images, labels, dev, _encoder),
        "paper_protocol": bench_paper_protocol(s, dev, quick, _images, _encoder, _plain_encoder),
    }
    result["metatest_speedup"] = result["metatest"]["speedup"]
    result["metatrain_speedup"] = result["metatrain"]["speedup"]
    result["pretrain_efficiency"] = result["pretrain"]["efficiency"]
    result.update({f"{key}_speedup": result[key]["speedup"] for key in METHOD_ROWS})
    result["metatrain_efficiency"] = result["floors"]["metatrain"]["efficiency"]
    result["metatest_efficiency"] = result["paper_protocol"]["efficiency"]
    result["metatest_speedup_paper_protocol"] = result["paper_protocol"]["speedup"]
    result["seconds"] = time.perf_counter() - started
    atomic.write_text(out, json.dumps(result, indent=2) + "\n")
    print("\n".join(bench_table(result)))
    return result
