"""Reading the pickles that datasets circulate in, without letting them run code or exhaust memory.

``pickle.load`` calls whatever a file names, so a pickle from the internet can run anything. These
files only ever need numpy arrays and builtin containers; :func:`load` admits exactly those and
refuses a pickle that asks for anything else. Python-2 pickles (CIFAR, miniImageNet caches) are read
with ``encoding='latin1'``, and ``bytes`` keys and strings (from files re-pickled after a
``encoding='bytes'`` load) are decoded, so callers always see ``str`` keys.

Even the admitted calls can ask for memory out of proportion to the file (``bytearray(10**13)``, an
array of any shape, a copy of one big string repeated through the memo), so every call is charged
against a budget of :data:`ALLOC_FACTOR` times the pickle's size plus :data:`ALLOC_FLOOR`, charged
before it runs; a file over ``MTL_MAX_PICKLE_BYTES`` is refused before it is read, and containers
nested deeper than ``MTL_MAX_PICKLE_DEPTH`` (or in a cycle) are refused after loading, since the
readers walk them recursively.
"""

from __future__ import annotations

import codecs
import math
import os
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mtl.data.prepare.limits import PICKLE_BYTES, PICKLE_DEPTH, human, open_regular
from mtl.errors import MtlError

ALLOC_FACTOR = 16  # sets and dicts of small ints legitimately take ~10x their pickled size
ALLOC_FLOOR = 64 << 20

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
_CONTAINERS = (dict, list, tuple, set, frozenset)
_ITEM = 64  # bytes charged per element of a container built by a call (object, hash slot, pointer)


def _items(x: Any) -> int:
    if isinstance(x, np.ndarray):
        return int(x.size)
    return len(x) if isinstance(x, (str, bytes, bytearray, *_CONTAINERS)) else 0


def _nbytes(shape: Any, dtype: Any = float) -> int:
    try:
        dims = [int(shape)] if isinstance(shape, int) else [int(d) for d in shape]
        return math.prod(max(d, 0) for d in dims) * np.dtype(dtype).itemsize
    except (TypeError, ValueError):
        return 0  # numpy refuses it itself, before allocating


