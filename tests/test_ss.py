import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame

from mtl.errors import MtlError
from mtl.models import ss
from mtl.models.backbone import build_backbone


def _tiny_resnet12(seed: int = 0, num_classes: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_backbone("resnet12", widths=(8, 16, 16, 32))
    if num_classes:
        model.reset_classifier(num_classes)
    # non-trivial running statistics so eval-mode BN is not the identity
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    return model.eval()


def _randomize(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in ss.ss_modules(model):
            m.scale.copy_(1 + 0.3 * torch.randn(m.scale.shape, generator=gen))
            if m.shift is not None:
                m.shift.copy_(0.1 * torch.randn(m.shift.shape, generator=gen))


def _n_convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize(
    "name", ["resnet12", "timm:tf_mobilenetv3_small_minimal_100", "timm:test_resnet", "resnet25"]
)
def test_attach_keeps_output_at_init(name):
    torch.manual_seed(0)
    widths = {"resnet12": (8, 16, 16, 32), "resnet25": (8, 16, 32)}.get(name)
    model = build_backbone(name, widths=widths).eval()
    ref = copy.deepcopy(model)
    n_convs = _n_convs(model)
    ss.attach(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    modules = dict(ss.ss_modules(model))
    assert len(modules) == n_convs
    for conv_name, m in modules.items():
        assert m.scale.shape == (*m.conv.weight.shape[:2], 1, 1)
        assert torch.equal(m.scale, torch.ones_like(m.scale))
        if name == "resnet25" and conv_name != "conv1":  # the official layout: a shift on the stem only
            assert m.shift is None
            continue
        assert m.shift.shape == (m.conv.out_channels,)
        assert not m.shift.any()


def test_conv2d_same_keeps_its_padding():
    model = build_backbone("timm:tf_mobilenetv3_small_minimal_100").eval()
    ss.attach(model)
    same = [m for _, m in ss.ss_modules(model) if type(m.conv) is Conv2dSame]
    assert len(same) == 5 and any(m.conv.groups > 1 for m in same)

    torch.manual_seed(0)
    conv = Conv2dSame(4, 6, 3, stride=2, bias=True)
    layer = ss.SSConv2d(copy.deepcopy(conv))
    _randomize(layer)
    ref = copy.deepcopy(conv)
    with torch.no_grad():
        ref.weight.mul_(layer.scale)
        ref.bias.add_(layer.shift)
    x = torch.randn(2, 4, 10, 10)  # even size: TF "SAME" pads asymmetrically here
    out = layer(x)
    assert out.shape == (2, 6, 5, 5)
    torch.testing.assert_close(out, ref(x))


@pytest.mark.parametrize(
    ("conv", "pad"),
    [
        (nn.Conv2d(4, 6, 3, stride=2, padding=1), None),
        (nn.Conv2d(4, 6, 3, padding=1, bias=False), None),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), None),
        (nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), "reflect"),
    ],
)
def test_modulated_conv_matches_reference(conv, pad):
    torch.manual_seed(0)
    layer = ss.SSConv2d(conv)
    assert layer.scale.shape == (conv.out_channels, conv.in_channels // conv.groups, 1, 1)
    assert layer.shift.shape == (conv.out_channels,)
    _randomize(layer)
    x = torch.randn(2, conv.in_channels, 9, 9)
    w = conv.weight * layer.scale
    b = layer.shift if conv.bias is None else conv.bias + layer.shift
    if pad is None:
        ref = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    else:
        ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode=pad), w, b, conv.stride, 0, conv.dilation, conv.groups)
    torch.testing.assert_close(layer(x), ref)


@pytest.mark.parametrize("train_bn", [False, True])
def test_gradients_reach_only_ss(train_bn):
    model = ss.attach(_tiny_resnet12(num_classes=5), train_bn=train_bn)
    _randomize(model)
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()

    ss_params = {id(p) for p in ss.parameters(model)}
    bn_affine = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)}
    assert len(ss_params) == 2 * _n_convs(model)
    assert {id(p) for p in ss.bn_parameters(model)} == (bn_affine if train_bn else set())
    # Every convolution of ResNet-12 feeds a batch norm: with batch statistics (train_bn) that norm
    # cancels the conv's shift, so only the scales (and BN affine weights) train.
    scales = {id(m.scale) for _, m in ss.ss_modules(model)}
    expected = scales | bn_affine if train_bn else ss_params
    assert {id(p) for p in ss.parameters(model, trainable=True)} == (scales if train_bn else ss_params)
    for p in model.parameters():
        assert (p.grad is not None) == (id(p) in expected)
        assert p.requires_grad == (id(p) in expected)
        if p.grad is not None:
            assert p.grad.abs().sum() > 0


