"""int8 inference on the CPU: the encoder's linear layers in 8-bit integer arithmetic.

`quantize_encoder` swaps every transformer block's `attn.qkv`, `attn.proj`, `mlp.fc1` and
`mlp.fc2` for an `Int8Linear`, in place, once (when the runtime is built):
    weight   int8, symmetric, one scale per output channel: W[o] ~ s[o] * q[o], |q| <= 127
    input    quantised on every call to uint8 with one scale and zero point per tensor,
             from its own min / max ("dynamic" quantisation: no calibration data)
    output   float32 = s_x * s[o] * (int32 accumulation) + bias
Everything else (patch embedding, LayerNorm, GELU, softmax attention, the frontend) stays
float32. The kernels are torch's quantized CPU engines (`quantized::linear_dynamic` on
weights packed once by `quantized::linear_prepack`): oneDNN on CPUs with AMX-INT8 units,
FBGEMM on other x86-64 CPUs with AVX2. Without AVX-512-VNNI / AVX-VNNI, FBGEMM's AVX2
kernels add pairs of u8 x s8 products in int16, which can saturate, so there the input
uses 7 bits (`reduce_range`), as torch's own x86 defaults do.

Because the input scale is per tensor, a chunk's int8 embedding depends very slightly on
the other chunks of its micro-batch (measured cosine >= 0.9998 between a chunk embedded
alone and in a batch of 16); fp32, bf16 and fp16 do not have this property.

Measured on the base encoder (benchmarks/README.md; 2 cores with AMX): oneDNN-packed weights
2.6x fp32, FBGEMM-packed 1.6x, torchao 0.18's `Int8DynamicActivationInt8WeightConfig` run
eagerly 0.94x, all at worst step cosine 0.9998; ONNX Runtime's dynamically quantised export
(`hear-mwmae export-onnx --int8`) 3.1-3.4x, as it also fuses GELU and bias.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

QUANTIZED_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # inside each encoder block


class Int8Unavailable(ValueError):
    """precision="int8" cannot run fast here: not on the CPU, or no int8 kernels for this CPU / build."""


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


def pick_engine() -> str:
    """The quantized engine to pack weights for: "onednn" (AMX-INT8) or "fbgemm" (AVX2 and up).

    Raises Int8Unavailable on CPUs / builds with neither (e.g. Arm, or a CPU without AVX2),
    rather than falling back to a slow path.
    """
    engines = set(torch.backends.quantized.supported_engines)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise Int8Unavailable(f"precision='int8' needs an x86-64 CPU (FBGEMM / oneDNN int8 kernels); this is "
                              f"{platform.machine()}: use precision='fp32'")
    capability = torch.backends.cpu.get_cpu_capability()
    if "onednn" in engines and "amx_int8" in cpu_flags() and _onednn_may_use_amx():
        return "onednn"
    if "fbgemm" in engines and capability in ("AVX2", "AVX512"):
        return "fbgemm"
    raise Int8Unavailable(f"precision='int8': no fast int8 kernels here (CPU capability {capability}, torch "
                          f"quantized engines {sorted(engines)}; need FBGEMM with AVX2, or oneDNN with AMX): "
                          "use precision='fp32'")


def _onednn_may_use_amx() -> bool:
    """False when oneDNN is capped below AMX (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA): its int8
    kernels would then run without VNNI and saturate, so FBGEMM is the right engine."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap is None or "AMX" in cap.upper() or cap.upper() == "ALL"


def reduce_range_for(engine: str) -> bool:
    """Whether inputs must use 7 bits: FBGEMM without VNNI (int16 accumulation of pairs)."""
    return engine == "fbgemm" and not {"avx512_vnni", "avx_vnni"} & cpu_flags()


@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


class Int8Linear(nn.Module):
    """Inference-only `nn.Linear` with int8 per-channel weights and dynamically quantised input.

    x (..., in_features) float32 -> (..., out_features) float32. The packed weights belong
    to `engine`; the module holds no float weights and has no trainable parameters.
    """

    def __init__(self, linear: nn.Linear, engine: str, reduce_range: bool) -> None:
        super().__init__()
        weight = linear.weight.detach().to("cpu", torch.float32)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.engine, self.reduce_range = engine, reduce_range
        scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()  # (out,)
        bias = None if linear.bias is None else linear.bias.detach().to("cpu", torch.float32)
        with warnings.catch_warnings():  # quantized tensors are deprecated in torch 2.13; the kernels are not
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(weight, scale, torch.zeros_like(scale, dtype=torch.long), 0,
                                                 torch.qint8)
            with _engine(engine):
                self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise TypeError(f"Int8Linear takes float32 input, got {x.dtype}")
        return torch.ops.quantized.linear_dynamic(x, self._packed, self.reduce_range)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, engine={self.engine}, "
                f"reduce_range={self.reduce_range}")


def quantize_encoder(encoder: nn.Module, engine: str | None = None) -> nn.Module:
    """Replace the blocks' qkv / proj / fc1 / fc2 linears of a CPU encoder by `Int8Linear`, in place.

    `engine`: "onednn" or "fbgemm" (default: `pick_engine()`). Returns `encoder`.
    Raises Int8Unavailable when the encoder is not on the CPU or no engine fits.
    """
    if encoder.pos_embed.device.type != "cpu":
        raise Int8Unavailable(f"precision='int8' runs on the CPU only (the encoder is on "
                              f"{encoder.pos_embed.device}); on a GPU use precision='bf16' or 'fp16'")
    engine = engine or pick_engine()
    if engine not in torch.backends.quantized.supported_engines:
        raise Int8Unavailable(f"quantized engine {engine!r} is not in this torch build "
                              f"({torch.backends.quantized.supported_engines})")
    reduce_range = reduce_range_for(engine)
    swapped = 0
    for block in encoder.blocks:
        for path in QUANTIZED_LAYERS:
            parent_name, name = path.split(".")
            parent = getattr(block, parent_name)
            layer = getattr(parent, name)
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"expected nn.Linear at {path}, got {type(layer).__name__}")
            setattr(parent, name, Int8Linear(layer, engine, reduce_range))
            swapped += 1
    if not swapped:
        raise ValueError("the encoder has no blocks to quantise")
    return encoder


__all__ = ["Int8Linear", "Int8Unavailable", "QUANTIZED_LAYERS", "cpu_flags", "pick_engine", "quantize_encoder",
           "reduce_range_for"]
