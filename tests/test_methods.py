"""The method seam: ProtoNet's maths, Conv-4, a method added from outside, and mtl compare."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mtl import config, methods
from mtl.cli import main
from mtl.errors import MtlError
from mtl.methods import FeatureMethod
from mtl.methods.nearest_centroid import prototype_logits
from mtl.models.backbone import build_backbone
from mtl.runtime import checkpoint
from mtl.stages.compare import compare, known_rows
from mtl.stages.metatest import metatest
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain


def test_protonet_logits_equal_a_plain_reference():
    torch.manual_seed(0)
    way, shot, query, dim = 3, 2, 4, 5
    support, queries = torch.randn(2, way * shot, dim), torch.randn(2, way * query, dim)
    y = torch.arange(way).repeat_interleave(shot)
    got = prototype_logits(support, y, queries, way)
    for e in range(2):
        protos = [support[e][y == k].mean(0) for k in range(way)]
        for i, q in enumerate(queries[e]):
            want = torch.tensor([-((q - p) ** 2).sum() for p in protos])
            torch.testing.assert_close(got[e, i], want, rtol=1e-5, atol=1e-5)


def test_prototypes_take_any_number_of_images_per_class():
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]])  # class 0: two images, class 1: one
    got = prototype_logits(support, torch.tensor([0, 0, 1]), torch.tensor([[[1.0, 0.0]]]), 2)
    torch.testing.assert_close(got, torch.tensor([[[0.0, -17.0]]]))


def test_conv4_layers_parameters_and_feature_widths():
    model = build_backbone("conv4", image_size=84)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [
        (3, 64, (3, 3), None),
        *[(64, 64, (3, 3), None)] * 3,
    ]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 4
    # 3·64·9 + 3·64·64·9 conv weights + 4 BN layers of 64 γ and β
    assert sum(p.numel() for p in model.parameters()) == 3 * 64 * 9 + 3 * 64 * 64 * 9 + 4 * 128 == 112_832
    assert model.num_features == 1600 and model(torch.zeros(2, 3, 84, 84)).shape == (2, 1600)
    small = build_backbone("conv4", in_chans=1, image_size=28)
    assert small.num_features == 64 and small(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
    with pytest.raises(MtlError, match="at least 16x16"):
        build_backbone("conv4", image_size=8)


def test_unknown_method_and_misplaced_baselines_are_one_line_errors(tiny_overrides, tmp_path):
    with pytest.raises(
        MtlError, match=r"method: unknown method 'nope' \(known: mtl, ft, nc, pixels, protonet"
    ):
        metatrain(config.load(None, [*tiny_overrides, "method=nope"]), tmp_path)
    with pytest.raises(MtlError, match="'nc' has nothing to meta-train"):
        metatrain(config.load(None, [*tiny_overrides, "method=nc"]), tmp_path)
    result = CliRunner().invoke(main, ["compare", "pipelines/glyphs-1shot.yaml", "--methods", "nope"])
    assert result.exit_code == 2 and result.output.startswith(
        "error: compare: unknown method 'nope' (known: mtl,"
    )


class Centroids(FeatureMethod):
    """A method from outside the package: nearest centroid on an encoder trained episodically."""

    name, label = "test-centroids", "test: centroids of a trained encoder"
    start: dict = {}

    def __init__(self, encoder, cfg):
        super().__init__(encoder, cfg)
        Centroids.start = {k: v.clone() for k, v in encoder.state_dict().items()}

    @classmethod
    def needs_pretrained(cls, cfg):
        return False

    def episode_logits(self, support, y_support, query, way):
        return prototype_logits(support, y_support, query, way)

    def param_groups(self):
        return [{"name": "encoder", "params": list(self.encoder.parameters()), "lr": 1e-3}]


@pytest.fixture
def centroids():
    """``Centroids`` registered as a module outside the package would (``@register``), then forgotten."""
    methods.register(Centroids)
    yield Centroids
    methods.unregister(Centroids.name)


def test_a_method_added_outside_runs_through_metatrain_and_metatest(tiny_overrides, tmp_path, centroids):
    cfg = config.load(None, [*tiny_overrides, f"method={Centroids.name}", "test.baselines=[pixels]"])
    best = metatrain(cfg, tmp_path)
    ckpt = checkpoint.load(tmp_path / "tiny" / "metatrain" / "best.pt", stage="metatrain")
    assert ckpt["method"] == Centroids.name and set(ckpt["encoder"]) == set(Centroids.start)
    last = checkpoint.load(tmp_path / "tiny" / "metatrain" / "last.pt", stage="metatrain")
    assert last["metric"]["epoch"] == cfg.meta.epochs and best["epoch"] == ckpt["metric"]["epoch"]
    weights = [k for k in Centroids.start if k.endswith("conv1.weight")]
    assert weights and all(
        not torch.equal(last["encoder"][k], Centroids.start[k]) for k in weights
    )  # trained
    results = metatest(cfg, tmp_path, quiet=True)
    assert [r["method"] for r in results["rows"]] == [Centroids.label, methods.get("pixels").label]


def test_protonet_from_scratch_and_pretrained_beats_pixels_and_resumes(tiny_overrides, tmp_path):
    cfg = config.load(None, [*tiny_overrides, "method=protonet", "protonet.train_way=4", "protonet.lr=0.003"])
    pretrain(cfg, tmp_path, quiet=True)
    metatrain(cfg, tmp_path, quiet=True)
    again = metatrain(cfg, tmp_path, quiet=True)  # finished: the same result, nothing retrained
    assert (
        again
        == checkpoint.load(tmp_path / "tiny" / "metatrain" / "last.pt", stage="metatrain")["resume"]["best"]
    )
    results = metatest(cfg, tmp_path, quiet=True)
    rows = {r["method"]: r["acc"] for r in results["rows"]}
    assert list(rows) == [methods.get(n).label for n in ("protonet", "ft", "nc", "pixels")]
    assert all(0 <= acc <= 100 for acc in rows.values())


def test_compare_scores_every_row_on_shared_episodes(tiny_overrides, tmp_path):
    names = ["nc", "ft", "pixels", "protonet-conv4", "protonet", "mtl", "mtl-ht"]
    cfg = config.load(None, [*tiny_overrides, "compare.episodes=40"])
    results = compare(cfg, tmp_path, names=names, quiet=True)
    saved = json.loads((tmp_path / "tiny" / "compare" / "results.json").read_text())
    assert saved == results and saved["episodes"] == 40
    labels = [known_rows()[n][1] for n in names]
    assert [r["method"] for r in saved["rows"]] == labels
    trained = [known_rows()[n][1] for n in ("protonet-conv4", "protonet", "mtl", "mtl-ht")]
    assert all(saved["seconds"][label] > 0 for label in trained) and saved["seconds"]["pretrain"] > 0
    assert set(saved["kept_epoch"]) == set(trained) and all(0 <= e <= 2 for e in saved["kept_epoch"].values())
    conv4 = checkpoint.load(tmp_path / "tiny" / "compare" / "protonet-conv4" / "best.pt", stage="metatrain")
    assert conv4["config"]["backbone"]["name"] == "conv4" and conv4["method"] == "protonet"
    ht = checkpoint.load(tmp_path / "tiny" / "compare" / "mtl-ht" / "best.pt", stage="metatrain")
    assert ht["config"]["meta"]["hard_tasks"]["enabled"] and "hard_tasks" in ht
    # The nc row is the metatest's nearest-centroid row: the same episodes, the same features.
    row = {r["method"]: r for r in saved["rows"]}
    nc_only = config.load(None, [*tiny_overrides, "method=nc", "test.episodes=40", "test.baselines=[]"])
    (test_row,) = metatest(nc_only, tmp_path, quiet=True)["rows"]
    assert row[methods.get("nc").label] == test_row
    assert saved["published"] == {}  # glyphs has no published numbers
