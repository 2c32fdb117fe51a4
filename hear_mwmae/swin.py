"""Audio-MAE's decoder mode 1: Swin-V2-style ("cr") shifted-window blocks on the patch grid.

Every block maps time-major tokens (B, L, D), L = grid_t * grid_f, index t * grid_f + f, to
(B, L, D). Behaviour of the authors' `timm_patch/swin_transformer.py` as used by
`models_mae` (facts in the Audio-MAE spec, section 7):

- windows of `cfg.decoder_window` = (time, freq) patches, (4, 4) on the (64, 8) grid: window
  index (t div wt) * (grid_f / wf) + (f div wf), tokens row-major (i_time, j_freq) inside;
- odd blocks (with `cfg.shifting_windows`) roll the grid by -wt/2 in time before
  partitioning and back afterwards; frequency never shifts. Pairs of tokens that the roll
  brought together from different segments get -100 on their logits;
- cosine attention: (q . k) / max(|q| |k|, 1e-6) / max(tau_h, 0.01), no head-dim scale,
  plus a bias B_h(p, q) = meta_mlp(sign(d) * ln(1 + |d|)) of the (time, freq) offset d
  between the two tokens (fc1 Linear(2, 384), ReLU, dropout 0.1 in training only,
  fc2 Linear(384, heads));
- post-norm branches: x + LN1(Attn(x)); x + LN2(MLP(x)), exact GELU, LayerNorm eps from
  the config.

Our addition (not in the authors' code): `cfg.decoder_global_blocks = k` makes the last k
blocks global, i.e. one window covering the whole grid and no shift (the paper's "hybrid"
ablation). Their bias comes from the same MLP, evaluated once per distinct offset.

Parameter names are the authors' (`attn.tau`, `attn.qkv`, `attn.proj`, `attn.meta_mlp.fc1`,
`attn.meta_mlp.fc2`, `norm1`, `mlp.fc1`, `mlp.fc2`, `norm2`), so converting their files is
renaming; buffers are derived from the config and never saved.

The fast path runs all windows and heads in one `F.scaled_dot_product_attention` call on
cosine-normalised q / k (1 / tau folded into q, bias and shift mask as `attn_mask`,
scale 1); the reference path is the authors' explicit computation. Both agree (tested);
`model.set_fused_attention` chooses. The one difference is the clamp for near-zero
vectors: the fast path clamps |q| and |k| separately, the reference their product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import SHIFT_PENALTY, Mlp

META_HIDDEN = 384  # width of the relative-position MLP (fixed in the authors' code)
META_DROPOUT = 0.1  # its dropout, active in training mode only (as in the authors' pre-training)
TAU_MIN = 0.01
NORM_MIN = 1e-6


def window_tokens(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """Natural token index of every window slot: (num_windows, wt * wf) int64.

    Row w, column p = i * wf + j holds the token that window w's slot (i, j) sees after the
    grid is rolled by -shift = (-st, -sf): token ((a wt + i + st) mod gt) * gf + (b wf + j + sf) mod gf
    for window w = a * (gf / wf) + b.
    """
    (gt, gf), (wt, wf), (st, sf) = grid, window, shift
    t = (torch.arange(gt).view(gt // wt, 1, wt, 1) + st) % gt
    f = (torch.arange(gf).view(1, gf // wf, 1, wf) + sf) % gf
    return (t * gf + f).reshape(-1, wt * wf)


def _segments(n: int, w: int, s: int) -> torch.Tensor:
    """Segment of each rolled position: 0 for [0, n - w), 1 for [n - w, n - s), 2 for [n - s, n)."""
    pos = torch.arange(n)
    return (pos >= n - w).long() + (pos >= n - s).long() if s else torch.zeros(n, dtype=torch.long)


def shift_mask(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor | None:
    """(num_windows, N, N) additive mask of a shifted block (0 / -100), or None without shift.

    Per axis, rolled positions [0, n - w) are segment 0, [n - w, n - s) segment 1 and [n - s, n)
    segment 2 (the wrapped-around first rows / columns); tokens of different (time, freq)
    segments must not attend to each other.
    """
    if not any(shift):
        return None
    (gt, gf), (wt, wf), (st, sf) = grid, window, shift
    label = _segments(gt, wt, st)[:, None] * 3 + _segments(gf, wf, sf)[None, :]  # (gt, gf), rolled grid
    label = label.view(gt // wt, wt, gf // wf, wf).permute(0, 2, 1, 3).reshape(-1, wt * wf)
    return torch.where(label[:, :, None] != label[:, None, :], SHIFT_PENALTY, 0.0)


def log_relative_coordinates(window: tuple[int, int], distinct: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-spaced (time, freq) offsets sign(d) ln(1 + |d|) between the slots of a window.

    `distinct=False` (the authors' layout): one row per pair (p, q), row p * N + q, d = c_p - c_q,
    returned as ((N * N, 2), None). `distinct=True`: one row per distinct offset
    ((2wt - 1) * (2wf - 1), 2) and the (N, N) index of each pair's row (for large windows).
    """
    wt, wf = window
    coords = torch.stack(torch.meshgrid(torch.arange(wt), torch.arange(wf), indexing="ij")).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).reshape(-1, 2)  # (N * N, 2)
    index = None
    if distinct:
        dt, df = torch.meshgrid(torch.arange(-wt + 1, wt), torch.arange(-wf + 1, wf), indexing="ij")
        index = ((rel[:, 0] + wt - 1) * (2 * wf - 1) + rel[:, 1] + wf - 1).view(wt * wf, wt * wf)
        rel = torch.stack([dt.flatten(), df.flatten()], dim=1)
    rel = rel.float()
    return torch.sign(rel) * torch.log1p(rel.abs()), index


