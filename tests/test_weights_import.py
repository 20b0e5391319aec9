"""``mtl import``: every layout it recognises, built exactly as its code saves it, against a plain reference
forward of that code's network; the refusals, through the command line; and a pipeline continued from an
imported encoder and from an imported meta-trained model."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from weights_fakes import (
    official_forward,
    official_meta,
    official_pretrain,
    resnet12_blocks,
    resnet12_forward,
    tf_forward,
    tf_weights,
    write_evil_npy,
    write_py2_npy,
)

from mtl import config, methods
from mtl.cli import main
from mtl.models import base_learner, ss
from mtl.models.backbone import backbone_for
from mtl.runtime import checkpoint
from mtl.weights import batchnorm, files, official, resnet12, tensorflow
from mtl.weights.files import Source

PIPELINE = str(Path(__file__).resolve().parents[1] / "pipelines" / "glyphs-1shot.yaml")
R25 = ["backbone.name=resnet25", "backbone.widths=[8,16,16]"]
TF = ["backbone.name=resnet12_tf", "data.mean=[0,0,0]", "data.std=[1,1,1]"]


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def refused(result, *fragments: str) -> str:
    """One ``error:`` line on a failed command, exit 2, no traceback, containing every fragment."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def tiny(tiny_overrides) -> list[str]:
    return [*tiny_overrides, *R25]


def features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-12) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max())


# --------------------------------------------------------------------------- (a) official pretrain


def test_official_pretrain_stem_bias_is_folded_exactly():
    """169 tensors of the real shapes; the folded resnet25 computes the official network (float64)."""
    sd = official_pretrain(dtype=torch.float64)
    assert (
        len(sd) == 169
        and sd["conv1.bias"].shape == (80,)
        and sd["layer3.0.downsample.0.weight"].shape[:2]
        == (
            640,
            320,
        )
    )
    cfg = config.load("miniimagenet-1shot-resnet25")
    net = backbone_for(cfg).double().eval()
    source = Source("max_acc.pth", "torch", {"params": sd})
    assert official.PRETRAIN.recognise(source, cfg)
    conv = official.PRETRAIN.convert(source, cfg, net.state_dict())
    net.load_state_dict(conv.encoder)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = official_forward(sd, x)
    assert close(features(net, x), ref)
    dropped = official_forward({**sd, "conv1.bias": torch.zeros(80, dtype=torch.float64)}, x)
    assert (dropped - ref).norm() > 0.05 * ref.norm()  # the bias matters: dropping it is no option


def test_official_pretrain_then_metatrain_and_metatest(tiny, tmp_path):
    """Import into a tiny glyphs pipeline, then the next stages run from it."""
    sd = official_pretrain(widths=(8, 16, 16))
    torch.save({"params": sd}, tmp_path / "max_acc.pth")
    ckpts = tmp_path / "ckpts"
    result = run("import", tmp_path / "max_acc.pth", PIPELINE, *sets(tiny), "--checkpoints", ckpts)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert (
        lines[0].startswith("recognised: the official MTL PyTorch pretrain checkpoint")
        and "169 tensors" in lines[0]
    )
    assert any(line.startswith("folded: conv1.bias") for line in lines)
    assert lines[-2].startswith("next: mtl metatrain") and lines[-1].startswith("import: wrote ")
    best = ckpts / "tiny" / "pretrain" / "best.pt"
    ckpt = checkpoint.load(best, stage="pretrain")
    cfg = config.load(PIPELINE, tiny)
    assert ckpt["config"] == cfg.to_dict() and ckpt["class_names"] == [] and ckpt["head"] == {}
    assert ckpt["metric"]["epoch"] == -1 and ckpt["imported"]["layout"] == "mtl-pytorch-pretrain"
    assert set(ckpt["encoder"]) == set(backbone_for(cfg).state_dict())
    assert torch.equal(ckpt["encoder"]["bn1.running_mean"], sd["bn1.running_mean"] - sd["conv1.bias"])
    assert (best.parent / "config.yaml").is_file()

    before = best.read_bytes()
    refused(run("import", tmp_path / "max_acc.pth", PIPELINE, *sets(tiny), "--checkpoints", ckpts), "--force")
    assert best.read_bytes() == before
    for stage in ("metatrain", "metatest"):
        result = run(stage, PIPELINE, *sets(tiny), "--checkpoints", ckpts)
        assert result.exit_code == 0, result.output
    assert json.loads((ckpts / "tiny" / "metatest" / "results.json").read_text())["rows"]
    again = run("import", tmp_path / "max_acc.pth", PIPELINE, *sets(tiny), "--checkpoints", ckpts, "--force")
    assert again.exit_code == 0, again.output


