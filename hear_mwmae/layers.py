"""Layers shared by the encoder / MW-MHA blocks (`model.py`) and the Swin decoder (`swin.py`).

Kept below both modules, so that neither imports the other for its building blocks.
"""

from __future__ import annotations

import torch
from torch import nn

SHIFT_PENALTY = -100.0  # both releases' logit penalty between shifted-window segments


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. `gelu`: "tanh" (Flax's default, MW-MAE) or "erf" (exact, Audio-MAE)."""

    def __init__(self, dim: int, hidden: int, gelu: str = "tanh"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def residual_scale(draws: torch.Tensor, rate: float) -> torch.Tensor:
    """Stochastic depth (timm's `DropPath`, per sample) from given uniform draws.

    draws (B,) in [0, 1) -> (B, 1, 1) multipliers of a residual branch: 0 where the branch is
    dropped (draw < rate), 1 / (1 - rate) where it is kept, so the expectation is unchanged.
    timm draws `floor(keep_prob + U)`, i.e. keeps when U >= rate: the same rule. The draws
    come from the caller (the fine-tuning data pipeline), so a sample's dropped branches do not
    depend on which process or batch it lands in.
    """
    keep = 1.0 - rate
    return ((draws >= rate).to(torch.float32) / keep).view(-1, 1, 1)


__all__ = ["Mlp", "SHIFT_PENALTY", "residual_scale"]
