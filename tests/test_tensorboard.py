"""TensorBoard as a user reads it: per-stage tags, percent units, one stream per stage run, margin
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


def test_every_tag_starts_with_its_stage_and_each_stage_has_one_stream(run):
    for stage in ("pretrain", "metatrain", "metatest"):
        assert len(list((run / stage).glob("events.out.tfevents.*"))) == 1, stage
        tags = events(run / stage).Tags()
        assert tags["scalars"] and all(t.startswith(f"{stage}/") for t in tags["scalars"]), tags
    assert {"pretrain/val/acc", "pretrain/train/acc"} <= set(events(run / "pretrain").Tags()["scalars"])
    assert {"metatrain/val/acc", "metatrain/train/query_acc", "metatrain/hard/hard_query_acc"} <= set(
        events(run / "metatrain").Tags()["scalars"]
    )


def test_accuracies_are_in_percent_with_their_band(run):
    for stage, tags in {
        "pretrain": ["val/acc", "train/acc"],
        "metatrain": ["val/acc", "train/query_acc", "hard/normal_query_acc", "hard/hard_query_acc"],
    }.items():
        acc = events(run / stage)
        for tag in tags:
            values = [e.value for e in acc.Scalars(f"{stage}/{tag}")]
            assert all(0 <= v <= 100 for v in values) and max(values) > 1, (tag, values)
        mid, low, high = (
            np.array([e.value for e in acc.Scalars(f"{stage}/val/acc{s}")]) for s in ("", "_low", "_high")
        )
        assert np.all(low <= mid) and np.any(low < mid) and np.allclose(high - mid, mid - low, atol=1e-4)
    test = events(run / "metatest")
    (label,) = [t for t in test.Tags()["scalars"] if t.startswith("metatest/test/MTL") and "_" not in t[-5:]]
    assert 0 < test.Scalars(label)[0].value <= 100
    assert "metatest/test/results/text_summary" in test.Tags()["tensors"]  # the results table as text


def test_custom_scalars_layout_has_a_margin_chart_of_accuracy_and_its_ci(run):
    for stage in ("pretrain", "metatrain"):
        (category,) = layout(run / stage).category
        assert category.title == stage
        (chart,) = category.chart
        assert chart.title == "validation accuracy ± 95% CI (%)"
        series = chart.margin.series[0]
        assert (series.value, series.lower, series.upper) == tuple(
            f"{stage}/val/acc{s}" for s in ("", "_low", "_high")
        )
    charts = layout(run / "metatest").category[0].chart
    assert len(charts) >= 2 and all(c.HasField("margin") for c in charts)  # one per method row


def test_task_grids_frame_support_images_in_green(tmp_path):
    monitor = Monitor(tmp_path, "metatrain")
    images = torch.full((3, 4, 8, 8, 3), 7, dtype=torch.uint8)  # way 3, shot 1 + query 3
    monitor.task("train/task", images, 1, 0)
    monitor.close()
    (image,) = events(tmp_path).Images("metatrain/train/task")
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
