"""Files a user made or edited by hand, or named by mistake: checkpoints with NaN weights, a missing or
wrongly shaped tensor; results files of the wrong shape; system files named by ``extends:``. Each is
refused in one line, exit status 2, before anything is written, and no message quotes what the
refused file holds."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from test_reliability import SECRET, adapt_task, cli, refused, snapshot, stage

# ------------------------------------------------------------------------------------ checkpoints


def edit_checkpoint(path: Path, change) -> None:
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


def _nan_theta(ckpt: dict) -> None:
    ckpt["theta"]["W"][0, 0] = float("nan")


def _inf_encoder(ckpt: dict) -> None:
    key = next(k for k, v in ckpt["encoder"].items() if v.is_floating_point())
    tensor = ckpt["encoder"][key]
    tensor[(0,) * tensor.dim()] = float("inf")


def _drop_encoder_tensor(ckpt: dict) -> None:
    del ckpt["encoder"][next(iter(ckpt["encoder"]))]


def _extra_encoder_tensor(ckpt: dict) -> None:
    ckpt["encoder"]["extra.weight"] = torch.zeros(3)


def _wrong_theta(ckpt: dict) -> None:
    ckpt["theta"]["W"] = torch.zeros(7, 2)


FIT = r"metatrain/best\.pt does not fit this pipeline's model: "
HAND_MADE = {
    "NaN in θ": (
        "metatrain",
        _nan_theta,
        r"best\.pt holds NaN or infinite weights \(theta\.W\): it comes from a diverged run and would "
        r"score at chance; train that stage again \(--fresh\)$",
    ),
    "inf in the pretrained encoder": (
        "pretrain",
        _inf_encoder,
        r"pretrain/best\.pt holds NaN or infinite weights \(encoder\.[\w.]+\)",
    ),
    "a missing tensor": (
        "metatrain",
        _drop_encoder_tensor,
        FIT + r"'encoder' does not fit the model: missing [\w.]+$",
    ),
    "an unexpected tensor": (
        "metatrain",
        _extra_encoder_tensor,
        FIT + r"'encoder' does not fit the model: unexpected extra\.weight$",
    ),
    "θ of another shape": (
        "metatrain",
        _wrong_theta,
        FIT + r"'theta\.W' is \[7, 2\] where the model has \[3, 16\]$",
    ),
    "no θ at all": ("metatrain", lambda c: c.pop("theta"), FIT + r"it has no 'theta' entry$"),
    "a pretrained encoder of another shape": (
        "pretrain",
        lambda c: c["encoder"].update({k: v[:1] for k, v in c["encoder"].items() if v.dim()}),
        r"pretrain/best\.pt does not fit this pipeline's model: 'encoder' does not fit the model: wrong "
        r"shape encoder\.[\w.]+: \[1(, \d+)*\] where the model has \[\d+(, \d+)*\] \(\+\d+ more\)$",
    ),
}


@pytest.mark.parametrize("case", list(HAND_MADE))
def test_metatest_checks_every_checkpoint_before_writing_anything(tiny_copy, case):
    sets, ckpts = tiny_copy
    which, change, message = HAND_MADE[case]
    edit_checkpoint(ckpts / "tiny" / which / "best.pt", change)
    before = snapshot(ckpts)
    refused(*stage("metatest", sets, ckpts), message)
    assert snapshot(ckpts) == before


ADAPT = {
    "NaN in θ": r"best\.pt holds NaN or infinite weights \(theta\.W\)",
    "a missing tensor": r"best\.pt does not fit the model its config describes: 'encoder' does not fit the "
    r"model: missing [\w.]+$",
    "θ of another shape": r"'theta\.W' is \[7, 2\] where the model has \[3, 16\]$",
}


@pytest.mark.parametrize("case", list(ADAPT))
def test_adapt_refuses_the_same_checkpoints_in_one_line(tiny_copy, tmp_path, case):
    _, ckpts = tiny_copy
    best = ckpts / "tiny" / "metatrain" / "best.pt"
    edit_checkpoint(best, HAND_MADE[case][1])
    refused(*cli("adapt", "--checkpoint", best, *adapt_task(tmp_path)), ADAPT[case])


def test_a_checkpoint_without_its_metric_is_still_scored(tiny_copy):
    """The metric only chooses a note after the table; its absence is no reason to fail (or to fail
    after results.json is written, as it once did)."""
    sets, ckpts = tiny_copy
    edit_checkpoint(ckpts / "tiny" / "metatrain" / "best.pt", lambda c: c.pop("metric"))
    code, output = stage("metatest", sets, ckpts)
    assert code == 0 and "Traceback" not in output, output


# ---------------------------------------------------------------------- results files made by hand


def _results(**change) -> str:
    results = {
        "pipeline": "tiny", "way": 3, "shot": 1, "query": 3, "episodes": 30, "paper": None,
        "rows": [{"method": "MTL (SS + meta-learned θ)", "acc": 60.0, "ci95": 1.0}],
    }  # fmt: skip
    results.update(change)
    return json.dumps(results)


BAD_RESULTS = {
    "not JSON": (f"{SECRET} {{", r"\(not JSON\)"),
    "binary": (bytes(range(256)).decode("latin-1"), r"\(not JSON\)"),
    "a list": (json.dumps([SECRET]), r"\(not a JSON object\)"),
    "no rows": (_results(rows=None), r"\('rows' is missing or not a list\)"),
    "rows of strings": (_results(rows=[SECRET]), r"\(rows\[0\] is not a row of method, acc and ci95\)"),
    "acc as text": (_results(rows=[{"method": "m", "acc": SECRET, "ci95": 1}]), r"\(rows\[0\] is not a row"),
    "acc NaN": (_results(rows=[{"method": "m", "acc": math.nan, "ci95": 1}]), r"\(rows\[0\] is not a row"),
    "way as text": (_results(way=SECRET), r"\('way' is missing or not an integer\)"),
    "no pipeline": (_results(pipeline=None), r"\('pipeline' is missing or not a string\)"),
    "paper acc as text": (_results(paper={"acc": SECRET}), r"\('paper' is not a published number"),
    "published of strings": (_results(published={"m": SECRET}), r"\('published' is not a mapping of rows"),
}  # fmt: skip


@pytest.mark.parametrize("plot", [False, True])
@pytest.mark.parametrize("case", list(BAD_RESULTS))
def test_report_refuses_a_results_file_of_the_wrong_shape_without_quoting_it(tiny_copy, tmp_path, case, plot):
    _, ckpts = tiny_copy
    text, message = BAD_RESULTS[case]
    (ckpts / "tiny" / "metatest" / "results.json").write_text(text, encoding="utf-8")
    before = snapshot(ckpts)
    args = ["report", ckpts, *(["--plot", tmp_path / "figures"] if plot else [])]
    line = refused(*cli(*args), r"tiny/metatest/results\.json is not a metatest results file " + message)
    assert SECRET not in line and snapshot(ckpts) == before
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize(
    "text", [f'{{"classes": "{SECRET}"}}', SECRET, '{"classes": {"a": {"chosen": "x"}}}']
)
def test_report_plot_refuses_a_hard_task_summary_of_the_wrong_shape(tiny_copy, tmp_path, text):
    _, ckpts = tiny_copy
    (ckpts / "tiny" / "metatrain" / "hard_tasks.json").write_text(text)
    line = refused(
        *cli("report", ckpts, "--plot", tmp_path / "f"), r"hard_tasks\.json is not a hard-task summary"
    )
    assert SECRET not in line


# ------------------------------------------------------------------------------ pipeline files


EXTENDED = {
    "a shadow file": (f"root:{SECRET}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n".encode(),
                      r"is not an mtl pipeline: none of its keys is a pipeline key"),
    "a YAML file of another program": (f"network:\n  {SECRET}: 1\n".encode(), r"is not an mtl pipeline"),
    "a binary file": (bytes(range(256)) + SECRET.encode(), r"is a binary file, not a pipeline"),
    "a text file": (f"{SECRET}\nsecond line\n".encode(), r"a pipeline must be a mapping of keys to values"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EXTENDED))
def test_extends_of_a_file_that_is_no_pipeline_quotes_none_of_it(tmp_path, case):
    data, message = EXTENDED[case]
    (tmp_path / "system").write_bytes(data)
    (tmp_path / "p.yaml").write_text(f"extends: {tmp_path / 'system'}\nmeta:\n  shot: 5\n")
    line = refused(*cli("config", tmp_path / "p.yaml"), rf"{re.escape(str(tmp_path / 'system'))}:? {message}")
    assert SECRET not in line


def test_a_pipeline_with_a_misspelt_key_still_names_it(tmp_path):
    (tmp_path / "p.yaml").write_text("nmae: x\n")
    refused(*cli("config", tmp_path / "p.yaml"), r"nmae: unknown key \(did you mean 'name'\?\)$")
