import dataclasses
import json

import torch
from click.testing import CliRunner

from mtl import config
from mtl.cli import main
from mtl.stages.ablate import FT, MTL, MTL_HT, MTL_RANDOM, NC, RANDOM_ENCODER, SCRATCH, ablate, ablation_rows


def test_ablation_rows_share_one_pretrained_encoder_and_the_test_episodes(tiny_overrides, tmp_path):
    cfg = config.load(None, [*tiny_overrides, "ablation.episodes=40"])
    ckpts = tmp_path / "ckpts"
    results = ablate(cfg, ckpts, quiet=True)  # no pretrain yet: the ablation trains it first
    run = ckpts / "tiny"
    assert (run / "pretrain" / "best.pt").is_file()
    for variant in ("from-scratch", "mtl", "mtl-random", "mtl-ht"):
        assert (run / "ablation" / variant / "best.pt").is_file()
    assert (run / "ablation" / "mtl-ht" / "hard_tasks.json").is_file()
    control = json.loads((run / "ablation" / "mtl-random" / "hard_tasks.json").read_text())
    assert control["extra_tasks"] == "random" and control["hard_task_updates"] == 4  # 2 epochs x 2 updates
    assert not (run / "ablation" / "mtl" / "hard_tasks.json").exists()
    saved = json.loads((run / "ablation" / "results.json").read_text())
    assert saved == results and saved["episodes"] == 40
    assert [r["method"] for r in saved["rows"]] == [SCRATCH, NC, FT, MTL, MTL_RANDOM, MTL_HT]
    assert all(0 <= r["acc"] <= 100 for r in saved["rows"])
    assert saved["seconds"]["total"] >= saved["seconds"][MTL] > 0
    assert set(saved["kept_epoch"]) == {MTL, MTL_RANDOM, MTL_HT, SCRATCH}
    # Training query accuracy per epoch of normal and extra tasks, for both variants with extra tasks.
    per_epoch = saved["query_acc_per_epoch"]
    assert set(per_epoch) == {MTL_RANDOM, MTL_HT} and [e["epoch"] for e in per_epoch[MTL_HT]] == [1, 2]
    assert all(
        0 <= e["normal_query_acc"] <= 100 and 0 <= e["extra_query_acc"] <= 100 for e in per_epoch[MTL_HT]
    )
    # A second ablation reuses the pretrained encoder instead of training another one.
    stamp = (run / "pretrain" / "best.pt").stat().st_mtime_ns
    again = ablate(
        config.load(None, [*tiny_overrides, "ablation.episodes=40", "ablation.scratch=false"]),
        ckpts,
        quiet=True,
    )
    assert (run / "pretrain" / "best.pt").stat().st_mtime_ns == stamp
    assert [r["method"] for r in again["rows"]] == [NC, FT, MTL, MTL_RANDOM, MTL_HT]
    assert again["rows"] == saved["rows"][1:]  # same encoder, same seed, same episodes


def test_ablate_is_a_cli_command(tiny_overrides, tmp_path):
    result = CliRunner().invoke(main, ["ablate", "--help"])
    assert result.exit_code == 0 and "MTL + HT" in result.output
    sets = [
        a for o in [*tiny_overrides, "ablation.episodes=20", "ablation.scratch=false"] for a in ("--set", o)
    ]
    result = CliRunner().invoke(
        main, ["ablate", "pipelines/glyphs-1shot.yaml", *sets, "--checkpoints", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "| MTL + HT: hard-task meta-batches |" in result.output and "wall-clock in all:" in result.output
    assert f"| {MTL_RANDOM} |" in result.output and "normal/extra tasks" in result.output


def test_the_scratch_row_is_maml_on_the_whole_backbone_from_random_initialisation(tiny_overrides, tmp_path):
    """The paper's first ablation row: no pretraining; every weight of the pipeline's backbone and of a
    linear head adapted per task and meta-learned (MAML); first order only when asked, and said."""
    from mtl import methods
    from mtl.stages.metatrain import metatrain

    cfg = config.load(None, [*tiny_overrides, "maml.inner_steps=2", "maml.test_inner_steps=2"])
    scratch = ablation_rows(cfg)[0]
    assert scratch.label == SCRATCH and scratch.name == "from-scratch" and not scratch.needs_pretrained
    assert scratch.cfg.method == "maml" and scratch.cfg.backbone == cfg.backbone
    assert not scratch.cfg.maml.first_order and not scratch.cfg.meta.hard_tasks.enabled
    torch.manual_seed(cfg.seed)
    start = methods.build(scratch.cfg).state()
    metatrain(scratch.cfg, tmp_path, quiet=True, folder=scratch.folder)
    kept = torch.load(tmp_path / "tiny" / "ablation" / "from-scratch" / "last.pt", weights_only=True)
    assert not (tmp_path / "tiny" / "pretrain").exists()  # nothing pretrained
    assert kept["method"] == "maml"
    weights = {f"encoder.{k}": v for k, v in start["encoder"].items()} | {
        f"head.{k}": v for k, v in start["head"].items()
    }
    learned = {f"encoder.{k}": v for k, v in kept["encoder"].items()} | {
        f"head.{k}": v for k, v in kept["head"].items()
    }
    assert weights.keys() == learned.keys() and len(weights) > 10
    unmoved = [k for k in weights if torch.equal(weights[k], learned[k]) and k.endswith(("weight", "bias"))]
    assert unmoved == []
    # The same run without meta-learning ends where it started: the start above is the row's own.
    frozen = dataclasses.replace(scratch.cfg.maml, lr=0.0)
    still = dataclasses.replace(scratch.cfg, sections={**scratch.cfg.sections, "maml": frozen})
    metatrain(still, tmp_path, quiet=True, folder="ablation/still")
    same = torch.load(tmp_path / "tiny" / "ablation" / "still" / "last.pt", weights_only=True)
    assert all(torch.equal(v, same["encoder"][k]) for k, v in start["encoder"].items())

    first = ablation_rows(config.load(None, [*tiny_overrides, "ablation.scratch_first_order=true"]))[0]
    assert first.cfg.maml.first_order and first.label == f"{SCRATCH}, first order"


def test_the_random_encoder_control_is_labelled_as_mtls_own(tiny_overrides):
    cfg = config.load(None, [*tiny_overrides, "ablation.random_encoder=true", "ablation.scratch=false"])
    rows = ablation_rows(cfg)
    assert [r.name for r in rows] == ["nc", "ft", "mtl", "mtl-random", "mtl-ht", "random-encoder"]
    control = rows[-1]
    assert control.label == RANDOM_ENCODER and "mtl's control, not in the paper" in control.label
    assert control.from_scratch and control.cfg.method == "mtl" and control.cfg.mtl.bn == "affine"
    assert "random-encoder" not in [r.name for r in ablation_rows(config.load(None, tiny_overrides))]
