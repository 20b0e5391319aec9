"""User mistakes, table-driven: each ends with one clear line, exit code 2, no traceback, and leaves a
finished run's outputs exactly as they were."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import finished_run

from mtl.cli import main

PIPELINE = "pipelines/glyphs-1shot.yaml"


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished tiny run (all three stages) whose files every case must leave alone."""
    root = tmp_path_factory.mktemp("bad")
    sets, ckpts = finished_run(root)
    return root, sets, ckpts


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (``None``): a failed command adds, changes and removes nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def stage(name: str, *extra: str) -> Callable[[Path, list[str], Path], list[str]]:
    """A stage command on the finished run, with ``extra`` arguments."""
    return lambda root, sets, ckpts: [name, PIPELINE, *sets, *extra, "--checkpoints", str(ckpts)]


def on_copy(name: str, damage: Callable[[Path], None], *extra: str):
    """The stage on a copy of the finished run, damaged first (so the original stays intact)."""

    def args(root: Path, sets: list[str], ckpts: Path) -> list[str]:
        copy = root / f"copy-{name}-{len(list(root.iterdir()))}"
        shutil.copytree(ckpts, copy)
        damage(copy)
        return [name, PIPELINE, *sets, *extra, "--checkpoints", str(copy)]

    return args


def write(path: str, text: str):
    def args(root: Path, sets: list[str], ckpts: Path) -> list[str]:
        (root / path).write_text(text)
        return ["pretrain", str(root / path), *sets, "--checkpoints", str(ckpts)]

    return args


