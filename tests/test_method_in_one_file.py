"""A method is one file: the settings, the class and the registration below are all that
``method: scaled_centroids`` needs. Its keys are then in ``mtl config --keys`` and in the CLI's
errors, and it runs through metatrain and metatest like a built-in method."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from click.testing import CliRunner

from mtl import config, methods
from mtl.cli import main
from mtl.config.validation import option
from mtl.methods import FeatureMethod, register, unregister
from mtl.methods.episodic import prototype_logits
from mtl.runtime import checkpoint
from mtl.stages.metatest import metatest
from mtl.stages.metatrain import metatrain


@dataclass
class ScaledCentroidsSettings:
    """The ``scaled_centroids:`` section."""

    temperature: float = option(1.0, above=0.0, doc="the distances are divided by it before the softmax")
    lr: float = option(1e-3, above=0.0, doc="Adam lr of the encoder")


class ScaledCentroids(FeatureMethod):
    """Nearest prototypes with a softmax temperature, the encoder trained episodically."""

    name, label = "scaled_centroids", "scaled centroids"
    settings = ScaledCentroidsSettings

    def __init__(self, encoder, cfg):
        super().__init__(encoder, cfg)
        self.temperature, self.lr = cfg.scaled_centroids.temperature, cfg.scaled_centroids.lr

    @classmethod
    def needs_pretrained(cls, cfg):
        return False

    def episode_logits(self, support, y_support, query, way):
        return prototype_logits(support, y_support, query, way) / self.temperature

    def param_groups(self):
        return [{"name": "encoder", "params": list(self.encoder.parameters()), "lr": self.lr}]


@pytest.fixture(autouse=True)
def registered():
    """What ``@register`` above the class does when its module is imported; undone after the test."""
    register(ScaledCentroids)
    yield
    unregister(ScaledCentroids.name)


def mtl_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_its_keys_are_in_the_key_reference():
    result = mtl_cli("config", "--keys")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert "# scaled_centroids: settings of method 'scaled_centroids'" in lines
    at = lines.index("# scaled_centroids: settings of method 'scaled_centroids'")
    assert lines[at + 1].split() == ["scaled_centroids.temperature", "float", "=", "1.0", "(>", "0.0)"]
    assert lines[at + 2].strip() == "the distances are divided by it before the softmax"
    assert lines[at + 3].split()[:4] == ["scaled_centroids.lr", "float", "=", "0.001"]
    method_line = next(line for line in lines if line.startswith("method "))
    assert method_line.endswith("| maml | meta-lstm | tadam | mann | scaled_centroids)")


def test_its_keys_are_in_the_cli_errors():
    bad = mtl_cli("config", "--set", "scaled_centroids.temperature=0")
    assert bad.exit_code == 2
    assert bad.output == "error: scaled_centroids.temperature: must be > 0.0, got 0.0\n"
    typo = mtl_cli("config", "--set", "scaled_centroids.temprature=2")
    assert typo.exit_code == 2
    assert typo.output == (
        "error: scaled_centroids.temprature: unknown key (did you mean 'scaled_centroids.temperature'?)\n"
    )
    unknown = mtl_cli("config", "--set", "method=scaled")
    assert unknown.exit_code == 2
    assert unknown.output.rstrip().endswith("maml, meta-lstm, tadam, mann, scaled_centroids)")
    section = mtl_cli(
        "config", "--json", "--set", "method=scaled_centroids", "--set", "scaled_centroids.temperature=2"
    )
    assert section.exit_code == 0
    assert json.loads(section.output)["config"]["scaled_centroids"] == {"temperature": 2.0, "lr": 0.001}


def test_its_logits_are_the_prototype_logits_over_the_temperature(tiny_overrides):
    cfg = config.load(None, [*tiny_overrides, "method=scaled_centroids", "scaled_centroids.temperature=4"])
    method = methods.build(cfg)
    torch.manual_seed(0)
    support, query, y = torch.randn(2, 6, 5), torch.randn(2, 9, 5), torch.arange(3).repeat_interleave(2)
    torch.testing.assert_close(
        method.episode_logits(support, y, query, 3), prototype_logits(support, y, query, 3) / 4
    )


def test_it_runs_through_metatrain_and_metatest(tiny_overrides, tmp_path):
    sets = ["method=scaled_centroids", "scaled_centroids.temperature=8", "test.baselines=[pixels]"]
    cfg = config.load(None, [*tiny_overrides, *sets])
    metatrain(cfg, tmp_path, quiet=True)
    ckpt = checkpoint.load(tmp_path / "tiny" / "metatrain" / "best.pt", stage="metatrain")
    assert ckpt["method"] == "scaled_centroids"
    assert ckpt["config"]["scaled_centroids"] == {"temperature": 8.0, "lr": 0.001}
    results = metatest(cfg, tmp_path, quiet=True)
    assert [r["method"] for r in results["rows"]] == ["scaled centroids", methods.get("pixels").label]
    assert all(0 <= r["acc"] <= 100 for r in results["rows"])
