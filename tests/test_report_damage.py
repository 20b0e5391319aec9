"""`mtl report` on damaged files and a full disk: every number a ``results.json`` or a
``hard_tasks.json`` holds is checked before it is used (huge integers, floats past a float's range,
NaN and Infinity literals, bools, strings, wrong nesting), a wrong one refused in one line that names
the file and the entry, a damaged per-episode record left out of the table as before; a figure that
cannot be written says which figures were. Nothing under the checkpoints folder changes."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import digests
from test_figures import CLOSE, MTL, NC, PAPER, compare_results, write_results

import mtl.results.plots as plots
from mtl.cli import main

HUGE = "1" + "0" * 400  # an integer literal past a float's range: float() and numpy raise OverflowError
PLACE = "@@literal@@"
# JSON number literals (and other values) that are no accuracy, CI or published number
NOT_PERCENT = [HUGE, "-" + HUGE, "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "true", '"84.7"',
               "[84.7]", '{"acc": 84.7}', "100.5", "-0.5"]  # fmt: skip
NOT_COUNT = [HUGE, "-" + HUGE, "1e400", "NaN", "Infinity", "true", '"3"', "2.5", "[3]", "null", "-1"]

ROW = "(rows[0] is not a row of method, acc and ci95)"
PAPER_MSG = "('paper' is not a published number of acc and ci95)"
PUBLISHED = "('published' is not a mapping of rows to published numbers)"


def results() -> dict:
    """A compare ``results.json`` with a published number per row and the pipeline's paper number."""
    published = {NC: {"acc": 49.4, "ci95": 0.8, "source": "Snell et al. 2017"}}
    return {**compare_results(CLOSE, published), "paper": dict(PAPER)}


def write_raw(ckpts: Path, run: str, content: dict, literal: str, stage: str = "compare") -> Path:
    """``content`` as ``results.json`` with the string ``PLACE`` in it replaced by the JSON text
    ``literal`` (``json.dumps`` cannot write ``1e400`` or an integer literal's exact text)."""
    path = write_results(ckpts, run, stage, content)
    path.write_text(path.read_text().replace(json.dumps(PLACE), literal))
    return path


def invoke(args: list[str], ckpts: Path) -> Result:
    """The command, checked to have changed nothing under ``ckpts``."""
    before = digests(ckpts)
    result = CliRunner().invoke(main, args)
    assert digests(ckpts) == before
    assert "Traceback" not in result.output
    return result


def refused(args: list[str], ckpts: Path) -> str:
    """The one line of a command refused with exit status 2 and no traceback."""
    result = invoke(args, ckpts)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not an escaped OverflowError, TypeError, ...
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def damaged(where: tuple) -> dict:
    """``results()`` with the entry at ``where`` (keys and indices) set to ``PLACE``."""
    content = results()
    entry = content
    for key in where[:-1]:
        entry = entry[key]
    entry[where[-1]] = PLACE
    return content


CASES = [
    *[(("rows", 0, "acc"), literal, ROW) for literal in NOT_PERCENT],
    *[(("rows", 0, "ci95"), literal, ROW) for literal in [HUGE, "1e400", "NaN", "true", '"0.6"', "-0.1"]],
    (("rows", 0, "method"), HUGE, ROW),
    (("rows", 0), "[84.7, 0.6]", ROW),
    (("rows",), '{"acc": 84.7}', "('rows' is missing or not a list)"),
    *[(("paper", "acc"), literal, PAPER_MSG) for literal in [HUGE, "1e400", "NaN", "false", '"83.9"']],
    (("paper", "ci95"), "Infinity", PAPER_MSG),
    (("paper", "method"), "[1]", PAPER_MSG),
    (("paper",), "[83.9, 1.1]", PAPER_MSG),
    *[(("published", NC, "acc"), literal, PUBLISHED) for literal in [HUGE, "-1e400", "NaN", "true"]],
    (("published", NC, "ci95"), HUGE, PUBLISHED),
    (("published", NC), "49.4", PUBLISHED),
    (("way",), HUGE, "('way' is too large)"),
    (("way",), "-" + HUGE, "('way' is not a positive integer)"),
    (("episodes",), HUGE, "('episodes' is too large)"),
    (("episodes",), "0", "('episodes' is not a positive integer)"),
    (("shot",), "true", "('shot' is missing or not an integer)"),
    (("query",), "1e400", "('query' is missing or not an integer)"),
    (("query",), "NaN", "('query' is missing or not an integer)"),
    (("pipeline",), HUGE, "('pipeline' is missing or not a string)"),
]


