"""What mtl's packages declare, read from their files without running them: the built-in methods
with their settings, and mtl's own backbones. Running those files imports torch and timm: seconds,
for a command that otherwise answers in a fifth of one; commands that only read and print (``mtl config``,
``mtl config --keys``) run inside :func:`from_files` and get these readings instead of the registries
(:func:`mtl.config.sections.methods`, :mod:`mtl.config.key_reference`).

A method file is read for its ``@register`` classes' ``name`` and ``settings``; each settings
dataclass statement runs with the file's imports from the standard library and :mod:`mtl.config`,
nothing else. A backbone file is read for its ``@register_model`` functions. A file the reading does
not follow raises :class:`Unreadable`, and the caller imports the package instead. Tests hold each
reading equal to its registry, field by field.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

__all__ = ["Unreadable", "backbones", "either", "from_files", "methods"]

T = TypeVar("T")

_FROM_FILES = contextvars.ContextVar("mtl_declared_from_files", default=False)

# Imports a settings dataclass may use and the reading may run: none of them imports torch.
_LIGHT = ("__future__", "dataclasses", "typing", "collections", "enum", "mtl.config", "mtl.errors")


@contextlib.contextmanager
def from_files() -> Iterator[None]:
    """Within: the registries' users read the packages' files (see the module's docstring). For configs
    that are printed, not run: their sections are instances of classes of this reading."""
    token = _FROM_FILES.set(True)
    try:
        yield
    finally:
        _FROM_FILES.reset(token)


def either(package: str, read: Callable[[], T], imported: Callable[[], T]) -> T:
    """``read()`` inside :func:`from_files` while ``package`` is not imported (with anything registered
    from outside it) and its files are readable; otherwise ``imported()``, which imports it."""
    if _FROM_FILES.get() and package not in sys.modules:
        with contextlib.suppress(Unreadable):
            return read()
    return imported()


def _folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # the package's folder; runs nothing of it
    return Path(spec.submodule_search_locations[0])


def backbones() -> list[str]:
    """The names of the ``@register_model`` functions of ``mtl/models/*.py``, sorted (what
    :func:`mtl.models.backbone.own_backbones` reads off timm's registry)."""
    names = [
        node.name
        for path in sorted(_folder("mtl.models").glob("*.py"))
        for node in _parse(path).body
        if isinstance(node, ast.FunctionDef) and _decorated(node, "register_model")
    ]
    if not names:
        raise Unreadable("mtl/models declares no backbone")
    return sorted(names)


def _decorated(node: ast.ClassDef | ast.FunctionDef, name: str) -> bool:
    return any(isinstance(d, ast.Name) and d.id == name for d in node.decorator_list)


class Unreadable(Exception):
    """A file whose declarations the reading does not follow."""


def methods() -> dict[str, type | None]:
    """The built-in methods as :func:`mtl.config.sections.methods` gives them: the modules that
    ``mtl/methods/__init__.py`` imports, in its order; each ``@register`` class's ``name`` and
    ``settings``. Raises :class:`Unreadable` where a file departs from that form."""
    folder = _folder("mtl.methods")
    out: dict[str, type | None] = {}
    for module in _builtin_modules(_parse(folder / "__init__.py")):
        out.update(_registered(_parse(folder / f"{module}.py"), f"mtl.methods.{module}"))
    return out


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise Unreadable(path) from exc


def _builtin_modules(package: ast.Module) -> list[str]:
    """The names of ``from mtl.methods import mtl, finetune, ...`` that are modules of the package."""
    names = [
        alias.name
        for node in package.body
        if isinstance(node, ast.ImportFrom) and node.module == "mtl.methods"
        for alias in node.names
    ]
    if not names:
        raise Unreadable("mtl/methods/__init__.py imports no method module")
    return names


def _registered(tree: ast.Module, module: str) -> dict[str, type | None]:
    """``{name: settings}`` of the ``@register`` classes of one method file."""
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    out: dict[str, type | None] = {}
    for node in classes.values():
        if not _decorated(node, "register"):
            continue
        values = _class_assignments(node, classes)
        name, settings = values.get("name"), values.get("settings")  # no settings: Method's None
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            raise Unreadable(f"{module}.{node.name}: its name is not a plain string")
        if settings is None or (isinstance(settings, ast.Constant) and settings.value is None):
            out[name.value] = None
        elif isinstance(settings, ast.Name):
            out[name.value] = _run_settings(tree, classes, settings.id, module)
        else:
            raise Unreadable(f"{module}.{node.name}: its settings are not a class of the file")
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
        raise Unreadable(f"{module}: settings class {name} is not defined in the file")
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
        raise Unreadable(f"{module}.{name}: {exc}") from exc
    return namespace[name]
