"""TensorBoard as a user reads it: tags grouped by stage, percent units, one stream per stage run, margin
charts of accuracy ± CI, and task grids with the support images framed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2

from mtl import config
from mtl.runtime.monitor import Monitor
from mtl.stages.metatest import metatest
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import TINY

    tmp = tmp_path_factory.mktemp("tb")
    cfg = config.load(None, [*TINY, f"data.root={tmp / 'data'}", "meta.hard_tasks.enabled=true"])
    ckpts = tmp / "ckpts"
    pretrain(cfg, ckpts, quiet=True)
    metatrain(cfg, ckpts, quiet=True)
    metatest(cfg, ckpts, quiet=True)
    metatest(cfg, ckpts, quiet=True)  # a rerun replaces the stream, it does not add one
    return ckpts / "tiny" / "tb"


GROUPS = {"pretrain": "1 pretrain", "metatrain": "2 metatrain", "metatest": "3 metatest"}


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def layout(folder: Path) -> layout_pb2.Layout:
    (path,) = folder.glob("events.out.tfevents.*")
    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            if value.tag == "custom_scalars__config__":
                found = layout_pb2.Layout()
                found.ParseFromString(value.tensor.string_val[0])
    return found


def test_every_tag_names_its_stage_and_each_stage_has_one_stream(run):
    for stage, group in GROUPS.items():
        assert len(list((run / stage).glob("events.out.tfevents.*"))) == 1, stage
        tags = events(run / stage).Tags()
        # In the stage's own group, or in a shared one (learning rate, CI bands...) behind the stage's name.
        scalars = tags["scalars"]
        named = [t.startswith(f"{group}/") or t.split("/", 1)[1].startswith(f"{stage} ") for t in scalars]
        assert scalars and all(named), tags
    assert {"1 pretrain/validation accuracy", "1 pretrain/train accuracy"} <= set(
        events(run / "pretrain").Tags()["scalars"]
    )
    assert {
        "2 metatrain/validation accuracy",
        "2 metatrain/train accuracy",
        "6 hard tasks/metatrain query accuracy, extra tasks",
    } <= set(events(run / "metatrain").Tags()["scalars"])


def test_accuracies_are_in_percent_with_their_band(run):
    for stage, tags in {
        "pretrain": ["1 pretrain/validation accuracy", "1 pretrain/train accuracy"],
        "metatrain": [
            "2 metatrain/validation accuracy",
            "2 metatrain/train accuracy",
            "6 hard tasks/metatrain query accuracy, normal tasks",
            "6 hard tasks/metatrain query accuracy, extra tasks",
        ],
    }.items():
        acc = events(run / stage)
        for tag in tags:
            values = [e.value for e in acc.Scalars(tag)]
            assert all(0 <= v <= 100 for v in values) and max(values) > 1, (tag, values)
        mid, low, high = (
            np.array([e.value for e in acc.Scalars(tag)])
            for tag in (
                tags[0],
                f"9 CI bands/{stage} validation accuracy low",
                f"9 CI bands/{stage} validation accuracy high",
            )
        )
        assert np.all(low <= mid) and np.any(low < mid) and np.allclose(high - mid, mid - low, atol=1e-4)
    test = events(run / "metatest")
    (label,) = [t for t in test.Tags()["scalars"] if t.startswith("3 metatest/MTL")]
    assert 0 < test.Scalars(label)[-1].value <= 100  # the last point: the result on every episode
    assert "3 metatest/results/text_summary" in test.Tags()["tensors"]  # the results table as text


def test_custom_scalars_layout_has_a_margin_chart_of_accuracy_and_its_ci(run):
    for stage, before in {"pretrain": [], "metatrain": ["1 pretrain"]}.items():
        # The groups of the stages before it come first, empty: they keep the pipeline's order.
        *earlier, category = layout(run / stage).category
        assert [c.title for c in earlier] == before and not any(c.chart for c in earlier)
        group = category.title
        assert group == GROUPS[stage]
        (chart,) = category.chart
        assert chart.title == "validation accuracy ± 95% CI (%)"
        series = chart.margin.series[0]
        assert (series.value, series.lower, series.upper) == (
            f"{group}/validation accuracy",
            f"9 CI bands/{stage} validation accuracy low",
            f"9 CI bands/{stage} validation accuracy high",
        )
    *earlier, category = layout(run / "metatest").category
    assert [c.title for c in earlier] == ["1 pretrain", "2 metatrain"] and category.title == "3 metatest"
    charts = category.chart
    assert len(charts) >= 2 and all(c.HasField("margin") for c in charts)  # one per method row


def test_task_grids_frame_support_images_in_green(tmp_path):
    monitor = Monitor(tmp_path, "metatrain")
    images = torch.full((3, 4, 8, 8, 3), 7, dtype=torch.uint8)  # way 3, shot 1 + query 3
    monitor.task("train task", images, 1, 0)
    monitor.close()
    (image,) = events(tmp_path).Images("7 inputs/metatrain train task")
    import io

    from PIL import Image

    grid = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    cell = 8 + 4 + 2  # image, frame, grid padding
    assert grid.shape[:2] == (2 + 3 * cell, 2 + 4 * cell)
    for row in range(3):
        y = 2 + row * cell
        support, query = grid[y, 2 : 2 + 12], grid[y, 2 + cell : 2 + cell + 12]
        assert (support == [40, 200, 40]).all() and (query == [150, 150, 150]).all()
        assert (grid[y + 2 : y + 10, 4 : 4 + 8] == 7).all()  # the image itself, inside its frame


def test_training_curves_have_ten_points_an_epoch_that_average_to_the_epoch(tmp_path, capsys):
    from conftest import TINY

    from mtl.training.loop import CURVE_POINTS

    sets = [*TINY, f"data.root={tmp_path / 'data'}", "pretrain.epochs=1", "pretrain.batch_size=8"]
    pretrain(config.load(None, sets), tmp_path / "ck")
    line = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("[pretrain] epoch 1/1")
    )
    acc = events(tmp_path / "ck" / "tiny" / "tb" / "pretrain")
    loss, hits = acc.Scalars("1 pretrain/loss"), acc.Scalars("1 pretrain/train accuracy")
    steps = [e.step for e in loss]
    every = -(-steps[-1] // CURVE_POINTS)
    assert steps[-1] > CURVE_POINTS and steps == [*range(every, steps[-1], every), steps[-1]]
    assert [e.step for e in hits] == steps
    # Each point is the mean of the steps since the one before: weighted, they give the epoch's numbers.
    weights = np.diff([0, *steps])
    epoch_loss = float(line.split("loss ")[1].split()[0])
    epoch_acc = float(line.split("train-acc ")[1].split("%")[0])
    assert np.average([e.value for e in loss], weights=weights) == pytest.approx(epoch_loss, abs=6e-4)
    assert np.average([e.value for e in hits], weights=weights) == pytest.approx(epoch_acc, abs=0.06)
