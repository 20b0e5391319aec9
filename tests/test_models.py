import math
from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import mtl.models  # noqa: F401  (registers the backbones with timm)
from mtl import config
from mtl.errors import MtlError
from mtl.models.backbone import TimmBackbone, build_backbone
from mtl.models.norm import ShiftBatchNorm2d
from mtl.models.resnet import ResNet12, ResNet25
from mtl.models.resnet12_tf import ResNet12TF
from mtl.training.run import Run

TINY12 = (8, 16, 16, 32)
TINY25 = (8, 16, 32)


def _convs(model: nn.Module, kernel: int) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (kernel, kernel)]


@pytest.mark.parametrize(
    ("name", "dim", "fmap"),
    [("resnet12", 640, 2), ("resnet12_paper", 512, 2), ("resnet12_tf", 512, 2), ("resnet25", 640, 4)],
)
def test_default_feature_dims(name, dim, fmap):
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model(x)
        fm = model.forward_features(x)
    assert model.num_features == dim
    assert feats.shape == (2, dim)
    assert fm.shape == (2, dim, fmap, fmap)
    torch.testing.assert_close(feats, fm.mean(dim=(2, 3)))


def test_architectures_match_the_papers():
    r12 = timm.create_model("resnet12_paper", num_classes=0)
    assert len(_convs(r12, 3)) == 12 and len(_convs(r12, 1)) == 4
    blocks = (r12.layer1, r12.layer2, r12.layer3, r12.layer4)
    assert [b.conv3.out_channels for b in blocks] == [64, 128, 256, 512]
    assert isinstance(r12.layer1.act, nn.LeakyReLU) and r12.layer1.act.negative_slope == 0.1

    r25 = timm.create_model("resnet25", num_classes=0)
    assert len(_convs(r25, 3)) == 25
    assert r25.conv1.out_channels == 80
    assert [len(s) for s in (r25.layer1, r25.layer2, r25.layer3)] == [4, 4, 4]
    assert [s[0].conv1.stride for s in (r25.layer1, r25.layer2, r25.layer3)] == [(2, 2)] * 3
    # 80x80 input -> 10x10 map, as in the official code
    assert r25.forward_features(torch.randn(1, 3, 80, 80)).shape == (1, 640, 10, 10)


def test_timm_create_model_after_import():
    m = timm.create_model("resnet12", num_classes=0)
    assert isinstance(m, ResNet12) and m.num_features == 640
    assert m.pretrained_cfg["input_size"] == (3, 84, 84)

    m = timm.create_model("resnet12", widths=(32, 64, 128, 256), in_chans=1)
    assert m.layer1.conv1.in_channels == 1 and m.num_features == 256
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 1000)  # timm's default head

    m = timm.create_model("resnet25", num_classes=5).eval()
    assert isinstance(m, ResNet25)
    head = m.get_classifier()
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (640, 5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = m(x)
        torch.testing.assert_close(logits, head(m.forward_features(x).mean(dim=(2, 3))))
        assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, 640)
    m.reset_classifier(0)
    assert m.num_classes == 0 and isinstance(m.get_classifier(), nn.Identity)
    assert m(x).shape == (2, 640)


def test_features_only():
    f = timm.create_model("resnet12", widths=TINY12, features_only=True)
    shapes = [o.shape[1:] for o in f(torch.randn(1, 3, 32, 32))]
    assert shapes == [(8, 16, 16), (16, 8, 8), (16, 4, 4), (32, 2, 2)]


def test_widths_override_and_in_chans():
    m = build_backbone("resnet12", widths=TINY12, in_chans=1)
    assert m.num_features == 32 and m(torch.randn(3, 1, 28, 28)).shape == (3, 32)
    m = build_backbone("resnet25", widths=TINY25)
    assert m.conv1.out_channels == 4 and m(torch.randn(3, 3, 20, 20)).shape == (3, 32)


