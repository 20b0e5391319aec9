"""The procedural glyphs dataset: splits, determinism, class identity, caching and parameter errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mtl.data.glyphs.dataset import PRESETS, ensure_glyphs, generate, render_class, split_class_ids
from mtl.data.glyphs.families import (
    family_ids,
    family_of_name,
    family_split_ids,
    family_template,
    glyph_families,
)
from mtl.data.prepared import load_manifest, load_split
from mtl.errors import MtlError

TINY = dict(classes=10, images_per_class=3, image_size=16, channels=3, seed=0)


def test_splits_follow_miniimagenet_proportions():
    ids = split_class_ids(100)
    assert [len(ids[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert np.array_equal(np.concatenate([ids["train"], ids["val"], ids["test"]]), np.arange(100))
    for n, expected in [(3, [1, 1, 1]), (4, [2, 1, 1]), (5, [3, 1, 1]), (10, [6, 2, 2]), (20, [13, 3, 4])]:
        ids = split_class_ids(n)
        assert [len(ids[s]) for s in ("train", "val", "test")] == expected
        assert np.array_equal(np.concatenate(list(ids.values())), np.arange(n))
    with pytest.raises(MtlError, match="glyphs classes must be an integer >= 3, got 2"):
        split_class_ids(2)


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


def _nearest_centroid_accuracy(preset: str, classes: int = 6, per: int = 8, shot: int = 3) -> float:
    """Raw-pixel nearest-centroid accuracy: ``shot`` support images per class, the rest are queries."""
    x = np.stack(
        [render_class(c, per, image_size=24, channels=1, preset=preset, seed=3) for c in range(classes)]
    ).reshape(classes, per, -1)
    x = x.astype(np.float64) / 255
    x -= x.mean(-1, keepdims=True)
    centroids = x[:, :shot].mean(1)  # (classes, D)
    queries = x[:, shot:].reshape(-1, x.shape[-1])
    dist = ((queries[:, None] - centroids[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == np.repeat(np.arange(classes), per - shot)).mean())


def test_class_identity_is_visible_and_hard_is_harder():
    easy, hard = _nearest_centroid_accuracy("easy"), _nearest_centroid_accuracy("hard")
    assert easy >= 0.8  # same-class images look alike even in raw pixels
    assert hard <= easy - 0.15  # distractors and stronger nuisances defeat raw pixels
    assert hard > 1 / 6 + 0.1  # ... but the class is still there


def test_images_are_anti_aliased_and_colour_varies():
    grey = render_class(0, 6, image_size=32, channels=1, preset="easy", seed=0)
    # Stroke edges give intermediate grey levels, not just ink and paper.
    assert ((grey > 80) & (grey < 170)).mean() > 0.01
    rgb = render_class(0, 6, image_size=32, channels=3, preset="easy", seed=0).astype(float)
    paper = np.median(rgb.reshape(6, -1, 3), axis=1)  # (6, 3) background colour of each image
    assert np.ptp(paper, axis=0).max() > 40


def test_hard_draws_distractors(monkeypatch):
    # The same images without their 1-2 short distractor strokes have less ink (same seeds, so the
    # class strokes, pose and pen are identical).
    kwargs = dict(image_size=24, channels=1, preset="hard", seed=0)
    with_extra = render_class(4, 16, **kwargs)
    monkeypatch.setitem(PRESETS, "hard", replace(PRESETS["hard"], distractors=(0, 0)))
    without = render_class(4, 16, **kwargs)
    assert (with_extra < 128).mean() > (without < 128).mean() * 1.05


def test_ensure_glyphs_regenerates_invalid_or_different_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    root = ensure_glyphs(Path("~/cache"), preset="hard", **TINY)
    assert root == tmp_path / "cache" / "glyphs-hard-c10-n3-s16-ch3-seed0"
    recorded = load_manifest(root)["glyphs"]
    assert recorded["preset"] == "hard" and recorded["style"]["distractors"] == [1, 2]
    assert load_manifest(root)["source_format"] == "glyphs"
    expected = load_split(root, "val", mmap=False).images

    (root / "val_images.npy").write_bytes(b"garbage")  # a damaged cache is rebuilt
    assert ensure_glyphs(tmp_path / "cache", preset="hard", **TINY) == root
    assert np.array_equal(load_split(root, "val").images, expected)

    other = ensure_glyphs(tmp_path / "cache", preset="hard", **{**TINY, "seed": 1})
    assert other.name.endswith("seed1") and other != root
    assert not np.array_equal(load_split(other, "val").images, expected)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"channels": 2}, "glyphs channels must be 1 \\(grey\\) or 3 \\(RGB\\), got 2"),
        ({"image_size": 4}, "glyphs image_size must be an integer in 8..1024, got 4"),
        ({"images_per_class": 0}, "glyphs images_per_class must be a positive integer, got 0"),
        ({"classes": 1}, "glyphs classes must be an integer >= 3, got 1"),
        ({"seed": -1}, "glyphs seed must be a non-negative integer, got -1"),
        ({"preset": "medium"}, "unknown glyphs preset 'medium'; choose one of: easy, hard"),
    ],
)
def test_ensure_glyphs_rejects_bad_parameters(tmp_path, change, message):
    with pytest.raises(MtlError, match=message):
        ensure_glyphs(tmp_path, **{"preset": "easy", **TINY, **change})
    assert list(tmp_path.iterdir()) == []


# --- preset "families": classes in families of look-alikes ---------------------------------------------

FAMILY_TINY = dict(classes=24, images_per_class=2, image_size=16, channels=1, preset="families", seed=0)


def test_families_are_deterministic_runs_of_ids():
    families = glyph_families(100, 0)
    assert all(np.array_equal(a, b) for a, b in zip(families, glyph_families(100, 0), strict=True))
    assert np.array_equal(np.concatenate(families), np.arange(100))
    assert np.array_equal(family_ids(100, 0), np.repeat(np.arange(len(families)), [len(f) for f in families]))
    # Fewer classes only cut the last family short: class c's family never depends on the class count.
    assert np.array_equal(family_ids(37, 0), family_ids(100, 0)[:37])
    assert [len(f) for f in glyph_families(100, 1)] != [len(f) for f in families]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_family_sizes_vary_from_singletons_to_six(seed):
    sizes = np.array([len(f) for f in glyph_families(100, seed)[:-1]])  # the last one may be cut
    assert sizes.min() == 1 and sizes.max() == 6
    assert (np.bincount(sizes, minlength=7)[1:] >= 4).all()  # singletons (easy) to families of six (hard)


def test_family_splits_hold_whole_families():
    ids = family_split_ids(100, 0)
    assert [len(ids[s]) for s in ("train", "val", "test")] == [63, 16, 21]
    assert np.array_equal(np.concatenate([ids["train"], ids["val"], ids["test"]]), np.arange(100))
    for seed in range(5):
        ids, fam = family_split_ids(100, seed), family_ids(100, seed)
        owners = {}
        for split, members in ids.items():
            for f in np.unique(fam[members]):
                assert owners.setdefault(int(f), split) == split  # a family lies in one split only
        counts = [len(ids[s]) for s in ("train", "val", "test")]
        assert abs(counts[0] - 64) <= 3 and abs(counts[1] - 16) <= 3 and counts[1] >= 5 and counts[2] >= 5
    with pytest.raises(MtlError, match="only 2 families with seed 0; use more classes"):
        family_split_ids(5, 0)


def test_family_members_share_their_base_strokes(monkeypatch):
    families = glyph_families(60, 0)

    def shared(a: int, b: int) -> float:
        """Fraction of class a's control points that class b has too."""
        pa, pb = family_template(0, a)[0], family_template(0, b)[0]
        return float((np.abs(pa[:, None] - pb[None]).max(-1) == 0).any(1).mean())

    big = [f for f in families if len(f) >= 3]
    for f in big:
        for a, b in [(f[0], f[1]), (f[1], f[-1])]:
            assert 0.5 <= shared(a, b) < 1  # most strokes in common, but not all
    assert shared(big[0][0], big[1][0]) == 0 and shared(big[1][1], big[2][2]) == 0
    # Rendered without nuisances, members of a family overlap far more than classes of two families.
    clean = dict(jitter=0.0, stroke_shift=0.0, rotation=0.0, scale=(1.0, 1.0), shear=0.0, shift=0.0)
    clean |= dict(width=(0.05, 0.05), noise=0.0, distractors=(0, 0))
    monkeypatch.setitem(PRESETS, "families", replace(PRESETS["families"], **clean))

    def ink(c: int) -> np.ndarray:
        image = render_class(int(c), 1, image_size=32, channels=1, preset="families", seed=0)
        return image[0, ..., 0] < 128

    def iou(a: int, b: int) -> float:
        x, y = ink(a), ink(b)
        return (x & y).sum() / (x | y).sum()

    same = [iou(f[0], f[1]) for f in big[:6]]
    other = [iou(big[i][0], big[i + 1][0]) for i in range(6)]
    assert min(same) > max(other) and np.mean(same) > 2 * np.mean(other)
    assert max(same) < 0.95  # alike, yet not the same


