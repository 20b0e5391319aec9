import pytest
import torch

from mtl.errors import MtlError
from mtl.runtime import checkpoint


def test_round_trip_is_weights_only_and_atomic(tmp_path):
    path = tmp_path / "run" / "best.pt"
    checkpoint.save(path, {"stage": "pretrain", "encoder": {"w": torch.ones(2)}, "class_names": ["a", "b"]})
    ckpt = checkpoint.load(path, stage="pretrain")
    assert ckpt["class_names"] == ["a", "b"] and ckpt["version"] and ckpt["format"] == checkpoint.FORMAT
    torch.testing.assert_close(ckpt["encoder"]["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temp files left behind


def test_missing_checkpoint_says_what_to_run(tmp_path):
    with pytest.raises(MtlError, match=r"no pretrain checkpoint at .*; run `make pretrain` first"):
        checkpoint.load(tmp_path / "best.pt", stage="pretrain")


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    path = tmp_path / "best.pt"
    checkpoint.save(path, {"stage": "pretrain", "x": torch.zeros(1000)})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(MtlError, match="is not a readable mtl checkpoint"):
        checkpoint.load(path, stage="pretrain")
    torch.save({"something": 1}, path)
    with pytest.raises(MtlError, match="is not an mtl checkpoint"):
        checkpoint.load(path, stage="pretrain")
    checkpoint.save(path, {"stage": "metatrain"})
    with pytest.raises(MtlError, match="is a metatrain checkpoint, expected pretrain"):
        checkpoint.load(path, stage="pretrain")


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"stage": "pretrain", "epoch": 1})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(MtlError, match="could not write checkpoint .*No space left on device"):
        checkpoint.save(path, {"stage": "pretrain", "epoch": 2})
    monkeypatch.undo()
    assert checkpoint.load(path, stage="pretrain")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_mismatched_setup_names_the_keys(tmp_path):
    ckpt = {"config": {"backbone": {"name": "resnet12"}, "data": {"dataset": "glyphs"}}}
    ours = {"backbone": {"name": "resnet25"}, "data": {"dataset": "glyphs"}}
    with pytest.raises(MtlError, match=r"backbone.name: checkpoint 'resnet12' vs pipeline 'resnet25'"):
        checkpoint.check_compatible(ckpt, ours, tmp_path / "best.pt", ("data.dataset", "backbone.name"))


def test_a_checkpoint_of_another_version_is_refused_saying_which(tmp_path):
    import mtl

    path = tmp_path / "best.pt"
    checkpoint.save(path, {"stage": "pretrain"})
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "version": "0.0.9"}, path)
    with pytest.raises(MtlError, match=rf"written by mtl 0\.0\.9; this is mtl {mtl.__version__}"):
        checkpoint.load(path, stage="pretrain")
    torch.save({**ckpt, "version": mtl.__version__.rsplit(".", 1)[0] + ".99"}, path)
    assert checkpoint.load(path, stage="pretrain")["stage"] == "pretrain"  # a patch release reads it


def test_weights_only_refuses_a_pickle_that_runs_code(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("boom",))

    path = tmp_path / "best.pt"
    torch.save({"format": checkpoint.FORMAT, "stage": "pretrain", "x": Boom()}, path)
    with pytest.raises(MtlError, match="is not a readable mtl checkpoint"):
        checkpoint.load(path, stage="pretrain")
