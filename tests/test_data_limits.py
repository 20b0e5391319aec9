"""Small files that ask for unbounded memory or block forever: each is refused by `mtl data prepare` (or
`mtl adapt`) with one line naming the file and the setting that raises the limit."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY
from fakes import assert_prepare_refused, pattern_images, write_image, write_py3_pickle
from PIL import Image

from mtl.cli import main
from mtl.data.prepare import safe_pickle
from mtl.data.prepare.images import TooLarge, to_pixels
from mtl.data.prepared import load_manifest, load_split
from mtl.errors import MtlError


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, message: str) -> str:
    """The single ``error:`` line of a failed command (exit 2, no traceback), which contains ``message``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    return lines[0]


def own_images(root: Path, classes: int = 10, per_class: int = 3, size: int = 24) -> Path:
    for c in range(classes):
        for i, img in enumerate(pattern_images(per_class, size, seed=c)):
            write_image(root / f"class_{c}" / f"{i}.png", img)
    return root


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 128).save(buf, "PNG")
    return buf.getvalue()


# --- pixels per image -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--max-pixels", "MTL_MAX_PIXELS"])
def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch, how):
    own_images(tmp_path / "own")
    (tmp_path / "own" / "class_3" / "big.png").write_bytes(png((40, 30)))  # 1,200 pixels
    option = ["--max-pixels", 1000] if how == "--max-pixels" else []
    if how == "MTL_MAX_PIXELS":
        monkeypatch.setenv("MTL_MAX_PIXELS", "1000")
    dest = tmp_path / "prep"
    result = invoke("data", "prepare", "folder", "--source", tmp_path / "own", "--dest", dest, *option)
    line = one_error_line(result, "big.png: image of 1,200 pixels, over the limit of 1,000 pixels per image")
    assert line.endswith("raise it with --max-pixels or MTL_MAX_PIXELS, or --skip-bad skips such images")
    assert not dest.exists()


def test_skip_bad_skips_images_over_the_limit_and_the_limit_reaches_worker_processes(tmp_path):
    own_images(tmp_path / "own", classes=10, per_class=210)  # 2,100 files: decoded by worker processes
    (tmp_path / "own" / "class_3" / "big.png").write_bytes(png((40, 30)))
    args = ["--source", tmp_path / "own", "--dest", tmp_path / "prep", "--image-size", 8, "--workers", 2]
    result = invoke("data", "prepare", "folder", *args, "--max-pixels", 1000, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped 1 undecodable images (first: " in result.output and "big.png" in result.output
    assert sum(len(load_split(tmp_path / "prep", s)) for s in ("train", "val", "test")) == 2100
    assert load_manifest(tmp_path / "prep")["skipped"] == 1


@pytest.mark.parametrize("size", [(10, 8), (20, 20)], ids=["PIL warns", "PIL refuses"])
def test_decompression_bombs_pil_detects_are_too_large_never_a_warning(size, monkeypatch):
    # PIL warns between its limit and twice it, and raises above; both must end as TooLarge.
    monkeypatch.setenv("MTL_MAX_PIXELS", "60")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TooLarge) as err:
            to_pixels(png(size), 8, 1)
    assert not caught, [str(w.message) for w in caught]
    pixels = size[0] * size[1]
    assert (
        str(err.value) == f"{pixels} pixels, over the limit of 60 pixels per image (MTL_MAX_PIXELS raises it)"
    )
    assert to_pixels(png((6, 10)), 8, 1).shape == (8, 8, 1)  # at the limit: decoded


def test_a_bad_limit_setting_is_one_line(tmp_path, monkeypatch):
    own_images(tmp_path / "own")
    monkeypatch.setenv("MTL_MAX_PIXELS", "lots")
    result = invoke("data", "prepare", "folder", "--source", tmp_path / "own", "--dest", tmp_path / "prep")
    one_error_line(result, "MTL_MAX_PIXELS must be a positive whole number of pixels, got 'lots'")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny metatrain checkpoint (glyphs, 16x16), for `mtl adapt`."""
    root = tmp_path_factory.mktemp("adapt")
    sets = [a for o in [*TINY, f"data.root={root / 'data'}"] for a in ("--set", o)]
    for stage in ("pretrain", "metatrain"):
        result = invoke(
            stage, "pipelines/glyphs-1shot.yaml", *sets, "--checkpoints", root / "ckpts", "--quiet"
        )
        assert result.exit_code == 0, result.output
    return root / "ckpts" / "tiny" / "metatrain" / "best.pt"


def test_adapt_honours_MTL_MAX_PIXELS(checkpoint, tmp_path, monkeypatch):
    for split in ("support", "query"):
        for c in ("a", "b"):
            write_image(tmp_path / split / c / "0.png", pattern_images(1, 24, seed=ord(c))[0])
    args = [
        "adapt",
        "--checkpoint",
        checkpoint,
        "--support",
        tmp_path / "support",
        "--query",
        tmp_path / "query",
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output  # within the default limit
    monkeypatch.setenv("MTL_MAX_PIXELS", "500")
    line = one_error_line(
        invoke(*args), "0.png: cannot decode image (576 pixels, over the limit of 500 pixels"
    )
    assert "MTL_MAX_PIXELS raises it" in line


# --- files that are not regular files ------------------------------------------------------------------


def test_a_fifo_named_like_an_image_is_refused_at_once_and_a_symlink_is_read(tmp_path):
    own = own_images(tmp_path / "own")
    os.mkfifo(own / "class_2" / "pipe.png")  # nothing ever writes to it: opening it blocking would hang
    (own / "class_4" / "link.png").symlink_to(own / "class_4" / "0.png")

    def prepare(dest: str, *options: str) -> subprocess.CompletedProcess:
        # A subprocess, so that a regression (a blocking open) fails here instead of hanging the suite.
        cmd = [sys.executable, "-m", "mtl", "data", "prepare", "folder", "--source", str(own), "--dest", dest]
        return subprocess.run([*cmd, "--workers", "1", *options], capture_output=True, text=True, timeout=600)

    run = prepare(str(tmp_path / "a"))
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: {own / 'class_2' / 'pipe.png'}: cannot decode image (it is a FIFO (named pipe), not a "
        "regular file); --skip-bad skips these"
    ]
    run = prepare(str(tmp_path / "b"), "--skip-bad")
    assert run.returncode == 0, run.stderr
    assert sum(len(load_split(tmp_path / "b", s)) for s in ("train", "val", "test")) == 31  # 30 + the link


# --- archives ------------------------------------------------------------------------------------------


def omniglot_zips(src: Path, extra: bytes | None = None, info: zipfile.ZipInfo | None = None) -> Path:
    """Both Omniglot zips, 2 alphabets x 2 characters x 2 drawings each; ``extra`` is one more entry
    (described by ``info``) in images_background.zip."""
    src.mkdir(parents=True)
    for half, alphabets in (
        ("images_background", ["Latin", "Greek"]),
        ("images_evaluation", ["Angelic", "Keble"]),
    ):
        with zipfile.ZipFile(src / f"{half}.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for a in alphabets:
                for c in (1, 2):
                    for i in (1, 2):
                        z.writestr(f"{half}/{a}/character{c:02d}/{i}.png", png((12, 12)))
            if extra is not None and half == "images_background":
                z.writestr(info, extra)
    return src


def entry(name: str = "images_background/Latin/character01/9.png", method: int = zipfile.ZIP_DEFLATED):
    info = zipfile.ZipInfo(name)
    info.compress_type = method
    return info


_LOCAL = {8: 6, 10: 8}  # central directory offset -> local header offset: flags, compression method


def patch_entry(path: Path, name: str, offset: int, fmt: str, value: int) -> None:
    """Overwrite a field of ``name``'s central directory record (and the flags or the method in its
    local header too): what a damaged or hostile zip holds."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(name).header_offset
    at = 0
    while (at := data.find(b"PK\x01\x02", at + 1)) >= 0:
        n = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + n] == name.encode():
            struct.pack_into(fmt, data, at + offset, value)
            if offset in _LOCAL:
                struct.pack_into(fmt, data, local + _LOCAL[offset], value)
    path.write_bytes(bytes(data))


