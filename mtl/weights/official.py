"""The official MTL PyTorch code's two checkpoints (github yaoyao-liu/meta-transfer-learning, ``pytorch/``).

* **Pretrain** (``max_acc.pth`` of ``trainer/pre.py``: ``{"params": encoder.state_dict()}`` of
  ``ResNetMtl(mtl=False)``): 169 tensors, mtl's ``resnet25`` keys plus the stem convolution's
  ``conv1.bias (80,)``, which mtl's stem does not have: it is folded into ``bn1.running_mean``.
* **Meta** (``trainer/meta.py``: ``{"params": MtlLearner.state_dict()}`` in meta mode): ``encoder.*``
  where every convolution is a ``Conv2dMtl`` (``weight`` and ``mtl_weight (C_out, C_in, 1, 1)``; the stem
  also ``bias`` and ``mtl_bias (C_out,)``), and ``base_learner.fc1_w (way, 640)``, ``fc1_b (way,)`` with
  their duplicates ``base_learner.vars.0``/``vars.1``. ``mtl_weight`` is mtl's SS scale, ``mtl_bias`` the
  stem's SS shift, ``(fc1_w, fc1_b)`` θ; the stem's ``bias`` is folded as above.
"""

from __future__ import annotations

import torch

from mtl.config import Config
from mtl.errors import MtlError
from mtl.methods import Method
from mtl.models import ss
from mtl.weights.convert import (
    Converted,
    Layout,
    few,
    fill_batch_counts,
    fold_stem_bias,
    state_dict_of,
    widths_hint,
)
from mtl.weights.files import Source

__all__ = ["META", "PRETRAIN"]

BACKBONE = "resnet25"
_SS_KEYS = ("mtl_weight", "mtl_bias")


def _keys(source: Source) -> set[str]:
    if source.kind not in ("torch", "safetensors") or not isinstance(source.obj, dict):
        return set()
    try:
        return set(state_dict_of(source)[0])
    except MtlError:
        return set()


def _is_pretrain(source: Source, cfg: Config) -> bool:
    """A stem conv with a bias and three stages of two-conv blocks (not a ResNet-12's three, nor a fourth
    stage); a few missing tensors are left for the key check to name."""
    keys = {k.removeprefix("encoder.") for k in _keys(source)}
    stem = {"conv1.bias", "bn1.running_mean", "layer1.0.downsample.0.weight"}
    other = any(k.endswith(_SS_KEYS) or "conv3" in k or k.startswith("layer4.") for k in keys)
    return stem <= keys and any(k.startswith("layer3.") for k in keys) and not other


def _is_meta(source: Source, cfg: Config) -> bool:
    keys = _keys(source)
    return {"encoder.conv1.mtl_weight", "base_learner.fc1_w"} <= keys


def _check(source: Source, cfg: Config, layout: Layout) -> None:
    if cfg.backbone.name != BACKBONE:
        raise layout.wrong_backbone(source, cfg, "use a resnet25 pipeline, e.g. miniimagenet-1shot-resnet25")


def _check_meta(source: Source, cfg: Config, layout: Layout) -> None:
    _check(source, cfg, layout)
    if cfg.method != "mtl":
        raise MtlError(
            f"{source.label} holds an MTL model (SS + θ); the pipeline's method is '{cfg.method}': "
            "add --set method=mtl"
        )


def _pretrain(source: Source, cfg: Config, expected: dict[str, torch.Tensor]) -> Converted:
    """``{"params": {169 tensors}}`` -> the plain resnet25 state dict, stem bias folded."""
    tensors, notes = state_dict_of(source)
    encoder = {k.removeprefix("encoder."): v for k, v in tensors.items()}
    # MtlLearner's own state dict in pre mode also has its head and an unused base learner.
    heads = sorted(k for k in encoder if k.startswith(("pre_fc.", "base_learner.")))
    if heads:
        notes.append(f"ignored: {few(heads)} (the pretraining head and base learner, not the encoder)")
    encoder = {k: v for k, v in encoder.items() if k not in heads}
    notes += _fold_and_fill(source, cfg, encoder, expected)
    return Converted("pretrain", encoder, tensors=len(tensors), notes=notes)


