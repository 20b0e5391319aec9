"""miniImageNet and tieredImageNet readers: every layout in circulation, written tiny but laid out exactly
as the real files are, prepared, and checked image by image; bad input through the CLI."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fakes import assert_prepare_refused, pattern_images, write_image, write_py2_pickle, write_py3_pickle
from PIL import Image

from mtl.cli import main
from mtl.data.prepare.preparation import prepare
from mtl.data.prepared import load_split

# Listed out of sorted order, so a reader that labels by first appearance gets the labels wrong.
WNIDS = {
    "train": ["n03888605", "n01532829", "n13133613", "n02074367", "n04596742"],
    "val": ["n03535780", "n01855672", "n02138441", "n03075370"],
    "test": ["n04522168", "n01930112", "n03146219", "n02099601"],
}
OFFSET = {"train": 0, "val": 64, "test": 80}  # category-split pickles number classes across splits

Classes = dict[str, dict[str, np.ndarray]]  # {split: {wnid: (n, S, S, 3) pixels}}


def make_classes(size: int) -> Classes:
    """3, 4 or 5 images per class (so per-class counts identify classes), in listing order."""
    return {
        split: {w: pattern_images(3 + j % 3, size, seed=int(w[1:])) for j, w in enumerate(wnids)}
        for split, wnids in WNIDS.items()
    }


def interleaved(written: dict[str, np.ndarray]) -> list[tuple[str, int]]:
    """``(wnid, i)`` in file order: classes interleaved, each class's images in order."""
    most = max(len(v) for v in written.values())
    return [(w, i) for i in range(most) for w in written if i < len(written[w])]


def stacked(written: dict[str, np.ndarray]) -> tuple[np.ndarray, list[tuple[str, int]]]:
    order = interleaved(written)
    return np.stack([written[w][i] for w, i in order]), order


def bytes_keys(obj):
    """What Python 2 wrote for ``str`` keys and names."""
    if isinstance(obj, dict):
        return {k.encode(): bytes_keys(v) for k, v in obj.items()}
    if isinstance(obj, list) and obj and all(isinstance(v, str) for v in obj):
        return [v.encode() for v in obj]
    return obj


def write_pickle(path: Path, obj, py2: bool) -> None:
    write_py2_pickle(path, bytes_keys(obj)) if py2 else write_py3_pickle(path, obj)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def check(dest: Path, classes: Classes, order=None, names=None, exact: bool = True) -> None:
    """Every split as written: ``order`` gives the wnids in label order (default sorted), ``names`` the
    class names in label order (default the wnids). ``exact`` for lossless same-size sources; otherwise
    each image's mean colour (RGB) must survive JPEG and resizing to 84."""
    for split, written in classes.items():
        s = load_split(dest, split)
        wnids = order[split] if order else sorted(written)
        assert s.class_names == (names[split] if names else wnids)
        assert s.image_shape == (84, 84, 3)
        assert len(s) == sum(len(v) for v in written.values())
        assert np.bincount(s.labels, minlength=len(wnids)).tolist() == [len(written[w]) for w in wnids]
        for label, wnid in enumerate(wnids):
            got = np.asarray(s.images[s.labels == label])
            if exact:
                np.testing.assert_array_equal(got, written[wnid])
            else:
                assert np.abs(got.mean((1, 2)) - written[wnid].mean((1, 2))).max() < 4


# Writers of each layout.


