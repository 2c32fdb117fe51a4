"""CPU inference: the encoder blocks' linear layers as oneDNN products with the bias (and, for
`mlp.fc1`, the GELU) applied inside the product, in float32 or bfloat16; and what the CPU's
oneDNN kernels may use (VNNI int8 dot products, native bfloat16, AMX).

Eager `nn.Linear` on the CPU first copies the bias into every output row and then runs the
product on top of it (one extra pass over each output), and the MLP's GELU is one more pass
over the (tokens, 4 D) activations. `fuse_encoder` swaps `attn.qkv`, `attn.proj`, `mlp.fc1`
(+ `mlp.act`) and `mlp.fc2` of every block for `FusedLinear`, in place, once, when a CPU
runtime is built:
    float32   the same float32 product (results differ from `nn.Linear` by rounding only, ~1e-6)
    bfloat16  weights converted to bfloat16 once, here (autocast would convert them again on
              every call); inputs cast to bfloat16, outputs bfloat16. LayerNorm, the residual
              stream and the patch embedding stay float32; attention runs in bfloat16 because
              q, k, v come out of `attn.qkv` in bfloat16.
Nothing changes where torch has no oneDNN (`available()` is False) or for other devices.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import nn

# our activation name -> oneDNN's post-op (name, algorithm); "gelu" with "none" = exact (erf) GELU
POST_OPS = {"none": ("none", ""), "gelu-tanh": ("gelu", "tanh"), "gelu-erf": ("gelu", "none")}
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below AVX-512 VNNI / AVX-VNNI / native bfloat16
_BELOW_AVX512_VNNI = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE"}
_BELOW_AVX_VNNI = {"SSE41", "AVX", "AVX2"}
_BELOW_AVX512_BF16 = _BELOW_AVX512_VNNI | {"AVX512_CORE_VNNI"}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def onednn_isa_cap() -> str:
    """The instruction-set cap oneDNN runs under (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA), "ALL" if none."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()


def onednn_int8_dot() -> bool:
    """Whether oneDNN's int8 products may use VNNI / AMX dot products here. Without them, oneDNN
    adds pairs of u8 x s8 products in int16, which can saturate (FBGEMM's 7-bit inputs avoid that)."""
    flags, cap = cpu_flags(), onednn_isa_cap()
    amx = "amx_int8" in flags and ("AMX" in cap or cap == "ALL")
    return amx or ("avx512_vnni" in flags and cap not in _BELOW_AVX512_VNNI) or (
        "avx_vnni" in flags and cap not in _BELOW_AVX_VNNI)


def native_bf16() -> bool:
    """Whether oneDNN may use bfloat16 arithmetic units here (AVX-512-BF16 or AMX-BF16)."""
    flags, cap = cpu_flags(), onednn_isa_cap()
    amx = "amx_bf16" in flags and ("AMX" in cap or cap == "ALL")
    return amx or ("avx512_bf16" in flags and cap not in _BELOW_AVX512_BF16)


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build has oneDNN with the fused linear operator (for bfloat16: and
    oneDNN supports bfloat16 on this CPU, natively or emulated)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def mlp_activation(act: nn.Module) -> str:
    """The MLP's activation as a post-op name: "gelu-tanh" or "gelu-erf"."""
    if not isinstance(act, nn.GELU):
        raise TypeError(f"expected nn.GELU in the MLP, got {type(act).__name__}")
    return "gelu-tanh" if act.approximate == "tanh" else "gelu-erf"


class FusedLinear(nn.Module):
    """x (..., in) -> act(x W^T + b) (..., out) in one oneDNN call, act in {"none", "gelu-tanh",
    "gelu-erf"}, in `dtype` (float32 or bfloat16: weights stored in that dtype; a bfloat16 layer
    takes float32 or bfloat16 input and returns bfloat16). Inference only."""

    def __init__(self, linear: nn.Linear, act: str = "none", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if act not in POST_OPS:
            raise ValueError(f"act must be one of {list(POST_OPS)}, got {act!r}")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        self.register_buffer("weight", linear.weight.detach().to(dtype, copy=True))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype, copy=True))
        self.act = act
        self._attr, self._algorithm = POST_OPS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.weight.dtype
        if x.device.type != "cpu" or x.dtype not in (dtype, torch.float32):
            raise TypeError(f"FusedLinear ({dtype}) takes float32 CPU input, got {x.dtype} on {x.device}")
        lead = x.shape[:-1]
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]).to(dtype), self.weight, self.bias,
                                               self._attr, [], self._algorithm)
        return y.reshape(*lead, y.shape[-1])

    def extra_repr(self) -> str:
        return (f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, act={self.act}, "
                f"dtype={self.weight.dtype}")


def fuse_encoder(encoder: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Swap every block's linear layers for `FusedLinear` in `dtype` (fc1 takes the MLP's GELU), in place."""
    for block in encoder.blocks:
        attn, mlp = block.attn, block.mlp
        act = mlp_activation(mlp.act)
        attn.qkv, attn.proj = FusedLinear(attn.qkv, dtype=dtype), FusedLinear(attn.proj, dtype=dtype)
        mlp.fc1, mlp.act = FusedLinear(mlp.fc1, act, dtype), nn.Identity()
        mlp.fc2 = FusedLinear(mlp.fc2, dtype=dtype)
    return encoder


__all__ = ["FusedLinear", "POST_OPS", "available", "cpu_flags", "fuse_encoder", "mlp_activation", "native_bf16",
           "onednn_int8_dot", "onednn_isa_cap"]
