"""What a file is, from its first bytes: a table of signatures (magic numbers) of images, documents,
archives, checkpoints, executables and text, so that a file mtl cannot use is named for what it is
("x.png is a PDF document, not an image") rather than for what PIL could not do with it."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PLAIN_TEXT", "SIGNATURES", "Signature", "describe", "identify"]


@dataclass(frozen=True)
class Signature:
    """Files whose first bytes match ``pattern`` are ``what`` (with its article: ``"a PNG image"``).
    ``image`` is PIL's name for an image format (``None`` for anything else), whether or not this PIL
    decodes it; ``text`` signatures match a text file's start, lower-cased, after any BOM and white space.
    """

    pattern: re.Pattern[bytes]
    what: str
    image: str | None = None
    text: bool = False


def _signatures(*rows: tuple) -> tuple[Signature, ...]:
    return tuple(Signature(re.compile(p, re.DOTALL), *more) for p, *more in rows)


# What a file is, from its first bytes. The first match wins: the specific ZIP kinds precede ZIP, and the
# two-letter magics (BM, MZ) require the bytes that follow them in real files, so text is not taken for them.
SIGNATURES = _signatures(
    (rb"\x89PNG", "a PNG image", "PNG"),
    (rb"\xff\xd8", "a JPEG image", "JPEG"),
    (rb"GIF8", "a GIF image", "GIF"),
    (rb"BM.{4}\x00\x00\x00\x00", "a BMP image", "BMP"),
    (rb"II\*\x00|MM\x00\*", "a TIFF image", "TIFF"),
    (rb"RIFF.{4}WEBP", "a WebP image", "WEBP"),
    (rb".{4}ftypavi[fs]", "an AVIF image", "AVIF"),
    (rb".{4}ftyp(?:heic|heix|hevc|heim|heis|mif1|msf1)", "a HEIC image", "HEIF"),
    (rb"\x00\x00\x00\x0cjP  \r\n\x87\n|\xff\x4f\xff\x51", "a JPEG 2000 image", "JPEG2000"),
    (rb"\x00\x00\x00\x0cJXL \r\n\x87\n|\xff\x0a", "a JPEG XL image", "JXL"),
    (rb"\x00\x00\x01\x00", "an ICO icon", "ICO"),
    (rb"8BPS", "a Photoshop (PSD) image", "PSD"),
    (rb"qoif", "a QOI image", "QOI"),
    (rb"SIMPLE  =", "a FITS image", "FITS"),
    (rb"v/1\x01", "an OpenEXR image", "EXR"),
    (rb".{128}DICM", "a DICOM medical image", "DICOM"),
    (rb"%!PS", "a PostScript document", "EPS"),
    (rb"%PDF-", "a PDF document"),
    (rb"PK\x03\x04.{26}[^/\x00]{1,200}/data\.pkl", "a PyTorch checkpoint"),
    (rb"PK\x03\x04.{26}[^\x00]{1,200}?\.npy", "a NumPy .npz archive"),
    (rb"PK\x03\x04|PK\x05\x06", "a ZIP archive"),
    (rb"\x1f\x8b", "a gzip archive"),
    (rb"BZh[1-9]", "a bzip2 archive"),
    (rb"\xfd7zXZ\x00", "an xz archive"),
    (rb"\x28\xb5\x2f\xfd", "a zstd archive"),
    (rb"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (rb"Rar!\x1a\x07", "a RAR archive"),
    (rb".{257}ustar", "a tar archive"),
    (rb"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19", "a PyTorch checkpoint (legacy format)"),
    (rb"\x80[\x02-\x05]", "a Python pickle"),
    (rb"\x93NUMPY", "a NumPy .npy array"),
    (rb"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (rb"SQLite format 3\x00", "an SQLite database"),
    (rb"\x7fELF", "an ELF executable"),
    (rb"MZ\x90\x00", "a Windows executable"),
    (rb"\xcf\xfa\xed\xfe|\xce\xfa\xed\xfe", "a Mach-O executable"),
    (rb"ID3|\xff[\xfb\xf3\xf2]", "an MP3 audio file"),
    (rb"OggS", "an Ogg audio or video file"),
    (rb"fLaC", "a FLAC audio file"),
    (rb"RIFF.{4}WAVE", "a WAV audio file"),
    (rb"RIFF.{4}AVI ", "an AVI video"),
    (rb".{4}ftyp", "an MP4 or QuickTime video"),
    (rb"\x1a\x45\xdf\xa3", "a Matroska or WebM video"),
    (
        rb"version https://git-lfs\.github\.com/spec/",
        "a Git LFS pointer (the file was never fetched)",
        None,
        True,
    ),
    (rb"<!doctype html|<html", "an HTML page", None, True),
    (
        rb"(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*(?:<!doctype svg[^>]*>\s*)?<svg",
        "an SVG drawing",
        "SVG",
        True,
    ),
    (rb"<", "an XML document", None, True),
)
PLAIN_TEXT = Signature(re.compile(rb""), "a plain text file", text=True)


def identify(head: bytes) -> Signature | None:
    """What a file that starts with ``head`` is (:data:`SIGNATURES`; :data:`PLAIN_TEXT` for other
    text), or ``None`` if nothing says."""
    for s in SIGNATURES:
        if not s.text and s.pattern.match(head):
            return s
    if not _is_text(head):
        return None
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    return next((s for s in SIGNATURES if s.text and s.pattern.match(start)), PLAIN_TEXT)


def _is_text(head: bytes) -> bool:
    """Whether ``head`` is UTF-8 text without control characters (the last character may be cut)."""
    for cut in range(min(4, len(head))):
        try:
            text = head[: len(head) - cut].decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            continue
        return all(c.isprintable() or c in "\t\n\r\f\v" for c in text)
    return False


def describe(fmt: str | None) -> str:
    """An image format PIL names (``"PNG"``) as a phrase: ``"a PNG image"``."""
    return next((s.what for s in SIGNATURES if s.image == fmt), f"a {fmt} image" if fmt else "an image")
