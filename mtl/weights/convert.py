"""What every layout shares: the :class:`Layout` record, the :class:`Converted` weights, and the checks
that turn a mismatch between a file and the pipeline's network into one line."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mtl.config import Config
from mtl.errors import MtlError
from mtl.methods import Method
from mtl.weights.files import Source

__all__ = [
    "Converted",
    "Layout",
    "check_tensors",
    "few",
    "fill_batch_counts",
    "fold_stem_bias",
    "state_dict_of",
    "widths_hint",
]

# Where checkpoints keep their state dict: FEAT/official {"params": ...}, RFS {"model": ...}, timm
# training scripts and FEAT's .pth.tar {"state_dict": ...}.
WRAPPERS = ("params", "state_dict", "model", "model_state_dict")


@dataclass
class Converted:
    """A file's weights under mtl's names, and what to say about them.

    Attributes:
        stage: the stage checkpoint they make: ``pretrain`` or ``metatrain``.
        encoder: the plain backbone's state dict (what ``build_backbone(...).state_dict()`` holds), mtl
            names -> tensors; keys the layout could not map keep their file names (reported as extra).
            None when ``finish`` loads a whole method state instead.
        name_in_file: mtl key -> the file's name for it, for messages.
        tensors: how many tensors the file holds.
        finish: for a metatrain checkpoint, what sets the method's own weights (SS, θ, or a whole
            exported method state) once it is built around the loaded encoder; returns notes.
        extra: payload entries kept as they are (an export's head, class names, metric).
        recalibrate: the file has no batch-norm statistics: estimate them from the train split.
        notes: lines printed after the recognised layout (what was folded, ignored, estimated).
    """

    stage: str
    encoder: dict[str, torch.Tensor] | None
    name_in_file: Callable[[str], str] = lambda key: key
    tensors: int = 0
    finish: Callable[[Method], list[str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    recalibrate: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """One file layout mtl imports.

    Attributes:
        name: its ``--format`` value.
        title: what it is, for messages ("the official MTL PyTorch pretrain checkpoint ...").
        backbone: the mtl backbone(s) it fits, for messages.
        stage: the stage checkpoint it makes (``pretrain`` or ``metatrain``).
        recognise: whether a read file has this layout (from its keys; timm: and the pipeline).
        check: raises one line if the pipeline cannot take it (wrong backbone, normalisation, ...).
        convert: ``(source, cfg, expected)`` -> :class:`Converted`; ``expected`` is the pipeline's
            plain backbone state dict, for shape checks with useful hints.
        stage_of: where the file decides the stage (an mtl export), its stage.
    """

    name: str
    title: str
    backbone: str
    stage: str
    recognise: Callable[[Source, Config], bool]
    check: Callable[[Source, Config, Layout], None]
    convert: Callable[[Source, Config, dict[str, torch.Tensor]], Converted]
    stage_of: Callable[[Source], str] | None = None

    def stage_for(self, source: Source) -> str:
        return self.stage_of(source) if self.stage_of is not None else self.stage

    def wrong_backbone(self, source: Source, cfg: Config, advice: str = "") -> MtlError:
        """The file fits another backbone than the pipeline's: name both."""
        return MtlError(
            f"{source.label} holds {self.title}, which fits backbone {self.backbone}; the pipeline's "
            f"backbone is {cfg.backbone.name}" + (f": {advice}" if advice else "")
        )


def few(keys: list[str], n: int = 3) -> str:
    """``a, b, c and 4 more``."""
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_tensors(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    *,
    label: str,
    target: str,
    name_in_file: Callable[[str], str] = lambda key: key,
) -> None:
    """Refuse ``given`` unless it has exactly ``expected``'s keys and shapes: one line naming the first
    extra or missing tensors (as the file names them), or the first tensor of the wrong shape."""
    extra = [name_in_file(k) for k in given if k not in expected]
    if extra:
        raise MtlError(f"{label} has {len(extra)} tensor(s) that {target} does not: {few(extra)}")
    missing = [name_in_file(k) for k in expected if k not in given]
    if missing:
        raise MtlError(f"{label} lacks {len(missing)} tensor(s) that {target} needs: {few(missing)}")
    for key, tensor in given.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            where = "" if name_in_file(key) == key else f" (mtl's {key})"
            raise MtlError(
                f"{label}: {name_in_file(key)}{where} has shape {_shape(tensor)}, {target} needs "
                f"{_shape(expected[key])}"
            )


def widths_hint(source: Source, found: list[int], wanted: list[int], cfg: Config) -> None:
    """Refuse a file whose stage widths differ from the pipeline's, naming the ``--set`` that fits."""
    if found != wanted:
        text = ",".join(str(w) for w in found)
        raise MtlError(
            f"{source.label} has widths {'-'.join(map(str, found))}; the pipeline's {cfg.backbone.name} "
            f"has {'-'.join(map(str, wanted))}: add --set backbone.widths=[{text}]"
        )


def state_dict_of(source: Source) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The flat tensor dict inside a loaded checkpoint: unwrapped from ``{"params"|"state_dict"|"model":
    ...}``, with DataParallel's ``module.`` taken out of every key. Also returns the notes to print."""
    obj, notes = source.obj, []
    if not isinstance(obj, dict):
        raise MtlError(f"{source.label} holds a {type(obj).__name__}, not a dict of named tensors")
    for key in WRAPPERS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and any(isinstance(v, torch.Tensor) for v in inner.values()):
            others = [k for k in obj if k != key]
            if others:
                notes.append(f"read: the state dict under '{key}' (ignored: {few(sorted(map(str, others)))})")
            obj = inner
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise MtlError(f"{source.label} holds no tensors (keys: {few(sorted(map(str, obj)))})")
    if any(".module." in f".{k}" for k in tensors):
        tensors = {f".{k}".replace(".module.", ".")[1:]: v for k, v in tensors.items()}
        notes.append("read: DataParallel's 'module.' prefixes removed")
    return tensors, notes


def fold_stem_bias(encoder: dict[str, torch.Tensor], bias: torch.Tensor, bn: str = "bn1") -> str:
    """Fold a stem convolution's bias ``(C,)`` into the running mean of the batch norm after it, exactly.

    ``BN(conv(x) + b)`` normalises ``conv(x) + b - μ``; with ``μ' = μ - b`` the bias-free convolution
    gives the same in eval mode, and in train mode the batch mean absorbs ``b`` anyway. Computed in
    float64 and rounded once. Returns the note to print.
    """
    key = f"{bn}.running_mean"
    mean = encoder[key]
    encoder[key] = (mean.double() - bias.double()).to(mean.dtype)
    return f"folded: conv1.bias into {key} (mtl's stem convolution has no bias; exact)"


def fill_batch_counts(encoder: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Files from before PyTorch 0.4.1 have no ``num_batches_tracked``, which nothing reads in eval
    mode: fill in zeros and say so."""
    added = [
        k
        for k in expected
        if k.endswith(".num_batches_tracked")
        and k not in encoder
        and k[: -len("num_batches_tracked")] + "running_mean" in encoder
    ]
    for key in added:
        encoder[key] = torch.zeros((), dtype=torch.long)
    return [f"added: {len(added)} num_batches_tracked counters (not in the file)"] if added else []
