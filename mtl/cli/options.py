"""What the ``mtl`` sub-commands share: the pipeline argument, the common options, and the wrapper
that turns a user's mistake into one line on stderr and exit status 2."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import time
from collections.abc import Callable

import click

from mtl.config.pipeline_file import DEFAULT
from mtl.errors import MtlError

__all__ = ["checkpoints", "done", "overrides", "pipeline", "printable", "quiet", "user_errors"]


def user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MtlError as exc:
            click.echo(printable(f"error: {exc}"), err=True)
            sys.exit(2)
        except Exception as exc:
            from mtl.training.resume import Stopped

            if not isinstance(exc, Stopped):
                raise
            if os.environ.get("RANK", "0") == "0":  # every rank stops at the same step; one says so
                click.echo(str(exc), err=True)
            sys.exit(128 + exc.signum)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def printable(text: str) -> str:
    """``text`` as a terminal or log can show it: a path that is not UTF-8 (its bytes were decoded with
    surrogate escapes) gets a replacement character where an undecodable byte was."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def done(what: str, started: float, quiet: bool) -> None:
    """Every command's last line: what it wrote where, and how long it took (under torchrun, from
    rank 0 alone: the processes are one run)."""
    if not quiet and os.environ.get("RANK", "0") == "0":
        seconds = time.perf_counter() - started
        took = f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
        click.echo(printable(f"{what} in {took}"))


pipeline = click.argument("pipeline", required=False, default=DEFAULT)
PIPELINE_HELP = (
    "\n\nPIPELINE is a YAML file or the name of a pipeline that ships with mtl (`mtl pipelines` "
    f"lists them), so it works from any folder; default: {DEFAULT}."
)


def pipeline_help(command: click.Command) -> click.Command:
    """``command`` with :data:`PIPELINE_HELP` after its docstring's help (dedented first: click
    dedents a docstring only when it is the whole help)."""
    command.help = inspect.cleandoc(command.help or "") + PIPELINE_HELP
    return command


overrides = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a pipeline key (repeatable)."
)
checkpoints = click.option(
    "--checkpoints",
    default="checkpoints",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where run outputs go: <checkpoints>/<name>/<stage>/.",
)
quiet = click.option("--quiet", is_flag=True, help="No console output except errors.")
