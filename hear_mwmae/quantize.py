"""int8 inference on the CPU: the encoder's linear layers in 8-bit integer arithmetic, one chunk at a time.

`quantize_encoder` swaps every transformer block's `attn.qkv`, `attn.proj`, `mlp.fc1` (with the
MLP's GELU) and `mlp.fc2` for an `Int8Linear`, in place, once (when the runtime is built):
    weight   int8, symmetric, one scale per output channel: W[o] ~ s[o] * q[o], |q| <= 127
    input    quantised on every call to 8 bits with one scale per *sample* (per index of the
             leading axis, i.e. per chunk), from that sample's own max |x| ("dynamic"
             quantisation: no calibration data)
    output   s_x * s[o] * (int32 accumulation) + bias, then the GELU for fc1
The integer products are exact, so a chunk's result depends on that chunk alone: a clip's int8
embedding is the same, bit for bit, whichever other clips share its micro-batch (the runtime
also runs the encoder one chunk at a time, `chunk_by_chunk`, so that every float operation
sees the same shapes too). Everything else (patch embedding, LayerNorm, softmax attention,
the residual stream, the frontend) stays float32, except that on CPUs with native bfloat16
units `attn.qkv` hands bfloat16 q, k, v to attention (about twice as fast as float32 there).

Two kernels, picked by `pick_engine` from the CPU:
    "onednn"  `onednn::qlinear_pointwise` on weights packed once by `onednn::qlinear_prepack`,
              bias and GELU applied inside the product; for CPUs with int8 dot products
              (AVX-512-VNNI, AVX-VNNI, AMX-INT8).
    "fbgemm"  `quantized::linear_dynamic` (FBGEMM) for other x86-64 CPUs with AVX2. Without
              VNNI, pairs of u8 x s8 products are added in int16, which can saturate, so the
              input uses 7 bits there (`reduce_range`, as torch's own x86 defaults do).
Forcing the kernels of an older CPU on a newer one: `ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2` (FBGEMM's AVX2 kernels, 7-bit inputs),
`ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI` (oneDNN, VNNI, no bf16 units) or `AVX512_CORE_BF16`
(VNNI and bf16, no AMX); benchmarks/README.md has the numbers.
"""

from __future__ import annotations

import contextlib
import os
import platform
import warnings
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_fused
from .cpu_fused import POST_OPS, mlp_activation

QUANTIZED_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # inside each encoder block
ENGINES = ("onednn", "fbgemm")


class Int8Unavailable(ValueError):
    """precision="int8" cannot run fast here: not on the CPU, or no int8 kernels for this CPU / build."""


def pick_engine() -> str:
    """The int8 kernels for this CPU: "onednn" (VNNI / AMX dot products) or "fbgemm" (AVX2 and up).

    Raises Int8Unavailable on CPUs / builds with neither (e.g. Arm, or a CPU without AVX2),
    rather than falling back to a slow path.
    """
    engines = set(torch.backends.quantized.supported_engines)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise Int8Unavailable(f"precision='int8' needs an x86-64 CPU (FBGEMM / oneDNN int8 kernels); this is "
                              f"{platform.machine()}: use precision='fp32'")
    capability = torch.backends.cpu.get_cpu_capability()
    if "onednn" in engines and hasattr(torch.ops.onednn, "qlinear_pointwise") and cpu_fused.onednn_int8_dot():
        return "onednn"
    if "fbgemm" in engines and capability in ("AVX2", "AVX512"):
        return "fbgemm"
    raise Int8Unavailable(f"precision='int8': no fast int8 kernels here (CPU capability {capability}, torch "
                          f"quantized engines {sorted(engines)}; need FBGEMM with AVX2, or oneDNN with VNNI / "
                          "AMX): use precision='fp32'")


def reduce_range_for(engine: str) -> bool:
    """Whether inputs must use 7 bits: FBGEMM without its AVX-512-VNNI kernels (int16 accumulation
    of pairs), also when they are switched off by FBGEMM_ENABLE_INSTRUCTIONS."""
    if engine != "fbgemm":
        return False
    forced = os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").upper()
    if forced:
        return forced not in ("AVX512_E1", "AVX512_E1_256")
    return "avx512_vnni" not in cpu_fused.cpu_flags()


@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


