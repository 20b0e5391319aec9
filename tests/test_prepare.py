"""`mtl data prepare folder` and `mtl data info`: the prepared layout, the class split, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from fakes import pattern_images, write_image

from mtl.cli import main
from mtl.data.prepare.preparation import prepare
from mtl.data.prepared import load_manifest, load_split


def own_images(root: Path, classes: int = 10, per_class: int = 4, size: int = 24) -> dict[str, np.ndarray]:
    """``root/<class>/<i>.png``; returns the pixels written per class."""
    written = {}
    for c in range(classes):
        name = f"class_{chr(ord('j') - c)}"  # reverse alphabetical creation order
        pixels = pattern_images(per_class, size, seed=c)
        for i, img in enumerate(pixels):
            write_image(root / name / f"{i}.png", img)
        written[name] = pixels
    return written


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def prepare_cli(tmp_path, *options):
    """``mtl data prepare folder`` from ``tmp_path/own`` into ``tmp_path/prep``, one worker."""
    return invoke("data", "prepare", "folder", "--source", tmp_path / "own", "--dest", tmp_path / "prep",
                  *options, "--workers", 1)  # fmt: skip


def test_folder_without_splits_is_split_by_class_with_a_seeded_ratio(tmp_path):
    written = own_images(tmp_path / "own")
    report = prepare("folder", tmp_path / "own", tmp_path / "prep", image_size=24, workers=1)
    assert report.source_format == "folder-classes"
    splits = {s: load_split(tmp_path / "prep", s) for s in ("train", "val", "test")}
    assert [splits[s].num_classes for s in splits] == [6, 2, 2]  # round(0.64*10), round(0.16*10), rest
    names = [n for s in splits.values() for n in s.class_names]
    assert sorted(names) == sorted(written)  # every class in exactly one split
    for split in splits.values():
        assert split.class_names == sorted(split.class_names)
        assert split.image_shape == (24, 24, 3)
        assert np.bincount(split.labels).tolist() == [4] * split.num_classes
        for label, name in enumerate(split.class_names):
            # PNG is lossless and the size unchanged: the stored pixels are the files' pixels.
            np.testing.assert_array_equal(split.images[split.labels == label], written[name])
    again = prepare("folder", tmp_path / "own", tmp_path / "prep2", image_size=24, workers=1)
    assert load_manifest(again.dest)["fingerprint"] == load_manifest(report.dest)["fingerprint"]
    other = prepare("folder", tmp_path / "own", tmp_path / "prep3", image_size=24, seed=1, workers=1)
    assert load_split(other.dest, "test").class_names != splits["test"].class_names


def test_folder_with_split_folders_and_resizing(tmp_path):
    for split, classes in (("train", "abcd"), ("validation", "ef"), ("test", "gh")):
        for c in classes:
            for i, img in enumerate(pattern_images(3, 40, seed=ord(c))):
                write_image(tmp_path / "src" / split / c / f"{i}.jpg", img)
    report = prepare("folder", tmp_path / "src", tmp_path / "prep", workers=1)
    assert report.source_format == "folder-splits"
    val = load_split(tmp_path / "prep", "val")
    assert val.class_names == ["e", "f"] and val.image_shape == (84, 84, 3)
    src = pattern_images(3, 40, seed=ord("e"))
    assert np.abs(val.images[0].mean((0, 1)) - src[0].mean((0, 1))).max() < 4  # colour kept (RGB order)


def test_cli_prepare_and_info(tmp_path):
    own_images(tmp_path / "own")
    result = prepare_cli(tmp_path, "--image-size", 16, "--split", "0.6,0.2,0.2")
    assert result.exit_code == 0, result.output
    assert "train     6 classes       24 images" in result.output
    info = invoke("data", "info", tmp_path / "prep", "--json")
    manifest = json.loads(info.output)
    assert manifest["splits"]["test"] == {"classes": 2, "images": 8, "image_shape": [16, 16, 3]}
    assert manifest["dataset"] == "folder" and manifest["source_format"] == "folder-classes"
    assert "fingerprint" in invoke("data", "info", tmp_path / "prep").output


def test_skip_bad_counts_undecodable_images(tmp_path):
    own_images(tmp_path / "own")
    (tmp_path / "own" / "class_j" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    result = prepare_cli(tmp_path, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped 1 undecodable images" in result.output and "broken.jpg" in result.output
    assert load_manifest(tmp_path / "prep")["skipped"] == 1
    total = sum(len(load_split(tmp_path / "prep", s)) for s in ("train", "val", "test"))
    assert total == 40


def test_a_failed_prepare_leaves_the_previous_dataset(tmp_path):
    own_images(tmp_path / "own")
    assert (
        invoke(
            "data", "prepare", "folder", "--source", tmp_path / "own", "--dest", tmp_path / "prep"
        ).exit_code
        == 0
    )
    before = load_manifest(tmp_path / "prep")
    (tmp_path / "own" / "class_a" / "bad.png").write_bytes(b"garbage")
    result = invoke("data", "prepare", "folder", "--source", tmp_path / "own", "--dest", tmp_path / "prep")
    assert result.exit_code == 2
    assert load_manifest(tmp_path / "prep") == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def _make(tmp_path: Path, case: str) -> tuple[list, str]:
    own = tmp_path / "own"
    if case == "missing source":
        return ["folder", "--source", tmp_path / "nope"], "source not found: "
    own_images(own)
    if case == "undecodable image":
        (own / "class_c" / "x.jpg").write_bytes(b"not a jpeg")
        return ["folder", "--source", own], "class_c/x.jpg: cannot decode image"
    if case == "unknown layout":
        (tmp_path / "flat").mkdir()
        write_image(tmp_path / "flat" / "a.png", pattern_images(1, 8, 0)[0])
        return ["folder", "--source", tmp_path / "flat"], "flat: no class folders with images"
    if case == "too few classes for the split":
        return [
            "folder",
            "--source",
            own,
            "--split",
            "0.9,0.05,0.05",
        ], "leaves 1 of the 10 classes for the val split"
    if case == "bad split syntax":
        return ["folder", "--source", own, "--split", "a,b"], "expected three fractions"
    if case == "split not summing to 1":
        return ["folder", "--source", own, "--split", "0.5,0.2,0.2"], "three fractions summing to 1"
    if case == "unknown dataset":
        return ["imagenet21k", "--source", own], "'imagenet21k' is not one of"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing source",
        "undecodable image",
        "unknown layout",
        "too few classes for the split",
        "bad split syntax",
        "split not summing to 1",
        "unknown dataset",
    ],
)
def test_bad_input_ends_with_one_line_and_exit_2(tmp_path, case):
    args, message = _make(tmp_path, case)
    result = invoke("data", "prepare", *args, "--dest", tmp_path / "prep", "--workers", 1)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "prep").exists()


def test_info_on_a_folder_that_is_not_prepared(tmp_path):
    result = invoke("data", "info", tmp_path)
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == f"error: no prepared dataset at {tmp_path} (manifest.json missing); run `mtl data prepare` first"
    )


@pytest.mark.parametrize("dest", ["a file", "a folder of other files", "the source's parent"])
def test_prepare_never_replaces_what_is_not_a_prepared_dataset(tmp_path, dest):
    own_images(tmp_path / "own")
    if dest == "a file":
        target, message = tmp_path / "notes.txt", "notes.txt is a file, not a dataset folder"
        target.write_text("keep me")
    elif dest == "a folder of other files":
        target, message = tmp_path / "photos", "not a prepared dataset (it holds 'me.jpg')"
        target.mkdir()
        (target / "me.jpg").write_bytes(b"keep me")
    else:
        target, message = tmp_path, f"holds --source {tmp_path / 'own'}, which it reads"
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    result = invoke("data", "prepare", "folder", "--source", tmp_path / "own", "--dest", target)
    assert result.exit_code == 2
    assert message in result.output.strip().splitlines()[-1], result.output
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before


def test_prepare_replaces_an_earlier_prepared_dataset_and_writes_through_a_symlink(tmp_path):
    own_images(tmp_path / "own")
    (tmp_path / "disk").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "disk")
    for _ in range(2):  # the second run replaces the first run's dataset
        assert prepare_cli(tmp_path).exit_code == 0
        link = tmp_path / "link"
        result = invoke("data", "prepare", "folder", "--source", tmp_path / "own", "--dest", link)
        assert result.exit_code == 0, result.output
    assert (tmp_path / "link").is_symlink()
    assert load_manifest(tmp_path / "disk")["fingerprint"] == load_manifest(tmp_path / "prep")["fingerprint"]


def test_a_full_disk_is_reported_before_any_image_is_decoded(tmp_path, monkeypatch):
    own_images(tmp_path / "own")  # 40 images of 84x84x3: 846,720 bytes prepared
    monkeypatch.setattr(
        "mtl.data.prepare.preparation.shutil.disk_usage", lambda path: SimpleNamespace(free=400_000)
    )
    result = prepare_cli(tmp_path)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"error: {tmp_path}: the prepared dataset needs 0.8 MB, only 0.4 MB are free"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own"]


def _damage_manifest(folder: Path, case: str) -> str:
    """Damage the manifest of the prepared dataset in ``folder`` as ``case`` says; the message expected."""
    path = folder / "manifest.json"
    good = json.loads(path.read_text())
    if case == "not JSON":
        path.write_bytes(b"\x00\x01 binary \xff")
        return f"{path} is corrupt: not UTF-8 text"
    if case == "truncated":
        path.write_text(path.read_text()[:40])
        return f"{path} is corrupt: "
    if case == "nested without end":
        path.write_text("[" * 200_000 + "]" * 200_000)
        return f"{path} is corrupt: nested too deeply"
    if case == "huge":
        path.write_text(json.dumps({**good, "pad": "x" * (65 << 20)}))
        return f"{path} is corrupt: over 64 MiB, far more than mtl writes"
    if case == "a folder":
        path.unlink()
        path.mkdir()
        return f"no prepared dataset at {folder} (manifest.json missing)"
    edits = {
        "fingerprint missing": ({"fingerprint": None}, "'fingerprint' is missing or not text"),
        "source_format a number": ({"source_format": 3}, "'source_format' is missing or not text"),
        "split not a mapping": ({"splits": {**good["splits"], "train": [1, 2]}}, "split 'train' needs whole"),
        "images missing": (
            {"splits": {**good["splits"], "val": {"classes": 2, "image_shape": [24, 24, 3]}}},
            "split 'val' needs whole numbers 'classes' and 'images' and an 'image_shape' of three",
        ),
        "classes a string": (
            {"splits": {**good["splits"], "test": {**good["splits"]["test"], "classes": "two"}}},
            "split 'test' needs whole",
        ),
        "odd split name": (
            {"splits": {"\x1b[2J": good["splits"]["train"]}},
            "a split has a name mtl never writes",
        ),
    }
    change, message = edits[case]
    damaged = {k: v for k, v in {**good, **change}.items() if v is not None}  # None: the key is gone
    path.write_text(json.dumps(damaged))
    return f"{path} {message}" if message.startswith("is corrupt") else f"{path} is corrupt: {message}"


@pytest.mark.parametrize(
    "case",
    [
        "not JSON",
        "truncated",
        "nested without end",
        "huge",
        "a folder",
        "fingerprint missing",
        "source_format a number",
        "split not a mapping",
        "images missing",
        "classes a string",
        "odd split name",
    ],
)
def test_info_on_a_damaged_manifest_is_one_line(tmp_path, case):
    own_images(tmp_path / "own")
    assert prepare_cli(tmp_path).exit_code == 0
    message = _damage_manifest(tmp_path / "prep", case)
    for options in ([], ["--json"]):
        result = invoke("data", "info", tmp_path / "prep", *options)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output
        assert "\x1b" not in result.output  # nothing of the file's own text is echoed


def test_info_prints_a_manifest_whose_optional_keys_are_odd(tmp_path):
    own_images(tmp_path / "own")
    assert prepare_cli(tmp_path).exit_code == 0
    path = tmp_path / "prep" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "glyphs": [1], "dataset": {"x": 1}}))
    result = invoke("data", "info", tmp_path / "prep")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{tmp_path / 'prep'}: folder-classes from folder-classes, fingerprint ")
