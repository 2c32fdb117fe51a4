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


def test_int8_is_not_fused(tiny_checkpoint):
    model = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu", precision="int8")
    assert not model.fused
    assert not any(isinstance(m, FusedLinear) for m in model.modules())


needs_bf16 = pytest.mark.skipif(not cpu_fused.available(torch.bfloat16), reason="oneDNN without bfloat16 here")


@needs_bf16
@pytest.mark.parametrize("act,gelu", [("none", None), ("gelu-tanh", "tanh"), ("gelu-erf", "none")])
def test_bf16_fused_linear_is_the_bf16_product(act, gelu):
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96)
    x = torch.randn(5, 64)
    fused = FusedLinear(layer, act, torch.bfloat16)
    assert fused.weight.dtype == torch.bfloat16  # converted once, here
    ref = torch.nn.functional.linear(x.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16()).float()
    if gelu is not None:
        ref = torch.nn.functional.gelu(ref, approximate=gelu)
    for inp in (x, x.bfloat16()):  # float32 input is cast
        got = fused(inp)
        assert got.dtype == torch.bfloat16 and got.shape == (5, 96)
        torch.testing.assert_close(got.float(), ref.detach(), rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="dtype"):
        FusedLinear(layer, act, torch.float16)


@needs_bf16
def test_bf16_cpu_runtime_holds_bf16_weights_and_follows_fp32(tiny_checkpoint, tiny_model):
    bf16 = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu", precision="bf16")
    assert bf16.fused
    block = bf16.encoder.blocks[0]
    assert all(isinstance(m, FusedLinear) and m.weight.dtype == torch.bfloat16
               for m in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2))
    assert block.norm1.weight.dtype == torch.float32  # LayerNorm and the residual stream stay float32
    t = torch.arange(50000) / 16000
    audio = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) for f in (330.0, 2000.0)]).float()
    a = hear_mwmae.get_timestamp_embeddings(audio, bf16)[0]
    b = hear_mwmae.get_timestamp_embeddings(audio, tiny_model)[0]
    assert a.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(a.double().flatten(0, 1), b.double().flatten(0, 1), dim=-1)
    assert cos.min() > 0.995 and 1e-5 < (a - b).norm() / b.norm() < 1e-2
    unfused = hear_mwmae.runtime.MWMAERuntime(
        hear_mwmae.checkpoint.build_encoder(hear_mwmae.checkpoint.load_checkpoint(tiny_checkpoint)),
        bf16.config, device="cpu", precision="bf16", fuse=False)  # autocast, as on GPUs
    c = hear_mwmae.get_timestamp_embeddings(audio, unfused)[0]
    assert (a - c).norm() / c.norm() < 1e-2


def test_fusing_needs_fp32_or_bf16(tiny_checkpoint):
    ckpt = hear_mwmae.checkpoint.load_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match="fuse=True needs"):
        hear_mwmae.runtime.MWMAERuntime(hear_mwmae.checkpoint.build_encoder(ckpt), ckpt.config, device="cpu",
                                        precision="fp16", fuse=True)
