"""The prepared-dataset folder: round trip, memory mapping, atomic writes and corrupt-file errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mtl.data import prepared
from mtl.data.prepared import Split, dataset_fingerprint, load_manifest, load_split, save_dataset
from mtl.errors import MtlError


def _split(n: int, k: int, shape=(6, 5, 3), seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)
    return Split(images, labels, [f"class-{i}" for i in range(k)])


@pytest.fixture
def splits() -> dict[str, Split]:
    return {"train": _split(24, 4, seed=1), "val": _split(9, 3, seed=2), "test": _split(10, 2, seed=3)}


@pytest.fixture
def saved(tmp_path: Path, splits: dict[str, Split]) -> Path:
    return save_dataset(tmp_path / "ds", splits, source_format="unit", extra={"note": {"a": 1}})


def _reference_fingerprint(splits: dict[str, Split]) -> str:
    """The documented hash, computed in one go instead of in chunks."""
    h = hashlib.sha256()
    for name in sorted(splits):
        s = splits[name]
        h.update(json.dumps([name, list(s.images.shape)]).encode())
        h.update(np.ascontiguousarray(s.images).tobytes())
        h.update(s.labels.astype("<i8").tobytes())
        h.update(json.dumps(s.class_names).encode())
    return h.hexdigest()[:16]


def test_round_trip(saved: Path, splits: dict[str, Split]) -> None:
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        ["manifest.json"] + [f"{s}_{f}" for s in splits for f in ("images.npy", "labels.npy", "classes.json")]
    )
    manifest = load_manifest(saved)
    assert manifest["format_version"] == 1
    assert manifest["source_format"] == "unit"
    assert manifest["image_shape"] == [6, 5, 3]
    assert manifest["splits"]["train"] == {"classes": 4, "images": 24, "image_shape": [6, 5, 3]}
    assert manifest["splits"]["val"] == {"classes": 3, "images": 9, "image_shape": [6, 5, 3]}
    assert manifest["note"] == {"a": 1}
    assert manifest["fingerprint"] == _reference_fingerprint(splits)
    assert len(manifest["fingerprint"]) == 16
    for name, ref in splits.items():
        got = load_split(saved, name)
        np.testing.assert_array_equal(got.images, ref.images)
        np.testing.assert_array_equal(got.labels, ref.labels)
        assert got.labels.dtype == np.int64
        assert got.class_names == ref.class_names
        assert (got.num_classes, got.image_shape, len(got)) == (ref.num_classes, (6, 5, 3), len(ref))


def test_mmap_load_is_read_only_memmap(saved: Path, splits: dict[str, Split]) -> None:
    mapped = load_split(saved, "train")
    assert isinstance(mapped.images, np.memmap)
    assert not mapped.images.flags.writeable
    in_memory = load_split(saved, "train", mmap=False)
    assert not isinstance(in_memory.images, np.memmap)
    np.testing.assert_array_equal(mapped.images, in_memory.images)
    # A memmapped dataset can be saved again and hashes identically.
    again = save_dataset(saved.parent / "copy", {"train": mapped}, source_format="unit")
    assert load_manifest(again)["fingerprint"] == _reference_fingerprint({"train": splits["train"]})


def test_fingerprint_streams_and_tracks_content(monkeypatch, splits: dict[str, Split]) -> None:
    whole = dataset_fingerprint(splits)
    monkeypatch.setattr(prepared, "_HASH_CHUNK", 7)  # forces one image row per chunk
    assert dataset_fingerprint(splits) == whole
    changed = Split(splits["val"].images.copy(), splits["val"].labels, splits["val"].class_names)
    changed.images[3, 2, 1, 0] ^= 1
    assert dataset_fingerprint({**splits, "val": changed}) != whole
    renamed = Split(splits["val"].images, splits["val"].labels, ["x", "y", "z"])
    assert dataset_fingerprint({**splits, "val": renamed}) != whole


def test_grey_and_empty_classes() -> None:
    images = np.zeros((4, 3, 3, 1), np.uint8)
    split = Split(images, np.array([0, 0, 2, 2], dtype=np.int32), ["a", "b", "c"])
    assert split.labels.dtype == np.int64 and split.image_shape == (3, 3, 1)


@pytest.mark.parametrize(
    ("images", "labels", "names", "match"),
    [
        (np.zeros((2, 3, 3, 3), np.float32), [0, 1], ["a", "b"], "uint8"),
        (np.zeros((2, 3, 3), np.uint8), [0, 1], ["a", "b"], "uint8"),
        (np.zeros((2, 3, 3, 2), np.uint8), [0, 1], ["a", "b"], "channels"),
        (np.zeros((2, 3, 3, 3), np.uint8), [0, 1, 1], ["a", "b"], "3 labels for 2 images"),
        (np.zeros((2, 3, 3, 3), np.uint8), [0, 2], ["a", "b"], r"0\.\.1"),
        (np.zeros((2, 3, 3, 3), np.uint8), [0.0, 1.0], ["a", "b"], "integer"),
    ],
)
def test_split_rejects_bad_arrays(images, labels, names, match) -> None:
    with pytest.raises(ValueError, match=match):
        Split(images, np.asarray(labels), names)


def test_missing_folder_and_manifest(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(MtlError, match=f"no prepared dataset at {tmp_path / 'nope'}"):
        load_split(tmp_path / "nope", "train")
    (saved / "manifest.json").unlink()
    with pytest.raises(MtlError) as err:
        load_split(saved, "train")
    assert str(err.value) == (
        f"no prepared dataset at {saved} (manifest.json missing); run `mtl data prepare` first"
    )


def test_interrupted_write_leaves_nothing_loadable(monkeypatch, tmp_path: Path, splits) -> None:
    dest = tmp_path / "ds"
    real = prepared._write_json

    def crash_on_manifest(path: Path, obj) -> None:
        if path.name == "manifest.json":
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(prepared, "_write_json", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        save_dataset(dest, splits, source_format="unit")
    assert list(tmp_path.iterdir()) == []  # neither dest nor the temporary folder
    with pytest.raises(MtlError, match=str(dest)):
        load_split(dest, "train")


def test_leftover_temp_dir_is_rejected(tmp_path: Path, saved: Path) -> None:
    # What a killed writer leaves behind, even one killed after writing its manifest.
    leftover = tmp_path / ".ds2.tmp-12345"
    shutil.copytree(saved, leftover)
    with pytest.raises(MtlError, match=f"{leftover} is an unfinished"):
        load_split(leftover, "train")
    with pytest.raises(MtlError, match=f"no prepared dataset at {tmp_path / 'ds2'}"):
        load_split(tmp_path / "ds2", "train")


def test_replace_keeps_old_dataset_until_new_one_is_in(monkeypatch, saved: Path, splits) -> None:
    new = {"train": _split(8, 2, seed=9)}
    real_replace = os.replace
    calls = []

    def fail_second(src, dst) -> None:
        calls.append(Path(dst).name)
        if len(calls) == 2:  # moving the new folder in
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(prepared.os, "replace", fail_second)
    with pytest.raises(OSError, match="disk full"):
        save_dataset(saved, new, source_format="unit")
    monkeypatch.setattr(prepared.os, "replace", real_replace)
    np.testing.assert_array_equal(load_split(saved, "val").images, splits["val"].images)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ds"]

    save_dataset(saved, new, source_format="unit")
    np.testing.assert_array_equal(load_split(saved, "train").images, new["train"].images)
    assert list(load_manifest(saved)["splits"]) == ["train"]
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ds"]


@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_images_are_corrupt(saved: Path, mmap: bool) -> None:
    path = saved / "train_images.npy"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(MtlError, match=f"^{path} is corrupt: "):
        load_split(saved, "train", mmap=mmap)


def test_garbage_npy_is_corrupt(saved: Path) -> None:
    path = saved / "val_labels.npy"
    path.write_bytes(b"not a numpy file at all")
    with pytest.raises(MtlError, match=f"^{path} is corrupt: "):
        load_split(saved, "val")


def test_inconsistent_files_are_rejected(saved: Path) -> None:
    np.save(saved / "train_images.npy", np.zeros((5, 6, 5, 3), np.uint8))
    with pytest.raises(MtlError, match="train_images.npy is corrupt: .*manifest says uint8 of shape"):
        load_split(saved, "train")
    np.save(saved / "val_labels.npy", np.array([0, 1, 2, 3, 0, 1, 2, 0, 1]))
    with pytest.raises(MtlError, match=r"val_labels.npy is corrupt: labels outside 0\.\.2"):
        load_split(saved, "val")
    (saved / "test_classes.json").write_text('["only-one"]')
    with pytest.raises(MtlError, match="test_classes.json is corrupt: 1 class names, manifest says 2"):
        load_split(saved, "test")
    (saved / "test_labels.npy").unlink()
    with pytest.raises(MtlError, match="test_labels.npy is missing"):
        load_split(saved, "test")


def test_bad_manifest_and_unknown_split(saved: Path) -> None:
    with pytest.raises(MtlError, match=r"has no split 'valid' \(it has: train, val, test\)"):
        load_split(saved, "valid")
    (saved / "manifest.json").write_text("{ truncated")
    with pytest.raises(MtlError, match=f"^{saved / 'manifest.json'} is corrupt"):
        load_split(saved, "train")
    (saved / "manifest.json").write_text(json.dumps({"format_version": 7, "splits": {}}))
    with pytest.raises(MtlError, match="format_version 7"):
        load_manifest(saved)


def test_save_rejects_bad_input(tmp_path: Path, splits) -> None:
    with pytest.raises(ValueError, match="image shape"):
        save_dataset(
            tmp_path / "x", {"a": _split(4, 2), "b": _split(4, 2, shape=(5, 5, 3))}, source_format="u"
        )
    with pytest.raises(ValueError, match="reserved"):
        save_dataset(tmp_path / "x", splits, source_format="u", extra={"splits": 1})
    with pytest.raises(ValueError, match="split name"):
        save_dataset(tmp_path / "x", {"../up": _split(4, 2)}, source_format="u")
    assert list(tmp_path.iterdir()) == []


def test_home_relative_paths(monkeypatch, tmp_path: Path, splits) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    out = save_dataset(Path("~/data/ds"), splits, source_format="unit")
    assert out == tmp_path / "data" / "ds"
    assert load_split(Path("~/data/ds"), "test").class_names == ["class-0", "class-1"]
