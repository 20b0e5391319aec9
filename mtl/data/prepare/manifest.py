"""``manifest.json``, the index of a prepared dataset: what it holds, how it is written and read.

It is read by every stage and printed by ``mtl data info``, so a damaged one (not JSON, huge, nested
without end, keys missing or of the wrong type) is refused here with one line, before anyone indexes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mtl.data.prepare.limits import TEXT_BYTES, open_regular, read_capped
from mtl.errors import MtlError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "build",
    "json_bytes",
    "load_manifest",
    "read_json",
    "source_format",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TMP_NAME = re.compile(r"^\..+\.(tmp|old)-\d+$")
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def json_bytes(obj: Any) -> bytes:
    """How a prepared dataset's JSON files are written (also what the space estimate measures)."""
    return (json.dumps(obj, indent=2) + "\n").encode()


def build(
    counts: dict[str, tuple[int, int]], shape: tuple, source_format: str, extra: dict | None, fingerprint: str
) -> dict:
    """The manifest of splits of ``{name: (classes, images)}``, images of ``shape`` ``(H, W, C)``."""
    summary = {
        name: {"classes": k, "images": n, "image_shape": list(shape)} for name, (k, n) in counts.items()
    }
    return {
        "format_version": FORMAT_VERSION,
        "source_format": source_format,
        "image_shape": list(shape),
        "splits": summary,
        "fingerprint": fingerprint,
        **(extra or {}),
    }


def read_json(path: Path) -> Any:
    """A JSON file mtl wrote (a few KB; a file over :data:`~mtl.data.prepare.limits.TEXT_BYTES` is not
    one)."""
    try:
        with open_regular(path) as f:
            data = read_capped(f, TEXT_BYTES)
        if data is None:
            raise MtlError(f"{path} is corrupt: over {TEXT_BYTES >> 20} MiB, far more than mtl writes")
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise MtlError(f"{path} is corrupt: not UTF-8 text") from None
    except RecursionError:
        raise MtlError(f"{path} is corrupt: nested too deeply") from None
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError, as is an over-long number
        raise MtlError(f"{path} is corrupt: {e}") from None


def load_manifest(root: Path) -> dict:
    """The parsed ``manifest.json`` of the prepared dataset at ``root``, with the keys every reader
    indexes checked (``source_format``, ``fingerprint``, and per split ``classes``, ``images`` and
    ``image_shape``); :class:`MtlError` if none or damaged."""
    root = Path(root).expanduser()
    hint = "run `mtl data prepare` first"
    if TMP_NAME.match(root.name):
        raise MtlError(f"{root} is an unfinished or replaced dataset write, not a prepared dataset; {hint}")
    if not root.is_dir():
        raise MtlError(f"no prepared dataset at {root} (folder missing); {hint}")
    path = root / MANIFEST
    if not path.is_file():
        raise MtlError(f"no prepared dataset at {root} ({MANIFEST} missing); {hint}")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise MtlError(f"{path} is corrupt: no 'splits' mapping")
    if (version := manifest.get("format_version")) != FORMAT_VERSION:
        raise MtlError(f"{path} has format_version {version!r}, mtl reads {FORMAT_VERSION}; prepare again")
    _check_fields(manifest, path)
    return manifest


def source_format(root: str | Path) -> str | None:
    """The ``source_format`` of the prepared dataset at ``root`` (``"omniglot-vinyals"``, ...), or None
    where none is prepared there or its manifest is damaged (what the published numbers beside a table
    ask: :mod:`mtl.results.published`)."""
    try:
        return load_manifest(Path(root).expanduser())["source_format"]
    except MtlError:
        return None


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_fields(manifest: dict, path: Path) -> None:
    for key in ("source_format", "fingerprint"):
        if not isinstance(manifest.get(key), str):
            raise MtlError(f"{path} is corrupt: '{key}' is missing or not text; prepare the dataset again")
    for name, split in manifest["splits"].items():
        if not SPLIT_NAME.match(name):  # never quoted: it could hold anything, terminal escapes too
            raise MtlError(
                f"{path} is corrupt: a split has a name mtl never writes; prepare the dataset again"
            )
        who = f"split {name!r}"
        shape = split.get("image_shape") if isinstance(split, dict) else None
        if not (
            isinstance(split, dict)
            and _count(split.get("classes"))
            and _count(split.get("images"))
            and isinstance(shape, list)
            and len(shape) == 3
            and all(_count(d) for d in shape)
        ):
            raise MtlError(
                f"{path} is corrupt: {who} needs whole numbers 'classes' and 'images' and an 'image_shape' "
                "of three; prepare the dataset again"
            )