def _fold_and_fill(
    source: Source, cfg: Config, encoder: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> list[str]:
    """What both checkpoints need: the same widths as the pipeline, the stem bias folded into
    ``bn1.running_mean``, ``num_batches_tracked`` where an old file has none. Returns the notes."""
    found = [
        int(encoder[f"layer{s}.0.conv1.weight"].shape[0])
        for s in (1, 2, 3)
        if f"layer{s}.0.conv1.weight" in encoder
    ]
    if len(found) == 3:
        widths_hint(
            source, found, [int(expected[f"layer{s}.0.conv1.weight"].shape[0]) for s in (1, 2, 3)], cfg
        )
    notes = []
    bias = encoder.pop("conv1.bias", None)
    if bias is not None and "bn1.running_mean" in encoder:
        notes.append(fold_stem_bias(encoder, bias))
    elif bias is not None:
        encoder["conv1.bias"] = bias  # nothing to fold it into: reported as an extra tensor
    return notes + fill_batch_counts(encoder, expected)


def _meta(source: Source, cfg: Config, expected: dict[str, torch.Tensor]) -> Converted:
    """``{"params": MtlLearner state dict}`` -> plain resnet25 weights, SS weights by convolution, θ."""
    tensors, notes = state_dict_of(source)
    W, b = tensors.get("base_learner.fc1_w"), tensors.get("base_learner.fc1_b")
    if W is None or b is None:
        raise MtlError(f"{source.label} lacks base_learner.fc1_w or base_learner.fc1_b (the base learner θ)")
    for dup, orig in (("base_learner.vars.0", W), ("base_learner.vars.1", b)):
        if dup in tensors and not torch.equal(tensors[dup], orig):
            raise MtlError(
                f"{source.label}: {dup} differs from the parameter it duplicates; the file is damaged"
            )
    if W.shape[0] != cfg.meta.way:
        raise MtlError(
            f"{source.label} holds a {W.shape[0]}-way θ (base_learner.fc1_w {tuple(W.shape)}); the "
            f"pipeline's meta.way is {cfg.meta.way}: add --set meta.way={W.shape[0]}"
        )
    notes.append("read: θ from base_learner.fc1_w/fc1_b (their duplicates vars.0/vars.1 are equal)")
    notes.append("read: SS weights (mtl_weight -> scale, mtl_bias -> shift)")
    encoder: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("base_learner."):
            continue
        name, _, leaf = key.removeprefix("encoder.").rpartition(".")
        if key.startswith("encoder.") and leaf in _SS_KEYS:
            parts.setdefault(name, {})[leaf] = value
        else:
            encoder[key.removeprefix("encoder.")] = value  # a key outside encoder. is reported as extra
    scales = {}
    for name, p in parts.items():
        if "mtl_weight" not in p:
            raise MtlError(f"{source.label} has encoder.{name}.mtl_bias without encoder.{name}.mtl_weight")
        scales[name] = (p["mtl_weight"], p.get("mtl_bias"))
    notes += _fold_and_fill(source, cfg, encoder, expected)
    return Converted(
        "metatrain",
        encoder,
        name_in_file=lambda key: key if key in tensors else f"encoder.{key}",
        tensors=len(tensors),
        finish=lambda method: _set_ss_theta(method, scales, (W, b), source.label),
        notes=notes,
    )


@torch.no_grad()
def _set_ss_theta(
    method: Method,
    scales: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
    theta: tuple[torch.Tensor, torch.Tensor],
    label: str,
) -> list[str]:
    """Copy ``mtl_weight`` (C_out, C_in, 1, 1) / ``mtl_bias`` (C_out,) into the SS convolutions the MTL
    method attached (whatever layout :func:`mtl.models.ss.ss_modules` exposes) and θ into
    ``method.W`` (way, D), ``method.b`` (way,). A convolution the file gives no shift has no bias in
    the official network: a zero shift is the same maths."""
    modules = dict(ss.ss_modules(method.encoder))
    missing = sorted(set(modules) - set(scales))
    extra = sorted(set(scales) - set(modules))
    if missing or extra:
        which = f"no SS weights for {few(missing)}" if missing else f"SS weights for {few(extra)}"
        raise MtlError(f"{label} has {which}, unlike mtl's SS layout of {BACKBONE}")
    for name, module in modules.items():
        scale, shift = scales[name]
        if scale.shape != module.scale.shape:
            raise MtlError(
                f"{label}: encoder.{name}.mtl_weight has shape {tuple(scale.shape)}, mtl's SS scale "
                f"needs {tuple(module.scale.shape)}"
            )
        module.scale.copy_(scale)
        if shift is not None and module.shift is None:
            raise MtlError(
                f"{label} has an SS shift encoder.{name}.mtl_bias where mtl's SS layout of {BACKBONE} "
                "has none"
            )
        if module.shift is not None:
            module.shift.copy_(shift if shift is not None else torch.zeros_like(module.shift))
    W, b = theta
    if W.shape != method.W.shape or b.shape != method.b.shape:
        raise MtlError(
            f"{label}: θ (base_learner.fc1_w {tuple(W.shape)}, fc1_b {tuple(b.shape)}) does not fit the "
            f"pipeline's {tuple(method.W.shape)}, {tuple(method.b.shape)}"
        )
    method.W.copy_(W)
    method.b.copy_(b)
    shifts = sum(s is not None for _, s in scales.values())
    plural = "" if shifts == 1 else "s"
    return [f"set: SS of {len(modules)} convolutions ({len(modules)} scales, {shifts} shift{plural}) and θ"]


PRETRAIN = Layout(
    name="mtl-pytorch-pretrain",
    title="the official MTL PyTorch pretrain checkpoint (max_acc.pth of pytorch/trainer/pre.py)",
    backbone=BACKBONE,
    stage="pretrain",
    recognise=_is_pretrain,
    check=_check,
    convert=_pretrain,
)

META = Layout(
    name="mtl-pytorch-meta",
    title="the official MTL PyTorch meta checkpoint (max_acc.pth of pytorch/trainer/meta.py)",
    backbone=BACKBONE,
    stage="metatrain",
    recognise=_is_meta,
    check=_check_meta,
    convert=_meta,
)
