"""Commands that only list and explain answer without importing torch, timm or torchvision: `mtl --help`
and `mtl pipelines`. `mtl config` imports the methods (their sections are the configuration's) and
prints what a stage runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from mtl import config
from mtl.cli import main

HEAVY = ("torch", "timm", "torchvision")


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


@pytest.mark.parametrize("args", [["--help"], ["pipelines"], ["config", "--help"], ["data", "--help"]])
def test_listing_commands_do_not_import_torch(args):
    out, heavy = _heavy_imports(args)
    assert out.strip() and heavy == []


def test_the_config_printed_is_the_config_a_stage_runs():
    out, _ = _heavy_imports(["config", "glyphs-1shot", "--set", "maml.lr=0.5", "--set", "method=protonet"])
    runs = config.load("glyphs-1shot", ["maml.lr=0.5", "method=protonet"])
    assert out.startswith(runs.to_yaml())


def test_help_texts_have_no_stray_spaces():
    for command in ("config", "compare", "metatest", "import"):
        text = CliRunner().invoke(main, [command, "--help"]).output
        prose = [line for line in text.splitlines() if not line.lstrip().startswith("-")]
        assert not any("  " in line.strip() for line in prose), (command, prose)
