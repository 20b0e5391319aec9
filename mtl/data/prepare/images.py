"""Decoding and resizing single images to the uint8 ``(S, S, C)`` pixels a prepared dataset stores.

An image may have at most ``MTL_MAX_PIXELS`` pixels (:mod:`mtl.data.prepare.limits`; default 100 million, far
above any dataset photo): a PNG of a few MB can declare 30,000 × 30,000 pixels and would take gigabytes
to decode. PIL's own decompression-bomb checks (which also cover GIF frames and TIFF tiles) enforce the
same limit and end as :class:`TooLarge`, never as a warning. Only regular files are opened, so a FIFO
named ``x.png`` is refused instead of blocking.

A file that does not decode is named for what it is, from its first bytes
(:mod:`mtl.data.prepare.file_types`): empty, a PDF document, a PyTorch checkpoint, an HTML page, ..., or a
truncated or damaged image of a format PIL reads. PIL's warnings about damaged files (corrupt EXIF data
and the like) are not shown: the image either decodes or is refused with its reason.

Deep single-channel images (16-bit or 32-bit integers, PIL modes ``I;16*`` and ``I``, and 32-bit floats,
mode ``F``, as TIFF, PNG and FITS hold them) carry no convention for which value is black and which is
white (a float image may hold 0..1, 0..255 or physical units), so their range is stretched: the smallest
value becomes 0 and the largest 255, linearly, truncated to the level below; an image of one value
becomes black. A float image with NaN or infinite values is refused: no grey level stands for them.
The stretch works in blocks of rows, so it needs little more memory than the decoded image.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mtl.data.prepare.file_types import describe, identify
from mtl.data.prepare.limits import PIXELS, NotRegular, human, open_regular

RESAMPLE = Image.Resampling.BICUBIC
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# What PIL raises on a file it cannot identify or decode (fuzzed files reach the struct and index ones).
_UNDECODABLE = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
_HEAD = 1024  # bytes read to tell what an undecodable file is (a tar header's "ustar" sits at 257)
_BLOCK = 1 << 20  # pixels per block when stretching a deep image: 8 MB of float64


class BadImage(Exception):
    """An image that cannot be used.

    ``str()`` is the reason as a phrase about "it", to follow "cannot decode image"
    (``it is empty (0 bytes), not an image``); :meth:`about` says it as one sentence that names the
    file (``x.png is empty (0 bytes), not an image``).
    """

    def __init__(self, reason: str, clause: str | None = None) -> None:
        super().__init__(reason, clause)  # the args rebuild it when a worker process returns it
        self.reason, self.clause = reason, clause

    @classmethod
    def it(cls, clause: str) -> BadImage:
        """``clause`` with the image as its subject: ``BadImage.it("is empty")``."""
        return cls(f"it {clause}", clause)

    def __str__(self) -> str:
        return self.reason

    def about(self, name: object) -> str:
        """One line naming ``name`` (the file): what it is, or why it cannot be decoded."""
        return f"{name} {self.clause}" if self.clause else f"{name}: cannot decode image ({self})"


class TooLarge(BadImage):
    """An image with more pixels than ``limit`` (``pixels``, or ``None`` where PIL did not say how many);
    the message gives both and the setting that raises the limit."""

    def __init__(self, pixels: int | None, limit: int) -> None:
        Exception.__init__(self, pixels, limit)  # the args rebuild it when a worker process returns it
        self.pixels, self.limit, self.clause = pixels, limit, None

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
    ``MTL_MAX_PIXELS``). Raises :class:`BadImage` if it cannot be decoded (saying what the file is),
    :class:`TooLarge` (a ``BadImage``) if it is over the limit, and :class:`~mtl.errors.MtlError` if
    ``MTL_MAX_PIXELS`` is not a number.
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
    """The decoded image, upright, in mode ``L`` or ``RGB``."""
    try:
        with _source(item) as f, _decoding(max_pixels):
            img = None
            try:
                img = Image.open(f)
                # JPEG can decode at 1/2, 1/4 or 1/8 scale: far faster for photos much larger than `size`.
                img.draft("RGB", (2 * size, 2 * size))
                img.load()
                # Phone photos are stored sideways with an EXIF orientation tag; viewers (and users) see
                # them upright.
                ImageOps.exif_transpose(img, in_place=True)
            except _UNDECODABLE as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # reading failed (no permission, gone): not a decoding problem
                raise _undecodable(f, img, exc) from None
            return _eight_bit(img)
    except _BOMB as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # PIL says how many; the limit is ours
        raise TooLarge(int(found[1]) if found else None, max_pixels) from None
    except NotRegular as exc:
        raise BadImage.it(f"is a {exc.kind}, not a regular file") from None
    except OSError as exc:
        raise BadImage(f"cannot read it: {exc.strerror or exc}") from None


@contextmanager
def _decoding(max_pixels: int) -> Iterator[None]:
    with warnings.catch_warnings():
        # PIL warns about damaged files (corrupt EXIF data, ...) with a source line; the image decodes
        # anyway or is refused with its reason, so the warning would only be noise.
        warnings.simplefilter("ignore", UserWarning)
        # PIL warns above MAX_IMAGE_PIXELS and refuses above twice that; both end as TooLarge.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = max_pixels
        yield


def _source(item: Path | bytes) -> AbstractContextManager[BinaryIO]:
    """The open file or buffer to decode: a path only if it names a regular file."""
    return nullcontext(io.BytesIO(item)) if isinstance(item, bytes) else open_regular(item)


_DAMAGE = re.compile(r"truncat|broken|corrupt|damage|premature|unexpected end|EOF", re.IGNORECASE)


def _undecodable(f: BinaryIO, img: Image.Image | None, exc: Exception) -> BadImage:
    """Why the file ``f`` (``img`` if PIL identified it) did not decode: what it is, from its first bytes."""
    detail = _detail(exc)
    try:
        f.seek(0)
        head = f.read(_HEAD)
    except (OSError, ValueError):
        return BadImage(detail)
    if not head:
        return BadImage.it("is empty (0 bytes), not an image")
    sig = identify(head)
    opened = img.format if img is not None else None
    if sig is not None and sig.image is None:  # a PDF, an archive, ...: even where a PIL stub named it
        return BadImage.it(f"is {sig.what}, not an image")
    if sig is None and opened is None:
        return BadImage.it(f"is not in any image format mtl reads (it starts with {head[:8].hex(' ')})")
    if opened is None and sig.image not in Image.OPEN:
        return BadImage.it(f"is {sig.what}, a format mtl cannot read (convert it to PNG or JPEG)")
    what = sig.what if sig is not None else describe(opened)
    if isinstance(exc, UnidentifiedImageError):  # its message only repeats that PIL could not identify it
        return BadImage.it(f"is a truncated or damaged {what.split(' ', 1)[1]}")
    if _DAMAGE.search(detail):
        return BadImage.it(f"is a truncated or damaged {what.split(' ', 1)[1]}: {detail}")
    return BadImage.it(f"is {what} that cannot be decoded, perhaps damaged: {detail}")


def _detail(exc: Exception) -> str:
    """The first line of PIL's reason, without its description of the open file object."""
    text = re.sub(r"\s*<_io\.[^>]*>", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _eight_bit(img: Image.Image) -> Image.Image:
    """A decoded image in mode ``L`` or ``RGB``: deep images stretched, palette, alpha and CMYK images
    flattened to RGB (alpha composited on white)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        return _stretch(img, describe(img.format))
    if img.mode in ("L", "RGB"):
        return img
    try:
        rgba = img.convert("RGBA")
    except ValueError:
        raise BadImage.it(
            f"is {describe(img.format)} in pixel mode {img.mode}, which mtl cannot convert"
        ) from None
    out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    out.alpha_composite(rgba)
    return out.convert("RGB")


def _stretch(img: Image.Image, what: str) -> Image.Image:
    """A 16- or 32-bit integer or float single-channel image -> ``L``, its smallest value 0 and its
    largest 255 (all 0 for an image of one value); NaN or infinite values are refused. In blocks of rows:
    a float64 copy of the whole image would take twice the memory of a float one."""
    w, h = img.size
    step = max(1, _BLOCK // w)
    spans = [(top, min(h, top + step)) for top in range(0, h, step)]

    def rows(top: int, bottom: int) -> np.ndarray:
        return np.asarray(img.crop((0, top, w, bottom)), dtype=np.float64)

    lo, hi, bad = math.inf, -math.inf, 0
    for top, bottom in spans:
        a = rows(top, bottom)
        finite = np.isfinite(a)
        if not finite.all():
            bad += a.size - int(np.count_nonzero(finite))
        elif not bad:
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    if bad:
        raise BadImage.it(
            f"is {what} with NaN or infinite pixel values ({bad:,} of {w * h:,} pixels), which no grey "
            "level stands for"
        )
    # Finite float32 values are below 3.5e38, so hi - lo is finite in float64 and nothing overflows.
    span = (hi - lo) or 1.0
    out = np.empty((h, w), dtype=np.uint8)
    for top, bottom in spans:  # truncated to the level below, as the datasets prepared so far were
        out[top:bottom] = ((rows(top, bottom) - lo) / span * 255).astype(np.uint8)  # within 0 .. 255
    return Image.fromarray(out)