def test_init():
    m = build_backbone("resnet12", widths=(8, 16, 16, 128))
    w = m.layer4.conv2.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    expected = math.sqrt(2.0 / (1 + 0.1**2)) / math.sqrt(fan_out)
    assert abs(w.std().item() / expected - 1) < 0.05
    for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_drop_rate_is_dropout_on_pooled_features():
    torch.manual_seed(0)
    m = build_backbone("resnet12", widths=TINY12, drop_rate=0.5, pretraining=True)
    fmap = torch.rand(4, 32, 2, 2) + 0.1
    pooled = fmap.mean(dim=(2, 3))
    m.eval()
    torch.testing.assert_close(m.forward_head(fmap), pooled)
    m.train()
    out = m.forward_head(fmap)
    kept = out != 0
    assert 0 < kept.sum() < kept.numel()
    torch.testing.assert_close(out[kept], 2 * pooled[kept])


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    m = build_backbone("resnet12", widths=TINY12).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        m_cl = m.to(memory_format=torch.channels_last)
        torch.testing.assert_close(m_cl(x.to(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.1, atol=0.1)


def test_timm_backbones():
    m = build_backbone("timm:resnet10t", in_chans=1)
    assert isinstance(m, TimmBackbone) and m.num_features == 512
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 512)
    # MobileNetV3's pre-logits conv makes the output wider than timm's num_features (576)
    m = build_backbone("timm:tf_mobilenetv3_small_minimal_100").eval()
    assert m.model.num_features == 576 and m.num_features == 1024
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 1024)


def test_errors():
    with pytest.raises(MtlError) as err:
        build_backbone("xyz")
    assert str(err.value) == (
        "unknown backbone 'xyz': use conv4, resnet12, resnet12_paper, resnet12_tf, resnet25 or timm:<model>"
    )
    with pytest.raises(MtlError, match="unknown timm model 'not_a_model'"):
        build_backbone("timm:not_a_model")
    with pytest.raises(MtlError, match="widths only applies"):
        build_backbone("timm:resnet10t", widths=(8, 8, 8, 8))
    with pytest.raises(MtlError, match="resnet12 needs 4 positive widths"):
        build_backbone("resnet12", widths=(8, 8, 8))
    with pytest.raises(MtlError, match="resnet25 needs 3 positive widths"):
        build_backbone("resnet25", widths=(8, 8, 8, 8))
    with pytest.raises(MtlError, match="no pretrained weights"):
        timm.create_model("resnet12", pretrained=True)


# --------------------------------------------------------------------------- resnet12_tf


