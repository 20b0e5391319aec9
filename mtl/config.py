"""Pipeline configuration: YAML files with ``extends:``, ``--set key=value`` overrides, strict validation.

A pipeline file is a nested mapping whose keys mirror the dataclasses below. Every key is checked: an
unknown key, a value of the wrong type or a value outside its allowed range raises :class:`MtlError`
with the dotted key name (``meta.shot: expected int, got 'five'``). The resolved config (defaults filled
in, overrides applied) is what every stage receives and what it saves beside its outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtl import pipeline_file
from mtl.errors import MtlError


def _opt(default: Any = None, *, choices: tuple | None = None, min: float | None = None, doc: str = ""):
    """A dataclass field with validation metadata (``choices`` or a lower bound ``min``)."""
    meta = {"choices": choices, "min": min, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    if dataclasses.is_dataclass(default):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class GlyphsConfig:
    preset: str = _opt("easy", choices=("easy", "hard", "families"))
    classes: int = _opt(100, min=3)
    images_per_class: int = _opt(100, min=2)
    seed: int = _opt(0, doc="the dataset's own seed (independent of the training seed)")


@dataclass
class DataConfig:
    dataset: str = _opt("glyphs", doc="'glyphs' (built in) or the name of a dataset prepared at data.root")
    root: str = _opt("~/.cache/mtl", doc="glyphs: cache folder; other datasets: the prepared dataset folder")
    image_size: int = _opt(84, min=8)
    channels: int = _opt(3, choices=(1, 3))
    mean: list[float] | None = _opt(None, doc="per-channel normalisation mean (default: ImageNet / 0.5)")
    std: list[float] | None = _opt(None)
    resize: int | None = _opt(
        None,
        min=8,
        doc="resize images to this size, then centre-crop image_size (official PyTorch code: 92 -> 80); "
        "null: resize straight to image_size",
    )
    glyphs: GlyphsConfig = _opt(GlyphsConfig())


@dataclass
class BackboneConfig:
    name: str = _opt("resnet12", doc="resnet12 | resnet12_paper | resnet12_tf | resnet25 | timm:<model>")
    widths: list[int] | None = _opt(None, doc="resnet12 stage widths, e.g. [64, 160, 320, 640]")
    drop_rate: float = _opt(0.0, min=0.0)


@dataclass
class AugmentConfig:
    enabled: bool = True
    crop_scale: list[float] = _opt([0.6, 1.0], doc="random-resized-crop area range")
    flip: bool = _opt(True, doc="random horizontal flip")


@dataclass
class PretrainConfig:
    epochs: int = _opt(100, min=1)
    batch_size: int = _opt(128, min=1)
    lr: float = _opt(0.1, min=0.0)
    momentum: float = _opt(0.9, min=0.0)
    nesterov: bool = True
    weight_decay: float = _opt(5e-4, min=0.0)
    schedule: str = _opt("step", choices=("step", "cosine"))
    step_size: int = _opt(30, min=1, doc="epochs between LR decays (step schedule)")
    gamma: float = _opt(0.2, min=0.0)
    label_smoothing: float = _opt(0.0, min=0.0)
    head_hidden: int = _opt(
        0,
        min=0,
        doc="hidden units of the classification head: 0 linear; official PyTorch: 1000 (Linear-ReLU-Linear)",
    )
    augment: AugmentConfig = _opt(AugmentConfig())
    val_episodes: int = _opt(600, min=1, doc="few-shot validation episodes after each epoch")
    val_shot: int | None = _opt(None, min=1, doc="shot of that validation (default: meta.shot)")
    name: str | None = _opt(
        None, doc="run folder of this stage (default: name); pipelines that share it share one pretrain"
    )


@dataclass
class HardTaskConfig:
    enabled: bool = _opt(False, doc="extra tasks in every meta-batch (MTL + HT)")
    per_batch: int = _opt(1, min=1, doc="extra tasks added to every meta-batch")
    window: int | None = _opt(
        None,
        min=1,
        doc="meta-batches whose failure classes form the pool (null: ceil(way / meta_batch), the fewest "
        "that give way failure classes)",
    )
    mode: str = _opt(
        "softmax",
        choices=("softmax", "uniform", "random"),
        doc="pool classes drawn by softmax(-accuracy / temperature) or uniformly; random: the control, "
        "extra tasks of random base classes",
    )
    temperature: float = _opt(0.1, min=0.0, doc="softmax(-accuracy / temperature); 0: the lowest accuracies")

    def window_for(self, way: int, meta_batch: int) -> int:
        """The pool's window in meta-batches (``window``, or the fewest whose tasks fail ``way`` times)."""
        return self.window if self.window is not None else -(-way // meta_batch)


@dataclass
class MetaConfig:
    way: int = _opt(5, min=2)
    shot: int = _opt(1, min=1)
    query: int = _opt(15, min=1)
    epochs: int = _opt(100, min=1)
    updates_per_epoch: int = _opt(100, min=1, doc="meta-updates per epoch (meta-validation after each epoch)")
    meta_batch: int = _opt(1, min=1, doc="normal tasks per meta-update (extra tasks come on top)")
    inner_steps: int = _opt(100, min=0)
    inner_lr: float = _opt(0.01, min=0.0)
    first_order: bool = False
    lr_ss: float = _opt(1e-4, min=0.0, doc="Adam lr of the SS weights (and BN affine)")
    lr_theta: float = _opt(1e-3, min=0.0, doc="Adam lr of the base-learner initialisation θ")
    step_size: int = _opt(10, min=1, doc="epochs between meta-LR decays")
    gamma: float = _opt(0.5, min=0.0)
    lr_floor: float = _opt(
        0.0, min=0.0, doc="the meta-LRs never decay below lr_floor x their start (TF code: 0.1)"
    )
    bn: str = _opt("frozen", choices=("frozen", "affine"))
    augment: bool = _opt(False, doc="augment task images as in pretraining (pretrain.augment settings)")
    hard_tasks: HardTaskConfig = _opt(HardTaskConfig())
    val_episodes: int = _opt(600, min=1)


@dataclass
class TestConfig:
    episodes: int = _opt(600, min=1)
    query: int = _opt(15, min=1)
    seed: int = _opt(0, doc="seed of the fixed test episodes (the same for every run and method)")
    inner_steps: int | None = _opt(None, min=0, doc="default: meta.inner_steps")
    batch_size: int = _opt(256, min=1, doc="images per batch when computing features")
    baselines: list[str] = _opt(
        ["ft", "nc", "pixels"], doc="methods scored beside the pipeline's method (evaluation-only ones)"
    )


@dataclass
class AblationConfig:
    episodes: int = _opt(2000, min=1, doc="test episodes per row (>= 2,000 resolves ~1-point differences)")
    scratch: bool = _opt(True, doc="also meta-train SS and θ on a random, unpretrained encoder")


@dataclass
class ProtoNetConfig:
    lr: float = _opt(1e-3, min=0.0, doc="Adam lr of the encoder (decayed like the meta-LRs: meta.step_size)")
    train_way: int | None = _opt(None, min=2, doc="classes per training task (default: meta.way)")
    pretrained: bool = _opt(
        False, doc="start from the pretrain stage's encoder; false: a random one (the paper)"
    )


@dataclass
class CompareConfig:
    episodes: int = _opt(2000, min=1, doc="shared test episodes of mtl compare")
    methods: list[str] | None = _opt(None, doc="rows of mtl compare (default: every method's variants)")


@dataclass
class PaperConfig:
    method: str = ""
    acc: float | None = None
    ci95: float | None = None


@dataclass
class Config:
    name: str = "glyphs-1shot"
    method: str = _opt("mtl", doc="the few-shot method metatrain trains and metatest scores (mtl.methods)")
    seed: int = 0
    device: str = _opt("auto", choices=("auto", "cpu", "cuda"))
    precision: str = _opt(
        "auto",
        choices=("auto", "fp32", "bf16"),
        doc="encoder autocast; auto: bf16 where native (Ampere+ GPUs, AMX CPUs)",
    )
    compile: bool = _opt(False, doc="torch.compile the encoder for pretrain and metatrain (CUDA)")
    checkpoint_every: int = _opt(0, min=0, doc="also write last.pt every N training steps (0: every epoch)")
    data: DataConfig = _opt(DataConfig())
    backbone: BackboneConfig = _opt(BackboneConfig())
    pretrain: PretrainConfig = _opt(PretrainConfig())
    meta: MetaConfig = _opt(MetaConfig())
    test: TestConfig = _opt(TestConfig())
    ablation: AblationConfig = _opt(AblationConfig())
    compare: CompareConfig = _opt(CompareConfig())
    protonet: ProtoNetConfig = _opt(ProtoNetConfig())
    paper: PaperConfig = _opt(PaperConfig(), doc="the published number for this setting, printed beside ours")

    def run_name(self, stage: str) -> str:
        """The run folder under the checkpoints dir that holds ``stage``'s outputs."""
        return (self.pretrain.name or self.name) if stage == "pretrain" else self.name

    def eval_inner_steps(self) -> int:
        """Inner steps when adapting to a validation, test or user task (``test.inner_steps``, by
        default ``meta.inner_steps``)."""
        return self.test.inner_steps if self.test.inner_steps is not None else self.meta.inner_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- loading


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a pipeline file (following ``extends:``), apply ``key=value`` overrides, validate."""
    return from_dict(pipeline_file.read(path, overrides))


def from_dict(raw: dict) -> Config:
    """Build and validate a :class:`Config` from a nested mapping (e.g. the one saved in a checkpoint)."""
    cfg = _build(Config, raw, prefix="")
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: Config) -> None:
    """Constraints that involve more than one key."""
    low, high = (cfg.pretrain.augment.crop_scale + [None, None])[:2]
    if len(cfg.pretrain.augment.crop_scale) != 2 or not 0 < low <= high <= 1:
        raise MtlError("pretrain.augment.crop_scale: expected [low, high] with 0 < low <= high <= 1")
    for key in ("mean", "std"):
        stats = getattr(cfg.data, key)
        if stats is not None and len(stats) != cfg.data.channels:
            raise MtlError(
                f"data.{key}: expected {cfg.data.channels} values (data.channels), got {len(stats)}"
            )
    if cfg.data.std is not None and min(cfg.data.std) <= 0:
        raise MtlError("data.std: values must be > 0")
    if cfg.data.resize is not None and cfg.data.resize < cfg.data.image_size:
        raise MtlError(
            f"data.resize: {cfg.data.resize} is smaller than data.image_size {cfg.data.image_size} "
            "(images are resized, then centre-cropped to image_size)"
        )
    if cfg.meta.lr_floor > 1:
        raise MtlError(f"meta.lr_floor: a fraction of the starting LR, at most 1, got {cfg.meta.lr_floor}")


# --------------------------------------------------------------------------- validation

# Keys of earlier versions, and what replaced them.
RENAMED = {
    "meta.episodes_per_epoch": "meta.updates_per_epoch (meta-updates per epoch, of meta.meta_batch tasks)",
    "meta.hard_tasks.capacity": "meta.hard_tasks.window (the pool holds the failures of that many recent "
    "meta-batches)",
}


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "pipeline"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MtlError(f"{where}: expected a section (mapping), got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if f"{prefix}{key}" in RENAMED:
            raise MtlError(f"{prefix}{key}: no longer a key, replaced by {RENAMED[f'{prefix}{key}']}")
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise MtlError(f"{prefix}{key}: unknown key{hint}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, raw[name], f"{prefix}{name}.")
        else:
            values[name] = _check(f"{prefix}{name}", raw[name], kind, f.metadata)
    return cls(**values)


def _check(key: str, value: Any, kind: Any, meta: typing.Mapping) -> Any:
    value = _coerce(key, value, kind)
    choices, low = meta.get("choices"), meta.get("min")
    if choices is not None and value not in choices:
        raise MtlError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    if low is not None and value is not None and value < low:
        raise MtlError(f"{key}: must be >= {low}, got {value!r}")
    return value


def _coerce(key: str, value: Any, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is list:
        if not isinstance(value, list):
            raise MtlError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if (
        kind is bool
        and not isinstance(value, bool)
        or not isinstance(value, kind)
        or (kind is int and isinstance(value, bool))
    ):
        raise MtlError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value
