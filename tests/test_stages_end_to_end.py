"""A tiny run of all three stages, through the Python API and through the `mtl` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from mtl import config
from mtl.cli import main
from mtl.models import ss
from mtl.runtime import checkpoint
from mtl.stages.metatest import FT, MTL, NC_FEATURES, NC_PIXELS, metatest
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain


def test_three_stages_end_to_end(tiny_cfg, tmp_path):
    ckpts = tmp_path / "ckpts"
    best = pretrain(tiny_cfg, ckpts, quiet=True)
    assert 0 <= best["val_acc"] <= 100 and best["epoch"] in (1, 2)
    run = ckpts / "tiny"
    for name in ("best.pt", "last.pt", "config.yaml"):
        assert (run / "pretrain" / name).is_file()
    pre = checkpoint.load(run / "pretrain" / "best.pt", stage="pretrain")
    assert pre["config"] == tiny_cfg.to_dict() and len(pre["class_names"]) == 19 and pre["version"]
    assert config.load(run / "pretrain" / "config.yaml") == tiny_cfg

    metatrain(tiny_cfg, ckpts, quiet=True)
    meta = checkpoint.load(run / "metatrain" / "last.pt", stage="metatrain")
    assert meta["metric"]["epoch"] == 2
    best_epoch = checkpoint.load(run / "metatrain" / "best.pt", stage="metatrain")["metric"]["epoch"]
    assert best_epoch in (0, 1, 2)  # the untrained start competes on validation too
    assert meta["theta"]["W"].shape == (3, 16) and meta["theta"]["b"].shape == (3,)
    # Meta-training changed only SS weights and θ: each frozen convolution keeps its pretrained weight.
    convs = {k: v for k, v in meta["encoder"].items() if k.endswith(".conv.weight")}
    assert convs
    for key, weight in convs.items():
        assert torch.equal(weight, pre["encoder"][key.replace(".conv.weight", ".weight")]), key
    scales = [v for k, v in meta["encoder"].items() if k.endswith(".scale")]
    assert len(scales) == len(convs) and any(not torch.equal(s, torch.ones_like(s)) for s in scales)

    results = metatest(tiny_cfg, ckpts, quiet=True)
    saved = json.loads((run / "metatest" / "results.json").read_text())
    assert saved == results
    assert (saved["pipeline"], saved["way"], saved["shot"], saved["query"], saved["episodes"]) == (
        "tiny",
        3,
        1,
        3,
        30,
    )
    assert [r["method"] for r in saved["rows"]] == [MTL, FT, NC_FEATURES, NC_PIXELS]
    for row in saved["rows"]:
        assert 0 <= row["acc"] <= 100 and row["ci95"] > 0
    assert any((run / "tb").rglob("events.out.tfevents.*"))


def test_the_tf_batch_norm_trains_and_tests(tiny_overrides, tmp_path):
    """``mtl.bn: batch``: batch statistics in every phase, nothing of BN trained, running statistics
    untouched; the stages run and the pretrained BN buffers come out as they went in."""
    cfg = config.load(None, [*tiny_overrides, "mtl.bn=batch"])
    ckpts = tmp_path / "ckpts"
    pretrain(cfg, ckpts, quiet=True)
    metatrain(cfg, ckpts, quiet=True)
    run = ckpts / "tiny"
    pre = checkpoint.load(run / "pretrain" / "best.pt", stage="pretrain")["encoder"]
    meta = checkpoint.load(run / "metatrain" / "last.pt", stage="metatrain")["encoder"]
    for key in (k for k in pre if k.endswith(("running_mean", "running_var", "bn1.weight", "bn1.bias"))):
        assert torch.equal(meta[key], pre[key]), key
    assert not any(k.endswith(".shift") for k, v in meta.items() if not torch.equal(v, torch.zeros_like(v)))
    results = metatest(cfg, ckpts, quiet=True)
    assert [r["method"] for r in results["rows"]] == [MTL, FT, NC_FEATURES, NC_PIXELS]
    assert all(0 <= r["acc"] <= 100 for r in results["rows"])


def test_metatest_is_reproducible(tiny_overrides, tmp_path):
    tiny_cfg = config.load(None, [*tiny_overrides, "meta.augment=true", "mtl.first_order=true"])
    ckpts = tmp_path / "ckpts"
    pretrain(tiny_cfg, ckpts, quiet=True)
    metatrain(tiny_cfg, ckpts, quiet=True)
    assert metatest(tiny_cfg, ckpts, quiet=True) == metatest(tiny_cfg, ckpts, quiet=True)


def test_meta_gradients_reach_only_ss_and_theta(tiny_cfg, tmp_path):
    import numpy as np

    from mtl.data.episodes import EpisodeSampler
    from mtl.data.sources import load_splits
    from mtl.methods.mtl import MTL
    from mtl.training.run import Run

    run = Run.open(tiny_cfg, "metatrain", tmp_path, quiet=True)
    learner = MTL(run.backbone(), tiny_cfg)
    train = load_splits(tiny_cfg.data, ("train",))["train"]
    tasks = np.stack([EpisodeSampler(train.labels, 3, 1, 3, seed=0).sample() for _ in range(2)])
    logits, y = learner.task_logits(torch.from_numpy(train.images.copy()), tasks, run.pre)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(2)).backward()
    trainable = {id(p) for p in ss.parameters(learner.encoder)} | {id(learner.W), id(learner.b)}
    for name, p in learner.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_runs_the_stages_and_prints_the_table(tiny_overrides, tmp_path):
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    ckpts = str(tmp_path / "out")
    for stage in ("pretrain", "metatrain"):
        result = invoke(stage, "pipelines/glyphs-1shot.yaml", *sets, "--checkpoints", ckpts)
        assert result.exit_code == 0, result.output
    result = invoke("metatest", "pipelines/glyphs-1shot.yaml", *sets, "--checkpoints", ckpts)
    assert result.exit_code == 0, result.output
    assert (
        "| MTL (SS + meta-learned θ) |" in result.output and "nearest centroid, raw pixels" in result.output
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["metatrain"],
            # the exact command to run, with the pipeline and options given
            "error: no pretrain checkpoint at {ckpts}/tiny/pretrain/best.pt; "
            "run `mtl pretrain pipelines/glyphs-1shot.yaml --set name=tiny",
        ),
        (
            ["metatest"],
            "error: no metatrain checkpoint at {ckpts}/tiny/metatrain/best.pt; "
            "run `mtl metatrain pipelines/glyphs-1shot.yaml --set name=tiny",
        ),
        (["pretrain", "--set", "meta.way=9"], "error: way=9 but the val split has only 5 classes"),
        (["pretrain", "--set", "meta.shott=1"], "error: meta.shott: unknown key (did you mean 'meta.shot'?)"),
        (["pretrain", "--set", "test.query=40"], "error: class 'glyph-"),
        (["pretrain", "--set", "backbone.name=resnet99"], "error: unknown backbone 'resnet99'"),
    ],
)
def test_cli_user_errors_are_one_line_exit_2(tiny_overrides, tmp_path, args, message):
    ckpts = tmp_path / "out"
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    result = invoke(args[0], "pipelines/glyphs-1shot.yaml", *sets, *args[1:], "--checkpoints", str(ckpts))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith(message.format(ckpts=ckpts)), result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["metatest", "--device", "gpu"], "error: No such option '--device'."),
        (
            ["adapt", "--checkpoint", "x", "--support", ".", "--query", ".", "--steps", "abc"],
            "'abc' is not a",
        ),
        (
            ["adapt", "--checkpoint", "x", "--support", ".", "--query", ".", "--steps", "-1"],
            "--steps: must be 0",
        ),
        (["data", "prepare", "imagenet21k", "--source", ".", "--dest", "x"], "'imagenet21k' is not one of"),
        (["nope"], "error: No such command 'nope'."),
    ],
)
def test_wrong_options_are_one_line_exit_2(args, message):
    """click's usage errors too: one line naming the help to read, not click's usage block."""
    result = subprocess.run([sys.executable, "-m", "mtl", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error: "), result.stderr
    assert "--help" in lines[0] or "--steps" in lines[0]


def test_cli_missing_pipeline_file(tmp_path):
    result = invoke("pretrain", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "pipeline file not found" in result.output


def test_a_failed_run_leaves_earlier_outputs_untouched(tiny_overrides, tmp_path):
    ckpts = tmp_path / "out"
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    assert (
        invoke("pretrain", "pipelines/glyphs-1shot.yaml", *sets, "--checkpoints", str(ckpts)).exit_code == 0
    )
    stage = ckpts / "tiny" / "pretrain"
    before = {p.name: p.read_bytes() for p in stage.iterdir()}
    bad = invoke(
        "pretrain", "pipelines/glyphs-1shot.yaml", *sets, "--set", "meta.way=9", "--checkpoints", str(ckpts)
    )
    assert bad.exit_code == 2
    assert {p.name: p.read_bytes() for p in stage.iterdir()} == before


def test_pretrain_can_use_the_official_two_layer_head(tiny_overrides, tmp_path):
    cfg = config.load(None, [*tiny_overrides, "pretrain.head_hidden=12", "pretrain.epochs=1"])
    pretrain(cfg, tmp_path, quiet=True)
    head = checkpoint.load(tmp_path / "tiny" / "pretrain" / "best.pt", stage="pretrain")["head"]
    # Linear(16, 12) -> ReLU -> Linear(12, 19 base classes)
    assert {k: tuple(v.shape) for k, v in head.items()} == {
        "0.weight": (12, 16), "0.bias": (12,), "2.weight": (19, 12), "2.bias": (19,),
    }  # fmt: skip
