"""The pipeline schema: one dataclass per section of a pipeline file, each field with its default, range
and the line of documentation ``mtl config`` and the README's key table show."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import yaml

from mtl.config import sections
from mtl.config.limits import (
    MAX_BATCH,
    MAX_EPISODES,
    MAX_EPOCHS,
    MAX_IMAGE_SIZE,
    MAX_MEAN,
    MAX_SEED,
    MAX_STD,
    MAX_TASKS,
    MAX_UPDATES,
    MAX_WIDTH,
    MIN_MEAN,
    MIN_STD,
)
from mtl.config.validation import option

__all__ = [  # noqa: RUF022  (the order of a pipeline file)
    *("GlyphsConfig", "DataConfig", "BackboneConfig", "AugmentConfig", "PretrainConfig"),
    *("HardTaskConfig", "MetaConfig", "TestConfig", "AblationConfig", "CompareConfig", "PaperConfig"),
    "Config",
]


def _seed(doc: str = "") -> Any:
    """A seed's field: numpy takes 0 .. 2**32 - 1."""
    return option(0, min=0, max=MAX_SEED, doc=doc)


@dataclass
class GlyphsConfig:
    preset: str = option(
        "easy",
        choices=("easy", "hard", "families"),
        doc="how alike the glyph classes are; families: classes in look-alike families",
    )
    # Upper limits: with data.image_size, see _check_glyphs_size (the memory they need comes first).
    classes: int = option(100, min=3, doc="glyph classes drawn (split into train, val and test classes)")
    images_per_class: int = option(100, min=2, doc="images drawn per glyph class")
    seed: int = _seed("the dataset's own seed (independent of the training seed)")


_OF_PIXELS = (
    "statistics of pixels / 255, in [0, 1]: divide 0-255 ones by 255; outside the range the model's input "
    "is infinite or constant"
)


@dataclass
class DataConfig:
    dataset: str = option("glyphs", doc="'glyphs' (built in) or the name of a dataset prepared at data.root")
    root: str = option(
        "~/.cache/mtl", doc="glyphs: cache folder; other datasets: the prepared dataset folder"
    )
    image_size: int = option(84, min=8, max=MAX_IMAGE_SIZE, doc="side of the square images the model sees")
    channels: int = option(3, choices=(1, 3), doc="1: grey images (Omniglot), 3: colour")
    # The ranges keep the normalised input finite and distinct in fp32 and bf16 (mtl.config.limits).
    mean: list[float] | None = option(
        None,
        min=MIN_MEAN,
        max=MAX_MEAN,
        doc="per-channel normalisation mean, of pixels / 255 in [0, 1] (default: ImageNet / 0.5); the "
        "model sees (pixels / 255 - mean) / std",
        why=_OF_PIXELS,
    )
    std: list[float] | None = option(
        None,
        min=MIN_STD,
        max=MAX_STD,
        doc="per-channel normalisation std, of pixels / 255 (default: ImageNet / 0.5); smaller makes the "
        "input infinite, larger hides it under batch norm's epsilon",
        why=_OF_PIXELS,
    )
    resize: int | None = option(
        None,
        min=8,
        max=2 * MAX_IMAGE_SIZE,
        doc="resize images to this size, then centre-crop image_size (official PyTorch code: 92 -> 80); "
        "null: resize straight to image_size",
    )
    glyphs: GlyphsConfig = option(GlyphsConfig())


@dataclass
class BackboneConfig:
    name: str = option(
        "resnet12", doc="one of mtl's backbones (conv4, resnet12, resnet25, ...) or timm:<any timm model>"
    )
    widths: list[int] | None = option(
        None, min=1, max=MAX_WIDTH, doc="resnet12 stage widths, e.g. [64, 160, 320, 640]"
    )
    drop_rate: float = option(
        0.0, min=0.0, below=1.0, doc="dropout on the pooled features, in pretraining only"
    )


@dataclass
class AugmentConfig:
    enabled: bool = option(True, doc="augment pretraining images (random-resized crop, flip)")
    crop_scale: list[float] = option([0.6, 1.0], doc="random-resized-crop area range")
    flip: bool = option(True, doc="random horizontal flip")


