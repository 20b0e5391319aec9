import json

from click.testing import CliRunner

from mtl import config
from mtl.cli import main
from mtl.stages.ablate import FT, MTL, MTL_HT, MTL_RANDOM, NC, SCRATCH, ablate


def test_ablation_rows_share_one_pretrained_encoder_and_the_test_episodes(tiny_overrides, tmp_path):
    cfg = config.load(None, [*tiny_overrides, "ablation.episodes=40"])
    ckpts = tmp_path / "ckpts"
    results = ablate(cfg, ckpts, quiet=True)  # no pretrain yet: the ablation trains it first
    run = ckpts / "tiny"
    assert (run / "pretrain" / "best.pt").is_file()
    for variant in ("mtl", "mtl-random", "mtl-ht", "scratch"):
        assert (run / "ablation" / variant / "best.pt").is_file()
    assert (run / "ablation" / "mtl-ht" / "hard_tasks.json").is_file()
    control = json.loads((run / "ablation" / "mtl-random" / "hard_tasks.json").read_text())
    assert control["extra_tasks"] == "random" and control["hard_task_updates"] == 4  # 2 epochs x 2 updates
    assert not (run / "ablation" / "mtl" / "hard_tasks.json").exists()
    saved = json.loads((run / "ablation" / "results.json").read_text())
    assert saved == results and saved["episodes"] == 40
    assert [r["method"] for r in saved["rows"]] == [NC, FT, MTL, MTL_RANDOM, MTL_HT, SCRATCH]
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
    assert again["rows"][:5] == saved["rows"][:5]  # same encoder, same seed, same episodes


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
    assert "| MTL + HT: hard-task meta-batches |" in result.output and "wall-clock:" in result.output
    assert f"| {MTL_RANDOM} |" in result.output and "normal/extra tasks" in result.output
