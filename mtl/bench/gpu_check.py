"""``make gpu-check``: everything a GPU machine should measure, in one script, under 8 minutes.

On a machine with a CUDA GPU it writes ``<out>/gpu-check.json`` and ``<out>/gpu-check.log``:

1. ``tests``: the CUDA-only and CUDA-parametrised tests (``pytest -m cuda``);
2. ``bench``: ``mtl bench`` at full size (ResNet-12 64-160-320-640 at 84×84) on the GPU;
3. ``slice``: a slice of the miniImageNet 1-shot pipeline at full size on fakes in the real format
   (class folders of 84×84 JPEGs, prepared by ``mtl data prepare``): a few hundred pretrain steps,
   a few hundred meta-updates and a 600-episode metatest, each with its rate and peak GPU memory;
4. ``bf16_vs_fp32``: the same metatest in both precisions, on the same episodes;
5. ``compile_vs_eager``: meta-training tasks/s with ``compile: true`` against eager;
6. ``projected``: each paper pipeline's end-to-end wall-clock at the slice's rates.

Without a GPU it says so in one line and exits 0. :func:`run` takes the device, the sizes and the
test runner, so the logic runs anywhere (the tests run it on the CPU at a tiny size).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from mtl import config
from mtl.bench.benchmark import FULL, Setup, run_bench
from mtl.config.pipeline_file import shipped
from mtl.runtime import atomic
from mtl.training import recipe

__all__ = ["FULL_SLICE", "Slice", "main", "run"]


@dataclass(frozen=True)
class Slice:
    """The sizes of the check: fake miniImageNet and how much of each stage runs."""

    image_size: int = 84
    classes: tuple[int, int, int] = (64, 16, 20)
    images_per_class: int = 100
    pretrain_epochs: int = 4  # 6,400 images / 128 = 50 steps an epoch: 200 steps
    meta_updates: int = 200
    val_episodes: int = 100
    test_episodes: int = 600
    compile_updates: int = 30
    bench: Setup = FULL
    sets: tuple[str, ...] = ()  # further pipeline overrides (the tests shrink the network)


FULL_SLICE = Slice()


def _log(lines: list[str], message: str) -> None:
    lines.append(f"[{time.strftime('%H:%M:%S')}] {message}")
    print(lines[-1], flush=True)


def _pytest_cuda() -> dict:
    """The CUDA tests in a child process: ``{"passed", "summary", "seconds"}``."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
    )
    tail = (done.stdout + done.stderr).strip().splitlines()
    return {
        "passed": done.returncode == 0,
        "summary": tail[-1] if tail else "",
        "seconds": time.perf_counter() - started,
    }


def _fake_miniimagenet(s: Slice, source: Path) -> None:
    """``train/ val/ test/<wnid>/*.jpg`` at ``s.image_size``: glyph classes rendered as photos."""
    from PIL import Image

    from mtl.data.glyphs.dataset import render_class

    label = 0
    for split, count in zip(("train", "val", "test"), s.classes, strict=True):
        for _ in range(count):
            folder = source / split / f"n{label:08d}"
            folder.mkdir(parents=True)
            images = render_class(
                label, s.images_per_class, image_size=s.image_size, channels=3, preset="hard", seed=0
            )
            for i, img in enumerate(images):
                Image.fromarray(img).save(folder / f"n{label:08d}_{i:05d}.jpg", quality=90)
            label += 1


class _Peak:
    """Peak GPU memory (MiB) of a block; 0 on the CPU."""

    def __init__(self, dev: torch.device) -> None:
        self.dev, self.mb = dev, 0.0

    def __enter__(self) -> _Peak:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            self.mb = torch.cuda.max_memory_allocated() / 2**20


