"""fp32 CPU runtimes run the blocks' linear layers as oneDNN products with bias / GELU fused."""

from __future__ import annotations

import math

import pytest
import torch

import hear_mwmae
from hear_mwmae import cpu_fused
from hear_mwmae.cpu_fused import FusedLinear

pytestmark = pytest.mark.skipif(not cpu_fused.available(), reason="torch without oneDNN")


@pytest.mark.parametrize("act,gelu", [("none", None), ("gelu-tanh", "tanh"), ("gelu-erf", "none")])
def test_fused_linear_is_linear_then_gelu(act, gelu):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80)
    x = torch.randn(3, 7, 48)
    ref = layer(x)
    if gelu is not None:
        ref = torch.nn.functional.gelu(ref, approximate=gelu)
    got = FusedLinear(layer, act)(x)
    assert got.shape == (3, 7, 80)
    torch.testing.assert_close(got, ref.detach(), rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="float32"):
        FusedLinear(layer, act)(x.double())


def test_fp32_cpu_runtime_is_fused_and_unchanged(tiny_checkpoint):
    fused = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu")
    plain = hear_mwmae.runtime.MWMAERuntime(
        hear_mwmae.checkpoint.build_encoder(hear_mwmae.checkpoint.load_checkpoint(tiny_checkpoint)),
        fused.config, device="cpu", fuse=False)
    assert fused.fused and not plain.fused
    block = fused.encoder.blocks[0]
    assert all(isinstance(m, FusedLinear) for m in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2))
    assert isinstance(block.mlp.act, torch.nn.Identity) and block.mlp.fc1.act == "gelu-tanh"
    assert isinstance(plain.encoder.blocks[0].mlp.fc1, torch.nn.Linear)
    t = torch.arange(50000) / 16000
    audio = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) for f in (330.0, 2000.0)]).float()
    a = hear_mwmae.get_timestamp_embeddings(audio, fused)[0]
    b = hear_mwmae.get_timestamp_embeddings(audio, plain)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_other_precisions_are_not_fused(tiny_checkpoint, precision):
    model = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu", precision=precision)
    assert not model.fused
    assert not any(isinstance(m, FusedLinear) for m in model.modules())
