"""``mtl data``: prepare a dataset from what was downloaded, and inspect a prepared one."""

from __future__ import annotations

import sys

import click

from mtl.cli.options import user_errors
from mtl.data.prepare.formats import DATASETS

__all__ = ["data"]


@click.group(short_help="Prepare a dataset, or inspect a prepared one.")
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
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    help="Refuse source images with more pixels than this [MTL_MAX_PIXELS, else 100,000,000].",
)
@click.option("--quiet", is_flag=True, help="No progress or report.")
@user_errors
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
    max_pixels: int | None,
) -> None:
    """Convert DATASET at --source (any supported layout, auto-detected) into a prepared dataset.

    SIGTERM or Ctrl-C removes the unfinished folder and exits with 128 + the signal's number.
    """
    from mtl.data.prepare.preparation import prepare
    from mtl.data.prepare.stopping import Interrupted

    try:
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
            max_pixels=max_pixels,
        )
    except Interrupted as exc:
        # A path that is not UTF-8 (surrogate escapes) must not turn the line into a traceback.
        click.echo(str(exc).encode("utf-8", "surrogateescape").decode("utf-8", "replace"), err=True)
        sys.exit(128 + exc.signum)
    if not quiet:
        click.echo("\n".join(report.lines()))


@data.command("info")
@click.argument("folder", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@user_errors
def data_info(folder: str, as_json: bool) -> None:
    """Print the manifest of the prepared dataset in FOLDER."""
    import json

    from mtl.data.prepared import load_manifest

    manifest = load_manifest(folder)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    # load_manifest checked what is indexed here; the optional keys may be anything in a damaged file.
    origin = f"from {_shown(manifest['source_format'])}"
    glyphs = manifest.get("glyphs")
    if isinstance(glyphs, dict) and {"preset", "seed"} <= glyphs.keys():  # generated, not converted
        origin = f"generated (preset {_shown(glyphs['preset'])}, seed {_shown(glyphs['seed'])})"
    dataset = manifest.get("dataset")
    dataset = dataset if isinstance(dataset, str) and dataset else manifest["source_format"]
    click.echo(f"{folder}: {_shown(dataset)} {origin}, fingerprint {_shown(manifest['fingerprint'])}")
    for name, s in manifest["splits"].items():
        click.echo(f"  {name:<5} {s['classes']:>5} classes {s['images']:>8} images  {s['image_shape']}")


def _shown(value: object) -> str:
    """A manifest's text as printed: control characters (a terminal escape in a damaged file) escaped."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(value))
