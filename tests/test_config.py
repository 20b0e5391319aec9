from pathlib import Path

import pytest
import yaml

from mtl import config
from mtl.errors import MtlError

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_follow_the_official_pytorch_settings():
    cfg = config.load()
    assert (cfg.meta.way, cfg.meta.shot, cfg.meta.query) == (5, 1, 15)
    assert (cfg.mtl.inner_steps, cfg.mtl.inner_lr, cfg.mtl.first_order) == (100, 0.01, False)
    assert (cfg.mtl.lr_ss, cfg.mtl.lr_theta) == (1e-4, 1e-3)
    assert (cfg.test.episodes, cfg.test.query) == (600, 15)
    assert cfg.pretrain.nesterov and cfg.pretrain.weight_decay == 5e-4


def test_extends_merges_sections_and_set_overrides_win(tmp_path):
    write(tmp_path / "base.yaml", {"name": "base", "meta": {"way": 5, "shot": 1}, "seed": 3})
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml", "name": "child", "meta": {"shot": 5}})
    cfg = config.load(child, ["meta.query=7", "pretrain.augment.flip=false"])
    assert cfg.name == "child" and cfg.seed == 3
    assert (cfg.meta.way, cfg.meta.shot, cfg.meta.query) == (5, 5, 7)
    assert cfg.pretrain.augment.flip is False


def test_resolved_config_round_trips(tmp_path):
    cfg = config.load(None, ["meta.shot=5", "backbone.widths=[8,16,32,64]", "pretrain.lr=1"])
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    again = config.load(tmp_path / "config.yaml")
    assert again == cfg and isinstance(again.pretrain.lr, float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("meta.wya=3", "meta.wya: unknown key (did you mean 'meta.way'?)"),
        ("meta.shot=five", "meta.shot: expected int, got 'five'"),
        ("meta.shot=0", "meta.shot: must be >= 1, got 0"),
        ("mtl.first_order=1", "mtl.first_order: expected bool, got 1"),
        ("device=tpu", "device: 'tpu' is not one of auto, cpu, cuda"),
        ("data.glyphs.preset=medium", "data.glyphs.preset: 'medium' is not one of easy, hard"),
        ("backbone.widths=[8,16.5]", "backbone.widths[1]: expected int, got 16.5"),
        ("data.mean=[0.5]", "data.mean: expected 3 values (data.channels), got 1"),
        ("pretrain.augment.crop_scale=[0.9,0.1]", "pretrain.augment.crop_scale: expected [low, high]"),
        ("meta=3", "meta: expected a section (mapping), got 3"),
        ("shot=5", "shot: unknown key"),
        ("meta.shot", "bad --set 'meta.shot': expected key=value"),
        ("=5", "bad --set '=5': expected key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(MtlError) as err:
        config.load(None, [override])
    assert str(err.value).startswith(message)


def test_file_errors(tmp_path):
    with pytest.raises(MtlError, match="pipeline file not found"):
        config.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("meta: [1, 2\n")
    with pytest.raises(MtlError, match=r"bad.yaml: not valid YAML \(line"):
        config.load(tmp_path / "bad.yaml")
    loop = write(tmp_path / "loop.yaml", {"extends": "loop.yaml"})
    with pytest.raises(MtlError, match="cycle"):
        config.load(loop)


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_are_valid(path):
    cfg = config.load(path)
    assert cfg.name == path.stem
