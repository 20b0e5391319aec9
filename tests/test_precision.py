"""Encoder precision (bf16 autocast where native) and torch.compile: the CPU runs both paths."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from mtl import config
from mtl.runtime import device as devices
from mtl.stages.metatest import metatest
from mtl.stages.metatrain import metatrain
from mtl.stages.pretrain import pretrain

CPU = torch.device("cpu")


def test_autocast_choices():
    assert isinstance(devices.autocast(CPU, "fp32"), contextlib.nullcontext)
    with devices.autocast(CPU, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    auto = devices.autocast(CPU, "auto")
    assert isinstance(auto, contextlib.nullcontext) != devices.bf16_by_default(CPU)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "auto"), [(True, True, "bf16"), (False, True, "fp32"), (False, False, "fp32")]
)
def test_auto_is_bf16_only_where_it_was_measured_to_keep_accuracy(monkeypatch, amx, avx512_bf16, auto):
    """CPUs with AMX: bf16; AVX512-BF16 without AMX (AMD Zen 4), older CPUs and GPUs: fp32, unless
    asked for."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert devices.encoder_precision(CPU, "auto") == auto
    assert (
        devices.encoder_precision(CPU, "bf16") == "bf16" and devices.encoder_precision(CPU, "fp32") == "fp32"
    )
    cuda = torch.device("cuda")
    assert (
        devices.encoder_precision(cuda, "auto") == "fp32"
        and devices.encoder_precision(cuda, "bf16") == "bf16"
    )


def test_precision_is_validated():
    with pytest.raises(Exception, match="precision"):
        config.load(None, ["precision=fp16"])


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_three_stages_in_either_precision(tiny_overrides, tmp_path, precision):
    cfg = config.load(None, [*tiny_overrides, f"precision={precision}"])
    pretrain(cfg, tmp_path, quiet=True)
    metatrain(cfg, tmp_path, quiet=True)
    rows = {r["method"]: r for r in metatest(cfg, tmp_path, quiet=True)["rows"]}
    assert all(math.isfinite(r["acc"]) and 0 <= r["acc"] <= 100 for r in rows.values())


def test_compile_keeps_outputs_and_state_dict_keys():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    keys = list(model.state_dict())
    compiled = devices.maybe_compile(model, True)
    assert compiled is model and list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
