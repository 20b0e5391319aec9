"""The official MTL TensorFlow pretrain weights (``tensorflow/trainer/pre.py``: ``np.save(weights_<itr>.npy,
weights)``, ``weights`` the dict of ``models/resnet12.py``'s ``construct_resnet_weights``).

Keys per block ``i`` in 1..4: ``block{i}_conv{1,2,3}`` HWIO ``(3, 3, C_in, C_out)``, ``block{i}_bias{1,2,3}``
``(C_out,)``, ``block{i}_conv_res`` ``(1, 1, C_in, C_out)``; widths 64-128-256-512; plus ``w5 (512, classes)``
and ``b5``, a classifier the pretraining never trains (it trains a separate ``fc_weights``): ignored.
mtl's ``resnet12_tf`` takes them as ``layer{i}.conv{j}.weight`` (OIHW) / ``.bias`` and
``layer{i}.shortcut.weight``. The file has no batch-norm variables: TF's BN has no γ, and its β is not in
the pretraining's ``var_list``, so it stays 0; its moving statistics were never saved (nor read: TF
normalises with batch statistics everywhere). The importer therefore estimates the running statistics
from the pipeline's train split (:func:`mtl.weights.batchnorm.recalibrate`), so that every ``mtl.bn``
mode works; with batch statistics they are unused. The network saw pixels / 255, not normalised images.
"""

from __future__ import annotations

import numpy as np
import torch

from mtl.config import Config
from mtl.errors import MtlError
from mtl.weights.convert import Converted, Layout, widths_hint
from mtl.weights.files import Source

__all__ = ["TENSORFLOW"]

BACKBONE = "resnet12_tf"
_UNTRAINED = ("w5", "b5")  # construct_resnet_weights' classifier, never in the pretraining's var_list


def _file_key(key: str) -> str:
    """mtl's ``layer2.conv1.weight`` -> TF's ``block2_conv1`` (for messages)."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0].startswith("layer"):
        block = "block" + parts[0][len("layer") :]
        if parts[1] == "shortcut":
            return f"{block}_conv_res"
        if parts[1].startswith("conv"):
            j = parts[1][len("conv") :]
            return f"{block}_conv{j}" if parts[2] == "weight" else f"{block}_bias{j}"
    return key


def _recognise(source: Source, cfg: Config) -> bool:
    return source.kind in ("npy", "npz") and {"block1_conv1", "block1_bias1", "block1_conv_res"} <= set(
        source.obj
    )


def _check(source: Source, cfg: Config, layout: Layout) -> None:
    if cfg.backbone.name != BACKBONE:
        raise layout.wrong_backbone(source, cfg, "use a resnet12_tf pipeline, e.g. miniimagenet-1shot")
    d = cfg.data
    if d.mean is None or d.std is None or any(d.mean) or any(s != 1 for s in d.std):
        zeros, ones = ",".join(["0"] * d.channels), ",".join(["1"] * d.channels)
        raise MtlError(
            f"{source.label} was trained on pixels / 255 without mean/std normalisation, but the pipeline "
            f"normalises (data.mean {d.mean or 'default'}, data.std {d.std or 'default'}): add "
            f"--set data.mean=[{zeros}] --set data.std=[{ones}]"
        )


def _tensor(value: object, key: str, label: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):  # the same dict re-saved with torch (--format mtl-tensorflow)
        return value
    if not isinstance(value, np.ndarray) or value.dtype == object:
        raise MtlError(f"{label}: {key} is a {type(value).__name__}, not a numeric array")
    return torch.from_numpy(np.ascontiguousarray(value))


def _convert(source: Source, cfg: Config, expected: dict[str, torch.Tensor]) -> Converted:
    """HWIO convolutions -> OIHW, biases as they are; batch norms start at γ = 1, β = 0, μ = 0, σ² = 1
    (their statistics are estimated afterwards)."""
    if not isinstance(source.obj, dict):
        raise MtlError(f"{source.label} holds a {type(source.obj).__name__}, not a dict of named weights")
    weights = {str(k): v for k, v in source.obj.items()}
    notes = []
    ignored = [k for k in _UNTRAINED if k in weights]
    if ignored:
        notes.append(f"ignored: {', '.join(ignored)} (a classifier the TF pretraining never trains)")
    found = [int(weights[f"block{i}_conv1"].shape[-1]) for i in range(1, 5) if f"block{i}_conv1" in weights]
    wanted = [int(expected[f"layer{i}.conv1.weight"].shape[0]) for i in range(1, 5)]
    if len(found) == 4:
        widths_hint(source, found, wanted, cfg)
    encoder: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if key in ignored:
            continue
        t = _tensor(value, key, source.label)
        name = _mtl_key(key)
        # HWIO (kh, kw, C_in, C_out) -> OIHW (C_out, C_in, kh, kw); an unknown key keeps its name (extra).
        encoder[name] = t.permute(3, 2, 0, 1).contiguous() if name != key and t.dim() == 4 else t
    for key, ref in expected.items():
        if ".bn" in key:
            leaf = key.rsplit(".", 1)[1]
            fill = {"weight": 1.0, "running_var": 1.0}.get(leaf, 0.0)
            encoder[key] = torch.full_like(ref, fill)
    notes.append("set: batch-norm β = 0 and γ = 1 (TF's: β untrained, no γ)")
    if cfg.data.image_size != 84:
        notes.append(
            f"note: TF pools a 5x5 window, global at 84x84 only; mtl pools globally at any size "
            f"(here {cfg.data.image_size}x{cfg.data.image_size})"
        )
    return Converted(
        "pretrain", encoder, name_in_file=_file_key, tensors=len(weights), recalibrate=True, notes=notes
    )


def _mtl_key(key: str) -> str:
    """TF's ``block2_conv1`` -> ``layer2.conv1.weight``, ``block2_bias1`` -> ``layer2.conv1.bias``,
    ``block2_conv_res`` -> ``layer2.shortcut.weight``; anything else as it is."""
    block, _, rest = key.partition("_")
    if not (block.startswith("block") and block[5:].isdigit()):
        return key
    layer = "layer" + block[5:]
    if rest == "conv_res":
        return f"{layer}.shortcut.weight"
    for prefix, leaf in (("conv", "weight"), ("bias", "bias")):
        if rest.startswith(prefix) and rest[len(prefix) :].isdigit():
            return f"{layer}.conv{rest[len(prefix) :]}.{leaf}"
    return key


TENSORFLOW = Layout(
    name="mtl-tensorflow",
    title="the official MTL TensorFlow pretrain weights (weights_<itr>.npy of tensorflow/trainer/pre.py)",
    backbone=BACKBONE,
    stage="pretrain",
    recognise=_recognise,
    check=_check,
    convert=_convert,
)
