import json

from click.testing import CliRunner

from mtl import config
from mtl.cli import main
from mtl.stages.ablate import FT, MTL, MTL_HT, NC, SCRATCH, ablate


def test_ablation_rows_share_one_pretrained_encoder_and_the_test_episodes(tiny_overrides, tmp_path):
    cfg = config.load(None, [*tiny_overrides, "ablation.episodes=40"])
    ckpts = tmp_path / "ckpts"
    results = ablate(cfg, ckpts, quiet=True)  # no pretrain yet: the ablation trains it first
    run = ckpts / "tiny"
    assert (run / "pretrain" / "best.pt").is_file()
    for variant in ("mtl", "mtl-ht", "scratch"):
        assert (run / "ablation" / variant / "best.pt").is_file()
    assert (run / "ablation" / "mtl-ht" / "hard_tasks.json").is_file()
    assert not (run / "ablation" / "mtl" / "hard_tasks.json").exists()
    saved = json.loads((run / "ablation" / "results.json").read_text())
    assert saved == results and saved["episodes"] == 40
    assert [r["method"] for r in saved["rows"]] == [NC, FT, MTL, MTL_HT, SCRATCH]
    assert all(0 <= r["acc"] <= 100 for r in saved["rows"])
    assert saved["seconds"]["total"] >= saved["seconds"][MTL] > 0
    assert set(saved["kept_epoch"]) == {MTL, MTL_HT, SCRATCH}
    # A second ablation reuses the pretrained encoder instead of training another one.
    stamp = (run / "pretrain" / "best.pt").stat().st_mtime_ns
    again = ablate(
        config.load(None, [*tiny_overrides, "ablation.episodes=40", "ablation.scratch=false"]),
        ckpts,
        quiet=True,
    )
    assert (run / "pretrain" / "best.pt").stat().st_mtime_ns == stamp
    assert [r["method"] for r in again["rows"]] == [NC, FT, MTL, MTL_HT]
    assert again["rows"][:4] == saved["rows"][:4]  # same encoder, same seed, same episodes


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