def test_a_zip_entry_over_the_limit_is_refused_from_its_declared_size(tmp_path, monkeypatch):
    src = omniglot_zips(tmp_path / "src", bytes(4096), entry())  # 4 KiB of zeros, a few bytes packed
    monkeypatch.setenv("MTL_MAX_ENTRY_BYTES", "2K")
    assert_prepare_refused(
        tmp_path, "omniglot", src,
        f"{src / 'images_background.zip'}: entry 9 unpacks to 4.0 KiB, over the limit of 2.0 KiB "
        "(MTL_MAX_ENTRY_BYTES raises it)",
    )  # fmt: skip


def test_a_zip_whose_entries_together_are_over_the_limit_is_refused(tmp_path, monkeypatch):
    src = omniglot_zips(tmp_path / "src", bytes(4096), entry())
    monkeypatch.setenv("MTL_MAX_ARCHIVE_BYTES", "4K")
    result = invoke("data", "prepare", "omniglot", "--source", src, "--dest", tmp_path / "prep")
    line = one_error_line(result, f"{src / 'images_background.zip'}: its entries unpack to 4.")
    assert line.endswith("KiB, over the limit of 4.0 KiB (MTL_MAX_ARCHIVE_BYTES raises it)")
    assert not (tmp_path / "prep").exists()


def test_a_zip_entry_larger_than_it_declares_is_cut_off_and_refused(tmp_path):
    name = "images_background/Latin/character01/9.png"
    src = omniglot_zips(tmp_path / "src", png((12, 12)) + bytes(100_000), entry(name, zipfile.ZIP_STORED))
    patch_entry(src / "images_background.zip", name, 24, "<I", 100)  # declares 100 bytes
    message = "images_background.zip: not a readable zip (BadZipFile: Bad CRC-32"
    assert_prepare_refused(tmp_path, "omniglot", src, message)


