"""``mtl adapt``: a tiny model trained on a folder dataset, then few-shot on freshly written images."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import TINY
from fakes import write_image

from mtl import config
from mtl.cli import main
from mtl.data.augment import Preprocess
from mtl.data.prepare.images import to_pixels
from mtl.data.prepare.preparation import prepare
from mtl.errors import MtlError
from mtl.inference.adapt import adapt_folders
from mtl.models import ss
from mtl.models.backbone import build_backbone
from mtl.runtime import checkpoint
from mtl.stages.metatrain import metatrain

PIPELINE = str(Path(__file__).resolve().parents[1] / "pipelines" / "glyphs-1shot.yaml")
# One flat colour per class: easy enough that even a 2-epoch encoder separates unseen classes.
COLOURS = {
    "train": {
        "yellow": (200, 200, 40),
        "cyan": (40, 200, 200),
        "magenta": (200, 40, 200),
        "orange": (240, 140, 40),
        "purple": (120, 40, 200),
        "darkgreen": (40, 110, 40),
        "grey": (140, 140, 140),
        "white": (240, 240, 240),
    },
    "val": {"black": (30, 30, 30), "brown": (140, 80, 40), "pink": (240, 160, 200)},
    "test": {"red": (220, 40, 40), "green": (40, 220, 40), "blue": (40, 40, 220)},
}
TEST_COLOURS = COLOURS["test"]


def class_images(colour: tuple[int, int, int], n: int, size: int, seed: int) -> np.ndarray:
    """``(n, size, size, 3)`` uint8: the class colour, jittered per image, plus pixel noise."""
    rng = np.random.default_rng(seed)
    base = np.array(colour) + rng.integers(-15, 16, size=(n, 1, 1, 3))
    noise = rng.integers(-15, 16, size=(n, size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_classes(folder: Path, counts: dict[str, int], seed: int, suffix: str = ".png") -> Path:
    """``folder/<class>/<i><suffix>`` with ``counts[class]`` new images of each (test-split) class."""
    for k, (name, n) in enumerate(counts.items()):
        for i, pixels in enumerate(class_images(TEST_COLOURS[name], n, 24, seed * 100 + k)):
            write_image(folder / name / f"{i:02d}{suffix}", pixels)
    return folder


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> SimpleNamespace:
    """Run tiny pretrain, metatrain and metatest once on a prepared folder dataset."""
    tmp = tmp_path_factory.mktemp("adapt")
    source = tmp / "source"
    for s, (split, colours) in enumerate(COLOURS.items()):
        for k, (name, colour) in enumerate(colours.items()):
            for i, pixels in enumerate(class_images(colour, 12, 20, seed=1000 * s + k)):
                write_image(source / split / name / f"{i:02d}.png", pixels)
    data = tmp / "prepared"
    prepare("folder", source, data, image_size=16, workers=1)
    overrides = [o for o in TINY if not o.startswith("data.glyphs")]
    # fp32: the reference below recomputes the task in fp32 (bf16 is tested in test_precision.py)
    overrides += ["data.dataset=folder", f"data.root={data}", "precision=fp32"]
    sets = [a for o in overrides for a in ("--set", o)]
    ckpts = tmp / "ckpts"
    for stage in ("pretrain", "metatrain", "metatest"):
        result = invoke(stage, PIPELINE, *sets, "--checkpoints", ckpts, "--quiet")
        assert result.exit_code == 0, result.output
    assert json.loads((ckpts / "tiny" / "metatest" / "results.json").read_text())["rows"]
    return SimpleNamespace(
        best=ckpts / "tiny" / "metatrain" / "best.pt",
        pretrain_best=ckpts / "tiny" / "pretrain" / "best.pt",
        cfg=config.load(PIPELINE, overrides),
        overrides=overrides,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_labelled_query_end_to_end(model, tmp_path):
    support = write_classes(tmp_path / "support", {"red": 3, "green": 2, "blue": 3}, seed=1)
    query = write_classes(tmp_path / "query", dict.fromkeys(TEST_COLOURS, 8), seed=2, suffix=".jpg")
    out = tmp_path / "predictions.csv"
    result = invoke("adapt", "--checkpoint", model.best, "--support", support, "--query", query, "--out", out)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    matrix = out.parent / "confusion_matrix.csv"
    assert lines[-1].startswith(f"adapt: classified 24 images; wrote {out}, {matrix} in ")
    # then the confusion matrix: a header, a title row, one row per class
    assert lines[-6] == "confusion matrix (rows: true class, columns: predicted):"
    lines = lines[:-6]
    assert lines[-2] == f"... 4 more in {out}"  # 24 queries, 20 shown
    assert lines[-1].startswith("accuracy: ") and lines[-1].endswith("/24)")
    assert "red/00.jpg" in result.output and ("✓" in result.output or "✗" in result.output)

    rows = read_csv(out)
    classes = ["blue", "green", "red"]
    assert list(rows[0]) == ["image", "prediction", "probability", "label", "correct"] + [
        f"p({c})" for c in classes
    ]
    assert len(rows) == 24 and rows[0]["image"] == "blue/00.jpg" and rows[-1]["image"] == "red/07.jpg"
    for r in rows:
        probs = [float(r[f"p({c})"]) for c in classes]
        assert abs(sum(probs) - 1) < 1e-3
        assert r["prediction"] == classes[int(np.argmax(probs))] and float(r["probability"]) == max(probs)
        assert r["label"] == r["image"].split("/")[0] and r["correct"] == str(
            int(r["label"] == r["prediction"])
        )
    correct = sum(r["correct"] == "1" for r in rows)
    assert lines[-1] == f"accuracy: {100 * correct / 24:.2f}% ({correct}/24)"
    assert correct >= 20, lines[-1]  # chance is 8/24
    assert not list(tmp_path.glob(".predictions.csv.*"))  # no temp or probe file left behind


def test_unlabelled_flat_query(model, tmp_path):
    support = write_classes(tmp_path / "support", dict.fromkeys(TEST_COLOURS, 2), seed=3)
    query = tmp_path / "query"
    for i, name in enumerate(TEST_COLOURS):
        write_image(query / f"{name}.png", class_images(TEST_COLOURS[name], 1, 24, seed=40 + i)[0])
    out = tmp_path / "p.csv"
    result = invoke("adapt", "--checkpoint", model.best, "--support", support, "--query", query, "--out", out)
    assert result.exit_code == 0, result.output
    assert "accuracy" not in result.output and "✓" not in result.output
    rows = read_csv(out)
    assert list(rows[0]) == ["image", "prediction", "probability", "p(blue)", "p(green)", "p(red)"]
    assert [r["image"] for r in rows] == ["blue.png", "green.png", "red.png"]
    res = adapt_folders(model.best, support, query, quiet=True)
    assert res["accuracy"] is None and all(p["label"] is None for p in res["predictions"])


def test_way_differs_from_training(model, tmp_path):
    support = write_classes(tmp_path / "support", {"red": 2, "blue": 2}, seed=5)
    query = write_classes(tmp_path / "query", {"red": 3, "blue": 3}, seed=6)
    result = invoke("adapt", "--checkpoint", model.best, "--support", support, "--query", query)
    assert result.exit_code == 0, result.output
    assert "(mean of rows) to 2 classes" in result.output and "accuracy: " in result.output
    res = adapt_folders(model.best, support, query, quiet=True, steps=0)
    # Every class starts from the same row, so without steps nothing tells them apart.
    assert res["theta_init"] == "mean of rows" and res["steps"] == 0
    assert all(p["probs"] == pytest.approx({"blue": 0.5, "red": 0.5}) for p in res["predictions"])


def reference_probs(model, support: Path, query: Path, classes: list[str]) -> torch.Tensor:
    """The same task computed independently: encoder rebuilt by hand, θ adapted by autograd."""
    cfg = model.cfg
    ckpt = checkpoint.load(model.best, stage="metatrain")
    encoder = build_backbone(cfg.backbone.name, in_chans=3, widths=cfg.backbone.widths)
    encoder = ss.attach(encoder, bn=cfg.mtl.bn)
    encoder.load_state_dict(ckpt["encoder"])
    encoder.eval()
    pre = Preprocess(cfg.data.image_size, 3, cfg.data.mean, cfg.data.std)

    def encode(paths: list[Path]) -> torch.Tensor:
        pixels = np.stack([to_pixels(p, cfg.data.image_size, 3) for p in paths])
        with torch.no_grad():
            return encoder(pre(torch.from_numpy(pixels)))

    sup = [(p, i) for i, c in enumerate(classes) for p in sorted((support / c).iterdir())]
    x_s, y_s = encode([p for p, _ in sup]), torch.tensor([i for _, i in sup])
    x_q = encode(sorted(query.rglob("*.png")))
    W, b = ckpt["theta"]["W"], ckpt["theta"]["b"]
    if W.shape[0] != len(classes):
        W, b = W.mean(0).repeat(len(classes), 1), b.mean().repeat(len(classes))
    for _ in range(cfg.mtl.eval_steps):
        W, b = W.detach().requires_grad_(), b.detach().requires_grad_()
        gW, gb = torch.autograd.grad(F.cross_entropy(x_s @ W.T + b, y_s), (W, b))
        W, b = W - cfg.mtl.inner_lr * gW, b - cfg.mtl.inner_lr * gb
    return torch.softmax(x_q @ W.T + b, dim=-1).detach()


@pytest.mark.parametrize(
    "counts",
    [{"blue": 2, "green": 2, "red": 2}, {"blue": 1, "green": 4, "red": 2}, {"blue": 3, "red": 1}],
    ids=["equal-shots", "unequal-shots", "other-way"],
)
def test_matches_plain_gradient_descent(model, tmp_path, counts):
    support = write_classes(tmp_path / "support", counts, seed=7)
    query = write_classes(tmp_path / "query", dict.fromkeys(counts, 2), seed=8)
    res = adapt_folders(model.best, support, query, quiet=True)
    got = torch.tensor([[p["probs"][c] for c in counts] for p in res["predictions"]])
    assert res["classes"] == list(counts) and res["steps"] == model.cfg.mtl.eval_steps > 0
    torch.testing.assert_close(
        got, reference_probs(model, support, query, list(counts)), atol=1e-5, rtol=1e-4
    )


# Each case edits a valid task and returns the path its error message must name.
ERRORS = {
    "support-missing": lambda t: t.set("support", t.root / "nope"),
    "query-missing": lambda t: t.set("query", t.root / "nope"),
    "one-support-class": lambda t: t.set("support", write_classes(t.root / "one", {"red": 2}, seed=9)),
    "empty-support-class": lambda t: t.mkdir(t.support / "yellow"),
    "bad-support-image": lambda t: t.write(t.support / "red" / "broken.png", b"not a png"),
    "bad-query-image": lambda t: t.write(t.query / "red" / "broken.jpg", b"\xff\xd8 truncated"),
    "empty-query": lambda t: t.set("query", t.mkdir(t.root / "empty")),
    "mixed-query": lambda t: t.write(t.query / "loose.png").parent,
    "unknown-query-class": lambda t: t.write(t.query / "purple" / "0.png").parent,
    # The checkpoint is missing too: --out must be checked before anything is loaded. (A missing
    # folder is made: test_out_into_a_missing_folder_makes_it.)
    "out-folder-unmakable": lambda t: t.set(
        "out", t.write(t.root / "f", b"") / "no" / "p.csv", checkpoint=t.root / "x.pt"
    ),
    "out-under-a-file": lambda t: t.set("out", t.support / "red" / "00.png" / "p.csv"),
    "pretrain-checkpoint": lambda t: t.set("checkpoint", t.model.pretrain_best),
    "checkpoint-missing": lambda t: t.set("checkpoint", t.root / "missing.pt"),
}


class Task:
    """A valid 2-way task whose options the error cases edit."""

    def __init__(self, model: SimpleNamespace, root: Path):
        self.model, self.root = model, root
        self.support = write_classes(root / "support", {"red": 1, "green": 1}, seed=9)
        self.query = write_classes(root / "query", {"red": 1}, seed=10)
        self.opts = {"checkpoint": model.best, "support": self.support, "query": self.query}

    def set(self, key: str, value: Path, **more: Path) -> Path:
        self.opts.update({key: value, **more})
        return value

    def mkdir(self, path: Path) -> Path:
        path.mkdir(parents=True)
        return path

    def write(self, path: Path, data: bytes | None = None) -> Path:
        if data is None:
            return write_image(path, class_images(TEST_COLOURS["red"], 1, 24, seed=0)[0])
        path.write_bytes(data)
        return path


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_are_one_line_naming_the_path(model, tmp_path, case):
    task = Task(model, tmp_path)
    named = ERRORS[case](task)
    result = invoke("adapt", *[a for k, v in task.opts.items() for a in (f"--{k}", v)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(named) in lines[0], result.output
    if case == "pretrain-checkpoint":
        assert "is a pretrain checkpoint, expected metatrain" in lines[0]


def test_adapt_with_a_protonet_checkpoint_classifies_by_the_nearest_prototype(model, tmp_path):
    """Any trained method's checkpoint adapts: ProtoNet's probabilities are the softmax of −‖q − c_k‖²
    over the support means of its encoder's features, classes with different numbers of images."""
    cfg = dataclasses.replace(model.cfg, method="protonet", name="proto")
    ckpts = model.best.parents[2]
    metatrain(cfg, ckpts, quiet=True)
    best = ckpts / "proto" / "metatrain" / "best.pt"
    support = write_classes(tmp_path / "support", {"red": 3, "green": 1, "blue": 2}, seed=3)
    query = write_classes(tmp_path / "query", dict.fromkeys(TEST_COLOURS, 2), seed=4)
    res = adapt_folders(best, support, query, quiet=True)
    assert res["theta_init"] == "support means" and res["steps"] is None
    with pytest.raises(MtlError, match=r"^--steps: ProtoNet.* takes no gradient steps on a support set$"):
        adapt_folders(best, support, query, quiet=True, steps=3)

    ckpt = checkpoint.load(best, stage="metatrain")
    encoder = build_backbone(cfg.backbone.name, in_chans=3, widths=cfg.backbone.widths)
    encoder.load_state_dict(ckpt["encoder"])
    encoder.eval()
    pre = Preprocess(cfg.data.image_size, 3, cfg.data.mean, cfg.data.std)

    def encode(paths: list[Path]) -> torch.Tensor:
        pixels = np.stack([to_pixels(p, cfg.data.image_size, 3) for p in paths])
        with torch.no_grad():
            return encoder(pre(torch.from_numpy(pixels)))

    classes = res["classes"]
    protos = torch.stack([encode(sorted((support / c).iterdir())).mean(0) for c in classes])
    x_q = encode(sorted(query.rglob("*.png")))
    want = torch.softmax(-torch.cdist(x_q, protos).square(), dim=-1)
    got = torch.tensor([[p["probs"][c] for c in classes] for p in res["predictions"]])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_adapt_with_a_maml_checkpoint_adapts_the_whole_network(model, tmp_path):
    """MAML adapts every weight on the support images: its probabilities equal test_inner_steps of
    plain autograd descent on the network, then a forward of all the query images together."""
    sets = ["method=maml", "name=maml", "backbone.name=conv4", "backbone.widths=[4,4,4,4]"]
    cfg = config.load(PIPELINE, [*model.overrides, *sets, "maml.test_inner_steps=3"])
    ckpts = model.best.parents[2]
    metatrain(cfg, ckpts, quiet=True)
    best = ckpts / "maml" / "metatrain" / "best.pt"
    support = write_classes(tmp_path / "support", {"red": 2, "green": 1, "blue": 2}, seed=5)
    query = write_classes(tmp_path / "query", dict.fromkeys(TEST_COLOURS, 2), seed=6)
    res = adapt_folders(best, support, query, quiet=True)
    assert res["theta_init"] == "meta-learned network" and res["steps"] == 3

    from mtl import methods

    encoder = build_backbone("conv4", in_chans=3, widths=[4, 4, 4, 4], image_size=cfg.data.image_size)
    net = methods.build(cfg, encoder)
    net.load_state(checkpoint.load(best, stage="metatrain"))
    net = net.net
    pre = Preprocess(cfg.data.image_size, 3, cfg.data.mean, cfg.data.std)

    def pixels(paths: list[Path]) -> torch.Tensor:
        return pre(torch.from_numpy(np.stack([to_pixels(p, cfg.data.image_size, 3) for p in paths])))

    classes = res["classes"]
    sup = [sorted((support / c).iterdir()) for c in classes]
    x_s, y_s = pixels([p for files in sup for p in files]), torch.tensor([0, 0, 1, 2, 2])
    params = {k: v.detach() for k, v in net.named_parameters()}
    for _ in range(3):
        params = {k: v.requires_grad_() for k, v in params.items()}
        loss = F.cross_entropy(torch.func.functional_call(net, params, (x_s,)), y_s)
        g = torch.autograd.grad(loss, list(params.values()))
        step = zip(params.items(), g, strict=True)
        params = {k: (v - cfg.maml.inner_lr * gk).detach() for (k, v), gk in step}
    x_q = pixels(sorted(query.rglob("*.png")))
    want = torch.softmax(torch.func.functional_call(net, params, (x_q,)), dim=-1)
    got = torch.tensor([[p["probs"][c] for c in classes] for p in res["predictions"]])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_adapt_save_then_predict_gives_the_same_predictions(model, tmp_path):
    """adapt → --save → predict on the held-out query images: the same classes and probabilities,
    the CSV alike, and for labelled images a confusion matrix (printed and beside the CSV)."""
    support = write_classes(tmp_path / "support", {"red": 2, "green": 2, "blue": 1}, seed=7)
    query = write_classes(tmp_path / "query", dict.fromkeys(TEST_COLOURS, 3), seed=8)
    saved = tmp_path / "classifier.pt"
    task = ["--checkpoint", model.best, "--support", support, "--query", query]
    result = invoke("adapt", *task, "--save", saved)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"adapt: classified 9 images; wrote {saved} in ")
    adapted = adapt_folders(model.best, support, query, quiet=True)

    out = tmp_path / "out" / "predictions.csv"
    out.parent.mkdir()
    result = invoke("predict", saved, query, "--out", out)
    assert result.exit_code == 0, result.output
    from mtl.inference.predict import predict

    got = predict(saved, [query], quiet=True)
    assert [p["image"] for p in got["predictions"]] == [p["image"] for p in adapted["predictions"]]
    assert [p["prediction"] for p in got["predictions"]] == [p["prediction"] for p in adapted["predictions"]]
    for a, b in zip(got["predictions"], adapted["predictions"], strict=True):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-6)
    assert got["accuracy"] == adapted["accuracy"]

    assert "confusion matrix (rows: true class, columns: predicted):" in result.output
    with open(out.parent / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true \\ predicted", *got["classes"]]
    counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert counts.sum() == 9 and counts.sum(1).tolist() == [3, 3, 3]
    assert np.trace(counts) == sum(p["prediction"] == p["label"] for p in got["predictions"])
    assert len(read_csv(out)) == 9

    files = sorted((query / "red").iterdir())[:2]  # single files: unlabelled, named as given
    one = predict(saved, files, quiet=True)
    assert one["accuracy"] is None and [p["image"] for p in one["predictions"]] == list(map(str, files))


def test_out_into_a_missing_folder_makes_it(model, tmp_path):
    support = write_classes(tmp_path / "support", {"red": 2, "green": 2}, seed=1)
    query = write_classes(tmp_path / "query", {"red": 2, "green": 2}, seed=2)
    out = tmp_path / "new" / "deeper" / "predictions.csv"
    result = invoke("adapt", "--checkpoint", model.best, "--support", support, "--query", query, "--out", out)
    assert result.exit_code == 0, result.output
    assert len(read_csv(out)) == 4 and (out.parent / "confusion_matrix.csv").is_file()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    refused = invoke("adapt", "--checkpoint", model.best, "--support", support, "--query", query, "--out",
                     blocked / "sub" / "p.csv")  # fmt: skip
    assert refused.exit_code == 2 and f"{blocked} is not a folder" in refused.output