class MetaMlp(nn.Module):
    """The relative-position MLP: Linear(2, 384) -> ReLU -> Dropout -> Linear(384, heads) -> Dropout."""

    def __init__(self, num_heads: int, hidden: int = META_HIDDEN, dropout: float = META_DROPOUT):
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_heads)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """(M, 2) -> (M, heads)."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(coords)))))


class WindowAttention(nn.Module):
    """Cosine self-attention inside (shifted) windows of the patch grid, on natural-order tokens.

    grid (gt, gf), window (wt, wf) dividing it, shift (st, sf): grid rows / columns rolled
    before partitioning ((0, 0) = none; Audio-MAE shifts (wt / 2, 0) in odd blocks).
    forward: (B, L, D) -> (B, L, D), L = gt * gf, tokens time-major.
    """

    fused: bool = True

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int], window: tuple[int, int],
                 shift: tuple[int, int] = (0, 0)):
        super().__init__()
        (gt, gf), (wt, wf) = grid, window
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        if wt < 1 or wf < 1 or gt % wt or gf % wf:
            raise ValueError(f"window {window} does not tile the grid {grid}")
        if not (0 <= shift[0] < wt and 0 <= shift[1] < wf):
            raise ValueError(f"shift {shift} must lie within the window {window}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.grid, self.window, self.shift = tuple(grid), tuple(window), (int(shift[0]), int(shift[1]))
        self.num_windows, self.window_area = (gt // wt) * (gf // wf), wt * wf
        self.tau = nn.Parameter(torch.ones(num_heads))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.meta_mlp = MetaMlp(num_heads)
        coords, index = log_relative_coordinates(self.window, distinct=self.window_area > 64)
        tokens = window_tokens(self.grid, self.window, self.shift)
        self.register_buffer("relative_coordinates_log", coords, persistent=False)
        self.register_buffer("relative_index", index, persistent=False)
        self.register_buffer("tokens", tokens.flatten(), persistent=False)  # window slot -> natural token
        self.register_buffer("untokens", torch.argsort(tokens.flatten()), persistent=False)  # inverse
        self.register_buffer("attn_mask", shift_mask(self.grid, self.window, self.shift), persistent=False)

    @torch.no_grad()
    def init_extra_parameters(self) -> None:
        """Fresh init of what generic Linear init does not cover: temperatures tau = 1 (the
        authors' value; their model-wide xavier-uniform / zero-bias init covers meta_mlp)."""
        nn.init.ones_(self.tau)

    def position_bias(self) -> torch.Tensor:
        """(H, N, N) relative-position bias B_h(p, q) of one window, p = row."""
        table = self.meta_mlp(self.relative_coordinates_log)  # (N * N or distinct offsets, H)
        if self.relative_index is not None:
            table = table[self.relative_index.flatten()]
        return table.t().reshape(self.num_heads, self.window_area, self.window_area)

    def logit_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(nW or 1, H, N, N): position bias plus the shift penalty, added to every logit."""
        bias = self.position_bias()[None]
        if self.attn_mask is not None:
            bias = bias + self.attn_mask[:, None]
        return bias.to(dtype)

    def _windows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, D) natural order -> q, k, v (B, nW, H, N, hd) per window slot."""
        b, n, d = x.shape
        if n != self.grid[0] * self.grid[1]:
            raise ValueError(f"expected {self.grid[0] * self.grid[1]} tokens on the grid {self.grid}, got {n}")
        xw = x[:, self.tokens]  # (B, nW * N, D): roll + window partition as one gather
        qkv = self.qkv(xw).view(b, self.num_windows, self.window_area, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
        return q, k, v

    def _merge(self, o: torch.Tensor) -> torch.Tensor:
        """(B, nW, H, N, hd) per window slot -> (B, L, H * hd) in natural token order."""
        b = o.shape[0]
        o = o.permute(0, 1, 3, 2, 4).reshape(b, self.num_windows * self.window_area, -1)
        return o[:, self.untokens]

    def _probs(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The authors' explicit attention probabilities (B, nW, H, N, N)."""
        denom = q.norm(dim=-1, keepdim=True) @ k.norm(dim=-1, keepdim=True).transpose(-2, -1)
        attn = (q @ k.transpose(-2, -1)) / denom.clamp(min=NORM_MIN)
        attn = attn / self.tau.clamp(min=TAU_MIN).view(1, 1, -1, 1, 1)
        return (attn + self.logit_mask(attn.dtype)[None]).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        q, k, v = self._windows(x)
        if self.fused:
            b, nw, h, n, hd = q.shape
            scale = self.tau.clamp(min=TAU_MIN).view(1, 1, h, 1, 1)
            q = F.normalize(q, dim=-1, eps=NORM_MIN) / scale
            k = F.normalize(k, dim=-1, eps=NORM_MIN)
            mask = self.logit_mask(q.dtype).expand(nw, h, n, n).reshape(1, nw * h, n, n)
            o = F.scaled_dot_product_attention(q.reshape(b, nw * h, n, hd), k.reshape(b, nw * h, n, hd),
                                               v.reshape(b, nw * h, n, hd), attn_mask=mask, scale=1.0)
            o = o.view(b, nw, h, n, hd)
        else:
            o = self._probs(q, k) @ v
        return self.proj(self._merge(o))

    def attention_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For analysis (never called by `forward`): post-softmax probabilities and per-head
        outputs, in natural token order.

        x: (B, L, D), the attention's input (for these post-norm blocks: the block input).
        Returns probs (B, H, L, L) float32 (zero outside a token's window; bias, shift and
        -100 penalty included; rows sum to 1) and head_out (B, H, L, head_dim) = probs @ v,
        each head's output before `proj`, so `proj(head_out.transpose(1, 2).reshape(B, L, D))`
        is `forward(x)`.
        """
        q, k, v = self._windows(x)
        probs = self._probs(q.float(), k.float())  # (B, nW, H, N, N)
        head_out = probs.to(v.dtype) @ v
        b, h, n = x.shape[0], self.num_heads, x.shape[1]
        tok = self.tokens.view(self.num_windows, self.window_area)
        full = probs.new_zeros(b, h, n, n)
        full[:, :, tok[:, :, None], tok[:, None, :]] = probs.permute(0, 2, 1, 3, 4)
        out = head_out.new_zeros(b, h, n, self.head_dim)
        out[:, :, tok] = head_out.permute(0, 2, 1, 3, 4)
        return full, out


class SwinBlock(nn.Module):
    """Post-norm block: x + LN1(WindowAttention(x)); x + LN2(MLP(x)). (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int], window: tuple[int, int],
                 shift: tuple[int, int], mlp_ratio: float, eps: float, gelu: str = "erf"):
        super().__init__()
        self.attn = WindowAttention(dim, num_heads, grid, window, shift)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), gelu)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(self.attn(x))
        return x + self.norm2(self.mlp(x))


