"""Pipelines that name the same ``pretrain.name`` share one pretrain run; a finished run is reused."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mtl import config
from mtl.cli import main
from mtl.errors import MtlError
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain


def test_a_finished_pretrain_of_the_same_setting_is_reused(tiny_overrides, tmp_path, capsys):
    ckpts = tmp_path / "ckpts"
    shared = [*tiny_overrides, "pretrain.name=shared", "pretrain.val_shot=1", "pretrain.epochs=1"]
    one = config.load(None, [*shared, "name=one"])
    five = config.load(None, [*shared, "name=two", "meta.shot=2"])
    first = pretrain(one, ckpts, quiet=True)
    best = ckpts / "shared" / "pretrain" / "best.pt"
    stamp = best.stat().st_mtime_ns
    assert not (ckpts / "one" / "pretrain").exists()

    again = pretrain(five, ckpts)
    assert again == first and best.stat().st_mtime_ns == stamp
    assert "reusing the finished pretrain in" in capsys.readouterr().out
    metatrain(five, ckpts, quiet=True)  # finds the shared pretrain
    assert (ckpts / "two" / "metatrain" / "best.pt").is_file()

    changed = config.load(None, [*shared, "name=one", "pretrain.lr=0.05"])
    with pytest.raises(MtlError, match=r"differs in pretrain\.lr\b.*--fresh"):
        pretrain(changed, ckpts, quiet=True)  # another setting: not silently overwritten
    assert best.stat().st_mtime_ns == stamp
    pretrain(changed, ckpts, quiet=True, fresh=True)
    assert best.stat().st_mtime_ns != stamp


def test_a_pipeline_pointing_at_another_dataset_is_refused(tiny_overrides, tmp_path):
    from fakes import pattern_images, write_image

    for c in range(10):
        for i, img in enumerate(pattern_images(4, 16, seed=c)):
            write_image(tmp_path / "own" / f"c{c}" / f"{i}.png", img)
    runner = CliRunner()
    prep = tmp_path / "prep"
    args = [
        "data",
        "prepare",
        "folder",
        "--source",
        str(tmp_path / "own"),
        "--dest",
        str(prep),
        "--workers",
        "1",
    ]
    assert runner.invoke(main, args).exit_code == 0
    sets = [x for o in [*tiny_overrides, "data.dataset=fc100", f"data.root={prep}"] for x in ("--set", o)]
    result = runner.invoke(main, ["pretrain", *sets, "--checkpoints", str(tmp_path / "ckpts")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {prep} holds a prepared folder dataset, but the pipeline says data.dataset: fc100"
    )