def test_attach_twice_does_not_double_wrap():
    model = ss.attach(_tiny_resnet12())
    _randomize(model)
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        frozen_out = model(x)
    scales = [m.scale.detach().clone() for _, m in ss.ss_modules(model)]
    ss.attach(model, train_bn=True)
    assert [k for k in model.state_dict() if not k.endswith("num_batches_tracked")] == keys
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), frozen_out, rtol=1e-4, atol=1e-5)
    assert all(type(m.conv) is nn.Conv2d for _, m in ss.ss_modules(model))
    for before, (_, m) in zip(scales, ss.ss_modules(model), strict=True):
        assert torch.equal(before, m.scale)
    assert len(list(ss.bn_parameters(model))) == 2 * 16  # 4 blocks x (3 conv BNs + 1 shortcut BN)
    ss.attach(model)
    assert list(ss.bn_parameters(model)) == []


def test_state_dict_round_trip():
    model = ss.attach(_tiny_resnet12(seed=0))
    _randomize(model)
    fresh = ss.attach(_tiny_resnet12(seed=1))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), model(x))
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(fresh(x), model(x))
    assert "layer1.conv1.conv.weight" in model.state_dict() and "layer1.conv1.scale" in model.state_dict()


def test_channels_last():
    model = ss.attach(_tiny_resnet12())
    _randomize(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet12", "resnet25", "timm:test_resnet"])
def test_frozen_bn_is_folded_into_the_ss_conv_with_the_same_output_and_gradients(name):
    torch.manual_seed(0)
    widths = {"resnet12": (8, 16, 16, 32), "resnet25": (8, 16, 32)}.get(name)
    net = build_backbone(name, widths=widths)
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32))  # running statistics that are not the identity
    plain = ss.attach(copy.deepcopy(net), train_bn=True).eval()  # nn.BatchNorm2d, eval mode
    for p in ss.bn_parameters(plain):
        p.requires_grad_(False)
    for p in ss.parameters(plain):  # eval-mode BN cancels no shift
        p.requires_grad_(True)
    folded = ss.attach(net)
    _randomize(plain)
    _randomize(folded)
    n_folded = sum(isinstance(m, ss.FoldedBatchNorm2d) for m in folded.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    # timm's test_resnet has one BN after a conv nested in a Sequential: that one stays a frozen BN.
    assert n_folded == (n_bn - 1 if name.startswith("timm") else n_bn)
    x = torch.randn(4, 3, 32, 32)
    out_plain, out_folded = plain(x), folded(x)
    torch.testing.assert_close(out_folded, out_plain, rtol=1e-4, atol=1e-5)
    out_plain.square().sum().backward()
    out_folded.square().sum().backward()
    for a, b in zip(ss.parameters(folded), ss.parameters(plain), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)
    # The folded network's state dict is the plain one's without the BN batch counters.
    plain_keys = {k for k in plain.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(folded.state_dict()) == plain_keys


def test_a_bn_whose_conv_output_is_also_used_elsewhere_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the raw conv output feeds the sum too

    torch.manual_seed(0)
    model = Branchy()
    model.bn.running_mean.fill_(0.5)
    model.bn.running_var.fill_(4.0)
    ref = copy.deepcopy(model).eval()
    ss.attach(model)
    assert not any(isinstance(m, ss.FoldedBatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)


def test_bare_conv_is_rejected():
    with pytest.raises(MtlError, match="wrap a bare conv"):
        ss.attach(nn.Conv2d(3, 3, 3))
    with pytest.raises(TypeError):
        ss.SSConv2d(nn.Linear(3, 3))


# --------------------------------------------------------------------------- convolutions without SS


def _tiny_resnet12_tf(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_backbone("resnet12_tf", widths=(8, 16, 16, 32))
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32) + 0.3)  # running statistics that are not the identity
    return model.eval()


def test_an_ss_exempt_conv_stays_a_plain_frozen_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))
    model[2].ss_exempt = True
    ref = copy.deepcopy(model)
    ss.attach(model)
    assert isinstance(model[0], ss.SSConv2d) and type(model[2]) is nn.Conv2d
    assert [name for name, _ in ss.ss_modules(model)] == ["0"]
    assert not any(p.requires_grad for p in model[2].parameters())
    assert "2.weight" in model.state_dict() and "2.scale" not in model.state_dict()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_resnet12_tf_ss_weights_match_the_tf_code():
    model = ss.attach(build_backbone("resnet12_tf"))

    # tensorflow/models/resnet12.py, construct_residual_block_ss_weights: per block of input width i
    # and width o, scales i·o + o² + o² for the three 3x3 convs and shifts 3·o; none for the shortcut.
    def block(i: int, o: int) -> int:
        return i * o + 2 * o * o + 3 * o

    expected = block(3, 64) + block(64, 128) + block(128, 256) + block(256, 512)
    assert expected == 8_576 + 41_344 + 164_608 + 656_896 == 871_424
    assert sum(p.numel() for p in ss.parameters(model)) == expected
    blocks = (model.layer1, model.layer2, model.layer3, model.layer4)
    assert [name for name, _ in ss.ss_modules(model.layer1)] == ["conv1", "conv2", "conv3"]
    for b in blocks:
        assert type(b.shortcut) is nn.Conv2d and not b.shortcut.weight.requires_grad
    assert len(dict(ss.ss_modules(model))) == 12