def _slice_config(s: Slice, root: Path, dev: torch.device, **sets) -> config.Config:
    overrides = [
        f"data.root={root}",
        f"device={dev.type}",
        f"pretrain.epochs={s.pretrain_epochs}",
        f"pretrain.val_episodes={s.val_episodes}",
        "meta.epochs=1",
        f"meta.updates_per_epoch={s.meta_updates}",
        f"meta.val_episodes={s.val_episodes}",
        f"test.episodes={s.test_episodes}",
        *(f"{k}={json.dumps(v)}" for k, v in sets.items()),
        *s.sets,
    ]
    return config.load(shipped()["miniimagenet-1shot"], overrides)


def _stage(fn: Callable[[], object], dev: torch.device) -> tuple[float, float, object]:
    with _Peak(dev) as peak:
        started = time.perf_counter()
        result = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - started, peak.mb, result


def _slice(s: Slice, work: Path, dev: torch.device, lines: list[str]) -> dict:
    """The pipeline slice: rates, peak memory, bf16 against fp32, compile against eager."""
    from mtl.data.prepare.preparation import prepare
    from mtl.stages.metatest import metatest
    from mtl.stages.metatrain import metatrain
    from mtl.stages.pretrain import pretrain

    _fake_miniimagenet(s, work / "source")
    prepare("miniimagenet", work / "source", work / "mini", image_size=s.image_size)
    ckpts = work / "checkpoints"
    cfg = _slice_config(s, work / "mini", dev, name="slice")
    derived = recipe.derived(cfg)
    out: dict = {"config": {"pretrain_steps": derived["pretrain_steps"], "meta_updates": s.meta_updates}}

    seconds, mb, _ = _stage(lambda: pretrain(cfg, ckpts, quiet=True), dev)
    images = derived["pretrain_steps"] * cfg.pretrain.batch_size
    out["pretrain"] = {"seconds": seconds, "images_per_s": images / seconds, "peak_mb": mb}
    _log(lines, f"pretrain: {derived['pretrain_steps']} steps in {seconds:.1f} s, peak {mb:.0f} MiB")

    tasks = s.meta_updates * derived["tasks_per_update"]["total"]
    seconds, mb, _ = _stage(lambda: metatrain(cfg, ckpts, quiet=True), dev)
    out["metatrain"] = {"seconds": seconds, "tasks_per_s": tasks / seconds, "peak_mb": mb}
    _log(lines, f"metatrain: {s.meta_updates} updates ({tasks} tasks) in {seconds:.1f} s, peak {mb:.0f} MiB")

    accuracy = {}
    for precision in ("fp32", "bf16"):
        run_cfg = replace(cfg, precision=precision)
        seconds, mb, res = _stage(lambda c=run_cfg: metatest(c, ckpts, quiet=True), dev)
        accuracy[precision] = {row["method"]: (row["acc"], row["ci95"]) for row in res["rows"]}
        out[f"metatest_{precision}"] = {
            "seconds": seconds,
            "episodes_per_s": s.test_episodes / seconds,
            "peak_mb": mb,
            "rows": res["rows"],
        }
        _log(lines, f"metatest ({precision}): {s.test_episodes} episodes in {seconds:.1f} s")
    out["bf16_vs_fp32"] = {
        method: {
            "fp32": accuracy["fp32"][method][0],
            "bf16": accuracy["bf16"][method][0],
            "difference": round(accuracy["bf16"][method][0] - accuracy["fp32"][method][0], 2),
            "within_ci": abs(accuracy["bf16"][method][0] - accuracy["fp32"][method][0])
            <= accuracy["fp32"][method][1],
        }
        for method in accuracy["fp32"]
    }
    out["compile_vs_eager"] = _compile_vs_eager(s, work, dev, ckpts, lines)
    return out