# --------------------------------------------------------------------------- (b) official meta


def _mtl_model(cfg, encoder_state, dtype=torch.float64):
    method = methods.get("mtl")(backbone_for(cfg), cfg)
    method.load_state(encoder_state)
    return method.to(dtype).eval()


def test_official_meta_logits_match_the_official_forward():
    """Real shapes (80 + 160-320-640, 5-way θ), float64: SS scales, the stem's shift, θ, the folded bias."""
    sd = official_meta(way=5, dtype=torch.float64)
    cfg = config.load("miniimagenet-1shot-resnet25")
    source = Source("max_acc.pth", "torch", {"params": sd})
    assert official.META.recognise(source, cfg) and not official.PRETRAIN.recognise(source, cfg)
    encoder = backbone_for(cfg).double()
    conv = official.META.convert(source, cfg, encoder.state_dict())
    encoder.load_state_dict(conv.encoder)
    method = methods.get("mtl")(encoder, cfg).double()
    conv.finish(method)
    method.eval()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = base_learner.logits(method.encoder(x), method.W, method.b)
    ref = F.linear(
        official_forward(sd, x, prefix="encoder."), sd["base_learner.fc1_w"], sd["base_learner.fc1_b"]
    )
    assert close(ours, ref)


def test_official_meta_to_metatest(tiny_overrides, tmp_path):
    """The tiny meta checkpoint through the command: a metatrain best.pt that metatest scores."""
    tiny = [*tiny_overrides, *R25, "mtl.bn=affine"]
    sd = official_meta(widths=(8, 16, 16), way=3)
    torch.save({"params": sd}, tmp_path / "meta.pth")
    ckpts = tmp_path / "ckpts"
    result = run("import", tmp_path / "meta.pth", PIPELINE, *sets(tiny), "--checkpoints", ckpts)
    assert result.exit_code == 0, result.output
    assert "next: mtl metatest" in result.output
    ckpt = checkpoint.load(ckpts / "tiny" / "metatrain" / "best.pt", stage="metatrain")
    assert ckpt["method"] == "mtl" and torch.equal(ckpt["theta"]["W"], sd["base_learner.fc1_w"])
    cfg = config.load(PIPELINE, tiny)
    method = _mtl_model(cfg, ckpt)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        ours = base_learner.logits(method.encoder(x), method.W, method.b)
    sd64 = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    ref = F.linear(
        official_forward(sd64, x, "encoder."), sd64["base_learner.fc1_w"], sd64["base_learner.fc1_b"]
    )
    assert close(ours, ref, 1e-5)  # the file is float32
    result = run("metatest", PIPELINE, *sets(tiny), "--checkpoints", ckpts)
    assert result.exit_code == 0, result.output
    wrong_way = run(
        "import",
        tmp_path / "meta.pth",
        PIPELINE,
        *sets([*tiny, "meta.way=5"]),
        "--checkpoints",
        tmp_path / "o",
    )
    refused(wrong_way, "3-way", "--set meta.way=3")


def test_official_meta_duplicates_must_agree(tiny, tmp_path):
    sd = official_meta(widths=(8, 16, 16), way=3)
    sd["base_learner.vars.0"] = sd["base_learner.vars.0"] + 1
    torch.save({"params": sd}, tmp_path / "meta.pth")
    refused(
        run("import", tmp_path / "meta.pth", PIPELINE, *sets(tiny), "--checkpoints", tmp_path),
        "vars.0 differs",
    )


