"""The ``mtl`` command: one sub-command per stage, each taking a pipeline file.

    mtl pretrain  pipelines/glyphs-1shot.yaml [--set key=value ...] [--checkpoints DIR]
    mtl metatrain pipelines/glyphs-1shot.yaml
    mtl metatest  pipelines/glyphs-1shot.yaml
    mtl config    pipelines/miniimagenet-1shot.yaml [--json]
    mtl data prepare miniimagenet --source ~/Downloads/mini --dest ~/.cache/mtl/miniimagenet
    mtl data info ~/.cache/mtl/miniimagenet
    mtl report [CHECKPOINTS]
    mtl adapt --checkpoint checkpoints/<name>/metatrain/best.pt --support DIR --query DIR

A mistake a user can make ends with one line on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

import click

from mtl import __version__
from mtl.data.formats import DATASETS
from mtl.errors import MtlError


def _user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MtlError as exc:
            click.echo(f"error: {exc}", err=True)
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


_pipeline = click.argument(
    "pipeline", type=click.Path(dir_okay=False), required=False, default="pipelines/glyphs-1shot.yaml"
)
_overrides = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a pipeline key (repeatable)."
)
_checkpoints = click.option(
    "--checkpoints",
    default="checkpoints",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where run outputs go: <checkpoints>/<name>/<stage>/.",
)
_quiet = click.option("--quiet", is_flag=True, help="No console output except errors.")


def _stage_command(name: str, doc: str) -> click.Command:
    @click.command(name=name, help=doc)
    @_pipeline
    @_overrides
    @_checkpoints
    @_quiet
    @click.option(
        "--fresh", is_flag=True, help="pretrain, metatrain: start over, do not resume from last.pt."
    )
    @_user_errors
    def command(
        pipeline: str, overrides: tuple[str, ...], checkpoints: str, quiet: bool, fresh: bool
    ) -> None:
        from mtl import config
        from mtl.stages import ablate, metatest, metatrain, pretrain

        stages = {
            "pretrain": pretrain.pretrain,
            "metatrain": metatrain.metatrain,
            "metatest": metatest.metatest,
            "ablate": ablate.ablate,
        }
        cfg = config.load(pipeline, overrides)
        if name in ("pretrain", "metatrain"):
            stages[name](cfg, checkpoints, quiet=quiet, fresh=fresh)
        else:
            stages[name](cfg, checkpoints, quiet=quiet)

    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="mtl")
def main() -> None:
    """Meta-Transfer Learning for few-shot image classification."""


main.add_command(_stage_command("pretrain", "Stage 1: pretrain the encoder on the base classes."))
main.add_command(_stage_command("metatrain", "Stage 2: meta-train the pipeline's method (MTL: SS and θ)."))
main.add_command(
    _stage_command("metatest", "Stage 3: accuracy ± 95% CI on fixed test episodes (needs metatrain).")
)
main.add_command(
    _stage_command(
        "ablate", "The ablation: NC, FT, MTL, MTL + HT (and from scratch) on one pretrained encoder."
    )
)


@main.command("compare")
@_pipeline
@click.option(
    "--methods",
    "names",
    metavar="A,B,...",
    help="Rows to compare (default: compare.methods, else every method's variants; `mtl compare --list`).",
)
@click.option("--list", "list_rows", is_flag=True, help="List the rows mtl compare knows and exit.")
@_overrides
@_checkpoints
@_quiet
@_user_errors
def compare_command(
    pipeline: str, names: str | None, list_rows: bool, overrides: tuple, checkpoints: str, quiet: bool
):
    """Every method on the same test episodes of PIPELINE: accuracy ± CI, training time, published number."""
    from mtl import config, methods
    from mtl.stages.compare import compare

    if list_rows:
        for name, (method, label, sets) in methods.variants().items():
            extra = ", ".join(f"{k}={v}" for k, v in sets.items())
            click.echo(f"{name:<18} {label}  [method={method}{', ' + extra if extra else ''}]")
        return
    cfg = config.load(pipeline, overrides)
    rows = [n.strip() for n in names.split(",") if n.strip()] if names else None
    compare(cfg, checkpoints, names=rows, quiet=quiet)


@main.command("config")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@_overrides
@click.option("--json", "as_json", is_flag=True, help='Print {"config": ..., "derived": ...} as JSON.')
@_user_errors
def show_config(pipeline: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Print the resolved PIPELINE and what it will run: meta-updates, tasks per update, the updates
    where the meta-LRs drop, pretraining steps and images per epoch."""
    import json

    from mtl import config, recipe

    cfg = config.load(pipeline, overrides)
    if as_json:
        click.echo(json.dumps({"config": cfg.to_dict(), "derived": recipe.derived(cfg)}, indent=2))
        return
    click.echo(cfg.to_yaml().rstrip())
    click.echo(f"\n# what {cfg.name} will run\n{recipe.describe(cfg)}")