def _compile_vs_eager(s: Slice, work: Path, dev: torch.device, ckpts: Path, lines: list[str]) -> dict:
    """Meta-training tasks/s with and without ``torch.compile`` (CUDA only: on a CPU it is skipped)."""
    from mtl.stages.metatrain import metatrain

    if dev.type != "cuda":
        return {"skipped": f"compile is for CUDA; this run is on {dev.type}"}
    rates = {}
    for compiled in (False, True):
        cfg = _slice_config(
            s,
            work / "mini",
            dev,
            name=f"compile-{compiled}",
            **{"compile": compiled, "pretrain.name": "slice"},
        )
        cfg = replace(cfg, meta=replace(cfg.meta, updates_per_epoch=s.compile_updates, val_episodes=10))
        tasks = s.compile_updates * recipe.derived(cfg)["tasks_per_update"]["total"]
        seconds, _, _ = _stage(lambda c=cfg: metatrain(c, ckpts, quiet=True), dev)
        rates["compiled" if compiled else "eager"] = tasks / seconds
    _log(
        lines, f"compile: {rates['compiled']:.1f} tasks/s, eager {rates['eager']:.1f} (compilation included)"
    )
    return {**{f"{k}_tasks_per_s": v for k, v in rates.items()}, "ratio": rates["compiled"] / rates["eager"]}


def _projected(sl: dict) -> dict:
    """Each paper pipeline's wall-clock, from the slice's rates (84×84 rates: FC100's 32×32 images
    run faster than this projects)."""
    ips, tps = sl["pretrain"]["images_per_s"], sl["metatrain"]["tasks_per_s"]
    eps = sl["metatest_fp32"]["episodes_per_s"]
    out = {}
    for name, path in shipped().items():
        cfg = config.load(path)
        if cfg.data.dataset not in ("miniimagenet", "tieredimagenet", "fc100"):
            continue
        d = recipe.derived(cfg)
        if d["pretrain_steps"] is None:
            continue
        val = cfg.pretrain.epochs * cfg.pretrain.val_episodes + cfg.meta.epochs * cfg.meta.val_episodes
        seconds = (
            d["pretrain_steps"] * cfg.pretrain.batch_size / ips
            + d["meta_tasks"] / tps
            + (val + cfg.test.episodes) / eps
        )
        out[name] = {"hours": round(seconds / 3600, 2), "pretrain_shared_with": cfg.pretrain.name}
    return out


def run(
    out: str | Path,
    *,
    device: str = "cuda",
    sizes: Slice = FULL_SLICE,
    tests: Callable[[], dict] = _pytest_cuda,
) -> dict:
    """Every step of the check on ``device``; writes the JSON and the log into ``out``."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    lines: list[str] = []
    started = time.perf_counter()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    result: dict = {"device": name, "torch": torch.__version__, "sizes": asdict(sizes)}
    _log(lines, f"gpu-check on {name}")
    result["tests"] = tests()
    _log(lines, f"tests: {result['tests']['summary']}")
    bench = run_bench(quick=False, device=dev.type, out=out / "bench.json", setup=sizes.bench)
    result["bench"] = {
        k: bench[k]
        for k in ("metatest_speedup", "metatrain_speedup", "pretrain_efficiency", "maml_speedup", "precision")
    }
    _log(lines, f"bench: {json.dumps(result['bench'])}")
    work = out / "work"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    result["slice"] = _slice(sizes, work, dev, lines)
    result["projected"] = _projected(result["slice"])
    for pipeline, p in result["projected"].items():
        _log(lines, f"projected {pipeline}: {p['hours']} h")
    result["seconds"] = time.perf_counter() - started
    _log(lines, f"done in {result['seconds'] / 60:.1f} min")
    atomic.write_text(out / "gpu-check.json", json.dumps(result, indent=2, default=float) + "\n")
    atomic.write_text(out / "gpu-check.log", "\n".join(lines) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m mtl.bench.gpu_check [OUT]``: the check on the GPU, or one line and 0 without one."""
    args = sys.argv[1:] if argv is None else argv
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine; nothing to check (exit 0)")
        return 0
    run(args[0] if args else "gpu-check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
