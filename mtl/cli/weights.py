"""``mtl import`` and ``mtl export``: weights from elsewhere into a pipeline, and mtl's weights out."""

from __future__ import annotations

import shlex
import time

import click

from mtl.cli.options import checkpoints, done, overrides, pipeline, pipeline_help, user_errors
from mtl.runtime.stage_folders import FOLDERS

__all__ = ["export_command", "import_command"]

_NEXT = {s.folder: s.next for s in FOLDERS if s.next}  # imported stage -> the command that reads it


class _FormatOption(click.Option):
    """``--format``, whose help lists the layouts of :data:`mtl.weights.layouts.LAYOUTS`, read only when
    the help is shown (the registry imports torch and every layout)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from mtl.weights.layouts import names

        self.help = f"Force the layout instead of recognising it: {', '.join(names())}."
        return super().get_help_record(ctx)


@click.command("import", short_help="Start a pipeline from weights you have (official MTL, FEAT, RFS, timm).")
@click.argument("file")
@pipeline
@click.option("--format", "fmt", metavar="NAME", cls=_FormatOption, help="Force the layout.")
@overrides
@checkpoints
@click.option("--force", is_flag=True, help="Replace an existing best.pt.")
@user_errors
def import_command(
    file: str, pipeline: str, fmt: str | None, overrides: tuple, checkpoints: str, force: bool
) -> None:
    """Convert the weights in FILE for PIPELINE and write the stage checkpoint its next stage reads:
    an encoder becomes the pretrain best.pt (then run `mtl metatrain`), an official MTL meta checkpoint
    or an mtl metatrain export the metatrain best.pt (then `mtl metatest` or `mtl adapt`).

    FILE is a weights file (.pth, .pt, .bin, .safetensors, .npy, .npz), an `mtl export` folder, or
    hf-hub:<repo> for a timm model on the Hugging Face hub."""
    from mtl import load_config
    from mtl.weights.importer import import_weights

    started = time.perf_counter()
    cfg = load_config(pipeline, overrides)
    result = import_weights(file, cfg, checkpoints, fmt=fmt, force=force)
    for line in result.lines:
        click.echo(line)
    args = ["mtl", _NEXT[result.stage], pipeline, *(a for s in overrides for a in ("--set", s))]
    if checkpoints != "checkpoints":
        args += ["--checkpoints", checkpoints]
    click.echo(f"next: {shlex.join(args)}")
    done(f"import: wrote {result.path}", started, False)


pipeline_help(import_command)


@click.command("export", short_help="Write a checkpoint's weights as a model-hub folder (safetensors).")
@click.argument("checkpoint")
@click.argument("out")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@user_errors
def export_command(checkpoint: str, out: str, force: bool) -> None:
    """Write the weights of CHECKPOINT (a pretrain, metatrain or `mtl adapt --save` classifier
    checkpoint) as the folder OUT: model.safetensors, config.json (what they are, with the full
    pipeline config) and a README.md model card, as the Hugging Face hub takes them. `mtl import OUT
    PIPELINE` reads them back bit for bit; `mtl.load_encoder(OUT)` gives the encoder."""
    from mtl.weights.export import export

    started = time.perf_counter()
    folder, info = export(checkpoint, out, force=force)
    backbone = info["backbone"]["name"]
    click.echo(f"exported: {info['stage']} checkpoint, {info['tensors']} tensors, backbone {backbone}")
    if info["skipped"]:
        click.echo(f"left out: {', '.join(info['skipped'])} (not tensors)")
    done(f"export: wrote {folder} (model.safetensors, config.json, README.md)", started, False)