@dataclass
class PretrainConfig:
    epochs: int = option(100, min=1, max=MAX_EPOCHS, doc="passes over the base classes' images")
    batch_size: int = option(128, min=1, max=MAX_BATCH, doc="images per SGD step")
    lr: float = option(0.1, above=0.0, doc="SGD learning rate")
    momentum: float = option(0.9, min=0.0, max=1.0, doc="SGD momentum")
    nesterov: bool = option(True, doc="Nesterov momentum")
    weight_decay: float = option(5e-4, min=0.0, max=1.0, doc="SGD weight decay")
    schedule: str = option("step", choices=("step", "cosine"), doc="learning-rate schedule")
    step_size: int = option(30, min=1, doc="epochs between LR decays (step schedule)")
    gamma: float = option(0.2, min=0.0, max=1.0, doc="LR factor at each decay (step schedule)")
    first_drop: int | None = option(
        None,
        min=0,
        doc="epochs before the first decay (step schedule); null: step_size - 1, as the official code "
        "(StepLR stepped at the start of every epoch: x0.2 from the 30th epoch)",
    )
    label_smoothing: float = option(0.0, min=0.0, below=1.0, doc="cross-entropy label smoothing")
    head_hidden: int = option(
        0,
        min=0,
        max=MAX_WIDTH,
        doc="hidden units of the classification head: 0 linear; official PyTorch: 1000 (Linear-ReLU-Linear)",
    )
    augment: AugmentConfig = option(AugmentConfig())
    val_episodes: int = option(
        600, min=1, max=MAX_EPISODES, doc="few-shot validation episodes after each epoch"
    )
    val_shot: int | None = option(None, min=1, doc="shot of that validation (default: meta.shot)")
    name: str | None = option(
        None, doc="run folder of this stage (default: name); pipelines that share it share one pretrain"
    )


