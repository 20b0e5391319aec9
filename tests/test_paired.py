"""Paired differences on shared episodes: the maths against a plain computation, what results.json
keeps, the tables and the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import PIPELINE

from mtl.cli import main
from mtl.results import paired
from mtl.stages.compare import table


def plain_paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """The paired difference in points, its 95% CI half-width and the two-sided p, by hand."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / n)
    z = mean / (sd / math.sqrt(n))
    p = 2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2))))
    return 100 * mean, 100 * 1.96 * sd / math.sqrt(n), p


def test_the_paired_difference_equals_a_plain_computation():
    a = [1.0, 0.8, 0.6, 1.0, 0.4, 0.8]
    b = [0.8, 0.8, 0.4, 0.6, 0.4, 0.6]
    got = paired.paired(np.array(a), np.array(b))
    want = plain_paired(a, b)
    assert got.diff == pytest.approx(want[0]) and got.ci95 == pytest.approx(want[1])
    assert got.p == pytest.approx(want[2], rel=1e-9)
    assert paired.paired(np.array(b), np.array(a)).diff == pytest.approx(-want[0])
    same = paired.paired(np.array(a), np.array(a))
    assert (same.diff, same.ci95, same.p) == (0.0, 0.0, 1.0)


def test_correlated_rows_resolve_a_difference_their_own_cis_do_not():
    rng = np.random.default_rng(0)
    hardness = rng.uniform(0.3, 1.0, 2000)  # episodes differ far more than the two methods do
    a = np.clip(hardness + rng.normal(0, 0.02, 2000), 0, 1)
    b = np.clip(hardness - 0.01 + rng.normal(0, 0.02, 2000), 0, 1)
    d = paired.paired(a, b)
    own_ci = 100 * 1.96 * a.std() / math.sqrt(a.size)
    assert d.ci95 < own_ci / 5 and d.diff - d.ci95 > 0 and d.p < 1e-6


def test_per_episode_results_round_trip_compactly():
    scores = {"a": np.array([1.0, 0.6, 14 / 15]), "b": np.array([0.0, 1 / 15, 1.0])}
    record = paired.per_episode_record(scores, 15)
    assert record == {"queries": 15, "correct": {"a": [15, 9, 14], "b": [0, 1, 15]}}
    back = paired.per_episode_accuracy({"per_episode": record})
    assert set(back) == {"a", "b"} and all(np.allclose(back[k], scores[k]) for k in scores)
    assert paired.per_episode_accuracy({"rows": []}) == {}  # a file written before they were kept
    text = paired.dumps({"per_episode": record, "rows": [{"method": "a", "acc": 84.0}]})
    assert json.loads(text)["per_episode"] == record and '"a": [15, 9, 14]' in text


def test_metatest_keeps_episodes_and_differences_and_takes_a_reference(tiny_copy):
    sets, ckpts = tiny_copy
    results = json.loads((ckpts / "tiny" / "metatest" / "results.json").read_text())
    labels = [r["method"] for r in results["rows"]]
    accs = paired.per_episode_accuracy(results)
    assert list(accs) == labels and all(len(a) == results["episodes"] for a in accs.values())
    for r in results["rows"]:  # the rows' own figures come from the same per-episode results
        assert r["acc"] == pytest.approx(100 * accs[r["method"]].mean(), abs=0.006)
    diffs = results["differences"]
    assert diffs["reference"] == labels[0] and set(diffs["rows"]) == set(labels[1:])
    for label, d in diffs["rows"].items():
        want = paired.paired(accs[label], accs[labels[0]]).as_dict()
        assert d == want
    runner = CliRunner()
    result = runner.invoke(
        main, ["metatest", PIPELINE, *sets, "--checkpoints", str(ckpts), "--reference", "nc"]
    )
    assert result.exit_code == 0, result.output
    again = json.loads((ckpts / "tiny" / "metatest" / "results.json").read_text())
    nc = next(r["method"] for r in again["rows"] if "nearest centroid, pretrained" in r["method"])
    assert again["differences"]["reference"] == nc
    bad = runner.invoke(
        main, ["metatest", PIPELINE, *sets, "--checkpoints", str(ckpts), "--reference", "maml"]
    )
    assert bad.exit_code == 2 and bad.output.startswith("error: --reference: 'maml' is not a row")


def test_tables_show_the_differences_and_old_files_still_read():
    base = {
        "pipeline": "p", "way": 5, "shot": 1, "query": 15, "episodes": 3, "paper": None,
        "rows": [{"method": "A", "acc": 80.0, "ci95": 1.0}, {"method": "B", "acc": 79.0, "ci95": 1.0}],
        "seconds": {"total": 60.0}, "kept_epoch": {}, "published": {},
    }  # fmt: skip
    old = table(base)  # written before differences were kept
    assert "| A | 80.00 | ± 1.00 | — | — |" in old
    new = {
        **base,
        "differences": {"reference": "A", "rows": {"B": {"diff": -1.0, "ci95": 0.25, "p": 0.0002}}},
    }
    text = table(new)
    assert "| A | 80.00 | ± 1.00 | reference |  |" in text
    assert "| B | 79.00 | ± 1.00 | -1.00 ± 0.25 | < 0.001 |" in text and "reference: A" in text


