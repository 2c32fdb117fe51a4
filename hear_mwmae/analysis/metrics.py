"""Per-head attention statistics: mean attention distance and entropy, bootstrap intervals.

Layout: attn[b, h, i, j] = weight query i gives key j (rows sum to 1); tokens are the patch
grid flattened time-major, token i at (t, f) = (i // F, i % F) for grid = (T, F). A
3-D map (H, N, N) is one sample. Every function computes in float64.

Per query i: d(i) = sum_j attn_ij * dist(i, j) and H(i) = -sum_j attn_ij ln attn_ij
(nats, 0 ln 0 = 0); a head's value is the plain mean over samples and queries.

    kind    dist(i, j)                        unit
    grid    sqrt(dt^2 + df^2)                 patches (the ViT definition)
    time    |dt|                              time patches
    freq    |df|                              frequency patches
    flat    |i - j|                           tokens of the flattened sequence
    bins    sqrt((pt dt)^2 + (pf df)^2)       frames and mel bins mixed (needs patch_size)
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

KINDS: tuple[str, ...] = ("grid", "time", "freq", "flat", "bins")
# What `head_statistics` returns per head, in this order.
STATISTICS: tuple[str, ...] = ("d_grid", "d_time", "d_freq", "d_flat", "d_bins", "entropy")
ROW_SUM_TOLERANCE = 1e-3  # attention rows further than this from 1 are not probabilities


@functools.lru_cache(maxsize=16)
def _distance_stack(grid: tuple[int, int], patch_size: tuple[float, float]) -> torch.Tensor:
    """(len(KINDS), N, N) float64 distance matrices of the flattened grid, query i = row."""
    t_count, f_count = grid
    i = torch.arange(t_count * f_count, dtype=torch.float64)
    t, f = torch.div(i, f_count, rounding_mode="floor"), torch.remainder(i, f_count)
    dt, df = t[:, None] - t[None, :], f[:, None] - f[None, :]
    pt, pf = patch_size
    return torch.stack([torch.sqrt(dt**2 + df**2), dt.abs(), df.abs(), (i[:, None] - i[None, :]).abs(),
                        torch.sqrt((pt * dt) ** 2 + (pf * df) ** 2)])


def distance_matrix(grid: Sequence[int], kind: str = "grid", patch_size: Sequence[float] | None = None) -> torch.Tensor:
    """(N, N) float64 matrix dist(i, j) of `kind` on the time-major grid (T, F)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if kind == "bins" and patch_size is None:
        raise ValueError("kind='bins' needs patch_size=(frames, mel bins) of one patch")
    stack = _distance_stack(_grid(grid), tuple(float(p) for p in (patch_size or (1.0, 1.0))))
    return stack[KINDS.index(kind)].clone()


def _grid(grid: Sequence[int]) -> tuple[int, int]:
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"grid must be (time patches, frequency patches), got {grid!r}")
    return int(grid[0]), int(grid[1])


def _maps(attn: np.ndarray | torch.Tensor, grid: Sequence[int] | None = None, check_rows: bool = True) -> torch.Tensor:
    """Validate and return (B, H, N, N) float64 (a view where possible)."""
    a = torch.as_tensor(attn).detach()
    if a.ndim == 3:
        a = a.unsqueeze(0)
    if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"attention must be (B, H, N, N) or (H, N, N), got shape {tuple(a.shape)}")
    if grid is not None and a.shape[-1] != _grid(grid)[0] * _grid(grid)[1]:
        raise ValueError(f"{a.shape[-1]} tokens do not fill the grid {tuple(grid)}; drop a CLS token first "
                         "(`drop_cls`)")
    a = a.to(torch.float64)
    if check_rows and a.numel():
        err = (a.sum(-1) - 1).abs().max().item()
        if not err <= ROW_SUM_TOLERANCE:
            raise ValueError(f"attention rows must sum to 1 (largest deviation {err:.3g}): pass post-softmax "
                             "probabilities")
    return a