def test_official_meta_maps_onto_mtl_ss_layout_or_says_why_not(tiny, tmp_path):
    """Every SS convolution needs its mtl_weight; a shift (mtl_bias) where mtl's layout has none is refused
    (where it has one, a conv without mtl_bias gets a zero shift: the official conv has no bias there)."""
    sd = official_meta(widths=(8, 16, 16), way=3)
    torch.save({"params": _without(sd, "encoder.layer2.1.conv1.mtl_weight")}, tmp_path / "a.pth")
    refused(
        run("import", tmp_path / "a.pth", PIPELINE, *sets(tiny), "--checkpoints", tmp_path),
        "no SS weights for layer2.1.conv1",
    )
    torch.save({"params": {**sd, "encoder.layer1.0.conv1.mtl_bias": torch.ones(8)}}, tmp_path / "b.pth")
    result = run("import", tmp_path / "b.pth", PIPELINE, *sets(tiny), "--checkpoints", tmp_path / "c")
    cfg = config.load(PIPELINE, tiny)
    layout = dict(ss.ss_modules(methods.get("mtl")(backbone_for(cfg), cfg).encoder))
    if layout["layer1.0.conv1"].shift is None:  # resnet25's official layout: a shift on the stem only
        refused(result, "encoder.layer1.0.conv1.mtl_bias where mtl's SS layout of resnet25 has none")
    else:
        assert result.exit_code == 0, result.output


def test_an_mtl_checkpoint_is_not_imported(tiny, tmp_path):
    torch.save({"params": official_pretrain((8, 16, 16))}, tmp_path / "max_acc.pth")
    assert (
        run("import", tmp_path / "max_acc.pth", PIPELINE, *sets(tiny), "--checkpoints", tmp_path).exit_code
        == 0
    )
    best = tmp_path / "tiny" / "pretrain" / "best.pt"
    refused(
        run("import", best, PIPELINE, *sets(tiny), "--checkpoints", tmp_path / "x"),
        "is an mtl pretrain checkpoint",
    )


# --------------------------------------------------------------------------- (c) official TensorFlow


def test_tensorflow_weights_match_the_tf_forward(tmp_path):
    """Real widths 64-128-256-512; batch-statistics BN both ways, float64."""
    weights = tf_weights()
    np.save(tmp_path / "weights_10000.npy", weights)  # a dict: a 0-d object array holding its pickle
    source = files.read(str(tmp_path / "weights_10000.npy"))
    cfg = config.load("miniimagenet-1shot", ["data.mean=[0,0,0]", "data.std=[1,1,1]"])
    assert tensorflow.TENSORFLOW.recognise(source, cfg)
    net = backbone_for(cfg).double()
    conv = tensorflow.TENSORFLOW.convert(source, cfg, net.state_dict())
    assert any(n.startswith("ignored: w5, b5") for n in conv.notes)
    net.load_state_dict(conv.encoder)
    x = np.random.default_rng(3).random((4, 16, 16, 3))
    with torch.no_grad():
        ours = net.train()(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())  # batch statistics
    ref = torch.from_numpy(tf_forward(weights, x))
    assert close(ours, ref, 1e-10)


def test_tensorflow_files_of_every_vintage_read_alike(tmp_path):
    weights = tf_weights(widths=(4, 4, 8, 8))
    write_py2_npy(tmp_path / "py2.npy", weights)
    np.savez(tmp_path / "weights.npz", **weights)
    for name in ("py2.npy", "weights.npz"):
        got = files.read(str(tmp_path / name)).obj
        assert set(got) == set(weights) and all(np.array_equal(got[k], weights[k]) for k in weights), name