@main.group()
def data() -> None:
    """Prepare a dataset (miniImageNet, FC100, tieredImageNet, Omniglot, your own folder) and inspect it."""


def _fractions(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three fractions like 0.64,0.16,0.2, got {value!r}") from None


@data.command("prepare")
@click.argument("dataset", type=click.Choice(list(DATASETS)))
@click.option("--source", required=True, type=click.Path(), help="What you downloaded (folder or file).")
@click.option("--dest", required=True, type=click.Path(), help="The prepared dataset folder to write.")
@click.option(
    "--image-size", type=click.IntRange(min=8), help="Square size (default: the dataset's standard)."
)
@click.option(
    "--split", callback=_fractions, metavar="TRAIN,VAL,TEST", help="folder: class fractions [0.64,0.16,0.2]."
)
@click.option("--seed", default=0, help="folder: seed of the class split.")
@click.option(
    "--split-lists",
    type=click.Path(file_okay=False),
    help="omniglot: folder of the Vinyals et al. train/val/test.txt lists (else: split by alphabet).",
)
@click.option("--skip-bad", is_flag=True, help="Skip undecodable images (counted in the report).")
@click.option("--workers", type=click.IntRange(min=1), help="Decoding processes [all cores].")
@click.option("--quiet", is_flag=True, help="No progress or report.")
@_user_errors
def data_prepare(
    dataset: str,
    source: str,
    dest: str,
    image_size: int | None,
    split: tuple[float, ...] | None,
    seed: int,
    skip_bad: bool,
    workers: int | None,
    quiet: bool,
    split_lists: str | None,
) -> None:
    """Convert DATASET at --source (any supported layout, auto-detected) into a prepared dataset."""
    from mtl.data.prepare import prepare

    report = prepare(
        dataset,
        source,
        dest,
        image_size=image_size,
        split=split,
        seed=seed,
        skip_bad=skip_bad,
        workers=workers,
        quiet=quiet,
        split_lists=split_lists,
    )
    if not quiet:
        click.echo("\n".join(report.lines()))


@data.command("info")
@click.argument("folder", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@_user_errors
def data_info(folder: str, as_json: bool) -> None:
    """Print the manifest of the prepared dataset in FOLDER."""
    import json

    from mtl.data.prepared import load_manifest

    manifest = load_manifest(folder)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    click.echo(
        f"{folder}: {manifest.get('dataset', '?')} from {manifest['source_format']}, "
        f"fingerprint {manifest['fingerprint']}"
    )
    for name, s in manifest["splits"].items():
        click.echo(f"  {name:<5} {s['classes']:>5} classes {s['images']:>8} images  {s['image_shape']}")


@main.command()
@click.argument("checkpoints", type=click.Path(file_okay=False), default="checkpoints", required=False)
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the table to this Markdown file.")
@_user_errors
def report(checkpoints: str, out: str | None) -> None:
    """Collect every finished metatest under CHECKPOINTS into one table laid out like the paper's."""
    from mtl.report import collect

    table = collect(checkpoints)
    click.echo(table)
    if out:
        from pathlib import Path

        Path(out).write_text(table + "\n")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A metatrain best.pt.")
@click.option("--support", required=True, type=click.Path(file_okay=False), help="DIR/<class>/*.jpg")
@click.option(
    "--query", required=True, type=click.Path(file_okay=False), help="Flat folder or class folders."
)
@click.option("--out", type=click.Path(dir_okay=False), help="Write per-image predictions to this CSV.")
@click.option("--steps", type=click.IntRange(min=0), help="Inner-loop steps [the checkpoint's test setting].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@_user_errors
def adapt(checkpoint: str, support: str, query: str, out: str | None, steps: int | None, device: str) -> None:
    """Few-shot classification of your own images with a meta-trained model."""
    from mtl.adapt import adapt as run_adapt

    run_adapt(checkpoint, support, query, out=out, steps=steps, device=device)


@main.command()
@click.option("--quick", is_flag=True, help="Reduced ResNet-12 on 32x32 images: minutes on a CPU.")
@click.option("--out", type=click.Path(dir_okay=False), default="bench.json", help="Where the JSON goes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@_user_errors
def bench(quick: bool, out: str, device: str) -> None:
    """Time mtl's fast paths against per-episode / per-task reference code, in this process."""
    from mtl.bench import run_bench

    run_bench(quick=quick, device=device, out=out)
