"""Files that are not usable images, given to `mtl adapt`, `mtl predict` and `mtl data prepare`: each is
refused in one line that names the file and says what it is (empty, a PDF, a truncated PNG, a float
TIFF with NaN, ...), with no warning printed and nothing written; and deep (16-bit, 32-bit, float)
images that are usable are stretched to 8 bits without a warning."""

from __future__ import annotations

import gzip
import io
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import digests
from fakes import pattern_images, write_image
from PIL import Image

from mtl.cli import main
from mtl.data.prepare import images
from mtl.data.prepare.file_types import PLAIN_TEXT, identify
from mtl.data.prepare.images import BadImage, to_pixels
from mtl.data.prepared import load_manifest


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def float_tiff(*values: float) -> bytes:
    """A one-row TIFF of 32-bit floats (PIL mode F), as scientific software writes them."""
    return encoded(Image.fromarray(np.array([values], dtype=np.float32)), "TIFF")


def checkpoint_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"encoder": torch.zeros(2)}, buf)
    return buf.getvalue()


GOOD_PNG = encoded(Image.fromarray(pattern_images(1, 24, seed=3)[0]), "PNG")

# name -> (file name, its bytes, what the one error line says after the file's name)
BAD_FILES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "nan-tiff": (
        "x.tif",
        lambda: float_tiff(np.nan, 1.0),
        "is a TIFF image with NaN or infinite pixel values",
    ),
    "inf-tiff": ("x.tif", lambda: float_tiff(1.0, np.inf, -np.inf), "is a TIFF image with NaN or infinite"),
    "pdf-named-png": (
        "x.png",
        lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
        "is a PDF document, not an image",
    ),
    "empty-png": ("x.png", lambda: b"", "is empty (0 bytes), not an image"),
    "truncated-png": ("x.png", lambda: GOOD_PNG[: len(GOOD_PNG) // 2], "is a truncated or damaged PNG image"),
    "checkpoint-named-png": ("x.png", checkpoint_bytes, "is a PyTorch checkpoint, not an image"),
    "html-named-jpg": (
        "x.jpg",
        lambda: b"<!DOCTYPE html>\n<html><body>Not found</body></html>",
        "is an HTML page",
    ),
    "gzip-named-png": ("x.png", lambda: gzip.compress(GOOD_PNG), "is a gzip archive, not an image"),
    "text-named-png": ("x.png", lambda: b"just some notes\n", "is a plain text file, not an image"),
}


def invoke(*args: object) -> tuple[object, list[warnings.WarningMessage]]:
    """Run ``mtl *args``; also every warning raised meanwhile (recorded, so none is printed)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, [str(a) for a in args])
    return result, caught


def assert_refused(result, caught: list, path: Path, says: str) -> None:
    """Exit 2 and exactly one line, ``error: <path> <says>...``, with no warning or traceback."""
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    assert result.exit_code == 2, result.output
    assert "Warning" not in result.output and "Traceback" not in result.output, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path} {says}"), result.output


@pytest.fixture(scope="module")
def task(finished_tiny, tmp_path_factory) -> SimpleNamespace:
    """A two-class task of glyph-like images and the classifier `mtl adapt --save` made from it."""
    _, ckpts = finished_tiny
    root = tmp_path_factory.mktemp("image-files")
    for folder in ("support", "query"):
        for k, name in enumerate(("a", "b")):
            write_image(root / folder / name / "0.png", pattern_images(1, 24, seed=10 * k + len(folder))[0])
    best = ckpts / "tiny" / "metatrain" / "best.pt"
    saved = root / "classifier.pt"
    result, caught = invoke("adapt", "--checkpoint", best, "--support", root / "support",
                            "--query", root / "query", "--save", saved)  # fmt: skip
    assert result.exit_code == 0 and not caught, result.output
    return SimpleNamespace(ckpts=ckpts, best=best, classifier=saved, root=root)


def copy_task(task: SimpleNamespace, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(task.root / "support", tmp_path / "support")
    shutil.copytree(task.root / "query", tmp_path / "query")
    return tmp_path / "support", tmp_path / "query"


@pytest.mark.parametrize("where", ["support", "query"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_adapt_names_the_bad_file_and_what_it_is(task, tmp_path, case, where):
    name, data, says = BAD_FILES[case]
    support, query = copy_task(task, tmp_path)
    bad = (support if where == "support" else query) / "a" / name
    bad.write_bytes(data())
    out, saved = tmp_path / "out" / "p.csv", tmp_path / "out" / "c.pt"
    out.parent.mkdir()
    before, inputs = digests(task.ckpts), digests(tmp_path)
    result, caught = invoke("adapt", "--checkpoint", task.best, "--support", support, "--query", query,
                            "--out", out, "--save", saved)  # fmt: skip
    assert_refused(result, caught, bad, says)
    assert digests(task.ckpts) == before and digests(tmp_path) == inputs  # nothing written or changed


@pytest.mark.parametrize("given", ["file", "folder"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_predict_names_the_bad_file_and_what_it_is(task, tmp_path, case, given):
    name, data, says = BAD_FILES[case]
    _, query = copy_task(task, tmp_path)
    bad = query / "b" / name
    bad.write_bytes(data())
    before, classifier = digests(task.ckpts), task.classifier.read_bytes()
    inputs = digests(tmp_path)
    args = [bad] if given == "file" else [query]
    result, caught = invoke("predict", task.classifier, *args, "--out", tmp_path / "out" / "p.csv")
    assert_refused(result, caught, bad, says)
    assert digests(task.ckpts) == before and task.classifier.read_bytes() == classifier
    assert digests(tmp_path) == inputs


def test_prepare_says_what_the_bad_file_is_and_skip_bad_still_skips_it(tmp_path):
    own = tmp_path / "own"
    for c in range(10):
        for i, img in enumerate(pattern_images(3, 24, seed=c)):
            write_image(own / f"class_{c}" / f"{i}.png", img)
    bad = own / "class_4" / "x.png"
    bad.write_bytes(b"%PDF-1.7\n")
    args = ["data", "prepare", "folder", "--source", own, "--workers", 1]
    result, caught = invoke(*args, "--dest", tmp_path / "a")
    assert not caught and result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"error: {bad}: cannot decode image (it is a PDF document, not an image); --skip-bad skips these"
    ]
    result, caught = invoke(*args, "--dest", tmp_path / "b", "--skip-bad")
    assert not caught and result.exit_code == 0, result.output
    assert load_manifest(tmp_path / "b")["skipped"] == 1


# --- decoding, without the command line ----------------------------------------------------------------


def decode(data: bytes, size: int = 2) -> np.ndarray:
    """``to_pixels`` with every warning an error and numpy refusing invalid arithmetic."""
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        return to_pixels(data, size, 1)[..., 0]


@pytest.mark.parametrize(
    "values",
    [(np.nan, 1.0), (np.inf, 1.0), (-np.inf, 0.0), (np.nan, np.nan)],
    ids=["nan", "inf", "-inf", "all-nan"],
)
def test_non_finite_float_pixels_are_refused_without_a_warning(values):
    with pytest.raises(BadImage) as err:
        decode(float_tiff(*values))
    bad = sum(not np.isfinite(v) for v in values)
    assert err.value.about("x.tif") == (
        f"x.tif is a TIFF image with NaN or infinite pixel values ({bad} of 2 pixels), which no grey level "
        "stands for"
    )


@pytest.mark.parametrize(
    "values",
    [(-3e38, 0.0, 3e38), (0.0, 0.5, 1.0), (1e6, 1.5e6, 2e6), (-1e-30, 0.0, 1e-30), (0.0, 127.5, 255.0)],
    ids=["float32-extremes", "unit-range", "millions", "tiny", "byte-range"],
)
def test_float_images_are_stretched_from_their_smallest_to_their_largest_value(values):
    assert decode(float_tiff(*values), size=3)[0].tolist() == [0, 127, 255]


@pytest.mark.parametrize(
    "array, fmt",
    [
        (np.array([[0, 32768, 65535]], dtype=np.uint16), "PNG"),  # I;16
        (np.array([[1000, 1500, 2000]], dtype=">u2"), "TIFF"),  # I;16B
        (np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32), "TIFF"),  # I
    ],
    ids=["16-bit-png", "16-bit-big-endian-tiff", "32-bit-tiff"],
)
def test_deep_integer_images_are_stretched(array, fmt):
    assert decode(encoded(Image.fromarray(array), fmt), size=3)[0].tolist() == [0, 127, 255]


def test_deep_images_are_stretched_in_blocks_of_rows_alike(monkeypatch):
    a = np.linspace(-5.0, 9.0, 64 * 48, dtype=np.float32).reshape(64, 48)
    whole = decode(encoded(Image.fromarray(a), "TIFF"), size=64)
    monkeypatch.setattr(images, "_BLOCK", 100)  # blocks of 2 rows
    assert (decode(encoded(Image.fromarray(a), "TIFF"), size=64) == whole).all()
    assert whole.min() == 0 and whole.max() == 255
    a[-1, -1] = np.nan  # in the last block: still found, and counted
    with pytest.raises(BadImage, match=r"\(1 of 3,072 pixels\)"):
        decode(encoded(Image.fromarray(a), "TIFF"))


def test_an_image_of_one_value_becomes_black():
    assert decode(float_tiff(7.0, 7.0)).tolist() == [[0, 0], [0, 0]]


def test_pil_warnings_about_damaged_files_are_not_shown():
    tiff = encoded(Image.new("L", (8, 8), 100), "TIFF")
    with pytest.raises(BadImage, match="^it is a truncated or damaged TIFF image"):
        decode(tiff[:20])  # PIL warns "Corrupt EXIF data" on the way


@pytest.mark.parametrize(
    "head, what",
    [
        (b"%PDF-1.4", "a PDF document"),
        (checkpoint_bytes(), "a PyTorch checkpoint"),
        (b"PK\x03\x04" + bytes(40), "a ZIP archive"),
        (b"\x80\x04\x95\x10\x00", "a Python pickle"),
        (b"\x7fELF\x02\x01\x01", "an ELF executable"),
        (b"  <?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "an SVG drawing"),
        (b"<?xml version='1.0'?><data/>", "an XML document"),
        (b"\xef\xbb\xbf<HTML>", "an HTML page"),
        (b"BMW and Audi\n", "a plain text file"),  # "BM" alone is no BMP
        (GOOD_PNG[:4], "a PNG image"),
        (b"\x00\x00\x00\x18ftypheic", "a HEIC image"),
    ],
)
def test_files_are_identified_by_their_first_bytes(head, what):
    assert (identify(head) or PLAIN_TEXT).what == what


def test_unknown_binary_and_formats_pil_lacks_are_named():
    assert identify(bytes(range(0x90, 0xA0))) is None
    with pytest.raises(BadImage, match=r"^it is not in any image format mtl reads \(it starts with 90 91 92"):
        decode(bytes(range(0x90, 0xA0)))
    with pytest.raises(BadImage, match=r"^it is a HEIC image, a format mtl cannot read \(convert it to PNG"):
        decode(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