def test_tensorflow_import_estimates_the_batch_norm_statistics(tiny_overrides, tmp_path):
    tiny = [*tiny_overrides, *TF]
    np.save(tmp_path / "w.npy", tf_weights(widths=(8, 8, 16, 16)))
    ckpts = tmp_path / "ckpts"
    result = run("import", tmp_path / "w.npy", PIPELINE, *sets(tiny), "--checkpoints", ckpts)
    assert result.exit_code == 0, result.output
    assert "estimated: batch-norm running statistics from" in result.output
    enc = checkpoint.load(ckpts / "tiny" / "pretrain" / "best.pt", stage="pretrain")["encoder"]
    assert not torch.equal(enc["layer1.bn1.running_mean"], torch.zeros(8))
    assert torch.equal(enc["layer1.bn1.weight"], torch.ones(8)) and torch.equal(
        enc["layer1.bn1.bias"], torch.zeros(8)
    )
    # One batch of every train image: the first BN's running mean is the exact mean of conv1's output.
    cfg = config.load(PIPELINE, tiny)
    net = backbone_for(cfg)
    net.load_state_dict(enc)
    n = batchnorm.recalibrate(net, cfg, images=10_000, batch=10_000)
    from mtl.data.augment import Preprocess
    from mtl.data.sources import load_splits

    images = load_splits(cfg.data, ("train",))["train"].images
    assert n == len(images)
    x = Preprocess(cfg.data.image_size, 3, cfg.data.mean, cfg.data.std)(torch.from_numpy(np.array(images)))
    with torch.no_grad():
        out = net.layer1.conv1(x)
    assert torch.allclose(net.layer1.bn1.running_mean, out.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(net.layer1.bn1.running_var, out.var(dim=(0, 2, 3)), rtol=1e-4)


def test_tensorflow_refusals(tiny_overrides, tmp_path):
    np.save(tmp_path / "w.npy", tf_weights(widths=(8, 8, 16, 16)))
    normalised = [*tiny_overrides, "backbone.name=resnet12_tf"]
    refused(
        run("import", tmp_path / "w.npy", PIPELINE, *sets(normalised), "--checkpoints", tmp_path),
        "pixels / 255",
        "--set data.mean=[0,0,0] --set data.std=[1,1,1]",
    )
    wide = [*tiny_overrides, *TF, "backbone.widths=[8,8,16,32]"]
    refused(
        run("import", tmp_path / "w.npy", PIPELINE, *sets(wide), "--checkpoints", tmp_path),
        "widths=[8,8,16,16]",
    )
    write_evil_npy(tmp_path / "evil.npy", tmp_path)
    refused(run("import", tmp_path / "evil.npy", PIPELINE, *sets([*tiny_overrides, *TF])), "refused to load")
    assert not (tmp_path / "ran").exists()


# --------------------------------------------------------------------------- (d) FEAT and RFS


@pytest.mark.parametrize("code", ["feat", "rfs"])
def test_resnet12_checkpoints_match_their_forward(code):
    """Real widths 64-160-320-640. FEAT's Res12-pre.pth: {"params": {"encoder.layer1.0.conv1.weight", ..,
    "fc.*"}}; RFS's resnet12_last.pth: {"model": {"layer1.0.conv1.weight", .., "classifier.*"}}."""
    sd = resnet12_blocks(dtype=torch.float64)
    prefix, head, wrapper, layout = {
        "feat": ("encoder.", "fc", "params", resnet12.FEAT),
        "rfs": ("", "classifier", "model", resnet12.RFS),
    }[code]
    state = {f"{prefix}{k}": v for k, v in sd.items()}
    state.update(
        {f"{head}.weight": torch.zeros(64, 640, dtype=torch.float64), f"{head}.bias": torch.zeros(64)}
    )
    source = Source("weights.pth", "torch", {wrapper: state, "epoch": 100})
    cfg = config.load("miniimagenet-1shot", ["backbone.name=resnet12"])
    assert [x.recognise(source, cfg) for x in (resnet12.FEAT, resnet12.RFS)] == [
        code == "feat",
        code == "rfs",
    ]
    net = backbone_for(cfg).double().eval()
    conv = layout.convert(source, cfg, net.state_dict())
    assert any(f"{head}.bias, {head}.weight" in n for n in conv.notes)
    net.load_state_dict(conv.encoder)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert close(features(net, x), resnet12_forward(sd, x))


def test_rfs_checkpoint_through_the_command(tiny_overrides, tmp_path):
    """RFS's train_supervised.py file: {"opt": Namespace, "model": state dict}, here with DataParallel's
    module. prefixes; its classifier is left out."""
    sd = resnet12_blocks(widths=(8, 8, 16, 16))
    model = {f"module.{k}": v for k, v in sd.items()}
    model.update({"module.classifier.weight": torch.zeros(19, 16), "module.classifier.bias": torch.zeros(19)})
    torch.save(
        {"opt": argparse.Namespace(model="resnet12", lr=0.05), "model": model}, tmp_path / "resnet12_last.pth"
    )
    ckpts = tmp_path / "ckpts"
    result = run(
        "import", tmp_path / "resnet12_last.pth", PIPELINE, *sets(tiny_overrides), "--checkpoints", ckpts
    )
    assert result.exit_code == 0, result.output
    assert "an RFS ResNet-12" in result.output and "classifier.bias, classifier.weight" in result.output
    enc = checkpoint.load(ckpts / "tiny" / "pretrain" / "best.pt", stage="pretrain")["encoder"]
    assert torch.equal(enc["layer3.conv2.weight"], sd["layer3.0.conv2.weight"])
    assert torch.equal(enc["layer4.downsample.1.running_var"], sd["layer4.0.downsample.1.running_var"])


def test_feat_training_checkpoint_with_its_log(tiny_overrides, tmp_path):
    """FEAT's checkpoint.pth.tar: the model under 'state_dict', beside its args (a Namespace), its
    training log (numpy floats) and the optimizer state; all read as data."""
    sd = resnet12_blocks(widths=(8, 8, 16, 16))
    state = {
        **{f"encoder.{k}": v for k, v in sd.items()},
        "fc.weight": torch.zeros(19, 16),
        "fc.bias": torch.zeros(19),
    }
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    torch.save(
        {
            "epoch": 200,
            "args": argparse.Namespace(backbone_class="Res12", lr=0.1),
            "state_dict": state,
            "trlog": {"max_acc_dist": np.float64(0.6), "val_acc_dist": [np.float64(0.5)]},
            "val_acc_dist": np.float64(0.6),
            "optimizer": opt.state_dict(),
            "global_count": 12,
        },
        tmp_path / "checkpoint.pth.tar",
    )
    result = run(
        "import", tmp_path / "checkpoint.pth.tar", PIPELINE, *sets(tiny_overrides), "--checkpoints", tmp_path
    )
    assert result.exit_code == 0, result.output
    assert "a FEAT ResNet-12" in result.output and "under 'state_dict'" in result.output


def test_resnet12_refusals(tiny_overrides, tmp_path):
    sd = resnet12_blocks(widths=(8, 8, 16, 16))
    se = {**sd, "layer1.0.se.fc.0.weight": torch.zeros(2, 8)}  # RFS's seresnet12: no mtl backbone has SE
    torch.save({"model": se}, tmp_path / "se.pth")
    refused(run("import", tmp_path / "se.pth", PIPELINE, *sets(tiny_overrides)), "layer1.0.se.fc.0.weight")
    torch.save({"params": {f"encoder.{k}": v for k, v in resnet12_blocks().items()}}, tmp_path / "feat.pth")
    refused(run("import", tmp_path / "feat.pth", PIPELINE, *sets(tiny_overrides)), "widths=[64,160,320,640]")
    refused(
        run("import", tmp_path / "feat.pth", PIPELINE, *sets([*tiny_overrides, *R25])), "FEAT", "resnet25"
    )


# --------------------------------------------------------------------------- (e) timm


def _timm_state(classes: int = 10) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=classes).state_dict()


