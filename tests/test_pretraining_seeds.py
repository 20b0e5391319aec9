"""``--seeds N --seeds-from pretrain``: each extra seed of a row pretrains anew, then trains the row,
and every run is scored on the same test episodes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import TINY

from mtl import config
from mtl.results.paired import row_name
from mtl.results.results_file import read_results
from mtl.runtime import checkpoint
from mtl.stages.compare import compare, rows, table
from mtl.stages.metatest import metatest


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A tiny compare of NC, FT and MTL: once with one seed, then with 2 seeds from pretraining."""
    root = tmp_path_factory.mktemp("seeds")
    cfg = config.load(None, [*TINY, f"data.root={root / 'data'}", "compare.episodes=40"])
    one = compare(cfg, root, names=["nc", "ft", "mtl"], quiet=True)
    two = compare(cfg, root, names=["nc", "ft", "mtl"], seeds=2, seeds_from="pretrain", quiet=True)
    return cfg, root, one, two


def test_each_seed_pretrains_its_own_encoder(seeded):
    cfg, root, _, _ = seeded
    first = checkpoint.load(root / "tiny" / "pretrain" / "best.pt", stage="pretrain")
    second = checkpoint.load(root / "tiny-seed1" / "pretrain" / "best.pt", stage="pretrain")
    assert (first["config"]["seed"], second["config"]["seed"]) == (0, 1)
    weights = [k for k, v in first["encoder"].items() if v.is_floating_point()]
    assert not all(torch.equal(first["encoder"][k], second["encoder"][k]) for k in weights)
    # The MTL row's second seed meta-trains from that pretrain, in a folder of its own.
    mtl = checkpoint.load(root / "tiny" / "compare" / "mtl-pretrain-seed1" / "last.pt", stage="metatrain")
    assert mtl["config"]["seed"] == 1 and mtl["config"]["pretrain"]["name"] == "tiny-seed1"
    assert not (root / "tiny" / "compare" / "mtl-seed1").exists()


def test_every_row_that_reads_the_pretrain_has_seeds_on_the_same_episodes(seeded):
    _, _, one, two = seeded
    labels = [r["method"] for r in one["rows"]]
    assert [r["method"] for r in two["rows"]] == labels
    for row in two["rows"]:
        assert row["seeds"] == 2 and row["seeds_from"] == "pretrain" and len(row["per_seed"]) == 2
        assert row["acc"] == pytest.approx(sum(row["per_seed"]) / 2, abs=0.01)
    correct_one, correct_two = one["per_episode"]["correct"], two["per_episode"]["correct"]
    for label in labels:  # seed 0 is the pipeline's own pretrain and meta-training: the one-seed run
        assert len(correct_two[label]) == 2 and all(len(c) == 40 for c in correct_two[label])
        assert correct_two[label][0] == correct_one[label]
    nc = labels[0]
    assert correct_two[nc][1] != correct_two[nc][0]  # another encoder


def test_a_seed_row_equals_a_plain_metatest_on_that_seeds_pretrain(seeded):
    """NC of seed 1 is nearest centroid on the encoder pretrained with seed 1: metatest of that
    pretrain run, on the same episodes, gives the same counts."""
    cfg, root, _, two = seeded
    nc = dataclasses.replace(
        cfg, name="nc-seed1", method="nc", seed=1, test=dataclasses.replace(cfg.test, episodes=40)
    )
    nc = dataclasses.replace(nc, pretrain=dataclasses.replace(nc.pretrain, name="tiny-seed1"))
    alone = metatest(nc, root, quiet=True)
    label = alone["rows"][0]["method"]
    assert two["per_episode"]["correct"][label][1] == alone["per_episode"]["correct"][label]


def test_the_table_gives_the_spread_over_pretraining_seeds(seeded):
    _, root, _, two = seeded
    printed = table(two)
    for row in two["rows"]:
        low, high = min(row["per_seed"]), max(row["per_seed"])
        name = f"{row['method']} [2 seeds from pretraining, sd {row['seed_sd']:.2f}, {low:.2f}–{high:.2f}]"
        assert row_name(row) == name and f"| {name} |" in printed
    assert "pretraining, 2 seeds (each shared by the rows that start from it):" in printed
    assert read_results(root / "tiny" / "compare" / "results.json") == json.loads(
        (root / "tiny" / "compare" / "results.json").read_text()
    )


