import math

import pytest
import timm
import torch
import torch.nn as nn

import mtl  # noqa: F401  (registers the backbones with timm)
from mtl.errors import MtlError
from mtl.models.backbone import TimmBackbone, build_backbone
from mtl.models.resnet import ResNet12, ResNet25

TINY12 = (8, 16, 16, 32)
TINY25 = (8, 16, 32)


def _convs(model: nn.Module, kernel: int) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (kernel, kernel)]


@pytest.mark.parametrize(
    ("name", "dim", "fmap"), [("resnet12", 640, 2), ("resnet12_paper", 512, 2), ("resnet25", 640, 4)]
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
    m = build_backbone("resnet12", widths=TINY12, drop_rate=0.5)
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
    assert str(err.value) == "unknown backbone 'xyz': use resnet12, resnet12_paper, resnet25 or timm:<model>"
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