@pytest.mark.parametrize("damage", ["encrypted", "unknown method"])
def test_encrypted_or_unsupported_zip_entries_are_one_line(tmp_path, damage):
    info = entry()
    src = omniglot_zips(tmp_path / "src", png((12, 12)), info)
    if damage == "encrypted":
        patch_entry(src / "images_background.zip", info.filename, 8, "<H", 0x1)  # zipfile cannot write one
        message = "entry 9 is encrypted; mtl reads unencrypted archives only"
    else:
        patch_entry(src / "images_background.zip", info.filename, 10, "<H", 99)
        message = "entry 9 is compressed with method 99, which mtl cannot unpack (it reads stored, deflate"
    assert_prepare_refused(tmp_path, "omniglot", src, f"{src / 'images_background.zip'}: {message}")


def test_a_tar_member_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("cifar-100-python/train")
        member.size = 8192
        tar.addfile(member, io.BytesIO(bytes(8192)))
    monkeypatch.setenv("MTL_MAX_ENTRY_BYTES", "4K")
    assert_prepare_refused(
        tmp_path, "fc100", archive, f"{archive}: entry 1 unpacks to 8.0 KiB, over the limit of 4.0 KiB"
    )


def test_an_npz_whose_header_claims_more_than_its_entry_holds_is_refused(tmp_path):
    src = tmp_path / "tiered"
    src.mkdir()
    header = io.BytesIO()
    shape = (10**6, 84, 84, 3)
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    for split in ("train", "val", "test"):
        with zipfile.ZipFile(src / f"{split}_images.npz", "w") as z:
            z.writestr("images.npy", header.getvalue() + bytes(100))  # claims 21 GB, holds 100 bytes
        write_py3_pickle(src / f"{split}_labels.pkl", {"label_specific": [0, 1]})
    assert_prepare_refused(
        tmp_path, "tieredimagenet", src,
        f"{src / 'train_images.npz'}: the array 'images' claims 19.7 GiB but its entry holds",
    )  # fmt: skip


# --- pickles -------------------------------------------------------------------------------------------

_BYTEARRAY_BOMB = b"\x80\x02c__builtin__\nbytearray\n\x8a\x06\x00\xa0r\x4e\x18\x09\x85R."  # bytearray(10**13)
_DEEP = b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b"."  # a list in a list ... 200,000 deep
_CYCLE = b"\x80\x02]q\x00h\x00a."  # a list that holds itself
_HEX_CHAIN = b"\x80\x02c_codecs\nencode\n" + b"X\x01\x00\x00\x00aX\x03\x00\x00\x00hex\x86R."


_PICKLES = {
    "bytearray(10**13)": (_BYTEARRAY_BOMB, "the pickle asks for 9.1 TiB of memory (through bytearray)"),
    "200k deep": (
        _DEEP,
        "the pickle nests containers deeper than 100 levels, the limit (MTL_MAX_PICKLE_DEPTH",
    ),
    "cycle": (_CYCLE, "the pickle holds a container inside itself (a cycle); refused"),
    "hex codec": (_HEX_CHAIN, "refused to load _codecs.encode other than text to latin-1"),
}


@pytest.mark.parametrize(("data", "message"), list(_PICKLES.values()), ids=list(_PICKLES))
def test_pickles_asking_for_unbounded_memory_or_depth_are_one_line(tmp_path, data, message):
    src = tmp_path / "mini"
    src.mkdir()
    path = src / "mini-imagenet-cache-train.pkl"
    path.write_bytes(data)
    assert_prepare_refused(tmp_path, "miniimagenet", src, f"{path}: {message}")


def test_a_pickle_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    src = tmp_path / "mini"
    src.mkdir()
    write_py3_pickle(
        src / "mini-imagenet-cache-train.pkl", {"image_data": np.zeros((4, 16, 16, 3), np.uint8)}
    )
    monkeypatch.setenv("MTL_MAX_PICKLE_BYTES", "1K")
    monkeypatch.setattr(safe_pickle, "_Restricted", None)  # reading it at all would fail differently
    assert_prepare_refused(
        tmp_path,
        "miniimagenet",
        src,
        "mini-imagenet-cache-train.pkl: the pickle holds 3.1 KiB, over the limit of 1.0 KiB",
    )


def test_the_pickle_limits_leave_real_pickles_alone(tmp_path, monkeypatch):
    obj = {
        "data": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        "labels": [1, 2],
        "set": set(range(1000)),
        "bytes": [b"\x89PNG", bytearray(b"xy")],
        "nested": [[[[1]]]],
        "object array": np.array([b"x", "y"], dtype=object),
    }
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / "x.pkl").write_bytes(pickle.dumps(obj, protocol))
        back = safe_pickle.load(tmp_path / "x.pkl", decode_bytes=False)
        assert back["set"] == obj["set"] and back["bytes"] == obj["bytes"] and back["nested"] == [[[[1]]]]
        np.testing.assert_array_equal(back["data"], obj["data"])
    monkeypatch.setenv("MTL_MAX_PICKLE_DEPTH", "3")
    with pytest.raises(MtlError, match="x.pkl: the pickle nests containers deeper than 3 levels"):
        safe_pickle.load(tmp_path / "x.pkl")
