"""Decoding and resizing single images to the uint8 ``(S, S, C)`` pixels a prepared dataset stores.

An image may have at most ``MTL_MAX_PIXELS`` pixels (:mod:`mtl.data.limits`; default 100 million, far
above any dataset photo): a PNG of a few MB can declare 30,000 × 30,000 pixels and would take gigabytes
to decode. PIL's own decompression-bomb checks (which also cover GIF frames and TIFF tiles) enforce the
same limit and end as :class:`TooLarge`, never as a warning. Only regular files are opened, so a FIFO
named ``x.png`` is refused instead of blocking.
"""

from __future__ import annotations

import io
import re
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mtl.data.limits import PIXELS, NotRegular, human, open_regular

RESAMPLE = Image.Resampling.BICUBIC
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


class BadImage(Exception):
    """An image that cannot be decoded; the message says why."""


class TooLarge(BadImage):
    """An image with more pixels than ``limit`` (``pixels``, or ``None`` where PIL did not say how many);
    the message gives both and the setting that raises the limit."""

    def __init__(self, pixels: int | None, limit: int) -> None:
        super().__init__(pixels, limit)  # the args rebuild it when a worker process returns it
        self.pixels, self.limit = pixels, limit

    def size(self) -> str:
        """``900 megapixels``, or ``more than 100 megapixels`` where the count is unknown."""
        if self.pixels is None:
            return f"more than {human(self.limit, 'pixels')}"
        return human(self.pixels, "pixels")

    def __str__(self) -> str:
        limit = human(self.limit, "pixels")
        return f"{self.size()}, over the limit of {limit} per image (MTL_MAX_PIXELS raises it)"


@dataclass(frozen=True)
class Rotated:
    """An image (file or encoded bytes) turned by ``turns`` quarter turns counter-clockwise, after
    resizing, so that the result is an exact rotation of the resized image (Omniglot's rotated classes)."""

    item: Path | bytes
    turns: int


def to_pixels(
    item: Path | bytes | np.ndarray | Rotated, size: int, channels: int, *, max_pixels: int | None = None
) -> np.ndarray:
    """Decode (if needed) and resize one image to ``(size, size, channels)`` uint8.

    ``item`` is an image file, encoded image bytes, ``(H, W, C)`` uint8 RGB pixels, or one of those
    :class:`Rotated`. The whole image is resized to a square (no crop), bicubic with antialiasing, as the
    standard 84×84 caches are. An encoded image may have at most ``max_pixels`` pixels (default:
    ``MTL_MAX_PIXELS``). Raises :class:`BadImage` if it cannot be decoded, :class:`TooLarge` (a
    ``BadImage``) if it is over the limit, and :class:`~mtl.errors.MtlError` if ``MTL_MAX_PIXELS`` is
    not a number.
    """
    if isinstance(item, Rotated):
        pixels = to_pixels(item.item, size, channels, max_pixels=max_pixels)
        return np.ascontiguousarray(np.rot90(pixels, k=item.turns))
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            item = item[..., None]
        h, w, c = item.shape
        if (h, w, c) == (size, size, channels):
            return item
        img = Image.fromarray(item[..., 0] if c == 1 else item)
    else:
        img = _open(item, size, max_pixels or PIXELS.get())
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE, reducing_gap=3.0)
    pixels = np.asarray(img, dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def _open(item: Path | bytes, size: int, max_pixels: int) -> Image.Image:
    try:
        with _source(item) as f, warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and refuses above twice that; both end as TooLarge here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_pixels
            img = Image.open(f)
            # JPEG can decode at 1/2, 1/4 or 1/8 scale: far faster for photos much larger than `size`.
            img.draft("RGB", (2 * size, 2 * size))
            img.load()
        # Phone photos are stored sideways with an EXIF orientation tag; viewers (and users) see them upright.
        ImageOps.exif_transpose(img, in_place=True)
    except _BOMB as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # PIL says how many; the limit is ours
        raise TooLarge(int(found[1]) if found else None, max_pixels) from None
    except NotRegular as exc:
        raise BadImage(f"it is a {exc.kind}, not a regular file") from None
    except OSError as exc:
        if exc.errno is not None:  # opening failed (no permission, gone): not a decoding problem
            raise BadImage(f"cannot read it: {exc.strerror}") from None
        raise BadImage(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    except (UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise BadImage(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    if getattr(img, "mode", "") in ("P", "PA", "LA", "RGBA", "I;16", "I", "F", "CMYK", "1"):
        img = _flatten(img)
    return img


def _source(item: Path | bytes):
    """The open file or buffer to decode: a path only if it names a regular file."""
    return nullcontext(io.BytesIO(item)) if isinstance(item, bytes) else open_regular(item)


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