def plain_seeds(x: list[list[float]]) -> tuple[float, float]:
    """Mean (points) and 95% CI half-width over seeds and episodes, by hand."""
    s, e = len(x), len(x[0])
    seed_means = [sum(r) / e for r in x]
    mean = sum(seed_means) / s
    between = sum((m - mean) ** 2 for m in seed_means) / (s - 1)
    episode_means = [sum(x[k][j] for k in range(s)) / s for j in range(e)]
    within = sum((m - mean) ** 2 for m in episode_means) / e
    return 100 * mean, 100 * 1.96 * math.sqrt(between / s + within / e)


def test_several_seeds_count_both_the_seeds_and_the_episodes():
    x = [[1.0, 0.8, 0.6, 0.9], [0.8, 0.8, 0.4, 0.7], [0.9, 1.0, 0.6, 0.8]]
    mean, ci, sd = paired.seed_summary(np.array(x))
    want_mean, want_ci = plain_seeds(x)
    assert mean == pytest.approx(want_mean) and ci == pytest.approx(want_ci)
    seed_means = [sum(r) / 4 for r in x]
    assert sd == pytest.approx(100 * float(np.std(seed_means, ddof=1)))
    ref = np.array([0.8, 0.8, 0.5, 0.7])  # a row of one seed is paired with every seed
    d = paired.paired(np.array(x), ref)
    want_d, want_d_ci = plain_seeds([[a - b for a, b in zip(r, ref, strict=True)] for r in x])
    assert d.diff == pytest.approx(want_d) and d.ci95 == pytest.approx(want_d_ci)
    one = paired.seed_summary(np.array(x[0]))  # one seed: the rows' own CI (population std)
    assert one[1] == pytest.approx(100 * 1.96 * np.std(x[0]) / 2) and one[2] == 0.0


def test_seeds_train_different_runs_scored_on_identical_episodes(tiny_overrides, tmp_path):
    from mtl import config
    from mtl.runtime import checkpoint
    from mtl.stages.compare import compare

    cfg = config.load(None, [*tiny_overrides, "compare.episodes=40"])
    one = compare(cfg, tmp_path, names=["nc", "mtl"], quiet=True)
    three = compare(cfg, tmp_path, names=["nc", "mtl"], seeds=3, quiet=True)
    folder = tmp_path / "tiny" / "compare"
    # last.pt: the trained weights (best.pt may be the untrained start that every seed shares)
    ckpts = [
        checkpoint.load(folder / f / "last.pt", stage="metatrain") for f in ("mtl", "mtl-seed1", "mtl-seed2")
    ]
    assert [c["config"]["seed"] for c in ckpts] == [0, 1, 2]
    thetas = [c["theta"]["W"] for c in ckpts]
    assert not any(torch.equal(thetas[i], thetas[j]) for i, j in ((0, 1), (0, 2), (1, 2)))
    mtl_label = one["rows"][1]["method"]
    correct_one, correct_three = one["per_episode"]["correct"], three["per_episode"]["correct"]
    assert len(correct_three[mtl_label]) == 3 and all(len(c) == 40 for c in correct_three[mtl_label])
    assert correct_three[mtl_label][0] == correct_one[mtl_label]  # the first seed is the same run
    assert correct_three[one["rows"][0]["method"]] == correct_one[one["rows"][0]["method"]]  # same episodes
    row = three["rows"][1]
    assert row["seeds"] == 3 and len(row["per_seed"]) == 3 and row["seed_sd"] >= 0
    assert row["acc"] == pytest.approx(sum(row["per_seed"]) / 3, abs=0.01)
    nc_diff = three["differences"]["rows"][three["rows"][0]["method"]]
    assert len(nc_diff["per_seed"]) == 3 and three["differences"]["reference"] == mtl_label
    assert f"| {mtl_label} [3 seeds, sd {row['seed_sd']:.2f}] |" in table(three)


def test_an_old_metatest_table_keeps_its_three_columns():
    from mtl.results.report import results_table

    old = {
        "pipeline": "p",
        "way": 5,
        "shot": 1,
        "query": 15,
        "episodes": 3,
        "rows": [{"method": "A", "acc": 80.0, "ci95": 1.0}],
    }
    lines = results_table(old).splitlines()
    assert lines[2:] == ["| method | accuracy (%) | 95% CI |", "|---|---:|---:|", "| A | 80.00 | ± 1.00 |"]


def test_report_reads_the_per_episode_results(tiny_copy):
    from mtl.results.report import collect

    _, ckpts = tiny_copy
    path = ckpts / "tiny" / "metatest" / "results.json"
    results = json.loads(path.read_text())
    accs = paired.per_episode_accuracy(results)
    first, second = (r["method"] for r in results["rows"][:2])
    d = paired.paired(accs[second], accs[first])
    line = collect(ckpts).splitlines()[-1]
    assert line.startswith(f"glyphs 1-shot (3-way), − {first} (paired 95% CI): ")
    assert f"{second} {d.diff:+.2f} ± {d.ci95:.2f} (p " in line
    del results["per_episode"], results["differences"]  # a file written before they were kept
    path.write_text(json.dumps(results))
    assert "paired" not in collect(ckpts)