def block_layout(cfg: ModelConfig) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(window, shift) of each decoder block. Odd blocks shift by half a window in time when
    `cfg.shifting_windows` (and the window is shorter than the grid), never in frequency;
    the last `cfg.decoder_global_blocks` blocks use one window covering the whole grid, unshifted."""
    grid, (wt, wf) = cfg.grid_size, cfg.decoder_window
    layout = []
    for i in range(cfg.decoder_depth):
        if i >= cfg.decoder_depth - cfg.decoder_global_blocks:
            layout.append((grid, (0, 0)))
        else:
            shifted = cfg.shifting_windows and i % 2 == 1 and wt < grid[0]
            layout.append(((wt, wf), (wt // 2 if shifted else 0, 0)))
    return layout


def swin_blocks(cfg: ModelConfig) -> nn.ModuleList:
    """The decoder's `cfg.decoder_depth` Swin blocks (width `decoder_embed_dim`, `decoder_num_heads` heads)."""
    return nn.ModuleList(
        SwinBlock(cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.grid_size, window, shift, cfg.mlp_ratio,
                  cfg.layer_norm_eps, cfg.gelu)
        for window, shift in block_layout(cfg)
    )


__all__ = ["MetaMlp", "SwinBlock", "WindowAttention", "block_layout", "log_relative_coordinates", "shift_mask",
           "swin_blocks", "window_tokens"]
