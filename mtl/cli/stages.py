"""The stage commands (pretrain, metatrain, metatest, ablate, compare) and the pipeline commands
(config, pipelines)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click

from mtl.cli.options import (
    checkpoints,
    done,
    overrides,
    pipeline,
    pipeline_help,
    quiet,
    user_errors,
)
from mtl.errors import MtlError
from mtl.runtime.stage_folders import COMPARE, FOLDERS, METATRAIN, PRETRAIN, MissingCheckpoint

__all__ = ["STAGES", "compare_command", "pipelines_command", "show_config", "stage_command"]

# command -> (help, what it writes), of the commands stage_command makes; compare has its own command.
STAGES = {s.command: (s.help, s.writes) for s in FOLDERS if s is not COMPARE}
_FOLDER = {s.command: s.folder for s in FOLDERS}  # the stage folder each command writes


def rerun_hint(exc: MissingCheckpoint, pipe: str, sets: tuple[str, ...], ckpts: str) -> MtlError:
    """The missing stage's exact command line, with the pipeline and options the user gave."""
    args = ["mtl", exc.stage, pipe, *(a for s in sets for a in ("--set", s))]
    if ckpts != "checkpoints":
        args += ["--checkpoints", ckpts]
    return MtlError(str(MissingCheckpoint(exc.path, exc.stage, shlex.join(args))))


def stage_command(name: str) -> click.Command:
    doc, output = STAGES[name]
    fresh_flag = click.option("--fresh", is_flag=True, help="Start over, do not resume from last.pt.")

    @user_errors
    def command(pipeline: str, overrides: tuple[str, ...], checkpoints: str, quiet: bool, **more) -> None:
        from mtl import load_config
        from mtl.runtime import checkpoint
        from mtl.stages import ablate, metatest, metatrain, pretrain

        stages = {
            "pretrain": pretrain.pretrain,
            "metatrain": metatrain.metatrain,
            "metatest": metatest.metatest,
            "ablate": ablate.ablate,
        }
        started = time.perf_counter()
        cfg = load_config(pipeline, overrides)
        try:
            stages[name](cfg, checkpoints, quiet=quiet, **more)
        except MissingCheckpoint as exc:
            raise rerun_hint(exc, pipeline, overrides, checkpoints) from None
        out = checkpoint.stage_dir(checkpoints, cfg.run_name(name), _FOLDER.get(name, name))
        done(f"{name}: wrote {out / output}", started, quiet)

    for option in (quiet, checkpoints, overrides, pipeline):
        command = option(command)
    if name in ("pretrain", "metatrain"):
        command = fresh_flag(command)
    if name in ("metatest", "ablate"):
        command = reference_option(command)
    if name == "ablate":
        command = seeds_option(seeds_from_option(command))
    if name in ("metatest", "ablate"):
        command = allow_chance_option(command)
    return pipeline_help(click.command(name=name, help=doc, short_help=doc)(command))


reference_option = click.option(
    "--reference",
    metavar="ROW",
    help="The row every other row's paired difference is taken from [the pipeline's method].",
)


allow_chance_option = click.option(
    "--allow-chance",
    is_flag=True,
    help="Replace an earlier results.json even with results whose every row scored exactly chance with "
    "zero spread (refused by default: inputs that reached the model as constants score that).",
)


seeds_option = click.option(
    "--seeds",
    type=click.IntRange(1, 100),
    default=1,
    show_default=True,
    help="Training runs (seeds) per trained row, all scored on the same episodes: the table gives the "
    "mean, the between-seed spread and a CI over episodes and seeds.",
)


seeds_from_option = click.option(
    "--seeds-from",
    type=click.Choice([METATRAIN.folder, PRETRAIN.folder]),
    metavar="STAGE",
    default=METATRAIN.folder,
    show_default=False,  # said in the help, which click's "  [default: …]" would pad
    help="Where each extra seed starts: metatrain (meta-training again, on the pipeline's pretrain) or "
    "pretrain (pretraining anew, into <run>-seed<k>; NC and FT get seeds too, and the spread covers "
    "every training run of a row). Default: metatrain.",
)


