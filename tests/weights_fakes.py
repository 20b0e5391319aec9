"""Weights files in the exact layouts other code bases save, and plain reference forwards of their networks.

Everything is written from the layouts' descriptions (key names, shapes, block maths), not from their
code: the official MTL PyTorch ``ResNetMtl`` (pretrain and meta), the official TF ResNet-12 weights dict,
FEAT's and RFS's ResNet-12. The references are functional float64 forwards, independent of mtl's modules.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fakes import _Py2Pickler

Tensor = torch.Tensor
BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(sd: dict, name: str, c: int, g: torch.Generator, dtype: torch.dtype) -> None:
    """A batch norm with random, well-conditioned affine weights and running statistics."""
    sd[f"{name}.weight"] = 1 + 0.2 * torch.randn(c, generator=g, dtype=dtype)
    sd[f"{name}.bias"] = 0.2 * torch.randn(c, generator=g, dtype=dtype)
    sd[f"{name}.running_mean"] = 0.3 * torch.randn(c, generator=g, dtype=dtype)
    sd[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g, dtype=dtype)
    sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)


def _conv(c_out: int, c_in: int, k: int, g: torch.Generator, dtype: torch.dtype) -> Tensor:
    return torch.randn(c_out, c_in, k, k, generator=g, dtype=dtype) * (2 / (c_in * k * k)) ** 0.5


# --------------------------------------------------------------------------- official MTL PyTorch


def official_pretrain(widths=(160, 320, 640), in_chans=3, seed=0, dtype=torch.float32) -> dict[str, Tensor]:
    """``ResNetMtl(mtl=False).state_dict()``: stem conv (widths[0] // 2, with bias) + bn1, three stages of
    four BasicBlocks (the first of each with stride 2 and a 1x1-conv + BN downsample). 169 tensors."""
    g = torch.Generator().manual_seed(seed)
    stem = widths[0] // 2
    sd = {
        "conv1.weight": _conv(stem, in_chans, 3, g, dtype),
        "conv1.bias": torch.randn(stem, generator=g, dtype=dtype),
    }
    _bn(sd, "bn1", stem, g, dtype)
    c_in = stem
    for s, w in enumerate(widths, 1):
        for b in range(4):
            p = f"layer{s}.{b}"
            sd[f"{p}.conv1.weight"] = _conv(w, c_in if b == 0 else w, 3, g, dtype)
            _bn(sd, f"{p}.bn1", w, g, dtype)
            sd[f"{p}.conv2.weight"] = _conv(w, w, 3, g, dtype)
            _bn(sd, f"{p}.bn2", w, g, dtype)
            if b == 0:
                sd[f"{p}.downsample.0.weight"] = _conv(w, c_in, 1, g, dtype)
                _bn(sd, f"{p}.downsample.1", w, g, dtype)
        c_in = w
    return sd


def official_meta(
    widths=(160, 320, 640), way=5, in_chans=3, seed=0, dtype=torch.float32
) -> dict[str, Tensor]:
    """``MtlLearner(mode='meta').state_dict()``: ``encoder.*`` with ``mtl_weight`` on every conv (the stem
    also ``bias``, ``mtl_bias``), ``base_learner.fc1_w/fc1_b`` and their duplicates ``vars.0/vars.1``."""
    g = torch.Generator().manual_seed(seed + 1)
    sd: dict[str, Tensor] = {}
    for key, value in official_pretrain(widths, in_chans, seed, dtype).items():
        sd[f"encoder.{key}"] = value
        if key.endswith("weight") and value.dim() == 4:
            conv = key[: -len(".weight")]
            sd[f"encoder.{conv}.mtl_weight"] = 1 + 0.1 * torch.randn(
                *value.shape[:2], 1, 1, generator=g, dtype=dtype
            )
    sd["encoder.conv1.mtl_bias"] = 0.3 * torch.randn(widths[0] // 2, generator=g, dtype=dtype)
    W = torch.randn(way, widths[-1], generator=g, dtype=dtype) * 0.1
    b = torch.randn(way, generator=g, dtype=dtype) * 0.1
    sd.update({"base_learner.fc1_w": W, "base_learner.fc1_b": b})
    sd.update({"base_learner.vars.0": W, "base_learner.vars.1": b})
    return sd


def _eval_bn(x: Tensor, sd: dict, name: str, eps: float = 1e-5) -> Tensor:
    return F.batch_norm(
        x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"], sd[f"{name}.bias"],
        training=False, eps=eps,
    )  # fmt: skip


def _mtl_conv(x: Tensor, sd: dict, name: str, stride: int = 1, padding: int = 1) -> Tensor:
    """Conv2dMtl: weight · mtl_weight (broadcast over the kernel), bias + mtl_bias (where there is one)."""
    w = sd[f"{name}.weight"]
    if f"{name}.mtl_weight" in sd:
        w = w * sd[f"{name}.mtl_weight"]
    b = sd.get(f"{name}.bias")
    if b is not None and f"{name}.mtl_bias" in sd:
        b = b + sd[f"{name}.mtl_bias"]
    return F.conv2d(x, w, b, stride=stride, padding=padding)


def official_forward(sd: dict, x: Tensor, prefix: str = "") -> Tensor:
    """The official ResNetMtl in eval mode on ``(B, C, H, W)`` -> ``(B, widths[-1])`` (global mean)."""
    sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    x = F.relu(_eval_bn(_mtl_conv(x, sd, "conv1"), sd, "bn1"))
    for s in (1, 2, 3):
        for b in range(4):
            p = f"layer{s}.{b}"
            stride = 2 if b == 0 else 1
            out = F.relu(_eval_bn(_mtl_conv(x, sd, f"{p}.conv1", stride), sd, f"{p}.bn1"))
            out = _eval_bn(_mtl_conv(out, sd, f"{p}.conv2"), sd, f"{p}.bn2")
            if b == 0:
                x = _eval_bn(_mtl_conv(x, sd, f"{p}.downsample.0", stride, 0), sd, f"{p}.downsample.1")
            x = F.relu(out + x)
    return x.mean(dim=(2, 3))


# --------------------------------------------------------------------------- FEAT / RFS ResNet-12


def resnet12_blocks(widths=(64, 160, 320, 640), in_chans=3, seed=0, dtype=torch.float32) -> dict[str, Tensor]:
    """FEAT's/RFS's ResNet-12 encoder state dict: ``layer{i}.0.conv{1,2,3}.weight``, ``bn{1,2,3}.*``,
    ``downsample.0.weight`` (1x1, stride 1) and ``downsample.1.*``."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    c_in = in_chans
    for i, w in enumerate(widths, 1):
        p = f"layer{i}.0"
        for j in (1, 2, 3):
            sd[f"{p}.conv{j}.weight"] = _conv(w, c_in if j == 1 else w, 3, g, dtype)
            _bn(sd, f"{p}.bn{j}", w, g, dtype)
        sd[f"{p}.downsample.0.weight"] = _conv(w, c_in, 1, g, dtype)
        _bn(sd, f"{p}.downsample.1", w, g, dtype)
        c_in = w
    return sd


def resnet12_forward(sd: dict, x: Tensor) -> Tensor:
    """The FEAT/RFS block, eval mode: conv-BN-LeakyReLU(0.1) x2, conv-BN, + downsample(x), LeakyReLU(0.1),
    2x2 max-pool; four blocks, then the global mean."""
    act = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
    for i in range(1, 5):
        p = f"layer{i}.0"
        out = act(_eval_bn(F.conv2d(x, sd[f"{p}.conv1.weight"], padding=1), sd, f"{p}.bn1"))
        out = act(_eval_bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2"))
        out = _eval_bn(F.conv2d(out, sd[f"{p}.conv3.weight"], padding=1), sd, f"{p}.bn3")
        short = _eval_bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"]), sd, f"{p}.downsample.1")
        x = F.max_pool2d(act(out + short), 2)
    return x.mean(dim=(2, 3))


# --------------------------------------------------------------------------- official MTL TensorFlow


def tf_weights(widths=(64, 128, 256, 512), in_chans=3, classes=64, seed=0) -> dict[str, np.ndarray]:
    """``construct_resnet_weights()`` as ``sess.run`` gives it: float32 HWIO convs, biases, ``w5``/``b5``."""
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}
    c_in = in_chans
    for i, c in enumerate(widths, 1):
        for j in (1, 2, 3):
            fan = 9 * (c_in if j == 1 else c)
            w[f"block{i}_conv{j}"] = (
                rng.standard_normal((3, 3, c_in if j == 1 else c, c)) * (2 / fan) ** 0.5
            ).astype(np.float32)
            w[f"block{i}_bias{j}"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        w[f"block{i}_conv_res"] = (rng.standard_normal((1, 1, c_in, c)) * (1 / c_in) ** 0.5).astype(
            np.float32
        )
        c_in = c
    w["w5"] = (0.01 * rng.standard_normal((widths[-1], classes))).astype(np.float32)
    w["b5"] = np.zeros(classes, np.float32)
    return w


def tf_forward(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The TF network in NHWC with HWIO weights, float64: per block (conv + bias -> batch-statistics
    normalisation without γ/β, eps 1e-3 -> LeakyReLU 0.1) x3, + 1x1 shortcut, 2x2 max-pool; 4 blocks;
    global mean. ``x``: ``(B, H, W, C)`` -> ``(B, 512)``."""
    x = x.astype(np.float64)

    def conv(t: np.ndarray, k: np.ndarray) -> np.ndarray:
        kh = k.shape[0]
        pad = kh // 2
        t = np.pad(t, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        h, w = t.shape[1] - kh + 1, t.shape[2] - kh + 1
        return sum(
            t[:, i : i + h, j : j + w, :] @ k[i, j].astype(np.float64) for i in range(kh) for j in range(kh)
        )

    def norm(t: np.ndarray) -> np.ndarray:
        mean, var = t.mean(axis=(0, 1, 2)), t.var(axis=(0, 1, 2))
        return (t - mean) / np.sqrt(var + 1e-3)

    for i in range(1, 5):
        net = x
        for j in (1, 2, 3):
            net = norm(conv(net, weights[f"block{i}_conv{j}"]) + weights[f"block{i}_bias{j}"])
            net = np.where(net > 0, net, 0.1 * net)
        net = net + conv(x, weights[f"block{i}_conv_res"])
        b, h, w, c = net.shape
        x = net[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    return x.mean(axis=(1, 2))


def npy_header(path: Path, payload: bytes) -> None:
    """A version 1.0 ``.npy`` of a 0-d object array whose pickle is ``payload``."""
    header = {"descr": "|O", "fortran_order": False, "shape": ()}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    path.write_bytes(buf.getvalue() + payload)


def write_py2_npy(path: Path, weights: dict[str, np.ndarray]) -> None:
    """``np.save`` as Python 2 with numpy 1.x wrote it: protocol 2, ``str`` keys as Python 2 strings,
    ``numpy.core.multiarray`` references."""
    arr = np.empty((), dtype=object)
    arr[()] = {k.encode(): v for k, v in weights.items()}
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(arr)
    npy_header(path, buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


class RunsCode:
    """An object whose unpickling would run code (it would create ``ran`` in ``folder``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self):
        return (open, (str(self.folder / "ran"), "w"))


def write_evil_npy(path: Path, folder: Path) -> None:
    """A ``.npy`` whose object array holds a dict with a code-running object."""
    npy_header(path, pickle.dumps({"block1_conv1": RunsCode(folder)}, protocol=2))