@pytest.mark.parametrize("plot", [False, True], ids=["table", "plot"])
@pytest.mark.parametrize(("where", "literal", "message"), CASES)
def test_a_wrong_number_in_results_json_is_one_line(tmp_path, where, literal, message, plot):
    ckpts, figures = tmp_path / "ck", tmp_path / "figures"
    path = write_raw(ckpts, "run", damaged(where), literal)
    args = ["report", str(ckpts), *(["--plot", str(figures)] if plot else [])]
    assert refused(args, ckpts) == f"error: {path} is not a metatest results file {message}"
    assert not figures.exists()  # every file is checked before the first figure


def test_a_huge_integer_among_good_results_is_refused(tmp_path):
    """The user's case: one ``"acc": 10**400`` among good runs ends the report in one line."""
    ckpts = tmp_path / "ck"
    write_results(ckpts, "good", "compare", results())
    path = write_raw(ckpts, "run", damaged(("rows", 0, "acc")), HUGE, stage="metatest")
    expected = f"error: {path} is not a metatest results file {ROW}"
    assert refused(["report", str(ckpts)], ckpts) == expected


def per_episode(correct: dict | None = None, queries: object = 75) -> dict:
    """``results()`` with a per-episode record of its 600 episodes of its three rows."""
    record = {MTL: [70, 71, 69] * 200, CLOSE[1][0]: [68, 70, 70] * 200, NC: [60, 62, 61] * 200}
    return {**results(), "per_episode": {"queries": queries, "correct": {**record, **(correct or {})}}}


def table(tmp_path: Path, content: dict, literal: str = "") -> str:
    """``mtl report``'s output on ``content`` as the one results file (``PLACE`` being ``literal``)."""
    ckpts = tmp_path / "ck"
    write_raw(ckpts, "run", content, literal)
    result = invoke(["report", str(ckpts)], ckpts)
    assert result.exit_code == 0, result.output
    return result.output.replace(str(ckpts), "CK")


SKIPPED = [
    *[({MTL: [70, PLACE, 69]}, 75, literal) for literal in [*NOT_COUNT, "76"]],  # 76 of 75 queries
    *[({}, PLACE, literal) for literal in [*NOT_COUNT, "0"]],
    ({MTL: PLACE}, 75, HUGE),
    ({MTL: [[70, 71, 69], [70, PLACE, 69]]}, 75, HUGE),  # a row of two seeds
    ({MTL: [[70, 71, 69], [70, 71]]}, 75, ""),  # seeds of unequal lengths
    ({MTL: [[70, 71, 69], [[70], 71, 69]]}, 75, ""),
    ({MTL: []}, 75, ""),
]


@pytest.mark.parametrize(("correct", "queries", "literal"), SKIPPED)
def test_a_damaged_per_episode_record_leaves_the_paired_lines_out(tmp_path, correct, queries, literal):
    """As for a file written before the record was kept: the table, without the paired differences,
    and one line naming the file and the field left out."""
    plain = table(tmp_path / "plain", results())
    good = table(tmp_path / "good", per_episode())
    assert "paired 95% CI" in good and good.startswith(plain.rstrip("\n"))
    head, ignored = without_last_line(table(tmp_path / "bad", per_episode(correct, queries), literal))
    assert head == plain
    field = "per_episode.queries" if correct == {} else f"per_episode.correct[{MTL!r}]"
    assert ignored.startswith(f"CK/run/compare/results.json: {field} ")
    assert ignored.endswith("; its paired differences are not shown") and "nan" not in ignored


def without_last_line(output: str) -> tuple[str, str]:
    """``mtl report``'s output without its last line, and that line."""
    head, _, last = output.rstrip("\n").rpartition("\n")
    return head + "\n", last