@click.command("compare", short_help="Every method on the same test episodes, side by side.")
@pipeline
@click.option(
    "--methods",
    "names",
    metavar="A,B,...",
    help="Rows to compare (default: compare.methods, else every row; `mtl compare --list`); "
    "paper: the MTL paper's comparison table, in its order.",
)
@click.option("--list", "list_rows", is_flag=True, help="List the rows mtl compare knows and exit.")
@reference_option
@seeds_option
@seeds_from_option
@allow_chance_option
@overrides
@checkpoints
@quiet
@user_errors
def compare_command(
    pipeline: str,
    names: str | None,
    list_rows: bool,
    reference: str | None,
    seeds: int,
    seeds_from: str,
    allow_chance: bool,
    overrides: tuple,
    checkpoints: str,
    quiet: bool,
):
    """Every method on the same test episodes of PIPELINE: accuracy ± CI, training time, published
    number."""
    from mtl import load_config
    from mtl.runtime import checkpoint
    from mtl.stages.compare import compare

    if list_rows:
        from mtl.results.published import PAPER_TABLE
        from mtl.stages.compare import PAPER, known_rows

        click.echo(f"{PAPER:<18} the MTL paper's comparison table: {', '.join(PAPER_TABLE)}")
        for name, (method, label, sets) in known_rows().items():
            extra = ", ".join(f"{k}={v}" for k, v in sets.items())
            click.echo(f"{name:<18} {label}  [method={method}{', ' + extra if extra else ''}]")
        return
    started = time.perf_counter()
    cfg = load_config(pipeline, overrides)
    rows = [n.strip() for n in names.split(",") if n.strip()] if names else None
    try:
        compare(
            cfg, checkpoints, names=rows, reference=reference, seeds=seeds, seeds_from=seeds_from,
            quiet=quiet, allow_chance=allow_chance,
        )  # fmt: skip
    except MissingCheckpoint as exc:
        raise rerun_hint(exc, pipeline, overrides, checkpoints) from None
    out = checkpoint.stage_dir(checkpoints, cfg.name, "compare") / "results.json"
    done(f"compare: wrote {out}", started, quiet)


pipeline_help(compare_command)


@click.command("config", short_help="Print the resolved pipeline and what it will run.")
@pipeline
@overrides
@click.option("--json", "as_json", is_flag=True, help='Print {"config": ..., "derived": ...} as JSON.')
@click.option(
    "--keys",
    "key_list",
    is_flag=True,
    help="Print every key a pipeline can set (each method's own section too): type, default, "
    "allowed values, what it does.",
)
@user_errors
def show_config(pipeline: str, overrides: tuple[str, ...], as_json: bool, key_list: bool) -> None:
    """Print the resolved PIPELINE and what it will run: meta-updates, tasks per update, the updates
    where the meta-LRs drop, pretraining steps and images per epoch."""
    import json

    from mtl import load_config
    from mtl.cli.key_reference import key_reference
    from mtl.training import recipe

    if key_list:
        click.echo(key_reference())
        return
    cfg = load_config(pipeline, overrides)
    if as_json:
        config = cfg.to_dict(every_method=False)
        click.echo(json.dumps({"config": config, "derived": recipe.derived(cfg)}, indent=2))
        return
    click.echo(cfg.to_yaml().rstrip())
    click.echo(f"\n# what {cfg.name} will run\n{recipe.describe(cfg)}")


pipeline_help(show_config)


@click.command("pipelines", short_help="List the pipelines that ship with mtl.")
@click.option("--paths", is_flag=True, help="Print each pipeline's file instead of its description.")
def pipelines_command(paths: bool) -> None:
    """List the pipelines that ship with mtl, one line each; give a name where a command takes a
    PIPELINE (`mtl pretrain glyphs-5shot`), from any folder."""
    from mtl.config.pipeline_file import describe, shipped

    found = shipped()
    width = max(map(len, found), default=0)
    for name, path in found.items():
        click.echo(f"{name:<{width}}  {Path(path) if paths else describe(path)}")
