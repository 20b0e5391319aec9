"""A normalisation that makes the model's input infinite or constant is refused by name, and a table
whose every row scored exactly chance with zero spread (what constant inputs score) does not replace
an earlier results.json unless --allow-chance says so."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner
from conftest import PIPELINE, digests

from mtl import config
from mtl.cli import main
from mtl.errors import MtlError
from mtl.results.report import ALLOW_CHANCE, all_rows_at_chance, refuse_chance_results
from mtl.stages import metatest as metatest_stage

RANGE = (
    r"must be within \[{}, {}\], got {} \(statistics of pixels / 255, in \[0, 1\]: divide 0-255 ones by 255"
)
STD = ("0.001", "10.0")
MEAN = (r"-1.0", "2.0")

OUT_OF_RANGE = {
    "subnormal std": ("data.std=[1e-320,1,1]", r"data\.std\[0\]: " + RANGE.format(*STD, "1e-320")),
    "smallest float std": ("data.std=[1,1,5e-324]", r"data\.std\[2\]: " + RANGE.format(*STD, "5e-324")),
    "zero std": ("data.std=[1,0,1]", r"data\.std\[1\]: " + RANGE.format(*STD, r"0\.0")),
    "negative std": ("data.std=[-0.2,1,1]", r"data\.std\[0\]: " + RANGE.format(*STD, r"-0\.2")),
    "std just under": ("data.std=[0.0009,1,1]", r"data\.std\[0\]: " + RANGE.format(*STD, r"0\.0009")),
    "0-255 std": ("data.std=[58.395,57.12,57.375]", r"data\.std\[0\]: " + RANGE.format(*STD, r"58\.395")),
    "0-255 mean": (
        "data.mean=[123.675,116.28,103.53]",
        r"data\.mean\[0\]: " + RANGE.format(*MEAN, r"123\.675"),
    ),
    "huge mean": ("data.mean=[0,0,-1e300]", r"data\.mean\[2\]: " + RANGE.format(*MEAN, r"-1e\+300")),
    "mean just over": ("data.mean=[0.5,2.001,0.5]", r"data\.mean\[1\]: " + RANGE.format(*MEAN, r"2\.001")),
}


def one_error_line(result, pattern: str) -> None:
    """Exit 2, no traceback, and the whole output one ``error:`` line matching ``pattern``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_mtl_config_refuses_a_normalisation_out_of_range(case, tmp_path, monkeypatch):
    setting, message = OUT_OF_RANGE[case]
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["config", "glyphs-1shot", "--set", setting])  # by name: any folder
    one_error_line(result, "^error: " + message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["subnormal std", "0-255 mean", "zero std"])
def test_metatest_refuses_it_before_touching_the_run(case, tiny_copy):
    sets, ckpts = tiny_copy
    setting, message = OUT_OF_RANGE[case]
    before = digests(ckpts)
    result = CliRunner().invoke(
        main, ["metatest", PIPELINE, *sets, "--set", setting, "--checkpoints", str(ckpts)]
    )
    one_error_line(result, "^error: " + message)
    assert digests(ckpts) == before


def test_the_ends_of_the_ranges_are_accepted():
    cfg = config.load(None, ["data.mean=[-1,2,0.5]", "data.std=[0.001,10,0.25]"])
    assert (cfg.data.mean, cfg.data.std) == ([-1.0, 2.0, 0.5], [0.001, 10.0, 0.25])
    grey = config.load(None, ["data.channels=1", "data.mean=[0]", "data.std=[1]"])
    assert (grey.data.mean, grey.data.std) == ([0.0], [1.0])


