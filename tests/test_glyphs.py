import numpy as np
import pytest

from mtl.data.cache import load_split
from mtl.data.glyphs import ensure_glyphs, generate, render_class, split_class_ids
from mtl.errors import MtlError

TINY = dict(classes=10, images_per_class=3, image_size=16, channels=3, seed=0)


def test_splits_follow_miniimagenet_proportions():
    ids = split_class_ids(100)
    assert [len(ids[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert np.array_equal(np.concatenate([ids["train"], ids["val"], ids["test"]]), np.arange(100))
    assert all(len(v) >= 1 for v in split_class_ids(3).values())


def test_generate_shapes_labels_and_names():
    splits = generate(preset="easy", **TINY)
    sizes = {name: s.num_classes for name, s in splits.items()}
    assert sum(sizes.values()) == 10 and set(sizes) == {"train", "val", "test"}
    train = splits["train"]
    assert train.images.shape == (sizes["train"] * 3, 16, 16, 3) and train.images.dtype == np.uint8
    assert np.array_equal(train.labels, np.repeat(np.arange(sizes["train"]), 3))
    assert train.class_names[0] == "glyph-0000"
    assert splits["test"].class_names[-1] == "glyph-0009"
    grey = generate(preset="hard", **{**TINY, "channels": 1})["val"]
    assert grey.images.shape[1:] == (16, 16, 1)


def test_rendering_is_deterministic_and_independent_of_the_rest():
    a = generate(preset="hard", **TINY)
    b = generate(preset="hard", **TINY)
    for name in a:
        assert np.array_equal(a[name].images, b[name].images)
    # Class 9 rendered on its own equals class 9 inside the full dataset (last class of the test split).
    alone = render_class(9, 3, image_size=16, channels=3, preset="hard", seed=0)
    assert np.array_equal(alone, a["test"].images[-3:])
    # The first images of a class do not depend on how many are drawn.
    assert np.array_equal(render_class(9, 2, image_size=16, channels=3, preset="hard", seed=0), alone[:2])


def test_classes_presets_and_seeds_differ():
    def img(c=1, preset="easy", seed=0):
        return render_class(c, 4, image_size=24, channels=1, preset=preset, seed=seed).astype(float)

    assert np.abs(img(1) - img(2)).mean() > 1
    assert np.abs(img(preset="easy") - img(preset="hard")).mean() > 1
    assert np.abs(img(seed=0) - img(seed=1)).mean() > 1
    # Images show ink: dark strokes on light paper for grey images.
    x = img()
    assert (x < 100).mean() > 0.02 and (x > 150).mean() > 0.5


def test_ensure_glyphs_generates_once(tmp_path):
    root = ensure_glyphs(tmp_path, preset="easy", **TINY)
    assert root.parent == tmp_path and root.name == "glyphs-easy-c10-n3-s16-ch3-seed0"
    stamp = (root / "train_images.npy").stat().st_mtime_ns
    assert ensure_glyphs(tmp_path, preset="easy", **TINY) == root
    assert (root / "train_images.npy").stat().st_mtime_ns == stamp
    split = load_split(root, "test")
    assert np.array_equal(split.images, generate(preset="easy", **TINY)["test"].images)


def test_bad_parameters_are_user_errors():
    with pytest.raises(MtlError, match="unknown glyphs preset 'medium'; choose one of: easy, hard"):
        generate(preset="medium", **TINY)
    with pytest.raises(MtlError, match="image_size"):
        generate(preset="easy", **{**TINY, "image_size": 2})