def test_mtl_report_gives_each_cell_its_seeds(seeded):
    from mtl.results.report import collect

    _, root, _, two = seeded
    report = collect(root).splitlines()
    for row in two["rows"]:
        low, high = min(row["per_seed"]), max(row["per_seed"])
        seeds = f"[2 seeds from pretraining, sd {row['seed_sd']:.2f}, {low:.2f}–{high:.2f}]"
        cell = f"{row['acc']:.2f} ± {row['ci95']:.2f} {seeds}"
        line = next(line for line in report if line.startswith(f"| {row['method']} |"))
        assert f" | {cell} |" in line  # the compare's column (the metatest of another test may be beside it)


def test_a_row_from_scratch_keeps_meta_training_seeds(tiny_cfg):
    row = rows(tiny_cfg, ["protonet-conv4"])["protonet-conv4"]
    runs = row.runs(3, "pretrain")
    assert [r.folder.rsplit("/", 1)[-1] for r in runs] == [
        "protonet-conv4",
        "protonet-conv4-seed1",
        "protonet-conv4-seed2",
    ]
    assert all(r.cfg.pretrain.name is None for r in runs) and [r.cfg.seed for r in runs] == [0, 1, 2]
    pixels = rows(tiny_cfg, ["pixels"])["pixels"]
    assert pixels.runs(3, "pretrain") == [pixels]  # trains nothing, reads no pretrain


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"seeds": "2"}, "rows[0]: 'seeds' is not a positive integer"),
        ({"seed_sd": float("nan")}, "rows[0]: 'seed_sd' is not a number of points"),
        ({"per_seed": [80.0]}, "rows[0]: 'per_seed' is not 2 accuracies"),
        ({"seeds_from": "elsewhere"}, "rows[0]: 'seeds_from' is neither metatrain nor pretrain"),
    ],
)
def test_a_damaged_seed_field_is_one_line(seeded, tmp_path, change, problem):
    from mtl.errors import MtlError

    _, _, _, two = seeded
    damaged = json.loads(json.dumps(two))
    damaged["rows"][0].update(change)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(damaged))
    with pytest.raises(MtlError) as err:
        read_results(path)
    assert str(err.value) == f"{path} is not a metatest results file ({problem})"


def test_mtl_ablate_takes_seeds_from_pretraining(tmp_path):
    """The command line: every ablation row that reads the pretrain gets a seed of its own pretraining;
    the random-encoder control, which reads none, keeps meta-training seeds."""
    from click.testing import CliRunner

    from mtl.cli import main

    sets = [*TINY, f"data.root={tmp_path / 'data'}", "ablation.scratch=false", "ablation.random_encoder=true"]
    sets += ["ablation.episodes=20"]
    args = ["ablate", "pipelines/glyphs-1shot.yaml", *(a for s in sets for a in ("--set", s))]
    result = CliRunner().invoke(
        main, [*args, "--seeds", "2", "--seeds-from", "pretrain", "--checkpoints", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "tiny" / "ablation" / "results.json").read_text())["rows"]
    origin = {r["method"]: (r["seeds"], r.get("seeds_from")) for r in rows}
    assert len(origin) == 6 and origin.pop(rows[-1]["method"]) == (2, None)  # the random encoder
    assert set(origin.values()) == {(2, "pretrain")}
    assert (tmp_path / "tiny-seed1" / "pretrain" / "best.pt").is_file()
    assert "[2 seeds from pretraining, sd " in result.output
    bad = CliRunner().invoke(main, [*args, "--seeds-from", "elsewhere", "--checkpoints", str(tmp_path)])
    assert bad.exit_code == 2 and "'elsewhere' is not one of 'metatrain', 'pretrain'" in bad.output