def test_family_names_and_rendering():
    splits = generate(**FAMILY_TINY)
    fam = family_ids(24, 0)
    names = [n for s in splits.values() for n in s.class_names]
    assert names == [f"glyph-{c:04d}-f{fam[c]:02d}" for c in range(24)]
    assert [family_of_name(n) for n in names] == list(fam)
    assert family_of_name("glyph-0042") is None and family_of_name("glyph-0042-f07") == 7
    # Image j of class c depends on (seed, preset, c, j, ...) only, as for the other presets.
    test = splits["test"]
    alone = render_class(23, 2, **{k: FAMILY_TINY[k] for k in ("image_size", "channels", "preset", "seed")})
    assert np.array_equal(alone, test.images[-2:])
    other = render_class(23, 2, image_size=16, channels=1, preset="hard", seed=0)
    assert not np.array_equal(alone, other)


def test_ensure_glyphs_records_the_families_version(tmp_path):
    root = ensure_glyphs(tmp_path, **FAMILY_TINY)
    assert root.name == "glyphs-families-c24-n2-s16-ch1-seed0"
    assert load_manifest(root)["glyphs"]["families_version"] >= 1
    easy = ensure_glyphs(tmp_path, preset="easy", **TINY)
    assert "families_version" not in load_manifest(easy)["glyphs"]


def test_processes_that_reach_a_missing_cache_at_once_draw_it_once(tmp_path, monkeypatch):
    """The ranks of a run (on every node, with the cache on a shared disk) all ask for the dataset at
    start-up: one draws it while the others wait for it, and nothing of the wait is left behind."""
    import threading
    import time

    from mtl.data.glyphs import dataset

    drawn, real = [], dataset.generate

    def slow_generate(**params):
        drawn.append(threading.get_ident())
        time.sleep(0.5)  # the others arrive while it draws
        return real(**params)

    monkeypatch.setattr(dataset, "generate", slow_generate)
    found: list[Path] = []
    workers = [
        threading.Thread(target=lambda: found.append(ensure_glyphs(tmp_path, preset="easy", **TINY)))
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert len(drawn) == 1 and len(found) == 3 and len(set(found)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [found[0].name]  # no lock or temporary folder left
    assert load_split(found[0], "test") is not None
