"""Commands that only read and print answer without importing torch, timm or torchvision: `mtl --help`,
`mtl pipelines`, `mtl config` (the methods' settings read from their files, the same settings as the
imported methods declare)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from mtl import config
from mtl.cli import main
from mtl.config import declared, sections
from mtl.errors import MtlError

HEAVY = ("torch", "timm", "torchvision")
PIPELINES = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml"))


def _heavy_imports(args: list[str]) -> tuple[str, list[str]]:
    """Run ``mtl *args`` in a fresh interpreter: its output and which of :data:`HEAVY` it imported."""
    script = textwrap.dedent(
        f"""
        import sys
        from mtl.cli import main
        try:
            main({args!r}, prog_name="mtl")
        except SystemExit as exit:
            assert not exit.code, exit.code
        print("HEAVY:" + ",".join(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    out, _, heavy = run.stdout.rpartition("HEAVY:")
    return out, [m for m in heavy.strip().split(",") if m]


@pytest.mark.parametrize(
    "args",
    [["--help"], ["pipelines"], ["config"], ["config", "glyphs-5shot", "--set", "method=maml", "--json"]],
)
def test_reading_commands_do_not_import_torch(args):
    out, heavy = _heavy_imports(args)
    assert out.strip() and heavy == []


def test_the_config_printed_without_torch_is_the_config_a_stage_runs():
    out, heavy = _heavy_imports(
        ["config", "glyphs-1shot", "--set", "maml.lr=0.5", "--set", "method=protonet"]
    )
    assert heavy == []
    runs = config.load("glyphs-1shot", ["maml.lr=0.5", "method=protonet"])
    assert out.startswith(runs.to_yaml())


def _fields(settings: type | None) -> list[tuple] | None:
    if settings is None:
        return None
    # A list default comes from a factory: compare what it makes.
    missing = dataclasses.MISSING
    return [
        (
            f.name,
            f.type,
            f.default,
            None if f.default_factory is missing else f.default_factory(),
            dict(f.metadata),
        )
        for f in dataclasses.fields(settings)
    ]


def test_the_methods_read_from_their_files_are_the_registered_methods():
    registered = sections.methods()  # imports mtl.methods
    read = declared.methods()
    assert list(read) == list(registered)  # names, in the results tables' order
    assert {name: _fields(s) for name, s in read.items()} == {
        name: _fields(s) for name, s in registered.items()
    }
    assert sum(s is not None for s in read.values()) >= 4


def test_the_backbones_read_from_their_files_are_the_ones_timm_registered():
    from mtl.models.backbone import own_backbones

    assert declared.backbones() == own_backbones()
    assert {"resnet12", "resnet12_tf", "resnet25", "conv4"} <= set(declared.backbones())


def test_the_key_reference_read_from_files_is_the_imported_one(monkeypatch):
    from mtl.config.key_reference import key_reference

    imported = key_reference()
    with monkeypatch.context() as hidden:
        for package in ("mtl.methods", "mtl.models"):
            hidden.delitem(sys.modules, package)
        with declared.from_files():
            read = key_reference()
        assert "mtl.methods" not in sys.modules and "mtl.models" not in sys.modules
    assert read == imported


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_every_shipped_pipeline_resolves_the_same_read_from_files(path, monkeypatch):
    with monkeypatch.context() as hidden:
        hidden.delitem(sys.modules, "mtl.methods")
        with declared.from_files():
            printed = config.load(path)
        assert "mtl.methods" not in sys.modules
    assert printed.to_dict() == config.load(path).to_dict()


@pytest.mark.parametrize(
    "overrides",
    [["maml.lr=-1"], ["protonet.train_wayy=3"], ["method=protonett"], ["matchingnet.fce_steps=0"]],
)
def test_errors_read_from_files_are_the_errors_a_stage_gives(overrides, monkeypatch):
    with pytest.raises(MtlError) as imported:
        config.load(None, overrides)
    with monkeypatch.context() as hidden:
        hidden.delitem(sys.modules, "mtl.methods")
        with declared.from_files(), pytest.raises(MtlError) as read:
            config.load(None, overrides)
        assert "mtl.methods" not in sys.modules
    assert str(read.value) == str(imported.value)


def test_a_method_file_the_reading_cannot_follow_is_imported(monkeypatch):
    def unreadable(*args):
        raise declared.Unreadable("a settings class built by a function")

    from mtl.methods import METHODS

    monkeypatch.setattr(declared, "_run_settings", unreadable)
    monkeypatch.delitem(sys.modules, "mtl.methods")  # as in a fresh `mtl config`
    with declared.from_files():
        assert sections.methods() == {name: cls.settings for name, cls in METHODS.items()}
    with pytest.raises(declared.Unreadable):
        declared.methods()


def test_help_texts_have_no_stray_spaces():
    for command in ("config", "compare", "metatest", "import"):
        text = CliRunner().invoke(main, [command, "--help"]).output
        prose = [line for line in text.splitlines() if not line.lstrip().startswith("-")]
        assert not any("  " in line.strip() for line in prose), (command, prose)
