"""fp32 inference on the CPU: the encoder blocks' linear layers as oneDNN products with the bias
(and, for `mlp.fc1`, the GELU) applied inside the product.

Eager `nn.Linear` on the CPU first copies the bias into every output row and then runs the
product on top of it (one extra pass over each output), and the MLP's GELU is one more pass
over the (tokens, 4 D) activations; profiled on the base encoder these were ~8 % and ~9 %
of an fp32 pass (benchmarks/README.md; fused, the pass measured ~5 % faster).
`fuse_encoder` swaps `attn.qkv`, `attn.proj`, `mlp.fc1` (+ `mlp.act`) and `mlp.fc2` of
every block for `FusedLinear`, in place, once, when an fp32 CPU runtime is built. The arithmetic is the same float32 product (results
differ from `nn.Linear` by rounding only, ~1e-6). Nothing changes where torch has no
oneDNN (`available()` is False) or for other precisions / devices.
"""

from __future__ import annotations

import torch
from torch import nn


def available() -> bool:
    """Whether this torch build has oneDNN with the fused linear operator."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class FusedLinear(nn.Module):
    """x (..., in) float32 -> act(x W^T + b) (..., out) float32 in one oneDNN call, act in
    {"none", "gelu-tanh", "gelu-erf"}. Inference only (no gradients reach the weights)."""

    def __init__(self, linear: nn.Linear, act: str = "none") -> None:
        super().__init__()
        if act not in ("none", "gelu-tanh", "gelu-erf"):
            raise ValueError(f"act must be none / gelu-tanh / gelu-erf, got {act!r}")
        self.register_buffer("weight", linear.weight.detach().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.act = act
        # oneDNN's post-op: ("none", "") or ("gelu", "tanh" | "none" = exact erf GELU)
        self._attr, self._algorithm = {"none": ("none", ""), "gelu-tanh": ("gelu", "tanh"),
                                       "gelu-erf": ("gelu", "none")}[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise TypeError(f"FusedLinear takes float32 CPU input, got {x.dtype} on {x.device}")
        lead = x.shape[:-1]
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self.weight, self.bias, self._attr, [],
                                               self._algorithm)
        return y.reshape(*lead, y.shape[-1])

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, act={self.act}"


def fuse_encoder(encoder: nn.Module) -> nn.Module:
    """Swap every block's linear layers for `FusedLinear` (fc1 takes the MLP's GELU), in place."""
    for block in encoder.blocks:
        attn, mlp = block.attn, block.mlp
        attn.qkv, attn.proj = FusedLinear(attn.qkv), FusedLinear(attn.proj)
        gelu = mlp.act
        if not isinstance(gelu, nn.GELU):
            raise TypeError(f"expected nn.GELU in the MLP, got {type(gelu).__name__}")
        mlp.fc1 = FusedLinear(mlp.fc1, "gelu-tanh" if gelu.approximate == "tanh" else "gelu-erf")
        mlp.act = nn.Identity()
        mlp.fc2 = FusedLinear(mlp.fc2)
    return encoder


__all__ = ["FusedLinear", "available", "fuse_encoder"]
