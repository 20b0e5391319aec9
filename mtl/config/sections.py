"""The sections that methods add to a pipeline (``protonet:``, ``maml:``, ...).

A method declares its settings as a dataclass beside its class, in its own file (``settings =
ProtoNetSettings``); the method registry (:data:`mtl.methods.METHODS`) is the one list of methods,
and the schema, the key reference (``mtl config --keys``), ``method:``'s choices and every error
message are read off it here. The core sections (``data:``, ``meta:``, ...) are
:mod:`mtl.config.schema`'s.

The registry is found the first time a pipeline is read, by importing :mod:`mtl.methods` (as
``import timm`` fills timm's model registry): the config depends on no method at import time.

Commands that only read and print a pipeline (``mtl config``) run inside :func:`from_files`: unless
the methods are imported already (with any method registered from outside the package), the built-in
methods' settings are then read from the methods' files without running them, since running them
imports torch, a second of a command that otherwise answers in a tenth. The reading runs each
registered class's settings dataclass statement (with the file's imports from the standard library and
from :mod:`mtl.config`) and nothing else; a file it cannot read that way is imported instead. A test
holds the two readings equal, field by field, for every built-in method.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["from_files", "methods", "read_method_files"]

_FROM_FILES = contextvars.ContextVar("mtl_sections_from_files", default=False)

# Imports a settings dataclass may use and the file reading may run: none of them imports torch.
_LIGHT = ("__future__", "dataclasses", "typing", "collections", "enum", "mtl.config", "mtl.errors")


def methods() -> dict[str, type | None]:
    """``{method name: its settings dataclass, or None}`` of every registered method, in order."""
    if _FROM_FILES.get() and "mtl.methods" not in sys.modules:  # imported: every registered method
        with contextlib.suppress(_Unreadable):
            return read_method_files()
    registry = importlib.import_module("mtl.methods").METHODS  # see the module's docstring
    return {name: cls.settings for name, cls in registry.items()}


@contextlib.contextmanager
def from_files() -> Iterator[None]:
    """Within: :func:`methods` reads the built-in methods from their files (see the module's docstring).
    For configs that are printed, not run: their sections are instances of classes of that reading."""
    token = _FROM_FILES.set(True)
    try:
        yield
    finally:
        _FROM_FILES.reset(token)


class _Unreadable(Exception):
    """A method file whose registration or settings the reading does not follow."""


def read_method_files() -> dict[str, type | None]:
    """The built-in methods as :func:`methods` gives them, read from the package's files: the modules
    that ``mtl/methods/__init__.py`` imports, in its order; each ``@register`` class's ``name`` and
    ``settings``. Raises :class:`_Unreadable` where a file departs from that form."""
    spec = importlib.util.find_spec("mtl.methods")  # the package's folder; runs nothing of it
    folder = Path(spec.submodule_search_locations[0])
    out: dict[str, type | None] = {}
    for module in _builtin_modules(_parse(folder / "__init__.py")):
        out.update(_registered(_parse(folder / f"{module}.py"), f"mtl.methods.{module}"))
    return out


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise _Unreadable(path) from exc


def _builtin_modules(package: ast.Module) -> list[str]:
    """The names of ``from mtl.methods import mtl, finetune, ...`` that are modules of the package."""
    names = [
        alias.name
        for node in package.body
        if isinstance(node, ast.ImportFrom) and node.module == "mtl.methods"
        for alias in node.names
    ]
    if not names:
        raise _Unreadable("mtl/methods/__init__.py imports no method module")
    return names


def _registered(tree: ast.Module, module: str) -> dict[str, type | None]:
    """``{name: settings}`` of the ``@register`` classes of one method file."""
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    out: dict[str, type | None] = {}
    for node in classes.values():
        if not any(isinstance(d, ast.Name) and d.id == "register" for d in node.decorator_list):
            continue
        values = _class_assignments(node, classes)
        name, settings = values.get("name"), values.get("settings")  # no settings: Method's None
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            raise _Unreadable(f"{module}.{node.name}: its name is not a plain string")
        if settings is None or (isinstance(settings, ast.Constant) and settings.value is None):
            out[name.value] = None
        elif isinstance(settings, ast.Name):
            out[name.value] = _run_settings(tree, classes, settings.id, module)
        else:
            raise _Unreadable(f"{module}.{node.name}: its settings are not a class of the file")
    return out


def _class_assignments(node: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> dict[str, ast.expr]:
    """The class body's ``x = value`` and ``x, y = a, b`` statements: ``{x: value}``, over those of
    its bases defined in the same file."""
    out: dict[str, ast.expr] = {}
    for base in reversed(node.bases):
        if isinstance(base, ast.Name) and base.id in classes and base.id != node.name:
            out.update(_class_assignments(classes[base.id], classes))
    for stmt in node.body:
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
            continue
        target, value = stmt.targets[0], stmt.value
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            pairs = list(zip(target.elts, value.elts, strict=False))
        else:
            pairs = [(target, value)]
        out.update({t.id: v for t, v in pairs if isinstance(t, ast.Name)})
    return out


def _run_settings(tree: ast.Module, classes: dict[str, ast.ClassDef], name: str, module: str) -> type:
    """The dataclass ``name`` of method file ``module``, by running its statement after the file's
    light imports (:data:`_LIGHT`). The class belongs to this module (dataclasses and type hints look
    names up in a class's module, which must be imported; the method's is not)."""
    if name not in classes:
        raise _Unreadable(f"{module}: settings class {name} is not defined in the file")
    imports = [
        node
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        and node.level == 0
        and any(node.module == m or node.module.startswith(m + ".") for m in _LIGHT)
    ]
    code = compile(ast.Module(body=[*imports, classes[name]], type_ignores=[]), module, "exec")
    namespace: dict = {"__name__": __name__}
    try:
        exec(code, namespace)  # the file's own statements, the ones listed above
    except Exception as exc:  # e.g. a default that uses a name from a heavier import
        raise _Unreadable(f"{module}.{name}: {exc}") from exc
    return namespace[name]
