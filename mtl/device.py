"""Device selection and the CUDA fast paths (bf16 autocast, channels_last, cuDNN autotuning).

Everything here is a no-op on the CPU, so the same stage code runs in tests and on GPUs.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from mtl.errors import MtlError


def resolve(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Asking for CUDA without one is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MtlError("device: cuda was requested but no CUDA device is available (use device: auto or cpu)")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on the CPU (CPU bf16 is slower and less exact than fp32 there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last feeds tensor cores on CUDA; contiguous is fastest on the CPU."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
