"""The commands around the stages: report, adapt, bench."""

from __future__ import annotations

import time

import click

from mtl.cli.options import done, user_errors

__all__ = ["adapt_command", "bench", "predict", "report"]


@click.command(
    short_help="Collect finished results (metatest, ablate, compare) in one table; --plot: figures."
)
@click.argument("checkpoints", type=click.Path(file_okay=False), default="checkpoints", required=False)
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the table to this Markdown file.")
@click.option(
    "--plot",
    type=click.Path(),
    metavar="DIR",
    help="Also write PNG figures here: validation curves with CI bands, results as bars, hard-task pools.",
)
@user_errors
def report(checkpoints: str, out: str | None, plot: str | None) -> None:
    """Collect every finished metatest, ablation and comparison under CHECKPOINTS into one table laid
    out like the paper's; with --plot, draw every run's figures."""
    from pathlib import Path

    from mtl.errors import MtlError
    from mtl.results.report import REPORT_TABLE, collect
    from mtl.runtime.atomic import atomic_write
    from mtl.runtime.outputs import Input, check_file, check_folder

    started = time.perf_counter()
    reads = [Input("CHECKPOINTS", Path(checkpoints).expanduser())]
    if out is not None:  # every output is checked before anything is written or printed
        check_file("--out", Path(out).expanduser(), REPORT_TABLE, inputs=reads, example="report.md")
    if plot is not None:
        check_folder("--plot", Path(plot).expanduser(), inputs=reads, holds="the figures")
    figures = None
    if plot is not None:  # figures are planned (inputs read, files checked) before anything is printed
        from mtl.results.plots import plan_figures, write_figures

        figures = plan_figures(checkpoints, plot)
    try:
        table = collect(checkpoints)
    except MtlError:
        if plot is None:
            raise
        table = None  # runs without a metatest still have figures
    if table is not None:
        click.echo(table)
        if out:
            with atomic_write(Path(out).expanduser(), "w", encoding="utf-8") as f:
                f.write(table + "\n")
    if figures is not None:
        written = write_figures(figures, plot)
        done(f"report: wrote {len(written)} figures to {plot}", started, False)


@click.command("adapt", short_help="Classify your own images with a trained model.")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A metatrain best.pt.")
@click.option("--support", required=True, type=click.Path(file_okay=False), help="DIR/<class>/*.jpg")
@click.option(
    "--query", required=True, type=click.Path(file_okay=False), help="Flat folder or class folders."
)
@click.option("--out", type=click.Path(dir_okay=False), help="Write per-image predictions to this CSV.")
@click.option(
    "--save", type=click.Path(dir_okay=False), help="Write the adapted classifier here, for mtl predict."
)
@click.option(
    "--steps",
    type=int,
    help="Inner-loop steps, at most 10,000 [the checkpoint's test setting].",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@user_errors
def adapt_command(
    checkpoint: str,
    support: str,
    query: str,
    out: str | None,
    save: str | None,
    steps: int | None,
    device: str,
) -> None:
    """Few-shot classification of your own images with a meta-trained model."""
    from mtl.inference.adapt import adapt_folders
    from mtl.inference.classifier import check_steps

    check_steps(steps)  # before any file is read
    started = time.perf_counter()
    result = adapt_folders(checkpoint, support, query, out=out, save=save, steps=steps, device=device)
    done(_summary("adapt", result), started, False)


@click.command(short_help="Classify images with a classifier that adapt --save wrote.")
@click.argument("classifier", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), help="Write per-image predictions to this CSV.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@user_errors
def predict(classifier: str, images: tuple[str, ...], out: str | None, device: str) -> None:
    """Classify IMAGES (files, or folders: flat, or class folders for a labelled check with a
    confusion matrix) with CLASSIFIER, the file `mtl adapt --save` wrote."""
    from mtl.inference.predict import predict as run_predict

    started = time.perf_counter()
    result = run_predict(classifier, list(images), out=out, device=device)
    done(_summary("predict", result), started, False)


def _summary(command: str, result: dict) -> str:
    n = len(result["predictions"])
    wrote = f"; wrote {', '.join(map(str, result['written']))}" if result["written"] else ""
    return f"{command}: classified {n} images{wrote}"


@click.command(short_help="Time mtl's fast paths against reference code.")
@click.option("--quick", is_flag=True, help="Reduced ResNet-12 on 32x32 images: minutes on a CPU.")
@click.option("--out", type=click.Path(dir_okay=False), default="bench.json", help="Where the JSON goes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    show_default=True,
    help="mtl's encoder precision (auto: bf16 on CPUs with AMX, else fp32); the references run in fp32.",
)
@user_errors
def bench(quick: bool, out: str, device: str, precision: str) -> None:
    """Time mtl's fast paths against per-episode / per-task reference code, in this process."""
    from dataclasses import replace

    from mtl.bench.benchmark import FULL, QUICK, run_bench

    started = time.perf_counter()
    setup = replace(QUICK if quick else FULL, precision=precision)
    run_bench(quick=quick, device=device, out=out, setup=setup)
    done(f"bench: wrote {out}", started, False)
