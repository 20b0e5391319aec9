"""TensorBoard's pages as a user opens them on a finished run, read from what TensorBoard itself serves
(its scalar, custom-scalar, text and hparams plugins answering HTTP requests in-process): training
curves first and in pipeline order, no chart of a single point, every custom-scalar chart drawn, CI
bands within [0, 100], and metatest's results as a table and as HParams metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlencode

import pytest
from tensorboard.backend import application
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin
from tensorboard.plugins.hparams.hparams_plugin import HParamsPlugin
from tensorboard.plugins.scalar.scalars_plugin import ScalarsPlugin
from tensorboard.plugins.text.text_plugin import TextPlugin
from werkzeug.test import Client

STAGES = {"pretrain": "1 pretrain", "metatrain": "2 metatrain", "metatest": "3 metatest"}
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


class Served:
    """The HTTP answers of a TensorBoard serving ``logdir``, as its pages request them."""

    def __init__(self, logdir: Path) -> None:
        mux = plugin_event_multiplexer.EventMultiplexer()
        mux.AddRunsFromDirectory(str(logdir))
        mux.Reload()
        provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
        by_name: dict = {}
        context = base_plugin.TBContext(
            data_provider=provider, logdir=str(logdir), multiplexer=mux, plugin_name_to_instance=by_name
        )
        plugins = [cls(context) for cls in (ScalarsPlugin, CustomScalarsPlugin, TextPlugin, HParamsPlugin)]
        by_name.update({p.plugin_name: p for p in plugins})
        self.client = Client(application.TensorBoardWSGI(plugins, data_provider=provider))

    def get(self, route: str, **params: str):
        answer = self.client.get(f"/data/plugin/{route}" + (f"?{urlencode(params)}" if params else ""))
        assert answer.status_code == 200, (route, params, answer.data[:300])
        return json.loads(answer.data)

    def values(self, run: str, tag: str) -> list[float]:
        """The points of one scalar chart (``[wall time, step, value]`` each), their values."""
        return [value for _, _, value in self.get("scalars/scalars", run=run, tag=tag)]

    def post(self, route: str, body: dict):
        answer = self.client.post(f"/data/plugin/{route}", json=body)
        assert answer.status_code == 200, (route, answer.data[:300])
        return json.loads(answer.data)


@pytest.fixture(scope="module")
def served(finished_tiny) -> Served:
    return Served(finished_tiny[1])


@pytest.fixture(scope="module")
def scalar_tags(served) -> dict[str, list[str]]:
    """``{run: [tag, ...]}`` of the Scalars page (runs are ``tiny/tb/<stage>``)."""
    return {run: list(tags) for run, tags in served.get("scalars/tags").items()}


def natural(tag: str) -> list[tuple[int, int | str]]:
    """TensorBoard's order of tags: numbers by value, and ``/`` and digits before any other character."""
    parts = re.findall(r"\d+|.", tag)
    return [(0, int(p)) if p.isdigit() else (0, -1) if p == "/" else (1, p) for p in parts]


def js_escaped(tag: str) -> str:
    """A tag as the margin chart escapes it into its regular expression (``_escapeRegexCharacters``)."""
    return re.sub(r"[.*+?^${}()|[\]\\]", lambda m: "\\" + m.group(0), tag)


def test_every_scalar_chart_is_a_curve(served, scalar_tags):
    # Two epochs of each training stage, 30 test episodes: every chart has at least two points.
    assert {run.rsplit("/", 1)[-1] for run in scalar_tags} == set(STAGES)
    for run, tags in scalar_tags.items():
        for tag in tags:
            points = served.values(run, tag)
            assert len(points) >= 2, (run, tag, points)


def test_training_curves_come_first_in_pipeline_order(scalar_tags):
    tags = sorted((t for ts in scalar_tags.values() for t in ts), key=natural)
    groups = list(dict.fromkeys(t.split("/", 1)[0] for t in tags))
    assert groups[:5] == ["1 pretrain", "2 metatrain", "3 metatest", "4 learning rate", "5 throughput"]
    assert groups[-1] == "9 CI bands"  # the raw band bounds trail every chart a user reads
    for stage in ("pretrain", "metatrain"):  # is it learning: loss, then train and validation accuracy
        run = [t for t in tags if t.startswith(f"{STAGES[stage]}/")]
        assert run == [f"{STAGES[stage]}/{n}" for n in ("loss", "train accuracy", "validation accuracy")]
    assert not any(t.startswith("metatest/") or "_low" in t or "_high" in t for t in tags)


