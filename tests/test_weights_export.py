"""``mtl export`` and ``mtl.load_encoder``: a tiny run's pretrain, metatrain and classifier checkpoints
out as hub folders, back in bit for bit, and their encoders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY
from safetensors import safe_open
from weights_fakes import official_pretrain

import mtl
from mtl import config, methods
from mtl.cli import main
from mtl.data.sources import load_splits
from mtl.inference.classifier import Classifier
from mtl.models.backbone import backbone_for
from mtl.runtime import checkpoint
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain

PIPELINE = str(Path(__file__).resolve().parents[1] / "pipelines" / "glyphs-1shot.yaml")


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def refused(result, *fragments: str) -> None:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert all(f in lines[0] for f in fragments), lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny run's pretrain and metatrain best.pt, a protonet metatrain and an adapted classifier."""
    root = tmp_path_factory.mktemp("export")
    overrides = [*TINY, f"data.root={root / 'data'}"]
    cfg = config.load(PIPELINE, overrides)
    ckpts = root / "ckpts"
    pretrain(cfg, ckpts, quiet=True)
    metatrain(cfg, ckpts, quiet=True)
    proto_sets = [*overrides, "name=tinyproto", "pretrain.name=tiny", "method=protonet"]
    metatrain(config.load(PIPELINE, proto_sets), ckpts, quiet=True)
    test = load_splits(cfg.data, ("test",))["test"]
    ids = [int(np.flatnonzero(test.labels == c)[0]) for c in range(3)]
    clf = Classifier.adapt(
        ckpts / "tiny" / "metatrain" / "best.pt", test.images[ids], [0, 1, 2], ["a", "b", "c"]
    )
    clf.save(root / "classifier.pt")
    return {
        "root": root,
        "sets": overrides,
        "cfg": cfg,
        "pretrain": ckpts / "tiny" / "pretrain" / "best.pt",
        "metatrain": ckpts / "tiny" / "metatrain" / "best.pt",
        "protonet": ckpts / "tinyproto" / "metatrain" / "best.pt",
        "classifier": root / "classifier.pt",
    }


def _strict_json(path: Path) -> dict:
    def no_nan(name: str):
        raise AssertionError(f"{path} holds {name}: not JSON")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_export_folder_is_what_a_hub_takes(trained, tmp_path):
    out = tmp_path / "pre"
    result = run("export", trained["pretrain"], out)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"export: wrote {out}")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    info = _strict_json(out / "config.json")
    cfg = trained["cfg"]
    assert info["stage"] == "pretrain" and info["method"] is None and info["mtl_version"] == mtl.__version__
    assert info["backbone"] == {"name": "resnet12", "widths": [8, 8, 16, 16], "in_chans": 3}
    assert info["input"]["image_size"] == 16 and info["input"]["mean"] == [0.485, 0.456, 0.406]
    assert info["feature_dim"] == 16 and info["config"] == cfg.to_dict()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "pt" and json.loads(f.metadata()["mtl"])["stage"] == "pretrain"
        assert len(list(f.keys())) == info["tensors"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\ntags:") and "pipeline_tag: image-feature-extraction" in card
    assert "mtl.load_encoder" in card


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _tensors(value, f"{prefix}.{key}").items()}
    return {}


@pytest.mark.parametrize("stage", ["pretrain", "metatrain", "classifier"])
def test_export_then_import_is_bit_for_bit(trained, stage, tmp_path):
    out = tmp_path / "out"
    assert run("export", trained[stage], out).exit_code == 0
    ckpts = tmp_path / "ckpts"
    spec = out if stage != "metatrain" else out / "model.safetensors"  # the folder, or its weights file
    result = run("import", spec, PIPELINE, *sets(trained["sets"]), "--checkpoints", ckpts)
    assert result.exit_code == 0, result.output
    original = checkpoint.load(trained[stage], stage=stage)
    kind = "pretrain" if stage == "pretrain" else "metatrain"
    back = checkpoint.load(ckpts / "tiny" / kind / "best.pt", stage=kind)
    if stage == "pretrain":
        mine, theirs = (
            _tensors({k: back[k] for k in ("encoder", "head")}),
            _tensors({k: original[k] for k in ("encoder", "head")}),
        )
        assert back["class_names"] == original["class_names"] and back["metric"] == original["metric"]
    else:
        state = original if stage == "metatrain" else original["state"]
        mine, theirs = _tensors({k: back[k] for k in ("encoder", "theta")}), _tensors(state)
    assert mine.keys() == theirs.keys() and len(mine) > 10
    for key, tensor in theirs.items():
        assert mine[key].dtype == tensor.dtype and torch.equal(mine[key], tensor), key


def _reference_encoder(cfg, ckpt: dict) -> torch.nn.Module:
    encoder = backbone_for(cfg)
    if ckpt["stage"] == "pretrain":
        encoder.load_state_dict(ckpt["encoder"])
        return encoder.eval()
    name, state = (ckpt["method"], ckpt) if ckpt["stage"] == "metatrain" else (ckpt["method"], ckpt["state"])
    method = methods.get(name)(encoder, config.from_dict(ckpt["config"]))
    method.load_state(state)
    return method.encoder.eval()