def _tf_block_reference(block: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
    """One block of the TF code, written plainly: three (conv + bias, BN without γ, LeakyReLU(0.1)),
    plus a bare 1x1-conv shortcut, summed with no activation, then a 2x2 'VALID' max-pool."""
    out = x
    for i in (1, 2, 3):
        conv, bn = getattr(block, f"conv{i}"), getattr(block, f"bn{i}")
        out = F.conv2d(out, conv.weight, conv.bias, padding=1)
        stats = (None, None) if training else (bn.running_mean, bn.running_var)
        out = F.batch_norm(out, *stats, None, bn.bias, training=training, eps=1e-3)
        out = F.leaky_relu(out, 0.1)
    return F.max_pool2d(out + F.conv2d(x, block.shortcut.weight), 2)


def _tf_reference(model: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 512): the whole TF forward (4 blocks, then the global average)."""
    for block in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = _tf_block_reference(block, x, training)
    return x.mean(dim=(2, 3))


def _trained_statistics(model: nn.Module, size: int = 32) -> nn.Module:
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size) * 2 + 0.5)
    return model.eval()


def test_resnet12_tf_layers_block_by_block():
    model = build_backbone("resnet12_tf", pretraining=True)
    assert isinstance(model, ResNet12TF) and model.num_features == 512
    chans = (3, 64, 128, 256, 512)
    for i, block in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        kinds = [type(m) for m in block.children()]
        triple = [nn.Conv2d, ShiftBatchNorm2d, nn.LeakyReLU]
        assert kinds == [*triple, *triple, *triple, nn.Conv2d, nn.MaxPool2d, nn.Dropout]
        for j in (1, 2, 3):
            conv, bn, act = (getattr(block, f"{n}{j}") for n in ("conv", "bn", "act"))
            assert conv.in_channels == (chans[i] if j == 1 else chans[i + 1])
            assert conv.out_channels == chans[i + 1] and conv.kernel_size == (3, 3)
            assert conv.stride == (1, 1) and conv.padding == (1, 1) and conv.bias is not None
            assert not conv.bias.any()  # TF's biases start at 0
            assert bn.eps == 1e-3 and bn.momentum == 0.1
            assert [n for n, _ in bn.named_parameters()] == ["bias"]  # β only: tf.contrib's scale=False
            assert "weight" in dict(bn.named_buffers()) and torch.equal(bn.weight, torch.ones(chans[i + 1]))
            assert not bn.bias.any()
            assert act.negative_slope == 0.1
        sc = block.shortcut
        assert (sc.in_channels, sc.out_channels, sc.kernel_size) == (chans[i], chans[i + 1], (1, 1))
        assert sc.bias is None and sc.ss_exempt  # bare: no bias, no BN, no SS
        assert block.pool.kernel_size == 2 and block.pool.stride == 2 and not block.pool.ceil_mode
        assert block.drop.p == 0.1
    # Without pretraining nothing drops.
    plain = build_backbone("resnet12_tf")
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())


def test_resnet12_tf_init_is_glorot_uniform():
    torch.manual_seed(0)
    model = build_backbone("resnet12_tf")
    for conv in (model.layer4.conv2, model.layer3.shortcut):
        w = conv.weight
        fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        assert w.abs().max() <= limit and w.abs().max() > 0.99 * limit
        assert abs(w.std().item() / (limit / math.sqrt(3)) - 1) < 0.02  # uniform, not normal


def test_resnet12_tf_has_no_activation_after_the_residual_sum():
    torch.manual_seed(0)
    model = _trained_statistics(build_backbone("resnet12_tf", widths=TINY12))
    block = model.layer2
    x = torch.randn(4, 8, 16, 16)
    with torch.no_grad():
        out = block(x)
        torch.testing.assert_close(out, _tf_block_reference(block, x, training=False))
        # A LeakyReLU after the sum would shrink every negative output tenfold; here they stay.
        assert out.min() < -0.5
        leaky = F.leaky_relu(_tf_block_reference(block, x, training=False), 0.1)
        assert not torch.allclose(out, leaky)


@pytest.mark.parametrize("training", [False, True])
def test_resnet12_tf_matches_a_plain_functional_forward(training):
    torch.manual_seed(0)
    model = _trained_statistics(build_backbone("resnet12_tf", widths=TINY12)).train(training)
    x = torch.randn(6, 3, 32, 32)
    mean, var = model.layer1.bn1.running_mean.clone(), model.layer1.bn1.running_var.clone()
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, _tf_reference(model, x, training), rtol=1e-5, atol=1e-5)
    if training:  # the running statistics follow the batches with PyTorch's momentum 0.1
        y = F.conv2d(x, model.layer1.conv1.weight, model.layer1.conv1.bias, padding=1)
        F.batch_norm(y, mean, var, None, None, training=True, momentum=0.1, eps=1e-3)
        torch.testing.assert_close(model.layer1.bn1.running_mean, mean)
        torch.testing.assert_close(model.layer1.bn1.running_var, var)


def test_resnet12_tf_parameter_count_matches_the_tf_code():
    # Per block of input width i and width o (tensorflow/models/resnet12.py): 3x3 conv weights
    # 9·i·o + 9·o² + 9·o², their biases 3·o, the 1x1 shortcut i·o, the BN shifts β 3·o (no γ):
    # 10·i·o + 18·o² + 6·o.
    def block(i: int, o: int) -> int:
        return 10 * i * o + 18 * o * o + 6 * o

    expected = block(3, 64) + block(64, 128) + block(128, 256) + block(256, 512)
    assert expected == 76_032 + 377_600 + 1_508_864 + 6_032_384 == 7_994_880
    model = build_backbone("resnet12_tf", pretraining=True)
    assert sum(p.numel() for p in model.parameters()) == expected
    # widths and in_chans are accepted as for resnet12
    small = build_backbone("resnet12_tf", widths=TINY12, in_chans=1)
    chans = (1, *TINY12)
    assert sum(p.numel() for p in small.parameters()) == sum(
        block(i, o) for i, o in zip(chans, chans[1:], strict=False)
    )


@pytest.mark.parametrize("size", [84, 32])
def test_resnet12_tf_feature_dims(size):
    model = build_backbone("resnet12_tf").eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        fmap, feats = model.forward_features(x), model(x)
    assert fmap.shape == (2, 512, size // 16, size // 16)  # 5x5 at 84x84: TF's 5x5 average pool is global
    torch.testing.assert_close(feats, fmap.mean(dim=(2, 3)))


def test_resnet12_tf_through_timm():
    m = timm.create_model("resnet12_tf", num_classes=5, widths=TINY12).eval()
    assert isinstance(m, ResNet12TF) and m.pretrained_cfg["input_size"] == (3, 84, 84)
    assert (
        m.block_drop_rate == 0.1
        and timm.create_model("resnet12_tf", block_drop_rate=0.3).layer1.drop.p == 0.3
    )
    head = m.get_classifier()
    assert (head.in_features, head.out_features) == (32, 5) and not head.bias.any()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), head(m.forward_head(m.forward_features(x), pre_logits=True)))
    m.reset_classifier(0)
    assert m(x).shape == (2, 32)
    f = timm.create_model("resnet12_tf", widths=TINY12, features_only=True)
    assert [o.shape[1:] for o in f(x)] == [(8, 16, 16), (16, 8, 8), (16, 4, 4), (32, 2, 2)]
    with pytest.raises(MtlError, match="resnet12_tf needs 4 positive widths"):
        build_backbone("resnet12_tf", widths=(8, 8, 8))


@pytest.mark.parametrize("name", ["resnet12_tf", "resnet12", "timm:resnet10t"])
def test_dropout_only_when_built_for_pretraining(name):
    widths = TINY12 if name.startswith("resnet12") else None
    torch.manual_seed(0)
    pre = build_backbone(name, widths=widths, drop_rate=0.2, pretraining=True)
    torch.manual_seed(0)
    plain = build_backbone(name, widths=widths, drop_rate=0.2)
    inner = (lambda m: m.model) if name.startswith("timm:") else (lambda m: m)
    assert inner(pre).drop_rate == 0.2 and inner(plain).drop_rate == 0.0
    if name == "resnet12_tf":
        assert sum(isinstance(m, nn.Dropout) and m.p == 0.1 for m in pre.modules()) == 4
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in plain.modules())
    # Dropout has no parameters: the two builds have one state dict, and checkpoints move between them.
    a, b = pre.state_dict(), plain.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pre.eval()(x), plain.eval()(x))


def test_run_backbone_passes_pretraining_through():
    cfg = config.load(
        None, ["backbone.name=resnet12_tf", "backbone.widths=[8,8,16,16]", "backbone.drop_rate=0.3"]
    )
    run = SimpleNamespace(cfg=cfg)
    pre, plain = Run.backbone(run, pretraining=True), Run.backbone(run)
    assert pre.drop_rate == 0.3 and pre.layer1.drop.p == 0.1
    assert plain.drop_rate == 0.0 and isinstance(plain.layer1.drop, nn.Identity)


def test_resnet12_tf_state_dict_loads_into_a_fresh_network():
    torch.manual_seed(0)
    trained = _trained_statistics(build_backbone("resnet12_tf", widths=TINY12, pretraining=True))
    fresh = build_backbone("resnet12_tf", widths=TINY12).eval()
    x = torch.randn(2, 3, 32, 32)
    fresh.load_state_dict(trained.state_dict())
    assert [n for n, _ in fresh.layer1.bn1.named_parameters()] == ["bias"]
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x))