def test_a_per_episode_record_that_is_no_mapping_is_left_out(tmp_path):
    plain = table(tmp_path / "plain", results())
    head, ignored = without_last_line(table(tmp_path / "bad", {**results(), "per_episode": PLACE}, HUGE))
    assert head == plain
    assert (
        ignored
        == "CK/run/compare/results.json: per_episode is not a mapping; its paired differences are not shown"
    )
    assert table(tmp_path / "list", {**per_episode(), "differences": {"reference": [1]}}) == table(
        tmp_path / "good", per_episode()
    )  # a reference that names no row: the first row is the reference


@pytest.mark.parametrize("key", ["chosen", "failures", "window", "hard_task_updates"])
@pytest.mark.parametrize("literal", NOT_COUNT)
def test_a_wrong_count_in_hard_tasks_json_is_one_line(tmp_path, key, literal):
    ckpts, figures = tmp_path / "ck", tmp_path / "figures"
    (ckpts / "run" / "tb").mkdir(parents=True)
    summary = {"hard_task_updates": 4, "window": 2, "classes": {"n01": {"chosen": 3, "failures": 1}}}
    (summary if key in summary else summary["classes"]["n01"])[key] = PLACE
    hard = ckpts / "run" / "metatrain" / "hard_tasks.json"
    hard.parent.mkdir()
    hard.write_text(json.dumps(summary).replace(json.dumps(PLACE), literal))
    line = refused(["report", str(ckpts), "--plot", str(figures)], ckpts)
    assert line == f"error: {hard} is not a hard-task summary (hard_tasks.json as metatrain writes it)"
    assert not figures.exists()


def full_disk(monkeypatch, failing: int) -> None:
    """Make the ``failing``-th figure's write end as on a full disk, inside the real atomic write."""
    real, calls = plots.atomic_write, []

    @contextmanager
    def atomic_write(path: Path, *args, **kwargs) -> Iterator:
        calls.append(path)
        with real(path, *args, **kwargs) as f:
            if len(calls) == failing:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield f

    monkeypatch.setattr(plots, "atomic_write", atomic_write)


@pytest.mark.parametrize(("runs", "failing"), [(3, 3), (4, 3), (3, 1)])
def test_a_full_disk_says_which_figures_were_written(tmp_path, monkeypatch, runs, failing):
    ckpts, figures = tmp_path / "ck", tmp_path / "figures"
    names = [f"{chr(ord('a') + i)}-compare.png" for i in range(runs)]
    for name in names:
        write_results(ckpts, name.removesuffix("-compare.png"), "compare", results())
    plain = invoke(["report", str(ckpts)], ckpts)
    full_disk(monkeypatch, failing)
    result = invoke(["report", str(ckpts), "--plot", str(figures)], ckpts)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert result.stdout == plain.stdout  # the table, which was complete, then one line
    written, missing = names[: failing - 1], names[failing - 1 :]
    tail = (
        f"; figures written: {', '.join(written)}; not written: {', '.join(missing)}"
        if written
        else "; nothing was written"
    )
    reason = os.strerror(errno.ENOSPC)
    assert result.stderr.splitlines() == [f"error: could not write {figures / missing[0]}: {reason}{tail}"]
    if written:
        assert sorted(p.name for p in figures.iterdir()) == written  # whole figures, no temp files
        assert all((figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in written)
    else:
        assert not figures.exists()  # the folder it made for the first figure is removed


def test_a_truncated_row_of_the_per_episode_record_is_named(tmp_path):
    plain = table(tmp_path / "plain", results())
    head, ignored = without_last_line(table(tmp_path / "bad", per_episode({NC: [60, 62]})))
    assert head == plain
    assert ignored == (
        f"CK/run/compare/results.json: per_episode.correct[{NC!r}] has 2 episodes, [{MTL!r}] 600; "
        "its paired differences are not shown"
    )


def test_a_per_episode_record_of_other_episodes_than_the_file_is_named(tmp_path):
    short = {row: counts[:3] for row, counts in per_episode()["per_episode"]["correct"].items()}
    head, ignored = without_last_line(table(tmp_path / "bad", per_episode(short)))
    assert head == table(tmp_path / "plain", results())
    assert ignored == (
        f"CK/run/compare/results.json: per_episode.correct[{MTL!r}] has 3 episodes, the file 600; "
        "its paired differences are not shown"
    )
