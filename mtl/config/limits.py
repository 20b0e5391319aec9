"""The limits of the settings, and the constraints that involve more than one key.

Each limit is far beyond any real run: it refuses what would need absurd memory or time, what the
libraries cannot take (numpy seeds are 32-bit), or a normalisation that turns the images into numbers
the encoder cannot tell from a constant. The schema (:mod:`mtl.config.schema`) declares the
per-key ranges with these constants; :func:`check` runs after every key has passed on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mtl.config.validation import folder_name, size_text
from mtl.errors import MtlError

__all__ = [
    "MAX_SEED",
    "MAX_EPISODES",
    "MAX_STEPS",
    "MAX_EPOCHS",
    "MAX_UPDATES",
    "MAX_TASKS",
    "MAX_BATCH",
    "MAX_IMAGE_SIZE",
    "MAX_WIDTH",
    "MAX_LR",
    "MAX_CLASSES",
    "MAX_GLYPHS_BYTES",
    "MAX_NAME",
    "MIN_MEAN",
    "MAX_MEAN",
    "MIN_STD",
    "MAX_STD",
    "check",
]

if TYPE_CHECKING:
    from mtl.config.schema import Config, DataConfig

MAX_SEED = 2**32 - 1
MAX_EPISODES = 100_000  # fixed evaluation episodes (the papers: 600; 2,000 resolve 1-point differences)
MAX_STEPS = 10_000  # gradient steps of an inner loop (the paper: 100), and mtl adapt --steps
MAX_EPOCHS = 10_000
MAX_UPDATES = 1_000_000  # meta-updates per epoch
MAX_TASKS = 10_000  # tasks per meta-batch (normal or extra)
MAX_BATCH = 1 << 20  # images per batch
MAX_IMAGE_SIZE = 1024  # pixels a side (the papers: 84; ImageNet models: 224)
MAX_WIDTH = 8192  # channels of a ResNet-12 stage, or hidden units of a head
MAX_LR = 100.0  # inner-loop step sizes (the paper: 0.01); outer rates are watched by the NaN check
MAX_CLASSES = 100_000  # glyphs classes, and images per glyphs class
MAX_GLYPHS_BYTES = 16 * 2**30  # the generated glyphs dataset, all splits, in memory and on disk
MAX_NAME = 100  # characters of a run name (one folder name)

# data.mean and data.std, of pixels / 255 (in [0, 1]); the encoder sees (pixels / 255 - mean) / std.
# A mean in [-1, 2] keeps |pixels / 255 - mean| <= 2, where bf16's 8 significant bits still tell apart
# pixel values two levels (of 255) apart; a 0-255 mean (123.7) leaves bf16 one or two values per image,
# a constant to the encoder. A std in [1e-3, 10] keeps the input finite (|input| <= 2,000, where a
# subnormal std gives inf and NaN in fp32) and its variance far above batch norm's epsilon (1e-5); a
# real channel's std lies in (0, 0.5], and 1e-3 is a quarter of one pixel level.
MIN_MEAN = -1.0
MAX_MEAN = 2.0
MIN_STD = 1e-3
MAX_STD = 10.0


def check(cfg: Config) -> None:
    """Constraints that involve more than one key, and the run names."""
    folder_name("name", cfg.name, MAX_NAME)
    if cfg.pretrain.name is not None:
        folder_name("pretrain.name", cfg.pretrain.name, MAX_NAME)
    _check_glyphs_size(cfg.data)
    low, high = (cfg.pretrain.augment.crop_scale + [None, None])[:2]
    if len(cfg.pretrain.augment.crop_scale) != 2 or not 0 < low <= high <= 1:
        raise MtlError("pretrain.augment.crop_scale: expected [low, high] with 0 < low <= high <= 1")
    for key in ("mean", "std"):
        stats = getattr(cfg.data, key)
        if stats is not None and len(stats) != cfg.data.channels:
            raise MtlError(
                f"data.{key}: expected {cfg.data.channels} values (data.channels), got {len(stats)}"
            )
    if cfg.data.resize is not None and cfg.data.resize < cfg.data.image_size:
        raise MtlError(
            f"data.resize: {cfg.data.resize} is smaller than data.image_size {cfg.data.image_size} "
            "(images are resized, then centre-cropped to image_size)"
        )
    if cfg.meta.lr_floor > 1:
        raise MtlError(f"meta.lr_floor: a fraction of the starting LR, at most 1, got {cfg.meta.lr_floor}")


def _check_glyphs_size(data: DataConfig) -> None:
    """The generated glyphs dataset is held in memory whole: refuse a size no machine holds, saying
    how much it would need; then counts that would take days to draw."""
    if data.dataset != "glyphs":
        return
    g, side = data.glyphs, data.image_size
    need = g.classes * g.images_per_class * side * side * data.channels
    if need > MAX_GLYPHS_BYTES:
        raise MtlError(
            f"data.glyphs: {g.classes:,} classes x {g.images_per_class:,} images of {side}x{side}x"
            f"{data.channels} would need {size_text(need)} of memory, over the {size_text(MAX_GLYPHS_BYTES)} "
            "limit; lower data.glyphs.classes, data.glyphs.images_per_class or data.image_size"
        )
    for key in ("classes", "images_per_class"):
        if (value := getattr(g, key)) > MAX_CLASSES:
            raise MtlError(f"data.glyphs.{key}: must be <= {MAX_CLASSES:,}, got {value:,}")