@pytest.mark.parametrize("train_bn", [False, True])
def test_resnet12_tf_attach_keeps_output_and_gamma_free_bn(train_bn):
    model = _tiny_resnet12_tf()
    ref = copy.deepcopy(model)
    ss.attach(model, train_bn=train_bn)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    folded = [m for m in model.modules() if isinstance(m, ss.FoldedBatchNorm2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if train_bn:  # β trainable, γ fixed at one and no parameter
        assert not folded and len(bns) == 12
        assert {id(p) for p in ss.bn_parameters(model)} == {id(m.bias) for m in bns}
        for bn in bns:
            assert [n for n, _ in bn.named_parameters()] == ["bias"] and torch.equal(
                bn.weight, torch.ones(bn.num_features)
            )
    else:  # every frozen BN was folded into the SS conv before it
        assert len(folded) == 12 and not bns
        assert list(ss.bn_parameters(model)) == []
    model.train()
    model(x).square().sum().backward()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    # With batch statistics (train_bn) every 3x3 conv's shift is cancelled by the BN after it.
    expected = {id(p) for p in [*ss.parameters(model, trainable=True), *ss.bn_parameters(model)]}
    assert trainable == expected
    shifts = {id(m.shift) for _, m in ss.ss_modules(model)}
    assert (shifts <= trainable) == (not train_bn) and not (train_bn and shifts & trainable)


def test_resnet12_tf_attach_again_keeps_gamma_fixed():
    model = ss.attach(_tiny_resnet12_tf())
    _randomize(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        frozen_out = model(x)
    ss.attach(model, train_bn=True)  # unfreezes the folded BNs again
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 12 and len(list(ss.bn_parameters(model))) == 12
    assert all([n for n, _ in bn.named_parameters()] == ["bias"] and bn.eps == 1e-3 for bn in bns)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), frozen_out, rtol=1e-4, atol=1e-5)
    ss.attach(model)
    assert sum(isinstance(m, ss.FoldedBatchNorm2d) for m in model.modules()) == 12
    with torch.no_grad():
        torch.testing.assert_close(model(x), frozen_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train_bn", [False, True])
def test_resnet12_tf_state_dict_round_trips(train_bn):
    pretrained = _tiny_resnet12_tf(seed=0).state_dict()
    model = _tiny_resnet12_tf(seed=1)
    model.load_state_dict(pretrained)  # a pretrained network into a fresh one, then SS
    ss.attach(model, train_bn=train_bn)
    _randomize(model)
    fresh = ss.attach(_tiny_resnet12_tf(seed=2), train_bn=train_bn)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), model(x))
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(fresh(x), model(x))
    keys = set(model.state_dict())
    assert {"layer1.conv1.conv.weight", "layer1.conv1.conv.bias", "layer1.conv1.scale"} <= keys
    assert "layer1.shortcut.weight" in keys and "layer1.shortcut.scale" not in keys