def attention_distance_per_query(attn: np.ndarray | torch.Tensor, grid: Sequence[int], kind: str = "grid",
                                 patch_size: Sequence[float] | None = None) -> np.ndarray:
    """(B, H, N) float64: d(i) = sum_j attn_ij dist(i, j) for every sample, head and query."""
    d = distance_matrix(grid, kind, patch_size)
    return torch.einsum("bhij,ij->bhi", _maps(attn, grid), d.to(torch.as_tensor(attn).device)).cpu().numpy()


def attention_distance(attn: np.ndarray | torch.Tensor, grid: Sequence[int], kind: str = "grid",
                       patch_size: Sequence[float] | None = None) -> np.ndarray:
    """(H,) float64 mean attention distance per head: the mean over samples and queries of
    sum_j attn_ij dist(i, j). `grid` = (T, F) of the time-major tokens; `kind` as in the
    module docstring ("grid", "time", "freq", "flat"; "bins" with `patch_size`)."""
    return attention_distance_per_query(attn, grid, kind, patch_size).mean(axis=(0, 2))


def attention_entropy_per_query(attn: np.ndarray | torch.Tensor) -> np.ndarray:
    """(B, H, N) float64: H(i) = -sum_j attn_ij ln attn_ij in nats (0 ln 0 = 0)."""
    a = _maps(attn)
    return (-torch.special.xlogy(a, a).sum(-1)).cpu().numpy()


def attention_entropy(attn: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H,) float64 attention entropy per head in nats: computed per query, then averaged
    over samples and queries (the entropy of an averaged map would overstate it)."""
    return attention_entropy_per_query(attn).mean(axis=(0, 2))


def drop_cls(attn: torch.Tensor, extra: int = 1) -> torch.Tensor:
    """(..., N + extra, N + extra) -> (..., N, N): drop the leading `extra` (CLS) rows and
    columns and renormalise each row over the patch keys. A row that gave all its weight to
    CLS becomes all zeros (distance and entropy 0)."""
    if extra == 0:
        return attn
    patch = attn[..., extra:, extra:]
    return patch / patch.sum(-1, keepdim=True).clamp_min(torch.finfo(patch.dtype).tiny)


def head_statistics(probs: torch.Tensor, grid: Sequence[int], patch_size: Sequence[float]) -> torch.Tensor:
    """Every statistic of STATISTICS for each sample and head: probs (B, H, N, N) -> (B, H, 6)
    float64, each the mean over the sample's queries (same definitions as above)."""
    a = _maps(probs, grid, check_rows=False)
    stack = _distance_stack(_grid(grid), tuple(float(p) for p in patch_size)).to(a.device)
    n = a.shape[-1]
    dist = torch.einsum("bhij,kij->bhk", a, stack) / n  # (B, H, 5)
    entropy = -torch.special.xlogy(a, a).sum((-2, -1)) / n  # (B, H)
    return torch.cat([dist, entropy[..., None]], dim=-1)


def bootstrap_ci(per_clip: np.ndarray, resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap over clips of the mean: per_clip (C, ...) -> (low, high), each (...).

    Clips are resampled with replacement `resamples` times (seeded); with a single clip the
    interval is that clip's value.
    """
    values = np.asarray(per_clip, dtype=np.float64)
    c = values.shape[0]
    if c == 0:
        raise ValueError("bootstrap needs at least one clip")
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(c, np.full(c, 1.0 / c), size=resamples) / c  # (R, C)
    means = weights @ values.reshape(c, -1)  # (R, prod(...))
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return low.reshape(values.shape[1:]), high.reshape(values.shape[1:])


__all__ = ["KINDS", "STATISTICS", "attention_distance", "attention_distance_per_query", "attention_entropy",
           "attention_entropy_per_query", "bootstrap_ci", "distance_matrix", "drop_cls", "head_statistics"]
