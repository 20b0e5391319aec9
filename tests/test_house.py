"""The house's ground rules: imports run one way (no circle, the configuration imports no other mtl
package, no reading of mtl's own sources), each method owns its settings (a shared key it does not read
is refused naming the key it reads), and the shipped pipelines resolve to the runs they resolved to
before the methods took their settings into their own sections."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

import mtl
from mtl import config, methods
from mtl.config import pipeline_file, schema, sections
from mtl.errors import MtlError
from mtl.training.keys import flatten
from mtl.training.resume import config_diff

PACKAGE = Path(mtl.__file__).parent
BEFORE = Path(__file__).parent / "resolved" / "pipelines-0.2.0.json"  # written by mtl 0.2.0


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """``{module: the mtl modules it imports}``, at module level or inside functions, each import
    resolved to a module (``from mtl import methods`` is the package ``mtl.methods``)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtl"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                out |= subs or {node.module}
        graph[name] = out - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (a list of modules, the first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_circle():
    graph = _imports()
    assert len(graph) > 100 and sum(map(len, graph.values())) > 300  # the graph was read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_circle_is_found_where_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_configuration_imports_no_other_mtl_package():
    below = {"mtl", "mtl.errors"}
    for module, imported in _imports().items():
        if module.startswith("mtl.config"):
            strays = {m for m in imported if not m.startswith("mtl.config") and m not in below}
            assert not strays, (module, strays)


def test_no_module_reads_mtls_own_sources():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "ast" not in names, path


# -------------------------------------------------------------- each method owns its settings


def _shared_keys() -> dict[str, object]:
    """``{dotted key: its default}`` of every leaf of the shared sections ``meta:`` and ``test:``."""
    out = {}
    for section, cls in (("meta", schema.MetaConfig), ("test", schema.TestConfig)):
        stack = [(f"{section}.", cls())]
        while stack:
            prefix, value = stack.pop()
            for f in dataclasses.fields(value):
                inner = getattr(value, f.name)
                if dataclasses.is_dataclass(inner):
                    stack.append((f"{prefix}{f.name}.", inner))
                else:
                    out[f"{prefix}{f.name}"] = inner
    return out


FORMER = {  # the keys mtl 0.2.0 had in the shared sections, and a value each
    "meta.inner_steps": 3, "meta.inner_lr": 0.1, "meta.first_order": True, "meta.lr_ss": 0.1,
    "meta.lr_theta": 0.1, "meta.bn": "affine", "test.inner_steps": 3,
}  # fmt: skip


def _reference_keys() -> set[str]:
    from mtl.cli.key_reference import key_groups

    return {k.name for _, group in key_groups() for k in group}


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_every_shared_key_is_read_or_refused_naming_the_key_to_set(method):
    keys = _reference_keys()
    shared = _shared_keys()
    assert {"meta.way", "meta.step_size", "meta.hard_tasks.mode", "test.seed"} <= shared.keys()
    for key, value in [*shared.items(), *FORMER.items()]:
        text = json.dumps(value)
        try:
            cfg = config.load(None, [f"method={method}", f"{key}={text}"])
        except MtlError as refused:
            message = str(refused)
            assert message.startswith(f"{key}: ") and "\n" not in message, message
            named = [k for k in keys if f" {k}" in message]
            assert named and all(k.split(".")[0] != key.split(".")[0] for k in named), message
            assert key in FORMER or key in methods.get(method).unread(config.load(None, [f"method={method}"]))
        else:
            assert key not in FORMER and cfg.method == method


def test_maml_refuses_mtls_inner_loop_naming_its_own():
    with pytest.raises(MtlError) as refused:
        config.load("glyphs-1shot", ["meta.inner_steps=3", "method=maml"])
    assert str(refused.value) == "meta.inner_steps: method 'maml' does not read it; it reads maml.inner_steps"


@pytest.mark.parametrize(
    ("method", "key", "reads"),
    [
        ("mtl", "meta.inner_steps", "mtl.inner_steps"),
        ("mtl", "test.inner_steps", "mtl.test_inner_steps"),
        ("mtl", "meta.bn", "mtl.bn"),
        ("protonet", "meta.lr_ss", "mtl.lr_ss"),
        ("maml", "test.inner_steps", "maml.test_inner_steps"),
        ("meta-lstm", "meta.inner_steps", "meta-lstm.inner_steps"),
        ("meta-lstm", "meta.gamma", "meta-lstm.lr_decay"),
        ("tadam", "meta.step_size", "tadam.lr_drops"),
        ("tadam", "meta.first_drop", "tadam.lr_drops"),
    ],
)
def test_a_key_the_method_does_not_read_names_the_one_it_does(method, key, reads):
    with pytest.raises(MtlError, match=rf"^{key}: .*\b{reads}\b"):
        config.load(None, [f"method={method}", f"{key}=1"])


def test_the_shared_schedule_is_read_by_meta_lstm_once_it_decays():
    cfg = config.load(None, ["method=meta-lstm", "meta-lstm.lr_decay=true", "meta.gamma=0.3"])
    assert cfg.meta.gamma == 0.3


def test_a_shipped_pipeline_refuses_a_method_that_ignores_its_schedule():
    with pytest.raises(MtlError, match=r"^meta\.step_size: method 'tadam' does not read it"):
        config.load("glyphs-1shot", ["method=tadam"])
    assert config.load("glyphs-1shot", ["method=maml"]).maml.inner_steps == 5  # mtl: is MTL's


def test_mtl_config_prints_the_chosen_methods_section_only():
    from click.testing import CliRunner

    from mtl.cli import main

    out = CliRunner().invoke(main, ["config", "glyphs-1shot", "--set", "method=maml"]).output
    tops = [line.split(":")[0] for line in out.splitlines() if line[:1].isalpha() and ":" in line]
    assert "maml" in tops and not {"mtl", "protonet", "tadam", "mann"} & set(tops)
    ft = CliRunner().invoke(main, ["config", "glyphs-1shot", "--set", "method=ft", "--json"]).output
    assert "mtl" in json.loads(ft)["config"] and "maml" not in json.loads(ft)["config"]  # FT borrows MTL's


def test_the_configuration_has_no_section_before_the_methods_register(monkeypatch):
    monkeypatch.setattr(sections, "_SECTIONS", {})
    with pytest.raises(RuntimeError, match="import mtl.methods"):
        config.load(None)


# ------------------------------------------------------------- the same runs through the renames


@pytest.mark.parametrize("name", list(pipeline_file.shipped()))
def test_every_shipped_pipeline_resolves_to_the_run_it_resolved_to_before(name):
    before = json.loads(BEFORE.read_text())[name]
    now = config.load(name).to_dict()
    assert "inner_steps" in before["meta"] and "inner_steps" not in now["meta"]
    moved = {old: new for cls in methods.METHODS.values() for old, new in cls.former_keys.items()}
    for key, value in json.loads(json.dumps(flatten(before))).items():
        new = f"mtl.{moved[key]}" if key in moved else key
        assert flatten(now)[new] == value, (name, key, new)
    assert set(flatten(now)) - {f"mtl.{v}" for v in moved.values()} <= set(flatten(before))


def test_a_checkpoint_of_the_earlier_version_reads_in_todays_keys():
    saved = json.loads(BEFORE.read_text())["miniimagenet-1shot"]  # what its checkpoints hold
    cfg = config.from_dict(saved)
    assert (cfg.mtl.inner_steps, cfg.mtl.inner_lr, cfg.mtl.bn, cfg.mtl.eval_steps) == (
        20,
        0.005,
        "frozen",
        100,
    )
    assert config_diff(config.upgrade(saved), config.load("miniimagenet-1shot").to_dict()) == []
