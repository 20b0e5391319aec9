"""Reading a weights file of any kind safely: PyTorch (``weights_only=True`` always), safetensors, NumPy.

Nothing here runs code a file names. PyTorch files go through ``torch.load(weights_only=True)``, which
admits, besides tensors and builtins, what popular checkpoints also carry, as data: numpy arrays and
scalars (FEAT's training log), and an ``argparse.Namespace`` of the training options (RFS's ``opt``,
FEAT's ``args``), read into an inert stand-in. A ``.npy`` holding a
pickled dict (the official TF code's ``np.save(weights)``) is unpickled by mtl's restricted unpickler,
which admits numpy arrays and builtin containers only: never ``np.load(allow_pickle=True)``. Every
failure is one :class:`~mtl.errors.MtlError` line naming the file.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl.data.prepare import safe_pickle
from mtl.errors import MtlError

__all__ = ["HUB_PREFIX", "MAX_BYTES", "Source", "read"]

HUB_PREFIX = "hf-hub:"
# A few-shot backbone is tens of MB (ResNet-12: 50 MB); anything this big is not one, and reading it
# would take that much memory.
MAX_BYTES = 4 * 2**30
EXPORT_WEIGHTS = "model.safetensors"


class TrainingOptions:
    """What an ``argparse.Namespace`` in a checkpoint is read as: its attributes, and no behaviour."""


def _safe_globals() -> list:
    """What ``weights_only`` may build besides tensors: the training options' stand-in, and numpy
    arrays and scalars (training logs in checkpoints hold ``np.float64`` accuracies), under the module
    names of numpy 1.x (``numpy.core``) and 2.x (``numpy._core``): the same set mtl's restricted
    unpickler admits."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list = [
        (TrainingOptions, "argparse.Namespace"),
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
    ]
    for name in ("_reconstruct", "scalar"):
        allowed += [
            (getattr(core, name), f"numpy.{package}.multiarray.{name}") for package in ("core", "_core")
        ]
    # numpy >= 1.25 pickles a dtype as its class (numpy.dtypes.Float64DType, ...).
    allowed += [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1")]
    return allowed


@dataclass
class Source:
    """A weights file as read: ``kind`` is ``torch``, ``safetensors``, ``npy``, ``npz`` or ``hub``.

    ``obj`` is what the file holds (a dict for every kind but ``hub``, which is read by timm later);
    ``metadata`` the safetensors header's string metadata; ``label`` names it in messages.
    """

    label: str
    kind: str
    obj: Any = None
    path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def read(spec: str) -> Source:
    """The weights at ``spec``: a file, an mtl export folder (its ``model.safetensors``), or
    ``hf-hub:<repo>`` (returned unread: timm fetches it)."""
    if spec.startswith(HUB_PREFIX):
        return Source(spec, "hub")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / EXPORT_WEIGHTS).is_file():
            raise MtlError(
                f"{path} is a folder without {EXPORT_WEIGHTS} (an `mtl export` folder holds "
                f"{EXPORT_WEIGHTS} and config.json; otherwise name the weights file itself)"
            )
        path = path / EXPORT_WEIGHTS
    if not path.is_file():
        raise MtlError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise MtlError(f"{path} is empty, not a weights file")
    if size > MAX_BYTES:
        raise MtlError(
            f"{path} is {size / 2**30:.1f} GB; mtl imports weights files up to {MAX_BYTES / 2**30:.0f} GB "
            "(a few-shot backbone is far smaller)"
        )
    kind = _sniff(path, size)
    reader = {"torch": _torch, "safetensors": _safetensors, "npy": _npy, "npz": _npz}[kind]
    return reader(path)


def _sniff(path: Path, size: int) -> str:
    """The file's kind from its first bytes (suffixes lie: ``.pth`` files are zips or pickles)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            raise MtlError(f"{path} is not a readable weights file (a truncated or corrupt zip)") from None
        torch_zip = any(n.endswith("data.pkl") for n in names)
        return "npz" if not torch_zip and any(n.endswith(".npy") for n in names) else "torch"
    if head[:1] == b"\x80":  # a pickle: PyTorch's legacy format
        return "torch"
    header = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if 0 < header <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    if b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            kind = "a pipeline (YAML) file" if path.suffix in (".yaml", ".yml") else "a text file"
            raise MtlError(f"{path} is {kind}, not a weights file")
    raise MtlError(f"{path} is not a weights file mtl reads (PyTorch, safetensors, .npy or .npz)")


def _torch(path: Path) -> Source:
    """``torch.load(weights_only=True)``; memory-mapped when the file is a zip, so a big file is not
    read into memory all at once."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "detected pickle protocol 4": the error says it all
            with torch.serialization.safe_globals(_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+) was not an allowed", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise MtlError(
            f"{path} holds Python objects{what} that a weights file never needs; mtl reads tensors "
            "and builtin containers only (torch.load weights_only=True)"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError):
        raise MtlError(f"{path} is not a readable PyTorch file (truncated or corrupt)") from None
    return Source(str(path), "torch", obj, path)


def _safetensors(path: Path) -> Source:
    from safetensors import SafetensorError, safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MtlError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    return Source(str(path), "safetensors", tensors, path, metadata)


def _npy(path: Path) -> Source:
    """A ``.npy`` of a pickled dict (``np.save(path, weights)`` with ``weights`` a dict): the header by
    :mod:`numpy.lib.format`, the pickle by the restricted unpickler. numpy 1.x and Python 2 files
    (``numpy.core`` references, ``str`` as latin-1 bytes) are read as well."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise MtlError(f"{path}: .npy format version {version} is not supported (1.0 or 2.0)")
            header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = header(f)
            if not dtype.hasobject:
                raise MtlError(
                    f"{path} holds one {dtype} array of shape {shape}, not a dict of named weights"
                )
            obj = safe_pickle.read(f, str(path), ".npy file")
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise MtlError(f"{path} is not a readable .npy file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()  # np.save wraps the dict in a 0-d object array
    if not isinstance(obj, dict):
        raise MtlError(f"{path} holds a {type(obj).__name__}, not a dict of named weights")
    return Source(str(path), "npy", _str_keys(obj), path)


def _npz(path: Path) -> Source:
    try:
        with np.load(path, allow_pickle=False) as z:
            obj = {name: z[name] for name in z.files}
    except ValueError as exc:  # e.g. an object array, which would need pickle
        raise MtlError(f"{path}: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise MtlError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})") from None
    return Source(str(path), "npz", obj, path)


def _str_keys(obj: dict) -> dict:
    """Python 2 ``str`` keys may come back as bytes."""
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