def test_timm_files_load_without_their_classifier(tiny_overrides, tmp_path):
    from safetensors.torch import save_file

    state = _timm_state()
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "checkpoint.pth.tar")
    tiny = [*tiny_overrides, "backbone.name=timm:test_resnet", "backbone.widths=null"]
    for name in ("model.safetensors", "checkpoint.pth.tar"):
        ckpts = tmp_path / name.split(".")[0]
        result = run("import", tmp_path / name, PIPELINE, *sets(tiny), "--checkpoints", ckpts)
        assert result.exit_code == 0, result.output
        assert "dropped: fc.bias, fc.weight (the timm classifier" in result.output
        enc = checkpoint.load(ckpts / "tiny" / "pretrain" / "best.pt", stage="pretrain")["encoder"]
        assert set(enc) == {f"model.{k}" for k in state if not k.startswith("fc.")}
        assert all(torch.equal(enc[f"model.{k}"], v) for k, v in state.items() if not k.startswith("fc."))


def test_timm_hub_through_timm_with_the_download_stubbed(tiny_overrides, tmp_path, monkeypatch):
    import timm
    from timm.models import _hub

    model = timm.create_model("test_resnet", num_classes=10)
    _hub.save_for_hf(model, tmp_path / "hub", safe_serialization=True)
    asked = []

    def download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        path = tmp_path / "hub" / filename
        if not path.is_file():
            raise _hub.EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    monkeypatch.setattr(_hub, "hf_hub_download", download)
    tiny = [*tiny_overrides, "backbone.name=timm:test_resnet", "backbone.widths=null"]
    result = run(
        "import", "hf-hub:someone/test-resnet", PIPELINE, *sets(tiny), "--checkpoints", tmp_path / "c"
    )
    assert result.exit_code == 0, result.output
    assert ("someone/test-resnet", "config.json") in asked
    enc = checkpoint.load(tmp_path / "c" / "tiny" / "pretrain" / "best.pt", stage="pretrain")["encoder"]
    assert torch.equal(enc["model.conv1.0.weight"], model.state_dict()["conv1.0.weight"])
    other = [*tiny_overrides, "backbone.name=timm:resnet18", "backbone.widths=null"]
    refused(
        run("import", "hf-hub:someone/test-resnet", PIPELINE, *sets(other)),
        "--set backbone.name=timm:test_resnet",
    )


