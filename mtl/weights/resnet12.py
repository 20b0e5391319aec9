"""ResNet-12 pretrain checkpoints of the two code bases people share them from most.

* **FEAT** (github.com/Sha-Lab/FEAT, ``model/networks/res12.py``, ``pretrain.py``): ``{"params":
  Classifier.state_dict()}`` (``max_acc_dist.pth``, ``max_acc_sim.pth``, the published ``Res12-pre.pth``),
  or ``{"state_dict": ..., "args": ..., "optimizer": ...}`` (``checkpoint.pth.tar``). Keys
  ``encoder.layer{i}.0.{conv1,conv2,conv3}.weight``, ``encoder.layer{i}.0.bn{1,2,3}.*``,
  ``encoder.layer{i}.0.downsample.{0.weight,1.*}``, plus the head ``fc.weight``/``fc.bias`` (ignored);
  ``encoder.module.`` with several GPUs. A meta-trained FEAT model has other heads beside ``encoder.``
  (``slf_attn.*``): ignored too.
* **RFS** (github.com/WangYueFt/rfs, ``models/resnet.py``, ``train_supervised.py``): ``{"model":
  state_dict, "opt": Namespace}`` or ``{"epoch", "model"}``; keys ``layer{i}.0.…`` as above without
  ``encoder.``, plus ``classifier.*`` (ignored); ``module.`` with DataParallel.

Both blocks compute what mtl's ``resnet12`` block does: three 3x3 conv (no bias) + BN, LeakyReLU(0.1)
after the first two, the third's BN output plus a 1x1-conv + BN shortcut (stride 1), LeakyReLU(0.1), a
2x2 max-pool; DropBlock/dropout act in training only and have no parameters. Global pooling: RFS's
``AdaptiveAvgPool2d(1)`` is mtl's; FEAT's ``AvgPool2d(5, stride=1)`` is global at 84x84 only (the
5x5 map it was written for). RFS's ``seresnet12`` adds squeeze-and-excitation layers (``….se.fc.*``),
which no mtl backbone has: refused as extra tensors.
"""

from __future__ import annotations

import re

import torch

from mtl.config import Config
from mtl.errors import MtlError
from mtl.weights.convert import Converted, Layout, few, fill_batch_counts, state_dict_of, widths_hint
from mtl.weights.files import Source

__all__ = ["FEAT", "RFS"]

BACKBONES = ("resnet12", "resnet12_paper")
# layer{i}.0.<rest> -> layer{i}.<rest>: mtl's stages are the blocks themselves (one block per stage).
_BLOCK = re.compile(r"^layer(\d)\.0\.(conv[123]\.weight|bn[123]\.\w+|downsample\.[01]\.\w+)$")


def _keys(source: Source) -> set[str]:
    if source.kind not in ("torch", "safetensors"):
        return set()
    try:
        return set(state_dict_of(source)[0])
    except MtlError:
        return set()


def _is_feat(source: Source, cfg: Config) -> bool:
    return "encoder.layer1.0.conv3.weight" in _keys(source)


def _is_rfs(source: Source, cfg: Config) -> bool:
    return "layer1.0.conv3.weight" in _keys(source)


def _check(source: Source, cfg: Config, layout: Layout) -> None:
    if cfg.backbone.name not in BACKBONES:
        raise layout.wrong_backbone(
            source, cfg, "use a resnet12 pipeline, e.g. miniimagenet-1shot with --set backbone.name=resnet12"
        )


def _convert(
    source: Source, cfg: Config, expected: dict[str, torch.Tensor], *, prefix: str, heads: tuple[str, ...]
) -> Converted:
    """The encoder's keys (under ``prefix``) mapped onto mtl's ``resnet12``; the heads are left out,
    anything else is reported as extra. FEAT: all outside ``encoder.`` is a head; RFS: ``classifier.``."""
    tensors, notes = state_dict_of(source)
    ignored = sorted(k for k in tensors if not k.startswith(prefix) or k.startswith(heads))
    if ignored:
        notes.append(f"ignored: {few(ignored)} (heads, not the encoder)")
    encoder = {}
    for key, value in tensors.items():
        if key not in ignored:
            inner = key[len(prefix) :]
            match = _BLOCK.match(inner)
            encoder[f"layer{match.group(1)}.{match.group(2)}" if match else inner] = value
    found = [
        int(encoder[f"layer{i}.conv1.weight"].shape[0])
        for i in range(1, 5)
        if f"layer{i}.conv1.weight" in encoder
    ]
    wanted = [int(expected[f"layer{i}.conv1.weight"].shape[0]) for i in range(1, 5)]
    if len(found) == 4:
        widths_hint(source, found, wanted, cfg)
    notes += fill_batch_counts(encoder, expected)
    if prefix == "encoder." and cfg.data.image_size != 84:
        notes.append(
            f"note: FEAT pools a 5x5 window, global at 84x84 only; mtl pools globally at any size "
            f"(here {cfg.data.image_size}x{cfg.data.image_size})"
        )

    def name_in_file(key: str) -> str:
        layer, _, rest = key.partition(".")
        return f"{prefix}{layer}.0.{rest}" if _BLOCK.match(f"{layer}.0.{rest}") else f"{prefix}{key}"

    return Converted("pretrain", encoder, name_in_file=name_in_file, tensors=len(tensors), notes=notes)


FEAT = Layout(
    name="feat-resnet12",
    title="a FEAT ResNet-12 checkpoint (github Sha-Lab/FEAT, model/networks/res12.py)",
    backbone="resnet12 (64-160-320-640)",
    stage="pretrain",
    recognise=_is_feat,
    check=_check,
    convert=lambda source, cfg, expected: _convert(source, cfg, expected, prefix="encoder.", heads=()),
)

RFS = Layout(
    name="rfs-resnet12",
    title="an RFS ResNet-12 checkpoint (github WangYueFt/rfs, models/resnet.py)",
    backbone="resnet12 (64-160-320-640)",
    stage="pretrain",
    recognise=_is_rfs,
    check=_check,
    convert=lambda source, cfg, expected: _convert(source, cfg, expected, prefix="", heads=("classifier.",)),
)