def truncate(path: str):
    def damage(copy: Path) -> None:
        data = (copy / path).read_bytes()
        (copy / path).write_bytes(data[: len(data) // 3])

    return damage


def plain(*argv: str):
    return lambda root, sets, ckpts: [a.format(root=root, ckpts=ckpts) for a in argv]


def adapt_task(checkpoint: str):
    """adapt with ``checkpoint`` (relative to the run) on a valid two-class task of fresh images."""

    def args(root: Path, sets: list[str], ckpts: Path) -> list[str]:
        from fakes import pattern_images, write_image

        for split in ("support", "query"):
            for c, cls in enumerate(("a", "b")):
                for i, img in enumerate(pattern_images(2, 16, seed=c)):
                    write_image(root / "task" / split / cls / f"{i}.png", img)
        task = root / "task"
        return [
            "adapt",
            "--checkpoint",
            str(ckpts / checkpoint),
            "--support",
            str(task / "support"),
            "--query",
            str(task / "query"),
        ]

    return args


CASES = {
    "wrong type": (stage("pretrain", "--set", "meta.way=five"), r"meta\.way: expected int, got 'five'"),
    "unknown key": (
        stage("pretrain", "--set", "meta.wya=5"), r"meta\.wya: unknown key \(did you mean 'meta\.way'\?\)"
    ),
    "bad --set syntax": (stage("pretrain", "--set", "meta.way"), r"bad --set 'meta\.way': expected key="),
    "out of range": (stage("metatrain", "--set", "mtl.inner_lr=-1"), r"mtl\.inner_lr: must be >= 0"),
    "bad choice": (stage("pretrain", "--set", "precision=fp16"), r"precision: .*'fp16'.*auto"),
    "missing pipeline": (plain("pretrain", "{root}/nope.yaml"), r"pipeline file not found: .*nope\.yaml"),
    "broken YAML": (write("broken.yaml", "meta: [way: 5\n"), r"broken\.yaml.*YAML"),
    "pipeline not a mapping": (write("list.yaml", "- 1\n- 2\n"), r"list\.yaml.*mapping"),
    "missing extends": (write("ext.yaml", "extends: gone.yaml\n"), r"gone\.yaml"),
    "way > classes": (
        stage("metatrain", "--set", "meta.way=40"), r"way=40 but the train split has only \d+ classes"
    ),
    "shot + query > images": (
        stage("metatrain", "--set", "meta.query=30"), r"class 'glyph-\d+' .* 10 images"
    ),
    "zero epochs": (stage("pretrain", "--set", "pretrain.epochs=0"), r"pretrain\.epochs: must be >= 1"),
    "no CUDA": (stage("pretrain", "--set", "device=cuda"), r"cuda was requested but no CUDA device"),
    "unknown backbone": (
        stage("pretrain", "--set", "backbone.name=resnet99"), r"unknown backbone 'resnet99'"
    ),
    "missing previous stage": (
        stage("metatest", "--set", "name=other"), r"no metatrain checkpoint at .*other/metatrain/best\.pt"
    ),
    "corrupt checkpoint": (
        on_copy("metatest", truncate("tiny/metatrain/best.pt")),
        r"best\.pt is not a readable mtl checkpoint",
    ),
    "checkpoint of another backbone": (
        stage("metatest", "--set", "backbone.widths=[8,8,16,32]"),
        r"was made with a different setup \(backbone\.widths: checkpoint \[8, 8, 16, 16\] vs pipeline",
    ),
    "resume with another config": (
        stage("metatrain", "--set", "mtl.inner_steps=3"),
        r"belongs to another configuration \(differs in mtl\.inner_steps\); run with --fresh",
    ),
    "output dir is a file": (
        lambda root, sets, ckpts: [
            "pretrain", PIPELINE, *sets, "--checkpoints", str(ckpts / "tiny" / "metatest" / "results.json")
        ],
        r"results\.json' is a file",
    ),
    "prepared dataset missing": (
        stage("pretrain", "--set", "data.dataset=miniimagenet", "--set", "data.root=/nonexistent/mini"),
        r"/nonexistent/mini",
    ),
    "prepare from a missing source": (
        plain("data", "prepare", "folder", "--source", "{root}/none", "--dest", "{root}/prep"),
        r"none",
    ),
    "data info on a non-dataset": (plain("data", "info", "{ckpts}"), r"manifest"),
    "prepare over the run's outputs": (
        plain("data", "prepare", "folder", "--source", "{root}/data", "--dest", "{ckpts}"),
        r"ckpts is not empty and not a prepared dataset \(it holds 'tiny'\); it is left alone",
    ),
    "adapt without support folder": (
        plain("adapt", "--checkpoint", "{ckpts}/tiny/metatrain/best.pt", "--support", "{root}/s",
              "--query", "{root}/q"),
        r"support folder not found: .*/s",
    ),
    "adapt with a pretrain checkpoint": (
        adapt_task("tiny/pretrain/best.pt"), r"is a pretrain checkpoint, expected metatrain"
    ),
    "report of no runs": (plain("report", "{root}/empty-checkpoints"), r"empty-checkpoints"),
    "bench output not writable": (
        plain("bench", "--quick", "--out", "{root}/no/dir/b.json"), r"b\.json: .*/no/dir does not exist"
    ),
}  # fmt: skip


def test_the_table_has_at_least_twenty_mistakes():
    assert len(CASES) >= 20


def bad_file(name: str, make: Callable[[Path], None], command: str = "pretrain"):
    """``command`` given the file ``name`` that ``make`` writes where a pipeline (or, for adapt, a
    checkpoint) goes."""

    def args(root: Path, sets: list[str], ckpts: Path) -> list[str]:
        path = root / name
        make(path)
        if command == "adapt":
            return adapt_task(str(path))(root, sets, ckpts)  # an absolute path stays as it is
        return [command, str(path), *sets, "--checkpoints", str(ckpts)]

    return args


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _png(path: Path) -> None:
    from fakes import pattern_images, write_image

    write_image(path, pattern_images(1, 16, seed=0)[0])


_BOMB = "\n".join(
    ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
)

FILE_CASES = {
    "checkpoint given as the pipeline": (
        lambda root, sets, ckpts: ["metatest", str(ckpts / "tiny/metatrain/best.pt"), *sets],
        r"best\.pt is a checkpoint or archive, not a pipeline \(YAML\) file",
    ),
    "image given as the pipeline": (bad_file("glyph.png", _png), r"glyph\.png is a binary file"),
    "random bytes as the pipeline": (
        bad_file("noise.yaml", _bytes(bytes(range(256)) * 4)), r"noise\.yaml is a binary file"
    ),
    "empty pipeline": (bad_file("empty.yaml", _bytes(b"")), r"empty\.yaml is empty"),
    "huge pipeline": (
        bad_file("huge.yaml", _bytes(b"# padding\n" * 200_000)), r"huge\.yaml: 1\.9 MiB is too large"
    ),
    "folder as the pipeline": (
        lambda root, sets, ckpts: ["metatest", str(root), *sets, "--checkpoints", str(ckpts)],
        r"is a folder, not a pipeline file",
    ),
    "YAML bomb": (bad_file("bomb.yaml", _bytes(_BOMB.encode())), r"bomb\.yaml: expands to over 100,000"),
    "deeply nested YAML": (
        bad_file("deep.yaml", _bytes(b"meta: " + b"[" * 3000 + b"]" * 3000)), r"deep\.yaml: nested"
    ),
    "unknown pipeline name": (
        plain("pretrain", "glyphs-2shot"),
        r"pipeline file not found: glyphs-2shot and no shipped pipeline has that name \(mtl pipelines\)",
    ),
    "adapt with a pipeline as the checkpoint": (
        bad_file("p.yaml", _bytes(b"name: x\n"), "adapt"),
        r"p\.yaml is not a metatrain checkpoint \(a pipeline \(YAML\) file\)",
    ),
    "adapt with random bytes as the checkpoint": (
        bad_file("noise.pt", _bytes(b"\x01\x02" * 100), "adapt"),
        r"noise\.pt is not a metatrain checkpoint \(not a PyTorch file\)",
    ),
    "adapt with an empty checkpoint": (
        bad_file("empty.pt", _bytes(b""), "adapt"), r"empty\.pt is empty, not a metatrain checkpoint"
    ),
    "adapt with metatest results as the checkpoint": (
        lambda root, sets, ckpts: adapt_task("tiny/metatest/results.json")(root, sets, ckpts),
        r"results\.json is not a metatrain checkpoint \(not a PyTorch file\)",
    ),
    "adapt with a pickled object as the checkpoint": (
        bad_file("obj.pt", lambda p: torch_save_object(p), "adapt"),
        r"obj\.pt is not a readable mtl checkpoint \(it holds Python objects mtl never saves\)",
    ),
    "predict with a metatrain checkpoint": (
        plain("predict", "{ckpts}/tiny/metatrain/best.pt", "{root}"),
        r"best\.pt is a metatrain checkpoint, expected classifier",
    ),
    "predict without images": (
        plain("predict", "{ckpts}/tiny/metatrain/best.pt"), r"give the images to classify"
    ),
    "adapt --save into a missing folder": (
        lambda root, sets, ckpts: [*adapt_task("tiny/metatrain/best.pt")(root, sets, ckpts), "--save",
                                   str(root / "no" / "c.pt")],
        r"--save .*c\.pt: .*/no does not exist",
    ),
}  # fmt: skip
CASES.update(FILE_CASES)

# Numbers no run can use: NaN passes every `<` check, so each is refused by name first.
LIMIT_CASES = {
    "NaN learning rate": (
        stage("metatrain", "--set", "mtl.inner_lr=nan"),
        r"mtl\.inner_lr: must be a finite number, got nan",
    ),
    "NaN normalisation": (
        stage("metatest", "--set", "data.std=[.nan,1,1]"),
        r"data\.std\[0\]: must be a finite number",
    ),
    "infinite mean": (
        stage("metatest", "--set", "data.mean=[.inf,0,0]"),
        r"data\.mean\[0\]: must be a finite number, got inf",
    ),
    "NaN published number": (
        stage("metatest", "--set", "paper.acc=.nan"),
        r"paper\.acc: must be a finite number",
    ),
    "absurd inner learning rate": (
        stage("metatest", "--set", "mtl.inner_lr=1e308"),
        r"mtl\.inner_lr: must be <= 100\.0, got 1e\+308",
    ),
    "zero pretraining rate": (
        stage("pretrain", "--set", "pretrain.lr=0"),
        r"pretrain\.lr: must be > 0\.0, got 0\.0",
    ),
    "huge seed": (
        stage("pretrain", "--set", "seed=100000000000000000000000"),
        r"seed: must be <= 4,294,967,295, got 100,000,",
    ),
    "float seed": (stage("pretrain", "--set", "seed=1.0e+23"), r"seed: expected int, got 1e\+23"),
    "negative seed": (stage("metatest", "--set", "test.seed=-1"), r"test\.seed: must be >= 0, got -1"),
    "absurd test episodes": (
        stage("metatest", "--set", "test.episodes=1000000000000"),
        r"test\.episodes: must be <= 100,000, got 1,000,000,000,000",
    ),
    "absurd inner steps": (
        stage("metatest", "--set", "mtl.test_inner_steps=100000000"),
        r"mtl\.test_inner_steps: must be <= 10,000",
    ),
    "absurd glyphs classes": (
        stage("pretrain", "--set", "data.glyphs.classes=1000000000"),
        r"data\.glyphs: 1,000,000,000 classes x 10 images of 16x16x3 would need 7\.0 TiB of memory, "
        r"over the 16\.0 GiB limit",
    ),
    "absurd glyphs images": (
        stage("pretrain", "--set", "data.glyphs.images_per_class=1000000000"),
        r"data\.glyphs: 30 classes x 1,000,000,000 images of 16x16x3 would need 21\.0 TiB of memory",
    ),
    "absurd image size": (
        stage("pretrain", "--set", "data.image_size=1000000000"),
        r"data\.image_size: must be <= 1,024",
    ),
    "glyphs too large for memory": (
        stage("pretrain", "--set", "data.glyphs.classes=90000", "--set", "data.glyphs.images_per_class=1000"),
        r"data\.glyphs: 90,000 classes x 1,000 images of 16x16x3 would need 64\.4 GiB of memory, "
        r"over the 16\.0 GiB limit",
    ),
    "adapt with absurd steps": (
        lambda root, sets, ckpts: [
            *adapt_task("tiny/metatrain/best.pt")(root, sets, ckpts),
            "--steps",
            str(10**20),
        ],
        r"--steps: must be 0 \.\. 10,000 \(the paper: 100\), got 100,000,000,000,000,000,000$",
    ),
    "name that climbs out": (
        stage("pretrain", "--set", "name=../escaped"),
        r"name: '\.\./escaped' is not a folder name",
    ),
    "absolute pretrain name": (
        stage("pretrain", "--set", "pretrain.name=/tmp/x"),
        r"pretrain\.name: '/tmp/x' is not a folder name",
    ),
    "name of 300 characters": (
        stage("pretrain", "--set", "name=" + "n" * 300),
        r"name: 300 characters; a run name has at most 100",
    ),
    "checkpoints folder name too long": (
        lambda root, sets, ckpts: ["metatest", PIPELINE, *sets, "--checkpoints", str(root / ("x" * 300))],
        r"cannot write to .*/xxxx.*/tiny/metatest: File name too long$",
    ),
}
CASES.update(LIMIT_CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistake(done, case):
    root, sets, ckpts = done
    make_args, message = CASES[case]
    before = snapshot(ckpts)
    result = CliRunner().invoke(main, make_args(root, sets, ckpts))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert lines and lines[-1].startswith(("error: ", "Error: ")), result.output
    assert sum("rror: " in line for line in lines) == 1, result.output
    assert re.search(message, lines[-1]), lines[-1]
    assert snapshot(ckpts) == before


class _Thing:
    """Not a tensor or a builtin: what ``weights_only`` loading refuses."""


def torch_save_object(path: Path) -> None:
    import torch

    torch.save({"thing": _Thing()}, path)


def test_file_mistakes_add_at_least_ten_cases():
    assert len(FILE_CASES) >= 10


def test_a_stage_runs_by_pipeline_name_outside_the_repository(done, tmp_path, monkeypatch):
    """``cd /tmp && mtl metatest glyphs-1shot --checkpoints DIR`` works and says where it wrote."""
    root, sets, ckpts = done
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["metatest", "glyphs-1shot", *sets, "--checkpoints", str(ckpts)])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"metatest: wrote {re.escape(str(ckpts))}/tiny/metatest/results\.json in [\d.]+ s", last
    )


def test_a_missing_stage_names_the_exact_command_to_run(done):
    root, sets, ckpts = done
    result = CliRunner().invoke(
        main, ["metatest", PIPELINE, "--set", "name=other", "--checkpoints", str(ckpts)]
    )
    want = f"run `mtl metatrain {PIPELINE} --set name=other --checkpoints {ckpts}` first"
    assert result.exit_code == 2 and result.output.strip().endswith(want), result.output
