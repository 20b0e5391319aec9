"""Device selection and the fast paths (bf16 autocast and cuDNN autotuning on CUDA, channels_last).

The CUDA-only parts are no-ops on the CPU, so the same stage code runs in tests and on GPUs.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import numpy as np
import torch

from mtl.errors import MtlError


def resolve(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Asking for CUDA without one is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MtlError("cuda was requested but no CUDA device is available: use auto or cpu")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def bf16_by_default(device: torch.device) -> bool:
    """Whether ``precision: auto`` runs the encoder in bf16 on ``device``: only where bf16 was measured
    to keep the demo's accuracy inside the band it has over pretraining seeds, that is on CPUs with AMX
    tiles (Intel Xeon since Sapphire Rapids).

    Measured on 2 cores of an Intel Xeon with AMX, ``glyphs-1shot`` over 3 pretraining seeds each, on
    the same 600 test episodes: MTL 84.41 (sd 0.31, 84.20-84.77) in bf16, 83.99 (sd 0.48, 83.59-84.52)
    in fp32; every bf16 run inside fp32's mean ± 2 sd, with pretraining 1.85x faster. Elsewhere
    ``auto`` keeps fp32, also where bf16 is native: on CPUs with AVX512-BF16 but no AMX (AMD Zen 4),
    whose bf16 kernels round differently and where one demo run (MTL 83.66) is all there is, and on
    GPUs, where none was made (fp32 there multiplies in TF32, :func:`resolve`). ``precision: bf16``
    asks for bf16 on any of them, and is faster where bf16 is native: ResNet-12 forward + backward,
    channels_last, 2 cores, 2.2-4x faster than fp32 with AMX, 1.8-2.2x with AVX512-BF16 (32x32 images
    at widths 32-256 and 84x84 at 64-640)."""
    if device.type == "cuda":
        return False
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return probe is not None and probe()


def encoder_precision(device: torch.device, precision: str = "auto") -> str:
    """What the encoder runs in for a ``precision`` setting: ``"bf16"`` or ``"fp32"``."""
    return "bf16" if precision == "bf16" or (precision == "auto" and bf16_by_default(device)) else "fp32"


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """The encoder's autocast: bf16 for ``precision="bf16"``, or for ``"auto"`` where it was measured
    to keep accuracy (:func:`bf16_by_default`); ``"fp32"`` runs in float32. The base learner's inner
    loop always runs in fp32."""
    if encoder_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def encode(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, precision: str) -> torch.Tensor:
    """``module(x)`` under the encoder's :func:`autocast` for ``precision``, returned in float32: every
    encoder forward of mtl (features, logits of pretraining, MAML's adapted networks) runs through it."""
    with autocast(x.device, precision):
        return module(x).float()


def memory_format() -> torch.memory_format:
    """channels_last everywhere: it feeds tensor cores on CUDA, and oneDNN's CPU convolutions run
    1.2-1.5x faster in it than in the contiguous layout (ResNet-12, forward and backward)."""
    return torch.channels_last


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``model.compile()`` in place when ``enabled``: parameters and state-dict keys stay as they are,
    so checkpoints of compiled and plain runs are interchangeable. Compilation happens at the first
    forward (minutes on a CPU: meant for long GPU runs)."""
    if enabled:
        model.compile()
    return model
