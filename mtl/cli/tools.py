"""The commands around the stages: report, adapt, bench."""

from __future__ import annotations

import click

from mtl.cli.options import user_errors

__all__ = ["adapt", "bench", "report"]


@click.command(short_help="Collect finished metatests into one table.")
@click.argument("checkpoints", type=click.Path(file_okay=False), default="checkpoints", required=False)
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the table to this Markdown file.")
@user_errors
def report(checkpoints: str, out: str | None) -> None:
    """Collect every finished metatest under CHECKPOINTS into one table laid out like the paper's."""
    from mtl.report import collect

    table = collect(checkpoints)
    click.echo(table)
    if out:
        from pathlib import Path

        Path(out).write_text(table + "\n")


@click.command(short_help="Classify your own images with a trained model.")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A metatrain best.pt.")
@click.option("--support", required=True, type=click.Path(file_okay=False), help="DIR/<class>/*.jpg")
@click.option(
    "--query", required=True, type=click.Path(file_okay=False), help="Flat folder or class folders."
)
@click.option("--out", type=click.Path(dir_okay=False), help="Write per-image predictions to this CSV.")
@click.option("--steps", type=click.IntRange(min=0), help="Inner-loop steps [the checkpoint's test setting].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@user_errors
def adapt(checkpoint: str, support: str, query: str, out: str | None, steps: int | None, device: str) -> None:
    """Few-shot classification of your own images with a meta-trained model."""
    from mtl.adapt import adapt as run_adapt

    run_adapt(checkpoint, support, query, out=out, steps=steps, device=device)


@click.command(short_help="Time mtl's fast paths against reference code.")
@click.option("--quick", is_flag=True, help="Reduced ResNet-12 on 32x32 images: minutes on a CPU.")
@click.option("--out", type=click.Path(dir_okay=False), default="bench.json", help="Where the JSON goes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@user_errors
def bench(quick: bool, out: str, device: str) -> None:
    """Time mtl's fast paths against per-episode / per-task reference code, in this process."""
    from mtl.bench import run_bench

    run_bench(quick=quick, device=device, out=out)
