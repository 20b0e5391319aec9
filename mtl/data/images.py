"""Decoding and resizing single images to the uint8 ``(S, S, C)`` pixels a prepared dataset stores."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = None  # datasets hold large photos; the files are the user's own
RESAMPLE = Image.Resampling.BICUBIC


class BadImage(Exception):
    """An image that cannot be decoded; the message says why."""


@dataclass(frozen=True)
class Rotated:
    """An image (file or encoded bytes) turned by ``turns`` quarter turns counter-clockwise, after
    resizing, so that the result is an exact rotation of the resized image (Omniglot's rotated classes)."""

    item: Path | bytes
    turns: int


def to_pixels(item: Path | bytes | np.ndarray | Rotated, size: int, channels: int) -> np.ndarray:
    """Decode (if needed) and resize one image to ``(size, size, channels)`` uint8.

    ``item`` is an image file, encoded image bytes, ``(H, W, C)`` uint8 RGB pixels, or one of those
    :class:`Rotated`. The whole image is resized to a square (no crop), bicubic with antialiasing, as the
    standard 84×84 caches are. Raises :class:`BadImage` if it cannot be decoded.
    """
    if isinstance(item, Rotated):
        return np.ascontiguousarray(np.rot90(to_pixels(item.item, size, channels), k=item.turns))
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            item = item[..., None]
        h, w, c = item.shape
        if (h, w, c) == (size, size, channels):
            return item
        img = Image.fromarray(item[..., 0] if c == 1 else item)
    else:
        img = _open(item, size)
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE, reducing_gap=3.0)
    pixels = np.asarray(img, dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def _open(item: Path | bytes, size: int) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(item) if isinstance(item, bytes) else item)
        # JPEG can decode at 1/2, 1/4 or 1/8 scale: far faster for photos much larger than `size`.
        img.draft("RGB", (2 * size, 2 * size))
        img.load()
        # Phone photos are stored sideways with an EXIF orientation tag; viewers (and users) see them upright.
        ImageOps.exif_transpose(img, in_place=True)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    if getattr(img, "mode", "") in ("P", "PA", "LA", "RGBA", "I;16", "I", "F", "CMYK", "1"):
        img = _flatten(img)
    return img


def _flatten(img: Image.Image) -> Image.Image:
    """Palette, alpha, 16-bit and CMYK images -> RGB (alpha composited on white)."""
    if img.mode in ("I;16", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        span = a.max() - a.min()
        return Image.fromarray(((a - a.min()) / (span or 1) * 255).astype(np.uint8))
    rgba = img.convert("RGBA")
    out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    out.alpha_composite(rgba)
    return out.convert("RGB")