class Int8Linear(nn.Module):
    """Inference-only `nn.Linear` (+ optional GELU) with int8 per-channel weights and an input
    quantised per sample on every call.

    x (B, ..., in) or (M, in), float32 or bfloat16 -> (B, ..., out) / (M, out) in `out_dtype`;
    one input scale per index b of the leading axis (a 2-D input is one sample), so each
    sample's output depends on that sample alone. `act`: "none", "gelu-tanh", "gelu-erf".
    The module holds no float weights and has no trainable parameters.
    """

    def __init__(self, linear: nn.Linear, engine: str, act: str = "none",
                 out_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if act not in POST_OPS:
            raise ValueError(f"act must be one of {list(POST_OPS)}, got {act!r}")
        weight = linear.weight.detach().to("cpu", torch.float32)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.engine, self.act, self.out_dtype = engine, act, out_dtype
        self.reduce_range = reduce_range_for(engine)
        scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # (out,)
        bias = None if linear.bias is None else linear.bias.detach().to("cpu", torch.float32).clone()
        if engine == "onednn":
            qweight = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (out, in)
            self._packed = torch.ops.onednn.qlinear_prepack(qweight, None)
            self._w_scale, self._w_zero = scale, torch.zeros(self.out_features, dtype=torch.long)
            self._bias = bias
            self._offset = torch.full((1,), 128.5)
        else:
            with warnings.catch_warnings():  # quantized tensors are deprecated in torch 2.13; FBGEMM's kernels are not
                warnings.simplefilter("ignore")
                qweight = torch.quantize_per_channel(weight, scale.double(), torch.zeros_like(scale, dtype=torch.long),
                                                     0, torch.qint8)
                with _engine(engine):
                    self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self._post_op, self._algorithm = POST_OPS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"Int8Linear takes float32 or bfloat16 input, got {x.dtype}")
        if x.dim() > 2 and x.shape[0] > 1:
            return torch.cat([self._sample(x[i:i + 1]) for i in range(x.shape[0])])
        return self._sample(x)

    def _sample(self, x: torch.Tensor) -> torch.Tensor:
        """One sample: one input scale. x (..., in) -> (..., out)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.engine == "fbgemm":
            y = torch.ops.quantized.linear_dynamic(x2.float(), self._packed, self.reduce_range)
            if self.act != "none":
                y = F.gelu(y, approximate="tanh" if self.act == "gelu-tanh" else "none")
            return y.to(self.out_dtype).reshape(*lead, self.out_features)
        lo, hi = torch.aminmax(x2)
        top = max(float(hi), -float(lo))
        scale = top / 127.0 if top > 0 else 1.0
        # uint8 = round(x / scale) + 128 in [1, 255]: x / scale + 128.5 > 0, truncated; in float32 also for
        # bfloat16 x (the (1,)-shaped offset promotes it). oneDNN's AVX-512 VNNI kernels take unsigned
        # inputs only (signed ones fall to its reference code, ~1000x slower)
        q = torch.add(self._offset, x2, alpha=1.0 / scale).to(torch.uint8)
        y = torch.ops.onednn.qlinear_pointwise(q, scale, 128, self._packed, self._w_scale, self._w_zero, self._bias,
                                               1.0, 0, self.out_dtype, self._post_op, [], self._algorithm)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, engine={self.engine}, "
                f"act={self.act}, out_dtype={self.out_dtype}" + (", reduce_range=True" if self.reduce_range else ""))


def quantize_encoder(encoder: nn.Module, engine: str | None = None) -> nn.Module:
    """Replace the blocks' qkv / proj / fc1 (+ GELU) / fc2 of a CPU encoder by `Int8Linear`, in place.

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
    # q, k, v in bfloat16 where the CPU has bfloat16 units: attention runs in bfloat16 there
    qkv_dtype = torch.bfloat16 if engine == "onednn" and cpu_fused.native_bf16() else torch.float32
    if not len(encoder.blocks):
        raise ValueError("the encoder has no blocks to quantise")
    for block in encoder.blocks:
        attn, mlp = block.attn, block.mlp
        for layer, path in ((attn.qkv, "attn.qkv"), (attn.proj, "attn.proj"), (mlp.fc1, "mlp.fc1"),
                            (mlp.fc2, "mlp.fc2")):
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"expected nn.Linear at {path}, got {type(layer).__name__}")
        act = mlp_activation(mlp.act)
        attn.qkv = Int8Linear(attn.qkv, engine, out_dtype=qkv_dtype)
        attn.proj = Int8Linear(attn.proj, engine)
        mlp.fc1, mlp.act = Int8Linear(mlp.fc1, engine, act), nn.Identity()
        mlp.fc2 = Int8Linear(mlp.fc2, engine)
    return encoder


def chunk_by_chunk(features: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """`features` ((B, T, F) -> (B, ...)) applied to one chunk at a time and the outputs stacked:
    every operation then sees a single chunk, whatever the micro-batch (bit-equal results, and
    small activations that stay in the CPU's caches)."""

    def run(chunks: torch.Tensor) -> torch.Tensor:
        if chunks.shape[0] <= 1:
            return features(chunks)
        return torch.cat([features(chunks[i:i + 1]) for i in range(chunks.shape[0])])

    return run


__all__ = ["ENGINES", "Int8Linear", "Int8Unavailable", "QUANTIZED_LAYERS", "chunk_by_chunk", "pick_engine",
           "quantize_encoder", "reduce_range_for"]
