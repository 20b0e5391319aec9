"""Decoding the images people have: every PIL mode, EXIF-rotated photos, bytes, and broken files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mtl.data.prepare.images import BadImage, to_pixels


def encoded(img: Image.Image, fmt: str, **save_args) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save_args)
    return buf.getvalue()


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    img.putpixel((0, 0), (0, 0, 255, 255))
    pixels = to_pixels(encoded(img, "PNG"), 8, 3)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert pixels[0, 0].tolist() == [0, 0, 255] and pixels[4, 4].tolist() == [255, 255, 255]


def test_palette_and_grey_become_rgb_and_rgb_becomes_grey():
    palette = Image.new("P", (8, 8))
    palette.putpalette([10, 20, 30] * 256)
    assert to_pixels(encoded(palette, "GIF"), 8, 3)[3, 3].tolist() == [10, 20, 30]
    grey = Image.new("L", (8, 8), 77)
    assert to_pixels(encoded(grey, "PNG"), 8, 3)[0, 0].tolist() == [77, 77, 77]
    rgb = Image.new("RGB", (8, 8), (100, 100, 100))
    assert to_pixels(encoded(rgb, "PNG"), 8, 1).shape == (8, 8, 1)


def test_16_bit_greyscale_is_stretched_to_8_bits():
    a = np.linspace(1000, 3000, 64, dtype=np.uint16).reshape(8, 8)
    pixels = to_pixels(encoded(Image.fromarray(a), "PNG"), 8, 1)[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255 and (np.diff(pixels.ravel().astype(int)) >= 0).all()


def test_cmyk_jpeg_decodes_to_rgb():
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    r, g, b = to_pixels(encoded(img, "JPEG", quality=95), 16, 3)[8, 8].tolist()
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied():
    a = np.zeros((16, 32, 3), np.uint8)  # stored 32 wide, 16 high, left half white
    a[:, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encoded(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())
    upright = to_pixels(data, 32, 1)[..., 0].astype(int)
    # Displayed upright the image is 16 wide and 32 high, its white half on top.
    assert upright[:12].mean() > 200 and upright[-12:].mean() < 50


def test_pixels_in_the_right_shape_pass_through_and_others_are_resized():
    a = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert to_pixels(a, 8, 3) is a
    assert to_pixels(a, 4, 3).shape == (4, 4, 3) and to_pixels(a[..., 0], 8, 1).shape == (8, 8, 1)


@pytest.mark.parametrize("data", [b"", b"not an image", encoded(Image.new("RGB", (8, 8)), "PNG")[:40]])
def test_undecodable_bytes_raise_bad_image(data):
    with pytest.raises(BadImage):
        to_pixels(data, 8, 3)
