"""FC100 and Omniglot readers: every layout, written tiny but laid out as the real files are, prepared
and checked image by image against CIFAR-100's real superclass table; bad input through the CLI."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fakes import assert_prepare_refused, write_py2_pickle, write_py3_pickle
from PIL import Image

from mtl.data.prepare.preparation import prepare
from mtl.data.prepared import load_split
from mtl.errors import MtlError

# CIFAR-100's superclass table. Coarse ids are the superclasses in alphabetical order and fine ids the
# fine classes in alphabetical order, as in the real meta file.
SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
# The real meta file's fine_label_names (a list literal would take 100 lines).
FINE_LABEL_NAMES = (  # noqa: SIM905
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm"
).split()
COARSE_LABEL_NAMES = sorted(SUPERCLASSES)
COARSE_OF = {f: COARSE_LABEL_NAMES.index(sup) for sup, fines in SUPERCLASSES.items() for f in fines}
# TADAM's split, by name, so the reader's coarse ids are checked against it rather than against themselves.
FC100 = {
    "train": [
        "fish",
        "flowers",
        "food_containers",
        "fruit_and_vegetables",
        "household_electrical_devices",
        "household_furniture",
        "large_man-made_outdoor_things",
        "large_natural_outdoor_scenes",
        "reptiles",
        "trees",
        "vehicles_1",
        "vehicles_2",
    ],
    "val": [
        "large_carnivores",
        "large_omnivores_and_herbivores",
        "non-insect_invertebrates",
        "small_mammals",
    ],
    "test": ["aquatic_mammals", "insects", "medium_mammals", "people"],
}
PER_CLASS = {"train": 2, "test": 1}  # the real files hold 500 and 100

Cifar = dict[str, dict]  # {"train"|"test": the pickled dict, "meta": the meta dict}


def make_cifar(seed: int = 0) -> Cifar:
    """All 100 fine classes, shuffled, with random pixels (so the R, G and B planes all differ)."""
    rng = np.random.default_rng(seed)
    out: Cifar = {}
    for part, n in PER_CLASS.items():
        fine = rng.permutation(np.repeat(np.arange(100), n))
        out[part] = {
            "batch_label": f"{part}ing batch 1 of 1",
            "filenames": [f"{FINE_LABEL_NAMES[f]}_s_{i:06d}.png" for i, f in enumerate(fine)],
            "fine_labels": fine.tolist(),
            "coarse_labels": [COARSE_OF[FINE_LABEL_NAMES[f]] for f in fine],
            "data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
        }
    out["meta"] = {"fine_label_names": FINE_LABEL_NAMES, "coarse_label_names": COARSE_LABEL_NAMES}
    return out


def as_py2(obj):
    """What Python 2's cPickle wrote: ``str`` keys, names and strings as byte strings."""
    if isinstance(obj, dict):
        return {k.encode(): as_py2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_py2(v) for v in obj]
    return obj.encode() if isinstance(obj, str) else obj


def write_cifar(folder: Path, cifar: Cifar, py2: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "file.txt~").write_text("")  # the real archive holds this stray file too
    for name, obj in cifar.items():
        write_py2_pickle(folder / name, as_py2(obj)) if py2 else write_py3_pickle(folder / name, obj)
    return folder


