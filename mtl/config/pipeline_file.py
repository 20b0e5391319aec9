"""Pipeline files: a YAML mapping, optionally ``extends: other.yaml`` (merged key by key, the file
itself winning), plus ``--set dotted.key=value`` overrides, read into one raw nested mapping that
:mod:`mtl.config` then validates.

A pipeline is named by a path or, for the pipelines that ship with mtl, by its bare name
(``glyphs-1shot``), which resolves wherever the command runs.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from mtl.errors import MtlError

__all__ = ["DEFAULT", "read", "resolve", "set_key", "shadowed", "shipped"]

DEFAULT = "glyphs-1shot"  # the pipeline every stage command runs when given none
MAX_BYTES = 1 << 20  # a pipeline is a page of YAML; anything larger is some other file
MAX_DEPTH = 32  # sections nest 2-3 deep; deeper is not a pipeline
MAX_VALUES = 100_000  # after aliases are expanded: a "billion laughs" document stops here


def _shipped_dir() -> Path:
    """The repository's ``pipelines/`` (a source checkout or editable install), else the copy a
    wheel installs under ``<prefix>/share/mtl/pipelines``."""
    here = Path(__file__).resolve().parents[2] / "pipelines"  # mtl/config/ -> the checkout
    return here if here.is_dir() else Path(sys.prefix) / "share" / "mtl" / "pipelines"


def shipped() -> dict[str, Path]:
    """``{bare name: file}`` of the pipelines that ship with mtl, sorted by name."""
    folder = _shipped_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def describe(path: Path) -> str:
    """A pipeline's one-line description: the first sentence of its leading comment (continued over
    comment lines, up to an indented command line)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or line.startswith("#  "):
            break
        lines.append(line.lstrip("# ").strip())
        if _SENTENCE_END.search(lines[-1]):
            break
    text = " ".join(w for w in lines if w)
    end = _SENTENCE_END.search(text)
    return text[: end.start() + 1] if end else text


_SENTENCE_END = re.compile(r"(?<!\bal)\.(\s|$)")  # "et al." ends no sentence


def resolve(pipeline: str | Path) -> Path:
    """A pipeline argument as a file: an existing path as it is, else a shipped pipeline's bare name
    (``glyphs-1shot`` or ``glyphs-1shot.yaml``). A folder is never a pipeline: a bare name that names
    one (a run folder that ``--checkpoints .`` made) is the shipped pipeline of that name, if any."""
    path = Path(pipeline).expanduser()
    if len(path.parts) > 1 or (path.exists() and not (path.is_dir() and _shipped_name(path))):
        return path
    return shipped().get(_shipped_name(path) or "", path)


def shadowed(pipeline: str | Path) -> str | None:
    """The note to print when a folder here bears a shipped pipeline's bare name (:func:`resolve`
    takes the shipped pipeline); None otherwise."""
    path = Path(pipeline).expanduser()
    if len(path.parts) == 1 and path.is_dir() and (name := _shipped_name(path)):
        return f"note: ./{path} is a folder, not a pipeline; using the shipped pipeline {name}"
    return None


def _shipped_name(path: Path) -> str | None:
    """The shipped pipeline's name that a bare ``path`` names, if one does."""
    name = path.name.removesuffix(".yaml")
    return name if name in shipped() else None


def read(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), known: Collection[str] = ()
) -> dict:
    """The raw mapping of ``path`` (following ``extends:``; ``{}`` for None) with ``overrides`` applied.

    ``known``: the pipeline's top-level keys. A file none of whose keys is one (nor close to one) is
    refused as a whole, so that no error quotes the contents of a file that is no pipeline (a system
    file named by ``extends:``)."""
    raw: dict = _read_yaml(resolve(path), known=known) if path is not None else {}
    for item in overrides:
        key, value = _parse_override(item)
        set_key(raw, key, value)
    return raw


def _read_yaml(path: Path, seen: tuple[Path, ...] = (), known: Collection[str] = ()) -> dict:
    path = path.expanduser()
    if path.resolve() in seen:
        raise MtlError(f"{path}: 'extends' forms a cycle")
    data = _load(path, _text(path))
    if not isinstance(data, dict):
        raise MtlError(f"{path}: a pipeline must be a mapping of keys to values")
    if known and data and not any(_is_key(k, known) for k in data):
        raise MtlError(
            f"{path} is not an mtl pipeline: none of its keys is a pipeline key (mtl config lists them)"
        )
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise MtlError(f"{path}: 'extends' must be a file path")
    base = _read_yaml(path.parent / parent, (*seen, path.resolve()), known)
    return _merge(base, data)


def _is_key(key: object, known: Collection[str]) -> bool:
    """A pipeline key, ``extends`` or a misspelling of one (which validation then names)."""
    return key == "extends" or key in known or bool(difflib.get_close_matches(str(key), known, n=1))


def _text(path: Path) -> str:
    """The file's text, or one line saying why ``path`` is not a pipeline file."""
    if path.is_dir():
        raise MtlError(f"{path} is a folder, not a pipeline file (shipped pipelines: mtl pipelines)")
    if not path.is_file():
        hint = "" if len(path.parts) > 1 else " and no shipped pipeline has that name (mtl pipelines)"
        raise MtlError(f"pipeline file not found: {path}{hint}")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise MtlError(f"{path}: {size / 2**20:.1f} MiB is too large for a pipeline file (a YAML page)")
        data = path.read_bytes()
    except OSError as exc:
        raise MtlError(f"cannot read the pipeline file {path}: {exc.strerror or exc}") from None
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise MtlError(f"{path} is a checkpoint or archive, not a pipeline (YAML) file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MtlError(f"{path} is a binary file, not a pipeline (YAML) file") from None
    if "\x00" in text:
        raise MtlError(f"{path} is a binary file, not a pipeline (YAML) file")
    return text


def _load(path: Path, text: str) -> Any:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise MtlError(f"{path}: not valid YAML{line}") from None
    except RecursionError:
        raise MtlError(f"{path}: nested too deeply to be a pipeline") from None
    if data is None:
        raise MtlError(
            f"{path} is empty: a pipeline is a YAML mapping of keys (mtl pipelines lists examples)"
        )
    _check_size(path, data)
    return data


def _check_size(path: Path, data: Any) -> None:
    """Walk the document as :mod:`mtl.config` will, aliases expanded, and stop at absurd sizes."""
    count, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise MtlError(f"{path}: nested more than {MAX_DEPTH} levels deep, not a pipeline")
        if count > MAX_VALUES:
            raise MtlError(f"{path}: expands to over {MAX_VALUES:,} values (YAML aliases?), not a pipeline")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise MtlError(f"bad --set '{item}': expected key=value, e.g. --set meta.shot=5")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key, value


def set_key(raw: dict, key: str, value: Any) -> None:
    """Set the dotted ``key`` of a raw nested mapping (creating sections on the way)."""
    node = raw
    *parents, leaf = key.split(".")
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MtlError(f"--set {key}: '{'.'.join(parents[: i + 1])}' is not a section")
        node = child
    node[leaf] = value
