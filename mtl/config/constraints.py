"""The constraints that involve more than one key, checked after every key has passed on its own
(:func:`mtl.config.validation.build`), and the run names."""

from __future__ import annotations

from mtl.config.limits import MAX_CLASSES, MAX_GLYPHS_BYTES, MAX_NAME
from mtl.config.schema import Config, DataConfig
from mtl.config.validation import folder_name, size_text
from mtl.errors import MtlError

__all__ = ["check"]


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