def write_archive(path: Path, folder: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    return path


def pixels(cifar: Cifar, part: str) -> np.ndarray:
    """The ``(N, 32, 32, 3)`` images of ``part``."""
    return cifar[part]["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def check_fc100(dest: Path, cifar: Cifar) -> None:
    for split, superclasses in FC100.items():
        s = load_split(dest, split)
        wanted = sorted(f for sup in superclasses for f in SUPERCLASSES[sup])  # alphabetical = fine id order
        assert s.class_names == wanted
        assert s.image_shape == (32, 32, 3)
        assert s.labels.min() == 0 and s.labels.max() == len(wanted) - 1
        assert np.bincount(s.labels).tolist() == [sum(PER_CLASS.values())] * len(wanted)
        for label, name in enumerate(s.class_names):
            fid = FINE_LABEL_NAMES.index(name)
            train, test = (np.asarray(cifar[p]["fine_labels"]) == fid for p in PER_CLASS)
            want = np.concatenate([pixels(cifar, "train")[train], pixels(cifar, "test")[test]])
            np.testing.assert_array_equal(s.images[s.labels == label], want)
    # Straight from the planar layout: pixel (0, 0) is the first value of each 1024-value plane.
    test = load_split(dest, "test")
    row = cifar["train"]["data"][cifar["train"]["fine_labels"].index(FINE_LABEL_NAMES.index("baby"))]
    first_baby = test.images[test.labels == test.class_names.index("baby")][0]
    assert first_baby[0, 0].tolist() == [row[0], row[1024], row[2048]]
    assert first_baby[0, 1].tolist() == [row[1], row[1025], row[2049]]
    assert first_baby[1, 0].tolist() == [row[32], row[1056], row[2080]]


def test_the_superclass_table_is_cifar100s():
    assert sorted(COARSE_OF) == FINE_LABEL_NAMES and len(FINE_LABEL_NAMES) == 100
    assert sorted(sup for supers in FC100.values() for sup in supers) == COARSE_LABEL_NAMES
    assert [len(v) * 5 for v in FC100.values()] == [60, 20, 20]


# FC100.


@pytest.mark.parametrize(("py2", "where"), [(True, "parent"), (False, "folder"), (True, "file")])
def test_fc100_from_cifar_python(tmp_path, py2, where):
    cifar = make_cifar()
    folder = write_cifar(tmp_path / "src" / "cifar-100-python", cifar, py2)
    (tmp_path / "src" / "other").mkdir()  # the parent need not hold nothing else
    source = {"parent": tmp_path / "src", "folder": folder, "file": folder / "meta"}[where]
    report = prepare("fc100", source, tmp_path / "prep", workers=1)
    assert report.source_format == "cifar100-python"
    assert [report.splits[s]["classes"] for s in ("train", "val", "test")] == [60, 20, 20]
    check_fc100(tmp_path / "prep", cifar)
    test = load_split(tmp_path / "prep", "test").class_names
    assert {"baby", "dolphin", "bee", "fox"} <= set(test) and not {"bear", "apple"} & set(test)
    assert {"bear", "crab", "camel", "mouse"} <= set(load_split(tmp_path / "prep", "val").class_names)


@pytest.mark.parametrize("where", ["archive", "folder"])
def test_fc100_from_the_archive(tmp_path, where):
    cifar = make_cifar(seed=1)
    archive = write_archive(tmp_path / "src" / "cifar-100-python.tar.gz", write_cifar(tmp_path / "x", cifar))
    report = prepare("fc100", archive if where == "archive" else archive.parent, tmp_path / "prep", workers=1)
    assert report.source_format == "cifar100-tar"
    check_fc100(tmp_path / "prep", cifar)


def test_fc100_pickles(tmp_path):
    cifar = make_cifar(seed=2)
    pooled = np.concatenate([pixels(cifar, p) for p in PER_CLASS])
    fine = np.concatenate([cifar[p]["fine_labels"] for p in PER_CLASS])
    ids = {
        s: sorted(FINE_LABEL_NAMES.index(f) for sup in sups for f in SUPERCLASSES[sup])
        for s, sups in FC100.items()
    }
    (tmp_path / "src").mkdir()
    for split, wanted in ids.items():
        keep = np.isin(fine, wanted)
        obj = {"data": pooled[keep], "labels": fine[keep].tolist()}  # global fine-label ids
        write_py3_pickle(tmp_path / "src" / f"FC100_{split}.pickle", obj)
    assert prepare("fc100", tmp_path / "src", tmp_path / "prep", workers=1).source_format == "fc100-pickle"
    for split, wanted in ids.items():
        s = load_split(tmp_path / "prep", split)
        assert s.class_names == [str(i) for i in wanted]  # renumbered 0..K-1 in numeric order
        assert s.labels.max() == len(wanted) - 1
        for label, fid in enumerate(wanted):
            np.testing.assert_array_equal(s.images[s.labels == label], pooled[fine == fid])


# Omniglot.


def glyph() -> Image.Image:
    """A 105×105 1-bit drawing as in the real files: a black horizontal stroke on white."""
    white = np.ones((105, 105), dtype=bool)
    white[45:60, 10:95] = False
    return Image.fromarray(white)


def write_omniglot(root: Path, background: list[str], evaluation: list[str], chars: int = 2) -> None:
    for folder, alphabets in (("images_background", background), ("images_evaluation", evaluation)):
        for a, alphabet in enumerate(alphabets):
            for c in range(1, chars + 1):
                char = root / folder / alphabet / f"character{c:02d}"
                char.mkdir(parents=True)
                for i in range(1, 4):
                    glyph().save(char / f"{a + 1:02d}{c:02d}_{i:02d}.png")


def names(alphabets: list[str], chars: range) -> list[str]:
    return [f"{a}/character{c:02d}" for a in alphabets for c in chars]


def test_omniglot_splits_by_alphabet(tmp_path):
    # Listed unsorted: the split must follow sorted names, not directory order.
    write_omniglot(tmp_path / "src", ["Latin", "Greek", "Bengali"], ["Tibetan", "Angelic", "ULOG", "Keble"])
    report = prepare("omniglot", tmp_path / "src" / "images_background", tmp_path / "prep", workers=1)
    assert report.source_format == "omniglot"
    wanted = {
        "train": names(["Bengali", "Greek", "Latin"], range(1, 3)),
        "val": names(["Angelic", "Keble"], range(1, 3)),
        "test": names(["Tibetan", "ULOG"], range(1, 3)),
    }
    for split, classes in wanted.items():
        s = load_split(tmp_path / "prep", split)
        assert s.class_names == classes
        assert np.bincount(s.labels).tolist() == [3] * len(classes)
        assert s.image_shape == (28, 28, 1)
        # The stroke (rows 45..59 of 105 -> about 12..16 of 28) stays dark on a light background.
        assert (s.images[:, 14, 14, 0] < 60).all() and (s.images[:, 2, 2, 0] > 200).all()
        assert (s.images[:, 25, 14, 0] > 200).all()


def test_omniglot_with_one_evaluation_alphabet_halves_its_characters(tmp_path):
    write_omniglot(tmp_path / "src" / "omniglot", ["Latin"], ["Angelic"], chars=4)  # in a wrapper folder
    prepare("omniglot", tmp_path / "src", tmp_path / "prep", workers=1)
    assert load_split(tmp_path / "prep", "train").class_names == names(["Latin"], range(1, 5))
    assert load_split(tmp_path / "prep", "val").class_names == names(["Angelic"], range(1, 3))
    assert load_split(tmp_path / "prep", "test").class_names == names(["Angelic"], range(3, 5))


# Bad input, through the CLI.


class RunsCode:
    """Unpickling this would run a shell command; the reader must refuse before calling it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _bad(tmp_path: Path, case: str) -> tuple[str, Path, str]:
    """``(dataset, source, message expected)`` for one kind of bad input."""
    src = tmp_path / "src"
    cifar_folder = src / "cifar-100-python"
    if case in ("unknown layout", "omniglot unknown layout"):
        src.mkdir()
        (src / "README.txt").write_text("not a dataset")
        if case == "unknown layout":
            return "fc100", src, f"{src}: unknown FC100 layout"
        return "omniglot", src, f"{src}: unknown Omniglot layout"
    if case == "truncated pickle":
        write_cifar(cifar_folder, make_cifar())
        train = cifar_folder / "train"
        train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
        return "fc100", src, f"{train} is not a readable pickle"
    if case == "meta missing":
        write_cifar(cifar_folder, make_cifar())
        (cifar_folder / "meta").unlink()
        return "fc100", cifar_folder, f"{cifar_folder / 'meta'}: file not found"
    if case == "superclasses renumbered":
        cifar = make_cifar()
        cifar["meta"]["coarse_label_names"] = COARSE_LABEL_NAMES[::-1]
        write_cifar(cifar_folder, cifar)
        return "fc100", src, f"{cifar_folder / 'meta'}: coarse label 0 is 'vehicles_2', not 'aquatic_mammals'"
    if case in ("truncated archive", "archive pickle runs code"):
        folder = write_cifar(tmp_path / "x", make_cifar())
        archive = src / "cifar-100-python.tar.gz"
        if case == "archive pickle runs code":
            write_py3_pickle(folder / "meta", {"fine_label_names": RunsCode(tmp_path / "ran")})
            write_archive(archive, folder)
            return "fc100", archive, f"{archive}[cifar-100-python/meta]: refused to load posix.system"
        write_archive(archive, folder)
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
        return "fc100", archive, f"{archive}"
    if case == "evaluation folder missing":
        write_omniglot(src, ["Latin", "Greek"], ["Angelic", "Keble"])
        shutil.rmtree(src / "images_evaluation")
        return "omniglot", src, f"{src / 'images_evaluation'}: folder or .zip not found"
    if case == "omniglot zip without images":
        src.mkdir()
        for name in ("images_background.zip", "images_evaluation.zip"):
            (src / name).write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
        return "omniglot", src, f"{src / 'images_background.zip'}: no <Alphabet>/characterNN/*.png entries"
    if case == "omniglot corrupt zip":
        src.mkdir()
        for name in ("images_background.zip", "images_evaluation.zip"):
            (src / name).write_bytes(b"not a zip at all")
        return "omniglot", src, f"{src / 'images_background.zip'}: not a readable zip"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "unknown layout",
        "truncated pickle",
        "meta missing",
        "superclasses renumbered",
        "truncated archive",
        "archive pickle runs code",
        "omniglot unknown layout",
        "evaluation folder missing",
        "omniglot zip without images",
        "omniglot corrupt zip",
    ],
)
def test_bad_input_ends_with_one_line_naming_the_file(tmp_path, case):
    assert_prepare_refused(tmp_path, *_bad(tmp_path, case))


def _zip_halves(src: Path) -> None:
    """Replace the two unpacked halves by the zips they are downloaded as (a top folder, then
    ``<Alphabet>/characterNN/<id>_<nn>.png`` entries)."""
    import zipfile

    for half in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(src / f"{half}.zip", "w") as z:
            z.writestr(f"{half}/", "")
            for f in sorted((src / half).rglob("*.png")):
                z.write(f, f.relative_to(src).as_posix())
        shutil.rmtree(src / half)


def test_omniglot_zips_read_as_downloaded_give_the_unpacked_result(tmp_path):
    write_omniglot(tmp_path / "a", ["Latin", "Greek"], ["Tibetan", "Angelic"])
    write_omniglot(tmp_path / "b", ["Latin", "Greek"], ["Tibetan", "Angelic"])
    _zip_halves(tmp_path / "b")
    prepare("omniglot", tmp_path / "a", tmp_path / "from-folders", workers=1)
    report = prepare("omniglot", tmp_path / "b", tmp_path / "from-zips", workers=1)
    assert report.source_format == "omniglot"
    for split in ("train", "val", "test"):
        a, b = load_split(tmp_path / "from-folders", split), load_split(tmp_path / "from-zips", split)
        assert a.class_names == b.class_names and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.images, b.images)


def _asymmetric_glyph() -> Image.Image:
    """An L-shaped stroke: every quarter turn of it differs from the others."""
    white = np.ones((105, 105), dtype=bool)
    white[10:90, 20:35] = False
    white[75:90, 20:80] = False
    return Image.fromarray(white)


def test_omniglot_vinyals_lists_define_rotated_classes(tmp_path):
    src = tmp_path / "src"
    for half, alphabets in (("images_background", ["Latin", "Greek"]), ("images_evaluation", ["Angelic"])):
        for alphabet in alphabets:
            for c in (1, 2, 3):
                for i in (1, 2):
                    path = src / half / alphabet / f"character{c:02d}" / f"09{c:02d}_{i:02d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _asymmetric_glyph().save(path)
    _zip_halves(src)
    lists = tmp_path / "splits" / "vinyals"
    lists.mkdir(parents=True)
    rots = ("rot000", "rot090", "rot180", "rot270")
    chars = {
        "train": ["Latin/character01", "Greek/character02", "Latin/character03"],
        "val": ["Greek/character01"],
        "test": ["Angelic/character01", "Angelic/character03"],
    }
    for split, cs in chars.items():
        (lists / f"{split}.txt").write_text("".join(f"{c}/{r}\n" for c in cs for r in rots))
    report = prepare("omniglot", src, tmp_path / "prep", workers=1, split_lists=lists)
    assert report.source_format == "omniglot-vinyals"
    for split, cs in chars.items():
        s = load_split(tmp_path / "prep", split)
        assert s.class_names == [f"{c}/{r}" for c in cs for r in rots]  # 4 classes per character
        assert np.bincount(s.labels).tolist() == [2] * 4 * len(cs) and s.image_shape == (28, 28, 1)
        for k in range(len(cs)):
            upright = s.images[s.labels == 4 * k]
            for turns in (1, 2, 3):  # exact quarter turns of the upright image
                turned = s.images[s.labels == 4 * k + turns]
                assert np.array_equal(turned, np.rot90(upright, k=turns, axes=(1, 2)))
                assert not np.array_equal(turned, upright)


@pytest.mark.parametrize(
    ("line", "message"),
    [("Latin/character09/rot000", "character Latin/character09 is not in the Omniglot source"),
     ("Latin/character01/rot045", "expected <Alphabet>/characterNN/rotDDD")],
)  # fmt: skip
def test_omniglot_bad_split_lists_end_with_one_line(tmp_path, line, message):
    write_omniglot(tmp_path / "src", ["Latin"], ["Angelic"])
    lists = tmp_path / "lists"
    lists.mkdir()
    for split in ("train", "val", "test"):
        (lists / f"{split}.txt").write_text(
            "Latin/character01/rot000\n" + (line + "\n" if split == "val" else "")
        )
    with pytest.raises(MtlError, match=f"val.txt, line 2: {message}"):
        prepare("omniglot", tmp_path / "src", tmp_path / "prep", workers=1, split_lists=lists)
    assert not (tmp_path / "prep").exists()
    with pytest.raises(MtlError, match="--split-lists applies to omniglot only"):
        prepare("folder", tmp_path / "src", tmp_path / "prep", split_lists=lists)


def test_omniglot_pipeline_runs_protonet_on_the_vinyals_protocol(tmp_path):
    """The shipped pipeline on a fake Omniglot of the real size per character (20 drawings)."""
    from mtl import config
    from mtl.stages.metatest import metatest
    from mtl.stages.metatrain import metatrain

    src, rng = tmp_path / "src", np.random.default_rng(0)
    chars = {"images_background": ["Latin", "Greek"], "images_evaluation": ["Angelic"]}
    for half, alphabets in chars.items():
        for alphabet in alphabets:
            for c in range(1, 5):
                for i in range(1, 21):
                    ink = rng.random((105, 105)) > 0.02 * c  # a different density per character
                    path = src / half / alphabet / f"character{c:02d}" / f"01{c:02d}_{i:02d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(ink).save(path)
    _zip_halves(src)
    lists = tmp_path / "lists"
    lists.mkdir()
    split_chars = {"train": ["Latin", "Greek"], "val": ["Angelic"], "test": ["Angelic"]}
    rows = {"val": range(1, 3), "test": range(3, 5), "train": range(1, 5)}
    for split, alphabets in split_chars.items():
        lines = [
            f"{a}/character{c:02d}/rot{r:03d}"
            for a in alphabets
            for c in rows[split]
            for r in (0, 90, 180, 270)
        ]
        (lists / f"{split}.txt").write_text("\n".join(lines) + "\n")
    data = tmp_path / "omniglot-vinyals"
    prepare("omniglot", src, data, workers=1, split_lists=lists)
    sets = [
        f"data.root={data}",
        "device=cpu",
        "meta.epochs=1",
        "meta.updates_per_epoch=2",
        "meta.val_episodes=5",
    ]
    sets += ["protonet.train_way=8", "test.episodes=10", "backbone.widths=[4,4,4,4]"]
    cfg = config.load(Path(__file__).parents[1] / "pipelines" / "omniglot-5way-1shot.yaml", sets)
    assert load_split(data, "test").num_classes == 8 and cfg.method == "protonet"
    metatrain(cfg, tmp_path / "ck", quiet=True)
    rows_out = metatest(cfg, tmp_path / "ck", quiet=True)["rows"]
    # No pretrain was run: the rows that need the pretrained encoder are left out.
    assert [r["method"] for r in rows_out] == ["ProtoNet", "nearest centroid, raw pixels"]