def _latin1(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as pickles use it (text to latin-1 bytes); other codecs (``hex`` doubles its
    input, so a chain of them grows exponentially) are refused."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("refused to load _codecs.encode other than text to latin-1")
    return codecs.encode(text, "latin-1", errors)


# What each admitted call may allocate, from its arguments, in bytes.
_COSTS: dict[str, Callable[..., int]] = {
    "bytearray": lambda x=b"", *_: x if isinstance(x, int) else _items(x),
    "encode": lambda x="", *_: _items(x),
    "scalar": lambda _dtype=None, x=b"", *_: _items(x),
    "_frombuffer": lambda x=b"", *_: _items(x),
    "_reconstruct": lambda _type=None, shape=(), dtype="b", *_: _nbytes(shape, dtype),
    "ndarray": lambda shape=(), dtype=float, *_: _nbytes(shape, dtype),
    "dtype": lambda *_: 0,
}


class _Call:
    """An admitted callable, charging what it may allocate to the unpickler's budget before running."""

    def __init__(self, unpickler: _Restricted, name: str, target: Callable) -> None:
        self.unpickler, self.name, self.target = unpickler, name, target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        cost = _COSTS.get(self.name, lambda x=(), *_: _ITEM * _items(x))(*args)
        self.unpickler.charge(cost, self.name)
        # numpy's own pickles pass the ndarray class to _reconstruct: the real one, not its guard.
        args = tuple(a.target if isinstance(a, _Call) else a for a in args)
        return self.target(*args, **kwargs)


class _Restricted(pickle.Unpickler):
    def __init__(self, f: BinaryIO, label: str, size: int) -> None:
        super().__init__(f, encoding="latin1")
        self.label, self.size = label, size
        self.budget = ALLOC_FACTOR * size + ALLOC_FLOOR

    def charge(self, nbytes: int, name: str) -> None:
        if nbytes > self.budget:
            raise MtlError(
                f"{self.label}: the pickle asks for {human(nbytes)} of memory (through {name}), more than "
                f"a file of {human(self.size)} may; refused"
            )
        self.budget -= nbytes

    def find_class(self, module: str, name: str) -> Any:
        parts = module.split(".")
        if parts[0] == "numpy" and len(parts) == 3 and parts[1] in ("core", "_core"):
            if (parts[2], name) in _NUMPY:
                core = np._core if hasattr(np, "_core") else np.core
                return _Call(self, name, getattr(getattr(core, parts[2]), name))
        elif (module, name) in _ALLOWED:
            if module == "__builtin__":
                module = "builtins"
            target = _latin1 if name == "encode" else super().find_class(module, name)
            return _Call(self, name, target)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def _too_deep(root: Any, limit: int) -> str | None:
    """``"cycle"`` if a container in ``root`` holds itself, ``"deep"`` if containers nest more than
    ``limit`` deep, else None.

    Iterative (a recursive walk would overflow on the very pickles it guards against) and linear: a
    container shared through the memo is walked once and its height remembered."""
    heights: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[list] = []  # [container, iterator over its children, tallest child so far]

    def children(x: Any):
        if isinstance(x, dict):
            return (v for kv in x.items() for v in kv)
        return iter(x.flat if isinstance(x, np.ndarray) else x)

    def is_container(x: Any) -> bool:
        return isinstance(x, _CONTAINERS) or (isinstance(x, np.ndarray) and x.dtype.hasobject)

    if not is_container(root):
        return None
    stack.append([root, children(root), 0])
    on_path.add(id(root))
    while stack:
        top = stack[-1]
        child = next(top[1], stack)  # the stack itself marks the end: it is never a child
        if child is stack:
            stack.pop()
            on_path.discard(id(top[0]))
            heights[id(top[0])] = top[2] + 1
            if stack:
                stack[-1][2] = max(stack[-1][2], top[2] + 1)
        elif is_container(child):
            if id(child) in on_path:
                return "cycle"
            if id(child) in heights:
                if len(stack) + heights[id(child)] > limit:
                    return "deep"
                top[2] = max(top[2], heights[id(child)])
            elif len(stack) >= limit:
                return "deep"
            else:
                stack.append([child, children(child), 0])
                on_path.add(id(child))
    return None


def _decode(obj: Any) -> Any:
    """bytes keys and strings -> str, recursively through dicts, lists and tuples."""
    if isinstance(obj, bytes):
        return obj.decode("latin1")
    if isinstance(obj, dict):
        return {_decode(k): _decode(v) if not isinstance(v, np.ndarray) else v for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(v, (bytes, str)) for v in obj):
        return type(obj)(_decode(v) for v in obj)
    return obj


def _size_of(f: BinaryIO) -> int:
    """Bytes in ``f`` (from its current position): the budget's base."""
    try:
        return max(os.fstat(f.fileno()).st_size - f.tell(), 0)
    except (AttributeError, OSError, ValueError):
        pass
    try:
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
        return max(end - here, 0)
    except (AttributeError, OSError, ValueError):
        return PICKLE_BYTES.get()


_BAD = (EOFError, ValueError, TypeError, AttributeError, LookupError, OverflowError, OSError)


def read(f: BinaryIO, label: str, what: str = "pickle", size: int | None = None) -> Any:
    """The object pickled in the open binary file ``f`` from its current position; numpy arrays and
    builtin containers only, nothing decoded. ``size`` is the pickle's length in bytes where ``f``
    cannot tell (a stream out of an archive). A refused or unreadable pickle is an :class:`MtlError`
    naming ``label`` and calling it ``what`` (e.g. ``".npy file"``)."""
    try:
        obj = _Restricted(f, label, _size_of(f) if size is None else size).load()
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("refused"):
            raise MtlError(f"{label}: {exc}: only numpy arrays and builtin containers are allowed") from None
        raise MtlError(f"{label} is not a readable {what} ({exc})") from None
    except MemoryError:
        raise MtlError(f"{label}: not enough memory to read this {what}") from None
    except RecursionError:
        raise MtlError(f"{label}: the {what} is nested too deeply to read") from None
    except (*_BAD, zlib.error) as exc:
        raise MtlError(f"{label} is not a readable {what} ({type(exc).__name__}: {exc})") from None
    limit = PICKLE_DEPTH.get()
    if (shape := _too_deep(obj, limit)) == "cycle":
        raise MtlError(f"{label}: the {what} holds a container inside itself (a cycle); refused")
    if shape == "deep":
        raise MtlError(
            f"{label}: the {what} nests containers deeper than {limit} levels, the limit "
            f"({PICKLE_DEPTH.env} raises it)"
        )
    return obj


def load(path: Path, *, decode_bytes: bool = True) -> Any:
    """The object in the pickle at ``path``; numpy arrays and builtin containers only.

    ``decode_bytes=False`` keeps ``bytes`` values as they are (e.g. a list of encoded PNGs); keys are
    decoded either way. Raises :class:`MtlError` naming the file if it is unreadable, refused, not a
    regular file, or over ``MTL_MAX_PICKLE_BYTES``.
    """
    path = Path(path)
    try:
        with open_regular(path) as f:
            size, limit = os.fstat(f.fileno()).st_size, PICKLE_BYTES.get()
            if size > limit:
                raise PICKLE_BYTES.refuse(f"{path}: the pickle holds", size, limit)
            obj = read(f, str(path), size=size)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise MtlError(f"{path} is not a readable pickle ({type(exc).__name__}: {reason})") from None
    return _decode(obj) if decode_bytes else _decode_keys(obj)


def _decode_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    return obj
