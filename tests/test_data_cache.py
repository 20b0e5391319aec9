import json

import numpy as np
import pytest

from mtl.data.cache import Split, load_manifest, load_split, save_dataset
from mtl.errors import MtlError


def split(n_classes=3, per_class=4, size=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_classes * per_class, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(n_classes), per_class).astype(np.int64)
    return Split(images, labels, [f"c{i}" for i in range(n_classes)])


def test_round_trip_with_manifest(tmp_path):
    splits = {"train": split(), "val": split(2, seed=1)}
    root = save_dataset(tmp_path / "ds", splits, source_format="test", extra={"note": "x"})
    manifest = load_manifest(root)
    assert manifest["format_version"] == 1 and manifest["source_format"] == "test" and manifest["note"] == "x"
    assert manifest["splits"]["train"] == {"classes": 3, "images": 12, "image_shape": [5, 5, 3]}
    assert len(manifest["fingerprint"]) == 16
    loaded = load_split(root, "train")
    assert isinstance(loaded.images, np.memmap)
    assert np.array_equal(loaded.images, splits["train"].images)
    assert np.array_equal(loaded.labels, splits["train"].labels) and loaded.class_names == ["c0", "c1", "c2"]
    assert [list(ix) for ix in loaded.indices_by_class()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    # Same content, same fingerprint; other content, another one.
    again = save_dataset(tmp_path / "ds2", splits, source_format="test")
    assert load_manifest(again)["fingerprint"] == manifest["fingerprint"]
    other = save_dataset(tmp_path / "ds3", {"train": split(seed=5), "val": splits["val"]}, source_format="t")
    assert load_manifest(other)["fingerprint"] != manifest["fingerprint"]


def test_split_validates_its_arrays():
    with pytest.raises(ValueError, match="uint8"):
        Split(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int64), ["a"])
    with pytest.raises(ValueError, match="labels"):
        Split(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, np.int64), ["a"])


def test_missing_unfinished_and_corrupt_datasets_are_refused(tmp_path):
    with pytest.raises(MtlError, match=r"no prepared dataset at .*nope \(folder missing\)"):
        load_split(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtlError, match=r"manifest.json missing"):
        load_split(tmp_path / "empty", "train")
    (tmp_path / ".ds.tmp-123").mkdir()
    with pytest.raises(MtlError, match="unfinished"):
        load_split(tmp_path / ".ds.tmp-123", "train")

    root = save_dataset(tmp_path / "ds", {"train": split()}, source_format="test")
    with pytest.raises(MtlError, match=r"has no split 'val' \(it has: train\)"):
        load_split(root, "val")
    images = root / "train_images.npy"
    images.write_bytes(images.read_bytes()[:200])
    with pytest.raises(MtlError, match=r"train_images.npy is corrupt"):
        load_split(root, "train")
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(MtlError, match=r"manifest.json is corrupt"):
        load_manifest(root)


def test_replacing_a_dataset_is_atomic(tmp_path):
    root = save_dataset(tmp_path / "ds", {"train": split()}, source_format="test")
    save_dataset(root, {"train": split(4)}, source_format="test")
    assert load_split(root, "train").num_classes == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp or old folders left
    assert json.loads((root / "manifest.json").read_text())["splits"]["train"]["classes"] == 4