@pytest.mark.parametrize("stage", ["pretrain", "metatrain", "protonet", "classifier"])
def test_load_encoder_of_any_checkpoint_and_its_export(trained, stage, tmp_path):
    path = trained[stage]
    kind = {"protonet": "metatrain"}.get(stage, stage)
    ckpt = checkpoint.load(path, stage=kind)
    encoder = mtl.load_encoder(path)
    assert not encoder.training
    if stage in ("metatrain", "classifier"):
        assert any(k.endswith(".scale") for k in encoder.state_dict())  # MTL's SS weights are in it
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        feats = encoder(x)
        assert feats.shape == (5, 16)
        assert torch.equal(feats, _reference_encoder(trained["cfg"], ckpt)(x))
        assert run("export", path, tmp_path / "out").exit_code == 0
        assert torch.equal(mtl.load_encoder(tmp_path / "out")(x), feats)


def test_an_imported_checkpoint_exports_and_comes_back(trained, tmp_path):
    """Its NaN metric travels as JSON null and comes back as NaN; its tensors bit for bit."""
    tiny = [*trained["sets"], "backbone.name=resnet25", "backbone.widths=[8,16,16]"]
    torch.save({"params": official_pretrain((8, 16, 16))}, tmp_path / "max_acc.pth")
    assert (
        run(
            "import", tmp_path / "max_acc.pth", PIPELINE, *sets(tiny), "--checkpoints", tmp_path / "a"
        ).exit_code
        == 0
    )
    first = tmp_path / "a" / "tiny" / "pretrain" / "best.pt"
    assert run("export", first, tmp_path / "out").exit_code == 0
    assert _strict_json(tmp_path / "out" / "config.json")["checkpoint"]["metric"]["val_acc"] is None
    assert (
        run("import", tmp_path / "out", PIPELINE, *sets(tiny), "--checkpoints", tmp_path / "b").exit_code == 0
    )
    a, b = (
        checkpoint.load(p, stage="pretrain")
        for p in (first, tmp_path / "b" / "tiny" / "pretrain" / "best.pt")
    )
    assert math.isnan(b["metric"]["val_acc"]) and b["metric"]["epoch"] == -1
    assert a["encoder"].keys() == b["encoder"].keys()
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])


def test_export_refusals(trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused(run("export", trained["pretrain"], out), "exists (a folder); choose a new folder")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --force replaces an earlier export only: a folder of the user's own files is left alone.
    refused(
        run("export", trained["pretrain"], out, "--force"), "is a folder but not an mtl export", "keep.txt"
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    result = run("export", trained["pretrain"], out, "--force")
    assert result.exit_code == 0 and (out / "model.safetensors").is_file()
    refused(run("export", trained["pretrain"], out), "exists (an earlier export)", "add --force")
    result = run("export", trained["metatrain"], out, "--force")
    assert result.exit_code == 0 and _strict_json(out / "config.json")["stage"] == "metatrain"
    refused(run("export", tmp_path / "nope.pt", tmp_path / "o1"), "no stage checkpoint at")
    (tmp_path / "p.yaml").write_text("name: x\n")
    refused(run("export", tmp_path / "p.yaml", tmp_path / "o2"), "pipeline (YAML) file")
    torch.save({"a": torch.zeros(1)}, tmp_path / "plain.pt")
    refused(run("export", tmp_path / "plain.pt", tmp_path / "o3"), "not an mtl checkpoint")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


def test_exports_refuse_another_pipeline(trained, tmp_path):
    assert run("export", trained["pretrain"], tmp_path / "pre").exit_code == 0
    assert run("export", trained["metatrain"], tmp_path / "meta").exit_code == 0
    r25 = [*trained["sets"], "backbone.name=resnet25", "backbone.widths=[8,16,16]"]
    refused(
        run("import", tmp_path / "pre", PIPELINE, *sets(r25)),
        "backbone resnet12",
        "--set backbone.name=resnet12",
    )
    affine = [*trained["sets"], "mtl.bn=affine"]
    refused(run("import", tmp_path / "meta", PIPELINE, *sets(affine)), "mtl.bn frozen", "--set mtl.bn=frozen")
    refused(
        run("import", tmp_path / "meta", PIPELINE, *sets([*trained["sets"], "method=protonet"])), "method mtl"
    )


def test_an_export_honours_the_umask(trained, tmp_path):
    """Colleagues on a shared server can read an export: folder 0755 and files 0644 under umask 022,
    0750 and 0640 under 027 (not the 0700 of a private temporary folder)."""
    import os

    for mask, folder_mode, file_mode in ((0o022, 0o755, 0o644), (0o027, 0o750, 0o640)):
        out = tmp_path / f"export-{mask:o}"
        old = os.umask(mask)
        try:
            result = run("export", trained["pretrain"], out)
        finally:
            os.umask(old)
        assert result.exit_code == 0, result.output
        assert out.stat().st_mode & 0o777 == folder_mode
        assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == dict.fromkeys(
            ("model.safetensors", "config.json", "README.md"), file_mode
        )