def test_paper_pipelines_refuse_timm_weights(tmp_path):
    """For real: no download is attempted, the pipeline's published number decides."""
    from safetensors.torch import save_file

    save_file(_timm_state(), str(tmp_path / "model.safetensors"))
    paper = sets(["backbone.name=timm:test_resnet", "backbone.widths=null"])
    for spec in (tmp_path / "model.safetensors", "hf-hub:timm/resnet18.a1_in1k"):
        refused(
            run("import", spec, "miniimagenet-1shot", *paper, "--checkpoints", tmp_path),
            "carries a published number (paper.acc",
        )


# --------------------------------------------------------------------------- refusals, through the command


def _write(tmp_path: Path, name: str, obj) -> Path:
    path = tmp_path / name
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        torch.save(obj, path)
    return path


CASES = {
    "missing file": (lambda p: p / "nope.pth", ["no such file"]),
    "folder without safetensors": (lambda p: p, ["folder without model.safetensors"]),
    "empty file": (lambda p: _write(p, "empty.pth", b""), ["is empty"]),
    "random bytes": (lambda p: _write(p, "r.bin", bytes(range(7, 250)) * 9), ["not a weights file"]),
    "yaml": (lambda p: _write(p, "p.yaml", b"name: x\nmeta:\n  way: 5\n"), ["pipeline (YAML) file"]),
    "text": (lambda p: _write(p, "w.txt", b"weights go here\n"), ["a text file"]),
    "pickled object": (
        lambda p: _write(p, "evil.pth", pickle.dumps({"params": RunsCodeTorch(p)})),
        ["holds Python objects"],
    ),
    "torch pickled object": (
        lambda p: _write(p, "evil2.pth", {"params": RunsCodeTorch(p)}),
        ["holds Python objects"],
    ),
    "truncated": (lambda p: _write(p, "t.pth", _truncated(p)), ["truncated or corrupt"]),
    "no tensors": (lambda p: _write(p, "n.pth", {"params": {"a": 1}}), ["holds no tensors"]),
    "unrecognised": (
        lambda p: _write(p, "u.pth", {"x.weight": torch.zeros(2)}),
        ["unrecognised layout", "x.weight"],
    ),
    "other layout": (
        lambda p: _write(
            p, "f.pth", {"params": {f"encoder.{k}": v for k, v in resnet12_blocks((8, 8, 16, 16)).items()}}
        ),
        ["a FEAT ResNet-12", "fits backbone resnet12", "backbone is resnet25"],
    ),
    "missing tensors": (
        lambda p: _write(
            p, "m.pth", _without(official_pretrain((8, 16, 16)), "layer3.3.conv2.weight", "layer2.1.bn1.bias")
        ),
        ["lacks 2 tensor(s)", "layer2.1.bn1.bias", "layer3.3.conv2.weight"],
    ),
    "extra tensors": (
        lambda p: _write(
            p, "e.pth", {**official_pretrain((8, 16, 16)), "layer3.4.conv1.weight": torch.zeros(1)}
        ),
        ["1 tensor(s) that the pipeline's resnet25 does not", "layer3.4.conv1.weight"],
    ),
    "other widths": (
        lambda p: _write(p, "w.pth", {"params": official_pretrain()}),
        ["has widths 160-320-640", "--set backbone.widths=[160,320,640]"],
    ),
    "wrong shape": (
        lambda p: _write(
            p, "s.pth", {**official_pretrain((8, 16, 16)), "conv1.weight": torch.zeros(4, 1, 3, 3)}
        ),
        ["conv1.weight has shape (4, 1, 3, 3)", "needs (4, 3, 3, 3)"],
    ),
}