def test_the_key_reference_shows_the_ranges():
    result = CliRunner().invoke(main, ["config", "--keys"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("data.mean ") and "(>= -1.0, <= 2.0)" in line for line in lines)
    assert any(line.startswith("data.std ") and "(>= 0.001, <= 10.0)" in line for line in lines)


# ---- the check itself, on results as publish makes them


def results(correct: dict[str, list], way: int = 3, query: int = 3) -> dict:
    """A results.json of rows with these correct queries per episode (a list per seed for several)."""
    queries = way * query
    rows = []
    for label, c in correct.items():
        t = torch.tensor(c, dtype=torch.float64) / queries
        ci = 0.0 if bool((t == t.flatten()[0]).all()) else 1.0
        rows.append({"method": label, "acc": round(100 * float(t.mean()), 2), "ci95": ci})
    return {
        "pipeline": "tiny",
        "way": way,
        "shot": 1,
        "query": query,
        "episodes": len(next(iter(correct.values()))),
        "rows": rows,
        "per_episode": {"queries": queries, "correct": correct},
    }


def test_every_row_at_chance_with_zero_spread_is_recognised():
    assert all_rows_at_chance(results({"MTL": [3, 3, 3], "FT": [3, 3, 3]}))
    assert all_rows_at_chance(results({"MTL": [[3, 3], [3, 3]], "NC": [3, 3]}))  # a row of two seeds
    assert all_rows_at_chance(results({"MTL": [5, 5]}, way=5, query=5))
    # one row off chance, one episode off, chance on average but with spread: results, not a constant model
    assert not all_rows_at_chance(results({"MTL": [3, 3, 3], "pixels": [4, 3, 3]}))
    assert not all_rows_at_chance(results({"MTL": [3, 3, 2]}))
    assert not all_rows_at_chance(results({"MTL": [2, 4, 3]}))
    assert not all_rows_at_chance(results({"MTL": [[3, 3], [3, 4]]}))
    assert not all_rows_at_chance({**results({"MTL": [3]}), "rows": []})


def test_a_file_without_the_per_episode_record_is_read_off_its_rows():
    old = results({"MTL": [3, 3], "FT": [3, 3]})
    del old["per_episode"]
    assert [r["acc"] for r in old["rows"]] == [33.33, 33.33]
    assert all_rows_at_chance(old)
    old["rows"][1]["ci95"] = 0.01
    assert not all_rows_at_chance(old)


def test_the_check_keeps_an_earlier_file_unless_allowed(tmp_path):
    chance, real = results({"MTL": [3, 3]}), results({"MTL": [3, 4]})
    earlier = tmp_path / "results.json"
    assert refuse_chance_results(chance, earlier, allow=False).startswith("warning: every row scored")
    earlier.write_text("{}")
    with pytest.raises(MtlError) as refused:
        refuse_chance_results(chance, earlier, allow=False)
    assert str(refused.value) == (
        "every row scored exactly chance (33.33%) with zero spread: the inputs likely reached the model "
        f"as constants (check data.mean and data.std); the earlier {earlier} is kept (--allow-chance "
        "replaces it)"
    )
    assert refuse_chance_results(chance, earlier, allow=True).startswith("warning: ")
    assert refuse_chance_results(real, earlier, allow=False) is None
    assert earlier.read_text() == "{}"  # the check only looks


@pytest.mark.parametrize("command", ["metatest", "compare", "ablate"])
def test_the_flag_the_message_names_is_an_option_of_every_command_that_writes_results(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and ALLOW_CHANCE in result.output


# ---- through the command line, on a finished tiny run


def score_with_constant_logits(self: metatest_stage.Scorer, method, **_) -> torch.Tensor:
    """:meth:`Scorer.score` of a model whose every logit is the same constant: it predicts one class
    for every query, ``1 / way`` of every (balanced) episode: what constant inputs score."""
    return torch.full((len(self.episodes),), 1 / self.run.cfg.meta.way)


@pytest.fixture
def constant_logits(monkeypatch):
    monkeypatch.setattr(metatest_stage.Scorer, "score", score_with_constant_logits)


def test_metatest_at_chance_keeps_the_earlier_results(tiny_copy, constant_logits):
    sets, ckpts = tiny_copy
    args = ["metatest", PIPELINE, *sets, "--checkpoints", str(ckpts)]
    earlier = json.loads((ckpts / "tiny/metatest/results.json").read_text())
    assert not all_rows_at_chance(earlier)
    before = digests(ckpts)  # the run folder: every stage, and the TensorBoard streams under tb/
    result = CliRunner().invoke(main, [*args, "--quiet"])
    one_error_line(
        result,
        r"^error: every row scored exactly chance \(33\.33%\) with zero spread: the inputs likely reached "
        r"the model as constants \(check data\.mean and data\.std\); the earlier "
        r".*/tiny/metatest/results\.json is kept \(--allow-chance replaces it\)$",
    )
    assert digests(ckpts) == before

    loud = CliRunner().invoke(main, args)  # with progress lines: still one error line, on stderr
    assert loud.exit_code == 2 and loud.stderr.count("\n") == 1 and loud.stderr.startswith("error: every row")
    assert digests(ckpts) == before

    allowed = CliRunner().invoke(main, [*args, "--allow-chance"])
    assert allowed.exit_code == 0, allowed.output
    assert allowed.stderr.startswith("warning: every row scored exactly chance (33.33%) with zero spread")
    replaced = json.loads((ckpts / "tiny/metatest/results.json").read_text())
    assert [(r["acc"], r["ci95"]) for r in replaced["rows"]] == [(33.33, 0.0)] * len(earlier["rows"])
    assert all_rows_at_chance(replaced)


def test_metatest_at_chance_without_an_earlier_file_writes_it_with_a_warning(tiny_copy, constant_logits):
    sets, ckpts = tiny_copy
    (ckpts / "tiny/metatest/results.json").unlink()
    result = CliRunner().invoke(main, ["metatest", PIPELINE, *sets, "--checkpoints", str(ckpts), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "warning: every row scored exactly chance (33.33%) with zero spread: the inputs likely reached the "
        "model as constants (check data.mean and data.std); "
        f"{ckpts / 'tiny/metatest/results.json'} written all the same"
    ]
    assert result.stdout == ""
    assert all_rows_at_chance(json.loads((ckpts / "tiny/metatest/results.json").read_text()))


def test_compare_at_chance_keeps_the_earlier_results(tiny_copy, monkeypatch):
    sets, ckpts = tiny_copy
    args = ["compare", PIPELINE, *sets, "--set", "compare.episodes=20", "--methods", "nc,pixels"]
    args += ["--checkpoints", str(ckpts), "--quiet"]
    first = CliRunner().invoke(main, args)  # rows that need no training: scored on the finished pretrain
    assert first.exit_code == 0, first.output
    assert not all_rows_at_chance(json.loads((ckpts / "tiny/compare/results.json").read_text()))
    before = digests(ckpts)

    monkeypatch.setattr(metatest_stage.Scorer, "score", score_with_constant_logits)
    result = CliRunner().invoke(main, args)
    one_error_line(result, r"^error: every row scored exactly chance .*/tiny/compare/results\.json is kept")
    assert digests(ckpts) == before

    allowed = CliRunner().invoke(main, [*args, "--allow-chance"])
    assert allowed.exit_code == 0, allowed.output
    assert all_rows_at_chance(json.loads((ckpts / "tiny/compare/results.json").read_text()))


def test_ablate_hands_the_flag_to_the_shared_scoring(monkeypatch, tmp_path):
    """ablate writes through the same scoring as compare (tested above): the flag reaches it."""
    seen = []

    def score_rows(*args, allow_chance: bool, **kwargs) -> dict:
        seen.append(allow_chance)
        raise MtlError("stopped here")

    monkeypatch.setattr("mtl.stages.ablate.score_rows", score_rows)
    args = ["ablate", PIPELINE, "--set", "device=cpu", "--checkpoints", str(tmp_path)]
    assert CliRunner().invoke(main, args).exit_code == 2
    assert CliRunner().invoke(main, [*args, "--allow-chance"]).exit_code == 2
    assert seen == [False, True]