@dataclass
class HardTaskConfig:
    enabled: bool = option(False, doc="extra tasks in every meta-batch (MTL + HT)")
    per_batch: int = option(1, min=1, max=MAX_TASKS, doc="extra tasks added to every meta-batch")
    window: int | None = option(
        None,
        min=1,
        doc="meta-batches whose failure classes form the pool (null: ceil(way / meta_batch), the fewest "
        "that give way failure classes)",
    )
    mode: str = option(
        "softmax",
        choices=("softmax", "uniform", "random"),
        doc="pool classes drawn by softmax(-accuracy / temperature) or uniformly; random: the control, "
        "extra tasks of random base classes",
    )
    temperature: float = option(
        0.1, min=0.0, doc="softmax(-accuracy / temperature); 0: the lowest accuracies"
    )

    def window_for(self, way: int, meta_batch: int) -> int:
        """The pool's window in meta-batches (``window``, or the fewest whose tasks fail ``way`` times)."""
        return self.window if self.window is not None else -(-way // meta_batch)


@dataclass
class MetaConfig:
    way: int = option(5, min=2, doc="classes per task (N-way)")
    shot: int = option(1, min=1, doc="labelled support images per class (K-shot)")
    query: int = option(15, min=1, doc="query images per class in meta-training tasks")
    epochs: int = option(100, min=1, max=MAX_EPOCHS, doc="meta-training epochs (meta-validation after each)")
    updates_per_epoch: int = option(
        100, min=1, max=MAX_UPDATES, doc="meta-updates per epoch (meta-validation after each epoch)"
    )
    meta_batch: int = option(
        1, min=1, max=MAX_TASKS, doc="normal tasks per meta-update (extra tasks come on top)"
    )
    step_size: int = option(10, min=1, doc="epochs between meta-LR decays")
    gamma: float = option(0.5, min=0.0, max=1.0, doc="meta-LR factor at each decay")
    first_drop: int | None = option(
        None,
        min=0,
        doc="meta-updates before the first decay, then one every step_size epochs; null: step_size - 1 "
        "epochs, as the official PyTorch code (drops after 900, 1,900, ...); the TF code: 1001",
    )
    lr_floor: float = option(
        0.0, min=0.0, doc="the meta-LRs never decay below lr_floor x their start (TF code: 0.1)"
    )
    augment: bool = option(
        False,
        doc="augment task images as in pretraining (pretrain.augment settings); both official codes: false",
    )
    hard_tasks: HardTaskConfig = option(HardTaskConfig())
    val_episodes: int = option(600, min=1, max=MAX_EPISODES, doc="fixed meta-validation episodes")


@dataclass
class TestConfig:
    episodes: int = option(600, min=1, max=MAX_EPISODES, doc="fixed, seeded test episodes")
    query: int = option(15, min=1, doc="query images per class in test episodes")
    seed: int = _seed("seed of the fixed test episodes (the same for every run and method)")
    batch_size: int = option(256, min=1, max=MAX_BATCH, doc="images per batch when computing features")
    baselines: list[str] = option(
        ["ft", "nc", "pixels"], doc="methods scored beside the pipeline's method (evaluation-only ones)"
    )


@dataclass
class AblationConfig:
    episodes: int = option(
        2000, min=1, max=MAX_EPISODES, doc="test episodes per row (>= 2,000 resolves ~1-point differences)"
    )
    scratch: bool = option(
        True,
        doc="the paper's train-from-scratch row: MAML on the pipeline's backbone from random "
        "initialisation, every parameter adapted and meta-learned (the maml: section's steps and rates)",
    )
    scratch_first_order: bool = option(
        False, doc="that row without second derivatives (first-order MAML), where memory requires"
    )
    random_encoder: bool = option(
        False,
        doc="mtl's own control, not a row of the paper: the pipeline's method meta-trained on a random, "
        "unpretrained encoder",
    )


@dataclass
class CompareConfig:
    episodes: int = option(2000, min=1, max=MAX_EPISODES, doc="shared test episodes of mtl compare")
    methods: list[str] | None = option(None, doc="rows of mtl compare (default: all, see mtl compare --list)")


@dataclass
class PaperConfig:
    method: str = option("", doc="the published row's name")
    acc: float | None = option(None, min=0.0, max=100.0, doc="its accuracy (%)")
    ci95: float | None = option(None, min=0.0, max=100.0, doc="its 95% confidence interval (%)")


@dataclass
class Config:
    name: str = option("glyphs-1shot", doc="run folder under the checkpoints folder: one folder name")
    method: str = option("mtl", doc="the few-shot method metatrain trains and metatest scores (mtl.methods)")
    seed: int = _seed("training seed")
    device: str = option("auto", choices=("auto", "cpu", "cuda"), doc="auto: CUDA when there is a GPU")
    precision: str = option(
        "auto",
        choices=("auto", "fp32", "bf16"),
        doc="encoder autocast; auto: bf16 on CPUs with AMX (measured to keep accuracy), else fp32",
    )
    compile: bool = option(False, doc="torch.compile the encoder for pretrain and metatrain (CUDA)")
    checkpoint_every: int = option(0, min=0, doc="also write last.pt every N training steps (0: every epoch)")
    data: DataConfig = option(DataConfig())
    backbone: BackboneConfig = option(BackboneConfig())
    pretrain: PretrainConfig = option(PretrainConfig())
    meta: MetaConfig = option(MetaConfig())
    test: TestConfig = option(TestConfig())
    ablation: AblationConfig = option(AblationConfig())
    compare: CompareConfig = option(CompareConfig())
    paper: PaperConfig = option(
        PaperConfig(), doc="the published number for this setting, printed beside ours"
    )
    # The methods' own sections, {method name: its settings}: top-level keys of the file like the
    # ones above (``cfg.protonet.lr``), handed over by the methods as they register (mtl.config.sections).
    sections: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name, section in sections.registered(required=False).items():  # defaults where not given
            if section.settings is not None and name not in self.sections:
                self.sections[name] = section.settings()

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"'Config' object has no attribute {name!r}")

    def section(self, method: str) -> Any:
        """The settings of ``method`` (its section of the pipeline)."""
        return self.sections[method]

    def run_name(self, stage: str) -> str:
        """The run folder under the checkpoints dir that holds ``stage``'s outputs."""
        return (self.pretrain.name or self.name) if stage == "pretrain" else self.name

    def to_dict(self, *, every_method: bool = True) -> dict:
        """The resolved pipeline as a nested mapping, the methods' sections at the top level like the
        core ones: every method's (what a checkpoint keeps: compare's rows are built from it), or with
        ``every_method=False`` only the sections the chosen method reads (what ``mtl config`` prints)."""
        core = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sections"}
        out = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in core.items()}
        paper = out.pop("paper")
        read = self.sections if every_method else self._read_sections()
        out.update({k: dataclasses.asdict(v) for k, v in self.sections.items() if k in read})
        return {**out, "paper": paper}

    def _read_sections(self) -> set[str]:
        """The sections of the methods' that the chosen method reads: its own and those it borrows."""
        section = sections.registered(required=False).get(self.method)
        return {self.method, *(section.borrows if section is not None else ())}

    def to_yaml(self) -> str:
        """The resolved pipeline as YAML, with the sections the chosen method reads."""
        return yaml.safe_dump(self.to_dict(every_method=False), sort_keys=False)
