"""Reading the pickles that datasets circulate in, without letting them run code.

``pickle.load`` calls whatever a file names, so a pickle from the internet can run anything. These
files only ever need numpy arrays and builtin containers; :func:`load` admits exactly those and
refuses a pickle that asks for anything else. Python-2 pickles (CIFAR, miniImageNet caches) are read
with ``encoding='latin1'``, and ``bytes`` keys and strings (from files re-pickled after a
``encoding='bytes'`` load) are decoded, so callers always see ``str`` keys.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mtl.errors import MtlError

# (module, name) pairs a dataset pickle may reference; numpy moved `core` to `_core` in 2.0.
_NUMPY = {
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
}
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("__builtin__", "bytearray"),
}


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        parts = module.split(".")
        if parts[0] == "numpy" and len(parts) == 3 and parts[1] in ("core", "_core"):
            if (parts[2], name) in _NUMPY:
                return getattr(getattr(np._core if hasattr(np, "_core") else np.core, parts[2]), name)
        elif (module, name) in _ALLOWED:
            if module == "__builtin__":
                module = "builtins"
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def _decode(obj: Any) -> Any:
    """bytes keys and strings -> str, recursively through dicts, lists and tuples."""
    if isinstance(obj, bytes):
        return obj.decode("latin1")
    if isinstance(obj, dict):
        return {_decode(k): _decode(v) if not isinstance(v, np.ndarray) else v for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(v, (bytes, str)) for v in obj):
        return type(obj)(_decode(v) for v in obj)
    return obj


def read(f: BinaryIO, label: str, what: str = "pickle") -> Any:
    """The object pickled in the open binary file ``f`` from its current position; numpy arrays and
    builtin containers only, nothing decoded. A refused or unreadable pickle is an :class:`MtlError`
    naming ``label`` and calling it ``what`` (e.g. ``".npy file"``)."""
    try:
        return _Restricted(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("refused"):
            raise MtlError(f"{label}: {exc}: only numpy arrays and builtin containers are allowed") from None
        raise MtlError(f"{label} is not a readable {what} ({exc})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise MtlError(f"{label} is not a readable {what} ({type(exc).__name__}: {exc})") from None


def load(path: Path, *, decode_bytes: bool = True) -> Any:
    """The object in the pickle at ``path``; numpy arrays and builtin containers only.

    ``decode_bytes=False`` keeps ``bytes`` values as they are (e.g. a list of encoded PNGs); keys are
    decoded either way. Raises :class:`MtlError` naming the file if it is unreadable or refused.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = read(f, str(path))
    except OSError as exc:
        raise MtlError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from None
    return _decode(obj) if decode_bytes else _decode_keys(obj)


def _decode_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    return obj