def test_every_custom_scalar_chart_finds_its_tags(served, scalar_tags):
    categories = served.get("custom_scalars/layout")["category"]
    assert [c["title"] for c in categories] == list(STAGES.values())  # pipeline order, none empty
    for category in categories:
        assert category["chart"], category["title"]
        for chart in category["chart"]:
            for regex in chart.get("multiline", {}).get("tag", []):  # a multiline chart takes regexes
                assert any(re.search(regex, t) for ts in scalar_tags.values() for t in ts), regex
            for series in chart.get("margin", {}).get("series", []):
                names = [series["value"], series["lower"], series["upper"]]
                # A margin chart draws no series whose tag has a parenthesis (its tags are not regexes).
                assert not any("(" in n or ")" in n for n in names), names
                pattern = "|".join(f"({js_escaped(n)})" for n in names)
                drawn = []
                for run in scalar_tags:
                    found = served.get("custom_scalars/scalars", run=run, tag=pattern)
                    assert found["regex_valid"], pattern
                    events = found["tag_to_events"]
                    if set(names) <= set(events):
                        steps = [[e[1] for e in events[n]] for n in names]
                        assert steps[0] == steps[1] == steps[2], (names, steps)  # else nothing is drawn
                        drawn.append(run)
                assert len(drawn) == 1, (chart["title"], names, drawn)


def test_ci_bands_stay_within_0_and_100_and_around_their_accuracy(served, scalar_tags):
    bands = 0
    for run, tags in scalar_tags.items():
        for tag in (t for t in tags if t.startswith("9 CI bands/")):
            values = served.values(run, tag)
            assert all(0 <= v <= 100 for v in values), (tag, values)
            bands += 1
    assert bands >= 2 * 6  # pretrain and metatrain validation, four metatest rows
    for category in served.get("custom_scalars/layout")["category"]:
        for chart in category["chart"]:
            (series,) = chart["margin"]["series"]
            run = next(r for r, ts in scalar_tags.items() if series["value"] in ts)
            mid, low, high = (served.values(run, series[k]) for k in ("value", "lower", "upper"))
            assert all(lo <= m <= hi for lo, m, hi in zip(low, mid, high, strict=True)), chart["title"]


def test_metatest_results_are_a_table_and_hparams_metrics(served, finished_tiny):
    results = json.loads((finished_tiny[1] / "tiny" / "metatest" / "results.json").read_text())
    rows = {row["method"]: row["acc"] for row in results["rows"]}
    run = "tiny/tb/metatest"
    tag = "3 metatest/results/text_summary"  # torch's add_text names its summaries so
    assert served.get("text/tags")[run] == [tag]
    (table,) = served.get("text/text", run=run, tag=tag)
    assert "<table>" in table["text"] and all(f"{acc:.2f}" in table["text"] for acc in rows.values())

    experiment = served.post("hparams/experiment", {"experimentName": ""})
    assert [m["displayName"] for m in experiment["metricInfos"]] == [f"{m} (%)" for m in rows]
    assert {h["name"] for h in experiment["hparamInfos"]} >= {"pipeline", "way", "shot", "episodes"}
    body = {"experimentName": "", "allowedStatuses": STATUSES, "colParams": [], "sliceSize": 9}
    (group,) = served.post("hparams/session_groups", body)["sessionGroups"]
    assert group["hparams"]["pipeline"] == "tiny" and group["hparams"]["way"] == results["way"]
    values = {v["name"]["tag"]: v["value"] for v in group["metricValues"]}
    shown = {m["name"]["tag"]: m["displayName"][: -len(" (%)")] for m in experiment["metricInfos"]}
    assert {shown[tag]: round(value, 2) for tag, value in values.items()} == rows  # the last point