class RunsCodeTorch:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self):
        return (open, (str(self.folder / "ran"), "w"))


def _without(sd: dict, *keys: str) -> dict:
    return {k: v for k, v in sd.items() if k not in keys}


def _truncated(folder: Path) -> bytes:
    torch.save({"params": official_pretrain((8, 16, 16))}, folder / "full.pth")
    return (folder / "full.pth").read_bytes()[:3000]


@pytest.mark.parametrize("case", list(CASES))
def test_refusals_are_one_line(case, tiny, tmp_path):
    make, fragments = CASES[case]
    (tmp_path / "in").mkdir()
    spec = make(tmp_path / "in")
    ckpts = tmp_path / "ckpts"
    refused(run("import", spec, PIPELINE, *sets(tiny), "--checkpoints", ckpts), *fragments)
    assert not ckpts.exists() and not (tmp_path / "in" / "ran").exists()


def test_unknown_format_is_refused_before_reading(tiny, tmp_path):
    refused(
        run("import", tmp_path / "nope.pth", PIPELINE, *sets(tiny), "--format", "keras"),
        "--format: unknown layout 'keras'",
        "mtl-pytorch-pretrain",
    )


def test_format_forces_a_layout(tiny, tiny_overrides, tmp_path):
    """An RFS file forced as FEAT: FEAT's reading finds no encoder. tensors, and says which it lacks."""
    torch.save({"model": resnet12_blocks((8, 8, 16, 16))}, tmp_path / "rfs.pth")
    args = ("--format", "feat-resnet12", "--checkpoints", tmp_path)
    refused(
        run("import", tmp_path / "rfs.pth", PIPELINE, *sets(tiny_overrides), *args),
        "lacks 96 tensor(s)",
        "encoder.layer1.0.conv1.weight",
    )
    torch.save({"model": official_pretrain((8, 16, 16))}, tmp_path / "o.pth")
    result = run(
        "import",
        tmp_path / "o.pth",
        PIPELINE,
        *sets(tiny),
        "--format",
        "mtl-pytorch-pretrain",
        "--checkpoints",
        tmp_path / "c",
    )
    assert result.exit_code == 0, result.output


def test_oversized_files_are_refused_before_reading(tiny, tmp_path, monkeypatch):
    torch.save({"params": official_pretrain((8, 16, 16))}, tmp_path / "big.pth")
    monkeypatch.setattr(files, "MAX_BYTES", 1000)
    refused(run("import", tmp_path / "big.pth", PIPELINE, *sets(tiny)), "mtl imports weights files up to")


def test_an_import_into_a_folder_in_use_is_refused(tiny, tmp_path):
    """A stage (or another import) holding the pretrain folder: the import stops in one line naming
    that process, and writes nothing."""
    import subprocess
    import sys

    torch.save({"params": official_pretrain(widths=(8, 16, 16))}, tmp_path / "max_acc.pth")
    folder = tmp_path / "ckpts" / "tiny" / "pretrain"
    folder.mkdir(parents=True)
    holder = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, b'%d\\n' % os.getpid())\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(folder / ".mtl.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline() == "held\n"
        result = run(
            "import", tmp_path / "max_acc.pth", PIPELINE, *sets(tiny), "--checkpoints", tmp_path / "ckpts"
        )
        refused(result, "is in use by another mtl run", f"(process {proc.pid})")
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert not (folder / "best.pt").exists()
