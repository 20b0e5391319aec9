"""``glyphs``: a procedural few-shot dataset of random stroke characters, generated locally (no download).

Each class is a "character" of 1-4 strokes, each stroke one or two chained cubic Béziers whose control
points are seeded by ``(seed, class_id)``. Each image draws its class with jittered control points, a random
affine transform (rotation, scale, shear, shift), a random pen width and pixel noise; colour images also get
random ink and background colours. The ``hard`` preset adds stronger nuisances and 1-2 distractor strokes
per image, so that raw pixels separate classes poorly while the shared strokes stay easy to see.

The ``families`` preset groups classes into families of 1-6 look-alikes (one base of 3 strokes, plus a
short mark of each member's own at a spot the family shares), with mild nuisances and one mark-like
distractor per image, and splits whole families; see :mod:`mtl.data.glyphs.families`.

Image ``j`` of class ``c`` depends only on ``(seed, preset, c, j, image_size, channels)``: never on the
split, the other classes or how many images are rendered at once.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mtl.data.glyphs import families as glyph_families
from mtl.data.glyphs.splits import SPLITS, split_class_ids
from mtl.data.glyphs.strokes import Template, assemble, cubic, curve_points, splat, stroke
from mtl.data.prepared import Split, load_manifest, load_split, save_dataset
from mtl.errors import MtlError
from mtl.runtime import outputs, run_lock


@dataclass(frozen=True)
class GlyphStyle:
    """Nuisance strengths of a preset. Glyph coordinates live in the box ``[-1, 1]²``."""

    jitter: float  # std of each control point's offset
    stroke_shift: float  # std of a whole stroke's offset
    rotation: float  # max |rotation|, degrees
    scale: tuple[float, float]  # isotropic scale range
    shear: float  # max |shear|
    shift: float  # max |translation|, fraction of the image size
    width: tuple[float, float]  # pen width range, fraction of the image size
    noise: float  # std of additive pixel noise, intensities in [0, 1]
    contrast: float  # min luminance gap between ink and background
    distractors: tuple[int, int]  # range of random non-class strokes per image
    light_ink: bool  # colour images may also draw light ink on dark paper


PRESETS: dict[str, GlyphStyle] = {
    "easy": GlyphStyle(
        jitter=0.04, stroke_shift=0.03, rotation=10.0, scale=(0.9, 1.1), shear=0.1, shift=0.05,
        width=(0.045, 0.07), noise=0.03, contrast=0.4, distractors=(0, 0), light_ink=False,
    ),
    "hard": GlyphStyle(
        jitter=0.08, stroke_shift=0.06, rotation=20.0, scale=(0.8, 1.2), shear=0.25, shift=0.08,
        width=(0.035, 0.07), noise=0.1, contrast=0.25, distractors=(1, 2), light_ink=True,
    ),
    "families": GlyphStyle(
        jitter=0.04, stroke_shift=0.03, rotation=10.0, scale=(0.9, 1.1), shear=0.1, shift=0.05,
        width=(0.04, 0.07), noise=0.05, contrast=0.3, distractors=(1, 1), light_ink=True,
    ),
}  # fmt: skip
_FILL = 0.34  # pixels per glyph unit / image size: the [-1, 1] box spans 68% of the image
_SPACING = 0.75  # max distance in pixels between curve samples; the stamp error is < 0.1 px
_DISTRACTOR_LENGTH = (0.3, 0.6)  # shorter than class strokes, so a person can still tell them apart
_MAX_SIZE = 1024
_VERSION = 1  # bump when the drawing changes, so existing caches are regenerated


def _check(preset: str, image_size: int, channels: int, seed: int, images: int = 1) -> GlyphStyle:
    """The preset's style, after checking every user-given parameter."""
    if preset not in PRESETS:
        raise MtlError(f"unknown glyphs preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if not isinstance(image_size, int) or not 8 <= image_size <= _MAX_SIZE:
        raise MtlError(f"glyphs image_size must be an integer in 8..{_MAX_SIZE}, got {image_size!r}")
    if channels not in (1, 3):
        raise MtlError(f"glyphs channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if not isinstance(seed, int) or seed < 0:
        raise MtlError(f"glyphs seed must be a non-negative integer, got {seed!r}")
    if not isinstance(images, int) or images < 1:
        raise MtlError(f"glyphs images_per_class must be a positive integer, got {images!r}")
    return PRESETS[preset]


def class_split_ids(classes: int, preset: str, seed: int) -> dict[str, np.ndarray]:
    """Class ids of each split: :func:`split_class_ids`, or whole families for the ``families`` preset."""
    if preset == "families":
        return glyph_families.family_split_ids(classes, seed)
    return split_class_ids(classes)


def _class_template(seed: int, class_id: int, preset: str) -> Template:
    """A class's strokes: 1-4 independent ones, or its family's base and own mark for ``families``."""
    if preset == "families":
        return glyph_families.family_template(seed, class_id)
    rng = np.random.default_rng([seed, class_id, 0])
    return assemble([stroke(rng) for _ in range(rng.integers(1, 5))])


class _Draw(NamedTuple):
    """The random choices of one image."""

    cubics: np.ndarray  # (S, 4, 2) jittered class cubics, glyph units
    extra: np.ndarray  # (D, 4, 2) distractor cubics; only the first `count` are drawn
    count: int
    affine: np.ndarray  # (2, 2) rotation @ shear, times scale
    shift: np.ndarray  # (2,) pixels
    width: float  # pen width, pixels
    ink: np.ndarray  # (C,) in [0, 1]
    paper: np.ndarray  # (C,) in [0, 1]
    noise: np.ndarray  # (H, W, C) standard normal


def _image_params(rng: np.random.Generator, template: tuple, style: GlyphStyle, channels: int, size: int):
    """One image's draws, always in the same order: geometry, pen, distractors, colours, noise."""
    points, stroke_of, segments = template
    pts = points + style.jitter * rng.standard_normal(points.shape)
    pts += style.stroke_shift * rng.standard_normal((stroke_of.max() + 1, 2))[stroke_of]
    angle = np.deg2rad(rng.uniform(-style.rotation, style.rotation))
    scale, shear = rng.uniform(*style.scale), rng.uniform(-style.shear, style.shear)
    shift = rng.uniform(-style.shift, style.shift, size=2) * size
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    affine = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    width = rng.uniform(*style.width) * size
    lo, hi = style.distractors
    count = rng.integers(lo, hi + 1) if hi else 0
    extra = [cubic(rng, rng.uniform(-0.7, 0.7, size=2), _DISTRACTOR_LENGTH) for _ in range(hi)]
    extra = np.stack(extra) if extra else np.zeros((0, 4, 2))
    ink, paper = _colours(rng, channels, style)
    noise = rng.standard_normal((size, size, channels), dtype=np.float32)
    return _Draw(pts[segments], extra, count, affine, shift, width, ink, paper, noise)


def _colours(rng: np.random.Generator, channels: int, style: GlyphStyle) -> tuple[np.ndarray, np.ndarray]:
    """Ink and paper intensities ``(C,)`` in [0, 1], luminances at least ``style.contrast`` apart."""
    if channels == 1:  # dark ink on light paper
        return rng.uniform(0.0, 0.25, size=1), rng.uniform(0.75, 1.0, size=1)
    luma = np.array([0.299, 0.587, 0.114])
    paper = rng.uniform(0, 1, size=3)
    if not style.light_ink:  # dark ink needs light enough paper
        paper = style.contrast + (1 - style.contrast) * paper
    for _ in range(100):  # rejection sampling; almost always succeeds within a few draws
        ink = rng.uniform(0, 1, size=3)
        gap = (paper - ink) @ luma
        if gap >= style.contrast or (style.light_ink and -gap >= style.contrast):
            return ink, paper
    return np.zeros(3), np.ones(3)


def _bound_samples(length: float, style: GlyphStyle, size: int) -> int:
    """Samples per cubic so that a curve of up to ``length`` glyph units (before the affine) is sampled
    every ``_SPACING`` pixels or closer."""
    pixels = length * style.scale[1] * (1 + style.shear) * _FILL * size
    return max(4, math.ceil(pixels / _SPACING))


def render_class(
    class_id: int, n: int, *, image_size: int, channels: int, preset: str, seed: int
) -> np.ndarray:
    """The first ``n`` images of class ``class_id``: ``(n, image_size, image_size, channels)`` uint8."""
    style = _check(preset, image_size, channels, seed, n)
    template = _class_template(seed, class_id, preset)
    rngs = [np.random.default_rng([seed, class_id, 1, zlib.crc32(preset.encode()), j]) for j in range(n)]
    draws = [_image_params(rng, template, style, channels, image_size) for rng in rngs]
    cubics, extra, count, affine, shift, width, ink, paper, noise = map(np.stack, zip(*draws, strict=True))
    # Sample counts depend only on the class and the style, so an image never depends on its batch.
    points, segments = template[0], template[2]
    longest = np.abs(np.diff(points[segments], axis=1)).sum(-1).sum(-1).max() + 6 * style.jitter
    class_pts = curve_points(cubics, _bound_samples(longest, style, image_size))
    extra_samples = _bound_samples(2.25 * _DISTRACTOR_LENGTH[1], style, image_size)
    extra_pts = curve_points(extra, extra_samples)
    extra_keep = np.repeat(np.arange(extra.shape[1]) < count[:, None], extra_samples, axis=1)
    keep = np.concatenate([np.ones(class_pts.shape[:2], bool), extra_keep], axis=1)
    centre = image_size / 2 + shift[:, None, :]
    points = np.concatenate([class_pts, extra_pts], axis=1) @ affine.transpose(0, 2, 1) * (_FILL * image_size)
    cov = splat(points + centre, keep, width, image_size)[..., None]  # (n, H, W, 1)
    img = paper[:, None, None, :] + (ink - paper)[:, None, None, :] * cov + style.noise * noise
    return np.rint(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def generate(
    *, classes: int, images_per_class: int, image_size: int, channels: int, preset: str, seed: int
) -> dict[str, Split]:
    """All three splits; each split's labels are ``0..K-1`` over its own classes, named ``glyph-0042``
    (``glyph-0042-f07`` with the ``families`` preset: class 42 of family 7)."""
    _check(preset, image_size, channels, seed, images_per_class)
    splits = {}
    for name, ids in class_split_ids(classes, preset, seed).items():
        images = np.empty((len(ids) * images_per_class, image_size, image_size, channels), np.uint8)
        for k, c in enumerate(ids):
            images[k * images_per_class : (k + 1) * images_per_class] = render_class(
                int(c), images_per_class, image_size=image_size, channels=channels, preset=preset, seed=seed
            )
        labels = np.repeat(np.arange(len(ids), dtype=np.int64), images_per_class)
        fams = preset == "families"
        names = glyph_families.family_class_names(ids, seed) if fams else [f"glyph-{c:04d}" for c in ids]
        splits[name] = Split(images, labels, names)
    return splits


def ensure_glyphs(
    root: Path, *, classes: int, images_per_class: int, image_size: int, channels: int, preset: str, seed: int
) -> Path:
    """The prepared ``glyphs`` dataset folder under ``root``, generated only if missing or invalid."""
    params = {"classes": classes, "images_per_class": images_per_class, "image_size": image_size}
    params |= {"channels": channels, "preset": preset, "seed": seed}
    style = _check(preset, image_size, channels, seed, images_per_class)
    class_split_ids(classes, preset, seed)
    name = f"glyphs-{preset}-c{classes}-n{images_per_class}-s{image_size}-ch{channels}-seed{seed}"
    dest = Path(root).expanduser() / name
    # The style and renderer version are recorded too, so a cache made by other drawing code is redone.
    recorded = {**params, "style": asdict(style), "version": _VERSION}
    if preset == "families":  # a version of its own: changing the families leaves easy / hard caches valid
        recorded["families_version"] = glyph_families.VERSION
    recorded = json.loads(json.dumps(recorded))
    if _cached(dest, recorded):
        return dest
    # Before the images are drawn: a cache that cannot be written is one line naming the folder.
    folder = outputs.nearest_folder(dest.parent)
    if (why := outputs.unwritable(folder)) is not None:
        where = f"{folder} is {why}"
        if folder != dest.parent:
            where = f"{dest.parent} cannot be made, {where}"
        raise MtlError(
            f"cannot write the glyphs dataset cache: {where}; nothing was written; "
            "use --set data.root=DIR with a writable folder"
        )
    # Every process of a run (on every node, when the cache is on a shared disk) may get here at once:
    # one draws the images while the others wait, then find them.
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with run_lock.exclusive(dest.parent / f".{dest.name}.lock"):
            if _cached(dest, recorded):
                return dest
            return save_dataset(dest, generate(**params), source_format="glyphs", extra={"glyphs": recorded})
    except OSError as exc:  # a full or read-only disk: save_dataset has removed its temporary folder
        failed = Path(os.fsdecode(exc.filename)) if exc.filename else dest
        where = f" ({failed.name})" if failed.parent.name.startswith(f".{dest.name}.tmp-") else ""
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise MtlError(
            f"could not write the glyphs dataset cache {dest}{where}: {reason}; "
            "set data.root to a writable folder with room for it"
        ) from None


def _cached(dest: Path, recorded: dict) -> bool:
    """Whether ``dest`` holds a loadable glyphs dataset made with exactly these parameters."""
    try:
        same = load_manifest(dest).get("glyphs") == recorded
        return same and all(load_split(dest, name) is not None for name in SPLITS)
    except MtlError:
        return False
