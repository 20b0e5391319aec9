"""The ``mtl`` command: one sub-command per stage, each taking a pipeline file.

    mtl pretrain  pipelines/glyphs-1shot.yaml [--set key=value ...] [--checkpoints DIR]
    mtl metatrain pipelines/glyphs-1shot.yaml
    mtl metatest  pipelines/glyphs-1shot.yaml

A mistake a user can make ends with one line on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import click

from mtl import __version__
from mtl.errors import MtlError


def _user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MtlError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def _stage_command(name: str, doc: str) -> click.Command:
    @click.command(name=name, help=doc)
    @click.argument(
        "pipeline", type=click.Path(dir_okay=False), required=False, default="pipelines/glyphs-1shot.yaml"
    )
    @click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a pipeline key (repeatable)."
    )
    @click.option(
        "--checkpoints",
        default="checkpoints",
        show_default=True,
        type=click.Path(file_okay=False),
        help="Where run outputs go: <checkpoints>/<name>/<stage>/.",
    )
    @click.option("--quiet", is_flag=True, help="No console output except errors.")
    @_user_errors
    def command(pipeline: str, overrides: tuple[str, ...], checkpoints: str, quiet: bool) -> None:
        from mtl import config
        from mtl.stages import ablate, metatest, metatrain, pretrain

        stages = {
            "pretrain": pretrain.pretrain,
            "metatrain": metatrain.metatrain,
            "metatest": metatest.metatest,
            "ablate": ablate.ablate,
        }
        cfg = config.load(pipeline, overrides)
        stages[name](cfg, checkpoints, quiet=quiet)

    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="mtl")
def main() -> None:
    """Meta-Transfer Learning for few-shot image classification."""


main.add_command(_stage_command("pretrain", "Stage 1: pretrain the encoder on the base classes."))
main.add_command(_stage_command("metatrain", "Stage 2: meta-train SS weights and θ (needs pretrain)."))
main.add_command(
    _stage_command("metatest", "Stage 3: accuracy ± 95% CI on fixed test episodes (needs metatrain).")
)
main.add_command(
    _stage_command(
        "ablate", "The ablation: NC, FT, MTL, MTL + HT (and from scratch) on one pretrained encoder."
    )
)
