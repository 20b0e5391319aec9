"""No output replaces an input or a run: every command with an output option, each output pointed at
each of the command's inputs, at a run's stage files and folders, and at a file of another kind, is
refused in one line with exit 2, and every file under the test's folder is byte-identical afterwards.
An output of the same kind, written earlier, is still replaced."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import PIPELINE, digests, finished_run
from fakes import write_image

from mtl.cli import main
from mtl.errors import MtlError
from mtl.inference.classifier import Classifier

RUN = "ckpts/tiny"
META = f"{RUN}/metatrain/best.pt"
# Every file a finished run's stages wrote that an output could be pointed at.
STAGE_FILES = [
    f"{RUN}/pretrain/best.pt",
    f"{RUN}/pretrain/last.pt",
    f"{RUN}/metatrain/best.pt",
    f"{RUN}/metatrain/last.pt",
    f"{RUN}/metatrain/last.prev.pt",
    f"{RUN}/metatest/results.json",
    f"{RUN}/metatrain/config.yaml",
]
# A folder given for a file output: click's one line says so, before mtl's own checks.
DIR = r"' is a directory\."
INSIDE_RUN = r"is inside the run folder .*ckpts/tiny, which only mtl's stages write"


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result, pattern: str) -> None:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished tiny run under ``root/ckpts``, support and query folders of images, a classifier
    that ``mtl adapt --save`` wrote, an export, and a file and a folder of the user's own."""
    root = tmp_path_factory.mktemp("outputs")
    sets, _ = finished_run(root)
    rng = np.random.default_rng(0)
    for folder in ("support", "query"):
        for k, name in enumerate(("a", "b")):
            for i in range(2):
                pixels = np.clip(rng.normal(80 + 100 * k, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
                write_image(root / folder / name / f"{i}.png", pixels)
    made = invoke(*adapt(root), "--save", root / "clf.pt", "--out", root / "earlier.csv")
    assert made.exit_code == 0, made.output
    assert invoke("export", root / META, root / "exported").exit_code == 0
    (root / "notes.txt").write_text("the user's own notes\n")
    (root / "mine").mkdir()
    (root / "mine" / "confusion_matrix.csv").write_text("a table of the user's own\n")
    shutil.copy(root / META, root / "meta-copy.pt")
    return root, sets


def adapt(root: Path) -> list[object]:
    return ["adapt", "--checkpoint", root / META, "--support", root / "support", "--query", root / "query"]


Case = tuple[Callable[[Path, list[str]], list[object]], str]


def _adapt(option: str, target: str, *more: str) -> Case:
    return lambda root, sets: [*adapt(root), option, root / target, *more]


def _predict(target: str) -> Case:
    return lambda root, sets: ["predict", root / "clf.pt", root / "query", "--out", root / target]


def _report(option: str, target: str) -> Case:
    return lambda root, sets: ["report", root / "ckpts", option, root / target]


def _export(source: str, target: str, *more: str) -> Case:
    return lambda root, sets: ["export", root / source, root / target, *more]


def _prepare(target: str) -> Case:
    return lambda root, sets: [
        "data",
        "prepare",
        "folder",
        "--source",
        root / "support",
        "--dest",
        root / target,
    ]


def _bench(target: str) -> Case:
    return lambda root, sets: ["bench", "--quick", "--device", "cpu", "--out", root / target]


CASES: dict[str, Case] = {
    # adapt --out / --save: the checkpoint, the support and query folders and an image they hold.
    "adapt --out is --checkpoint": (_adapt("--out", META), r"--out .*best\.pt is the --checkpoint file"),
    "adapt --save is --checkpoint": (_adapt("--save", META), r"--save .*best\.pt is the --checkpoint file"),
    "adapt --out is --support": (_adapt("--out", "support"), rf"support{DIR}"),
    "adapt --save is --query": (_adapt("--save", "query"), rf"query{DIR}"),
    "adapt --out is a support image": (
        _adapt("--out", "support/a/0.png"),
        r"0\.png is a file in the --support folder it reads, not a predictions CSV",
    ),
    "adapt --save is a query image": (
        _adapt("--save", "query/b/1.png"),
        r"1\.png is a file in the --query folder it reads, not a classifier",
    ),
    "adapt --save over a metatrain checkpoint": (
        _adapt("--save", "meta-copy.pt"),
        r"meta-copy\.pt is an existing file, not a classifier that mtl adapt --save wrote \(it is a "
        r"metatrain checkpoint\); it is left as it is",
    ),
    "adapt --out over the user's file": (
        _adapt("--out", "notes.txt"), r"notes\.txt is an existing file, not a predictions CSV"
    ),
    "adapt --out beside the user's confusion_matrix.csv": (
        _adapt("--out", "mine/p.csv"), r"--out's .*confusion_matrix\.csv is an existing file, not a confusion"
    ),
    "adapt --out and --save on one path": (
        lambda root, sets: [*adapt(root), "--out", root / "both.x", "--save", root / "both.x"],
        r"--out .*both\.x is also --save",
    ),
    # predict --out: the classifier, the images folder, an image.
    "predict --out is CLASSIFIER": (_predict("clf.pt"), r"--out .*clf\.pt is the CLASSIFIER file it reads"),
    "predict --out is IMAGES": (_predict("query"), rf"query{DIR}"),
    "predict --out is an image": (_predict("query/a/0.png"), r"is a file in the IMAGES folder it reads"),
    "predict --out over the user's file": (_predict("notes.txt"), r"an existing file, not a predictions CSV"),
    # report --out / --plot: the checkpoints folder it reads, the run and its files.
    "report --out is CHECKPOINTS": (_report("--out", "ckpts"), rf"ckpts{DIR}"),
    "report --out over the user's file": (_report("--out", "notes.txt"), r"not a report table"),
    "report --plot is CHECKPOINTS": (_report("--plot", "ckpts"), r"--plot .*ckpts is the CHECKPOINTS folder"),
    "report --plot is the run": (_report("--plot", RUN), r"--plot .*ckpts/tiny is the run folder"),
    "report --plot in a stage folder": (_report("--plot", f"{RUN}/metatest"), INSIDE_RUN),
    # export OUT (--force replaces an earlier export only).
    "export --force over the run": (_export(META, RUN, "--force"), r"OUT .*ckpts/tiny is the run folder"),
    "export --force over a stage folder": (_export(META, f"{RUN}/metatrain", "--force"), INSIDE_RUN),
    "export --force over its own export": (
        _export("exported", "exported", "--force"), r"OUT .*exported is the CHECKPOINT folder it reads"
    ),
    "export --force over the folder holding its input": (
        _export("exported/model.safetensors", "exported", "--force"), r"OUT .*exported holds CHECKPOINT"
    ),
    "export --force over the checkpoints folder": (
        _export(META, "ckpts", "--force"), r"OUT .*ckpts holds CHECKPOINT .*best\.pt, which it reads"
    ),
    "export --force over the user's folder": (
        _export(META, "mine", "--force"), r"mine is a folder but not an mtl export \(it holds 'confusion_"
    ),
    # import FILE: the best.pt it would write.
    "import of the best.pt it would write": (
        lambda root, sets: ["import", root / RUN / "pretrain/best.pt", PIPELINE, *sets,
                            "--checkpoints", root / "ckpts", "--force"],
        r"pretrain/best\.pt is the pretrain best\.pt this import would write; it is left as it is",
    ),
    # data prepare --dest: the source, inside it, around it, the run.
    "prepare --dest is --source": (_prepare("support"), r"--dest .*support is the --source folder it reads"),
    "prepare --dest inside --source": (_prepare("support/a"), r"--dest .*support/a is inside --source"),
    "prepare --dest holds --source": (_prepare("."), r"holds --source .*support, which it reads"),
    "prepare --dest is the run": (_prepare(RUN), r"--dest .*ckpts/tiny is the run folder"),
    # bench --out: no input, but never a run's file, nor a file of another kind.
    "bench --out over the user's file": (_bench("notes.txt"), r"not a benchmark JSON"),
}  # fmt: skip

# Every output option pointed at every stage file of the run.
OUTPUTS: dict[str, Callable[[str], Callable[[Path, list[str]], list[object]]]] = {
    "adapt --out": lambda t: _adapt("--out", t),
    "adapt --save": lambda t: _adapt("--save", t),
    "predict --out": _predict,
    "report --out": lambda t: _report("--out", t),
    "report --plot": lambda t: _report("--plot", t),
    "export OUT": lambda t: _export(META, t, "--force"),
    "prepare --dest": _prepare,
    "bench --out": _bench,
}
for option, make in OUTPUTS.items():
    for target in STAGE_FILES:
        pattern = (
            rf"{re.escape(target.split('/')[-1])} is the --checkpoint file it reads"
            if (target == META and option.startswith("adapt"))
            else INSIDE_RUN
        )
        CASES[f"{option} over {target}"] = (make(target), pattern)


def test_every_output_option_is_in_the_table():
    """Each output option or argument the command line declares has cases here."""
    commands = {**main.commands, **{f"data {n}": c for n, c in main.commands["data"].commands.items()}}
    declared = {
        f"{name.removeprefix('data ')} {param.opts[0] if isinstance(param, click.Option) else 'OUT'}"
        for name, command in commands.items()
        for param in command.params
        if param.name in ("out", "save", "plot", "dest")
    }
    assert declared == set(OUTPUTS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_output_never_replaces_an_input_or_a_run(world, case):
    root, sets = world
    make, pattern = CASES[case]
    before = digests(root)
    one_line(invoke(*make(root, sets)), pattern)
    assert digests(root) == before


def test_export_force_never_deletes_a_run(tiny_copy):
    """`mtl export RUN/metatrain/best.pt RUN --force` deleted the whole run: now one line, nothing
    changed."""
    _, ckpts = tiny_copy
    before = digests(ckpts)
    one_line(
        invoke("export", ckpts / "tiny/metatrain/best.pt", ckpts / "tiny", "--force"), r"is the run folder"
    )
    assert digests(ckpts) == before


def test_adapt_save_never_writes_over_its_checkpoint(world, tiny_copy):
    """`mtl adapt --save X --checkpoint X` replaced the meta-trained checkpoint: now one line, and
    metatest still reads it."""
    root, _ = world
    sets, ckpts = tiny_copy
    best = ckpts / "tiny/metatrain/best.pt"
    before = digests(ckpts)
    args = ["adapt", "--checkpoint", best, "--support", root / "support", "--query", root / "query"]
    one_line(invoke(*args, "--save", best), r"--save .*best\.pt is the --checkpoint file it reads")
    assert digests(ckpts) == before
    assert invoke("metatest", PIPELINE, *sets, "--checkpoints", ckpts).exit_code == 0


def test_classifier_save_refuses_a_run_file(world, tmp_path):
    root, _ = world
    clf = Classifier.load(root / "clf.pt", "cpu")
    before = digests(root / "ckpts")
    with pytest.raises(MtlError, match=r"Classifier\.save .*best\.pt is inside the run folder"):
        clf.save(root / META)
    with pytest.raises(MtlError, match=r"notes\.txt is an existing file, not a classifier"):
        clf.save(root / "notes.txt")
    assert digests(root / "ckpts") == before
    shutil.copy(root / "clf.pt", tmp_path / "again.pt")
    clf.save(tmp_path / "again.pt")  # an earlier classifier is replaced


def test_outputs_of_their_own_kind_are_replaced(world, tmp_path):
    """Running a command again over its own earlier outputs works, as it always did."""
    root, _ = world
    shutil.copy(root / "clf.pt", tmp_path / "clf.pt")
    out, save = tmp_path / "labelled" / "p.csv", tmp_path / "clf.pt"
    for _ in range(2):
        result = invoke(*adapt(root), "--out", out, "--save", save)
        assert result.exit_code == 0, result.output
    assert out.read_text().startswith("image,prediction,probability,label,correct,p(a),p(b)")
    assert (out.parent / "confusion_matrix.csv").read_text().startswith("true \\ predicted,a,b")
    for _ in range(2):
        result = invoke("predict", save, root / "query", "--out", out)
        assert result.exit_code == 0, result.output
    for _ in range(2):
        result = invoke(
            "report", root / "ckpts", "--out", tmp_path / "report.md", "--plot", tmp_path / "figs"
        )
        assert result.exit_code == 0, result.output
    assert (tmp_path / "report.md").read_text().startswith("| method |")
    assert all(p.suffix == ".png" for p in (tmp_path / "figs").iterdir())


def test_report_plot_keeps_a_file_of_another_kind_under_a_figure_name(world, tmp_path):
    root, _ = world
    figs = tmp_path / "figs"
    assert invoke("report", root / "ckpts", "--plot", figs).exit_code == 0
    curves = figs / "tiny-curves.png"
    curves.write_text("not a figure\n")
    before = digests(tmp_path)
    one_line(
        invoke("report", root / "ckpts", "--plot", figs), r"tiny-curves\.png is an existing file, not a PNG"
    )
    assert digests(tmp_path) == before
