"""The ``mtl`` command: one sub-command per stage, each taking a pipeline (a file, or the name of a
shipped one: ``mtl pipelines``).

    mtl pretrain  glyphs-1shot [--set key=value ...] [--checkpoints DIR]
    mtl metatrain glyphs-1shot
    mtl metatest  glyphs-1shot
    mtl config    pipelines/miniimagenet-1shot.yaml [--json]
    mtl data prepare miniimagenet --source ~/Downloads/mini --dest ~/.cache/mtl/miniimagenet
    mtl data info ~/.cache/mtl/miniimagenet
    mtl report [CHECKPOINTS]
    mtl adapt --checkpoint checkpoints/<name>/metatrain/best.pt --support DIR --query DIR

A mistake a user can make ends with one line on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import sys

import click

from mtl.cli import data, stages, tools, weights
from mtl.version import __version__

__all__ = ["main"]


class _OneLineUsage(click.Group):
    """click's group, but a wrong option, argument or value (a usage error) ends like every other
    user error: one line on stderr and exit status 2, with the command that shows the help."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group (`mtl`, `mtl data`): its help
                click.echo(exc.format_message(), err=True)
                sys.exit(exc.exit_code)
            command = exc.ctx.command_path if exc.ctx is not None else "mtl"
            click.echo(f"error: {exc.format_message()} (`{command} --help` lists the options)", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(
    cls=_OneLineUsage, context_settings={"help_option_names": ["-h", "--help"], "show_default": True}
)
@click.version_option(__version__, prog_name="mtl")
def main() -> None:
    """Meta-Transfer Learning for few-shot image classification."""


for _name in stages.STAGES:
    main.add_command(stages.stage_command(_name))
for _command in (
    stages.compare_command,
    stages.show_config,
    stages.pipelines_command,
    data.data,
    tools.report,
    tools.adapt_command,
    tools.predict,
    tools.bench,
    weights.import_command,
    weights.export_command,
):
    main.add_command(_command)