def write_ravi_csv(root: Path, classes: Classes) -> None:
    for split, written in classes.items():
        rows = ["filename,label"]
        for wnid, i in interleaved(written):
            name = f"{wnid}{i + 1:08d}.jpg"
            write_image(root / "images" / name, written[wnid][i])
            rows.append(f"{name},{wnid}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


def write_class_folders(root: Path, classes: Classes, val: str = "val") -> None:
    for split, written in classes.items():
        for wnid, pixels in written.items():
            for i, img in enumerate(pixels):
                write_image(root / (val if split == "val" else split) / wnid / f"{wnid}_{i:05d}.jpg", img)


def write_pickle_cache(root: Path, classes: Classes, py2: bool, val: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split, written in classes.items():
        images, order = stacked(written)
        class_dict = {w: [r for r, (c, _) in enumerate(order) if c == w] for w in written}
        name = val if split == "val" else split
        write_pickle(
            root / f"mini-imagenet-cache-{name}.pkl", {"image_data": images, "class_dict": class_dict}, py2
        )


def write_category_split(root: Path, classes: Classes, py2: bool, catname2label: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split, written in classes.items():
        images, order = stacked(written)
        label_of = {w: OFFSET[split] + j for j, w in enumerate(sorted(written))}
        obj = {"data": images, "labels": [label_of[w] for w, _ in order]}
        if catname2label:
            obj["catname2label"] = label_of
        name = "train_phase_train" if split == "train" else split
        write_pickle(root / f"miniImageNet_category_split_{name}.pickle", obj, py2)


def tiered_labels(written: dict[str, np.ndarray], order: list[tuple[str, int]]) -> dict:
    """Labels number the classes in listing order, as the real files' ``label_specific_str`` does."""
    wnids = list(written)
    return {
        "label_specific": np.array([wnids.index(w) for w, _ in order]),
        "label_general": np.array([wnids.index(w) % 2 for w, _ in order]),
        "label_specific_str": wnids,
        "label_general_str": ["n00001740", "n00002137"],
    }


def write_tiered_png(root: Path, classes: Classes, py2: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split, written in classes.items():
        order = interleaved(written)
        encoded = [png(written[w][i]) for w, i in order]
        if not py2:  # cv2.imencode returns uint8 arrays, which is what the original files hold
            encoded = [np.frombuffer(e, dtype=np.uint8) for e in encoded]
        write_pickle(root / f"{split}_images_png.pkl", encoded, py2)
        write_pickle(root / f"{split}_labels.pkl", tiered_labels(written, order), py2)


def write_tiered_npz(root: Path, classes: Classes, key: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split, written in classes.items():
        images, order = stacked(written)
        np.savez(root / f"{split}_images.npz", images=images[..., ::-1])  # BGR, as cv2 decoded them
        labels = tiered_labels(written, order)
        obj = labels if key == "label_specific" else {"labels": labels["label_specific"]}
        write_py3_pickle(root / f"{split}_labels.pkl", obj)


# miniImageNet.


def test_mini_ravi_csv_in_a_wrapper_folder(tmp_path):
    classes = make_classes(20)
    write_ravi_csv(tmp_path / "src" / "mini-imagenet", classes)
    report = prepare("miniimagenet", tmp_path / "src", tmp_path / "prep", workers=1)
    assert report.source_format == "ravi-csv"
    check(tmp_path / "prep", classes, exact=False)


def test_mini_class_folders(tmp_path):
    classes = make_classes(20)
    write_class_folders(tmp_path / "src", classes)
    assert prepare("miniimagenet", tmp_path / "src", tmp_path / "prep", workers=1).source_format == (
        "class-folders"
    )
    check(tmp_path / "prep", classes, exact=False)


@pytest.mark.parametrize(("py2", "val"), [(True, "val"), (False, "validation"), (True, "validation")])
def test_mini_pickle_cache(tmp_path, py2, val):
    classes = make_classes(84)
    write_pickle_cache(tmp_path / "src", classes, py2, val)
    report = prepare("miniimagenet", tmp_path / "src", tmp_path / "prep", workers=1)
    assert report.source_format == "pickle-cache"
    check(tmp_path / "prep", classes)


@pytest.mark.parametrize(("py2", "catname2label"), [(True, True), (False, False)])
def test_mini_category_split_pickles(tmp_path, py2, catname2label):
    classes = make_classes(84)
    write_category_split(tmp_path / "src", classes, py2, catname2label)
    source = tmp_path / "src" / "miniImageNet_category_split_val.pickle"  # a file of the layout will do
    report = prepare("miniimagenet", source, tmp_path / "prep", workers=1)
    assert report.source_format == "category-split-pickle"
    # Numbered across splits (val 64.., test 80..); named by wnid only if catname2label says so.
    numbers = {s: [str(OFFSET[s] + j) for j in range(len(w))] for s, w in WNIDS.items()}
    check(tmp_path / "prep", classes, names=None if catname2label else numbers)


# tieredImageNet.


@pytest.mark.parametrize("py2", [True, False])
def test_tiered_png_pickles(tmp_path, py2):
    classes = make_classes(84)
    write_tiered_png(tmp_path / "src", classes, py2)
    report = prepare("tieredimagenet", tmp_path / "src", tmp_path / "prep", workers=1)
    assert report.source_format == "png-pickle"
    check(tmp_path / "prep", classes, order=WNIDS)  # label_specific orders the classes


@pytest.mark.parametrize("key", ["labels", "label_specific"])
def test_tiered_npz_is_stored_as_rgb(tmp_path, key):
    classes = make_classes(84)
    write_tiered_npz(tmp_path / "src", classes, key)
    report = prepare("tieredimagenet", tmp_path / "src", tmp_path / "prep", workers=1)
    assert report.source_format == "npz-bgr"
    numbers = {s: [str(j) for j in range(len(w))] for s, w in WNIDS.items()}
    check(tmp_path / "prep", classes, order=WNIDS, names=numbers if key == "labels" else None)
    for split in WNIDS:
        with np.load(tmp_path / "src" / f"{split}_images.npz") as f:
            bgr = f["images"]
        np.testing.assert_array_equal(load_split(tmp_path / "prep", split).images, bgr[..., ::-1])


def test_tiered_class_folders(tmp_path):
    classes = make_classes(20)
    write_class_folders(tmp_path / "src", classes, val="validation")
    report = prepare("tieredimagenet", tmp_path / "src", tmp_path / "prep", workers=1)
    assert report.source_format == "class-folders"
    check(tmp_path / "prep", classes, exact=False)


# Bad input, through the CLI.


class RunsCode:
    """Unpickling this would run a shell command; the reader must refuse before calling it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def _bad(tmp_path: Path, case: str) -> tuple[str, Path, str]:
    """``(dataset, source, message expected)`` for one kind of bad input."""
    src = tmp_path / "src"
    if case == "unknown layout":
        src.mkdir()
        (src / "README.txt").write_text("not a dataset")
        return "miniimagenet", src, f"{src}: unknown miniImageNet layout"
    if case in ("csv names a missing image", "undecodable image", "images folder missing"):
        write_ravi_csv(src, make_classes(20))
        image = src / "images" / "n0207436700000002.jpg"
        if case == "csv names a missing image":
            image.unlink()
            return "miniimagenet", src, f"{image}: file not found (listed in {src / 'train.csv'}:"
        if case == "undecodable image":
            image.write_bytes(b"\xff\xd8 not a jpeg")
            return "miniimagenet", src, f"{image}: cannot decode image"
        shutil.rmtree(src / "images")
        return "miniimagenet", src, f"{src / 'images'}: folder not found"
    if case == "val pickle missing":
        write_pickle_cache(src, make_classes(84), py2=False, val="val")
        (src / "mini-imagenet-cache-val.pkl").unlink()
        return "miniimagenet", src, f"{src / 'mini-imagenet-cache-val.pkl'} (or "
    if case == "pickle runs code":
        write_pickle_cache(src, make_classes(84), py2=False, val="val")
        write_py3_pickle(src / "mini-imagenet-cache-test.pkl", {"image_data": RunsCode(tmp_path / "ran")})
        return "miniimagenet", src, f"{src / 'mini-imagenet-cache-test.pkl'}: refused to load posix.system"
    if case == "tiered labels missing":
        write_tiered_png(src, make_classes(84), py2=False)
        (src / "val_labels.pkl").unlink()
        return "tieredimagenet", src, f"{src / 'val_labels.pkl'}: file not found"
    if case == "split folder missing":
        write_class_folders(src, make_classes(20))
        shutil.rmtree(src / "test")
        return "tieredimagenet", src, f"{src / 'test'}: no such folder"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "unknown layout",
        "csv names a missing image",
        "images folder missing",
        "undecodable image",
        "val pickle missing",
        "pickle runs code",
        "tiered labels missing",
        "split folder missing",
    ],
)
def test_bad_input_ends_with_one_line_naming_the_file(tmp_path, case):
    assert_prepare_refused(tmp_path, *_bad(tmp_path, case))


def test_skip_bad_skips_and_counts_an_undecodable_image(tmp_path):
    classes = make_classes(20)
    write_ravi_csv(tmp_path / "src", classes)
    bad = tmp_path / "src" / "images" / "n0207436700000002.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    args = ["data", "prepare", "miniimagenet", "--source", tmp_path / "src", "--dest", tmp_path / "prep"]
    result = invoke(*args, "--skip-bad", "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "skipped 1 undecodable images" in result.output and str(bad) in result.output
    train = load_split(tmp_path / "prep", "train")
    assert len(train) == sum(len(v) for v in classes["train"].values()) - 1
    assert (
        np.bincount(train.labels)[train.class_names.index("n02074367")]
        == len(classes["train"]["n02074367"]) - 1
    )
