"""Writers of tiny datasets in the exact on-disk formats that circulate, for the reader tests."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can be extended
    """Writes ``bytes`` as Python 2 ``str`` opcodes, which is what cPickle wrote for CIFAR & co."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        op = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(op + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_py2_pickle(path: Path, obj: Any) -> None:
    """A protocol-2 pickle as Python 2 wrote it: ``bytes`` become ``str`` opcodes, numpy lives in
    ``numpy.core``. Pass ``bytes`` keys where the real file has Python 2 ``str`` keys."""
    import io

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    Path(path).write_bytes(data)


def write_py3_pickle(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def pattern_images(n: int, size: int, seed: int, channels: int = 3) -> np.ndarray:
    """``(n, size, size, channels)`` uint8 images, each a flat colour plus noise (so resizing keeps
    the colour): image ``i``'s mean colour identifies it."""
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 226, size=(n, 1, 1, channels))
    noise = rng.integers(-10, 11, size=(n, size, size, channels))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_image(path: Path, pixels: np.ndarray) -> Path:
    """Save ``(H, W, 3)`` or ``(H, W, 1)`` uint8 pixels as PNG or JPEG, by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    img.save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else img.save(path)
    return path


def assert_prepare_refused(tmp_path: Path, dataset: str, src: Path, message: str) -> None:
    """``mtl data prepare`` of ``src`` fails with one ``error:`` line containing ``message``, exit 2, no
    traceback, no destination folder, and no code run by a refused pickle (it would create ``ran``)."""
    from click.testing import CliRunner

    from mtl.cli import main

    dest = tmp_path / "prep"
    args = ["data", "prepare", dataset, "--source", src, "--dest", dest, "--workers", 1]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not dest.exists()
    assert not (tmp_path / "ran").exists()
