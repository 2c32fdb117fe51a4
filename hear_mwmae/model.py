"""Masked autoencoders of both families in PyTorch: patch embedding, (multi-window)
attention, encoder, decoder, masking, loss.

Tensor layout: a spectrogram chunk is (B, T, F) normalised, (B, 200, 80) log-mel for MW-MAE
and (B, 1024, 128) fbank for Audio-MAE; patches are flattened time-major
(index = t * grid_f + f), as both releases do. The config decides every difference
(patch grid, CLS token, GELU, decoder kind); Audio-MAE's Swin decoder blocks live in
`swin.py`.

Multi-window attention: every head h has a window w_h over the flattened token sequence
(0 = global). The fast path runs *all* heads of a block in one
`F.scaled_dot_product_attention` call with an additive mask that holds, per head, the
relative position bias inside each window, -inf outside it, and the -100 penalty of
shifted windows. The reference path partitions the sequence into windows explicitly,
one batched computation per distinct window size, like the release. Both give the
same numbers (tested); `set_fused_attention` picks one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import SHIFT_PENALTY, Mlp, residual_scale
from .swin import swin_blocks


# ----------------------------------------------------------------------------- position embeddings
def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) [sin | cos] embedding (MAE convention)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """(grid_t * grid_f, dim); first half encodes the frequency index, second the time index."""
    t, f = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, f.reshape(-1)), sincos_1d(dim // 2, t.reshape(-1))], dim=1)


def sincos_audiomae(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Audio-MAE's fixed 2-D sin-cos for time-major tokens on `grid` = (grid_t, grid_f).

    The authors lay the 2-D embedding out on the swapped (grid_f, grid_t) grid in raster
    order, so token k gets [sincos(k mod grid_t) | sincos(k div grid_t)] (not its (t, f)
    coordinates). Only fresh initialisation uses this; checkpoints store the values.
    """
    k = torch.arange(grid[0] * grid[1])
    return torch.cat([sincos_1d(dim // 2, k % grid[0]), sincos_1d(dim // 2, k // grid[0])], dim=1)


# ----------------------------------------------------------------------------- attention
def window_layout(n: int, window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each token sits in (optionally shifted) windows of a length-n sequence.

    Shifting rolls the sequence by -shift before partitioning, as the release does.
    Returns per token: window id (n,), relative bias index matrix (n, n) (valid where
    window ids match), and the shift penalty matrix (n, n) (0 or SHIFT_PENALTY).
    """
    if n % window:
        raise ValueError(
            f"window size {window} does not divide the sequence length {n} "
            "(the release cannot run this configuration either)"
        )
    rolled = torch.remainder(torch.arange(n) - shift, n)  # token i's position after the roll
    win_id = rolled // window
    rel_index = rolled[:, None] - rolled[None, :] + window - 1
    label = shift_labels(n, window, shift)[rolled]
    penalty = torch.where(label[:, None] != label[None, :], SHIFT_PENALTY, 0.0)
    return win_id, rel_index, penalty


def shift_labels(n: int, window: int, shift: int) -> torch.Tensor:
    """Segment label per *rolled* position: 0 for [0, n-w), 1 for [n-w, n-s), 2 for [n-s, n).

    Tokens of different segments must not attend to each other (the last window holds the
    wrapped-around first tokens). All zeros when `shift` is 0.
    """
    pos = torch.arange(n)
    if not shift:
        return torch.zeros_like(pos)
    return (pos >= n - window).long() + (pos >= n - shift).long()


class Attention(nn.Module):
    """Multi-head self-attention where each head may attend only within its own window.

    `window_sizes`: one per head (0 = global), or () for plain multi-head attention.
    Parameters: `qkv`, `proj` (shared by all heads) and, per windowed head h,
    `relative_position_bias[str(h)]` of shape (2 * w_h - 1,).
    """

    fused: bool = True

    def __init__(self, dim: int, num_heads: int, window_sizes: tuple[int, ...] = (), shift: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_sizes = tuple(window_sizes) or (0,) * num_heads
        self.shift = shift
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias = nn.ParameterDict(
            {str(h): nn.Parameter(torch.zeros(2 * w - 1)) for h, w in enumerate(self.window_sizes) if w}
        )
        self._layout_cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._mask_cache: dict[tuple[int, str, torch.dtype], tuple[tuple, torch.Tensor]] = {}

    def shift_of(self, window: int) -> int:
        return window // 2 if self.shift else 0

    # -- fast path: one SDPA call, all heads, dense additive mask
    def _mask_layout(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached (index (H, n, n) into [0, tables...], constant (H, n, n): 0 / -inf / penalty)."""
        key = (n, str(device))
        if key not in self._layout_cache:
            index = torch.zeros(self.num_heads, n, n, dtype=torch.long)
            const = torch.zeros(self.num_heads, n, n)
            offset = 1  # slot 0 of the gathered vector is a zero (global heads)
            for h, w in enumerate(self.window_sizes):
                if not w:
                    continue
                win_id, rel_index, penalty = window_layout(n, w, self.shift_of(w))
                same = win_id[:, None] == win_id[None, :]
                index[h] = torch.where(same, rel_index + offset, 0)
                const[h] = torch.where(same, penalty, float("-inf"))
                offset += 2 * w - 1
            with torch.inference_mode(False):  # normal tensors: training may use them after inference did
                self._layout_cache[key] = (index.to(device, copy=True), const.to(device, copy=True))
        return self._layout_cache[key]

    def attention_mask(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive mask (H, n, n) for SDPA, or None when every head is global.

        Without autograd (`torch.no_grad` / `inference_mode`: a frozen encoder) the mask is
        built once per (n, device, dtype) and reused while the bias tables are unchanged: the
        key holds each table's storage and version counter, which every in-place update
        (optimizer step, `load_state_dict`) bumps. With autograd on it is rebuilt every call,
        so gradients reach the tables.
        """
        if not len(self.relative_position_bias):
            return None
        tables = [self.relative_position_bias[str(h)] for h, w in enumerate(self.window_sizes) if w]
        slot = (n, str(device), dtype)
        version = None
        if not torch.is_grad_enabled() and not any(torch.is_inference(t) for t in tables):
            version = tuple((t.data_ptr(), t._version) for t in tables)
            hit = self._mask_cache.get(slot)
            if hit is not None and hit[0] == version:
                return hit[1]
        index, const = self._mask_layout(n, device)
        values = torch.cat([tables[0].new_zeros(1), *tables])
        mask = (values[index] + const).to(dtype)
        if version is not None:
            self._mask_cache[slot] = (version, mask)
        return mask

    # -- reference path: explicit windows, one batched computation per window size
    def _reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (B, H, N, hd) -> (B, H, N, hd)."""
        b, _, n, hd = q.shape
        out = torch.empty_like(q)
        for w in sorted(set(self.window_sizes)):
            heads = [h for h, hw in enumerate(self.window_sizes) if hw == w]
            qh, kh, vh = q[:, heads], k[:, heads], v[:, heads]
            if w == 0:
                attn = (qh @ kh.transpose(-2, -1)) * self.scale
                out[:, heads] = attn.softmax(-1) @ vh
                continue
            if n % w:
                raise ValueError(f"window size {w} does not divide the sequence length {n}")
            s = self.shift_of(w)
            qh, kh, vh = (torch.roll(t, -s, dims=2).reshape(b, len(heads), n // w, w, hd) for t in (qh, kh, vh))
            idx = torch.arange(w)
            bias = torch.stack([self.relative_position_bias[str(h)] for h in heads])
            bias = bias[:, idx[:, None] - idx[None, :] + w - 1]  # (h, w, w)
            attn = (qh @ kh.transpose(-2, -1)) * self.scale + bias[None, :, None]
            if s:  # Swin-style penalty between segments, per window of the rolled sequence
                label = shift_labels(n, w, s).reshape(n // w, w)
                penalty = torch.where(label[:, :, None] != label[:, None, :], SHIFT_PENALTY, 0.0)
                attn = attn + penalty.to(attn)[None, None]
            o = attn.softmax(-1) @ vh  # (B, h, nW, w, hd)
            out[:, heads] = torch.roll(o.reshape(b, len(heads), n, hd), s, dims=2)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.fused:
            mask = self.attention_mask(n, x.device, q.dtype)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            o = self._reference(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))

    def attention_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For analysis (never called by `forward`): the attention `forward(x)` applies, recomputed
        from this module's own q, k, v and additive mask (relative position bias, windows, shift
        penalty). x (B, N, C) -> (probs (B, H, N, N) float32, rows sum to 1; head outputs before
        `proj` (B, H, N, head_dim), so `proj(head_out.transpose(1, 2).reshape(B, N, C))` = forward).
        """
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        logits = (q.float() @ k.float().transpose(-2, -1)) * self.scale  # (B, H, N, N)
        mask = self.attention_mask(n, x.device, torch.float32)
        probs = (logits if mask is None else logits + mask).softmax(-1)
        return probs, (probs.to(v.dtype) @ v)


# ----------------------------------------------------------------------------- blocks
class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)); x + MLP(LN(x)). LayerNorm eps 1e-6.

    `drop_path`: stochastic-depth rate of both residual branches (fine-tuning; 0 elsewhere),
    applied only when `forward` gets the per-sample uniform `draws` (B, 2): column 0 decides
    the attention branch, column 1 the MLP branch (`layers.residual_scale`).
    """

    drop_path: float = 0.0

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float,
                 window_sizes: tuple[int, ...] = (), shift: bool = False, gelu: str = "tanh"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, window_sizes, shift)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), gelu)

    def forward(self, x: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        if draws is None or not self.drop_path:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.attn(self.norm1(x)) * residual_scale(draws[:, 0], self.drop_path).to(x.dtype)
        return x + self.mlp(self.norm2(x)) * residual_scale(draws[:, 1], self.drop_path).to(x.dtype)


def _blocks(cfg: ModelConfig, dim: int, depth: int, heads: int, windows: tuple[int, ...]) -> nn.ModuleList:
    # Shifted windows: odd-indexed blocks shift, even ones do not (release behaviour).
    return nn.ModuleList(
        Block(dim, heads, cfg.mlp_ratio, cfg.layer_norm_eps, windows, shift=cfg.shifting_windows and i % 2 == 1,
              gelu=cfg.gelu)
        for i in range(depth)
    )


def _decoder_blocks(cfg: ModelConfig) -> nn.ModuleList:
    """The decoder's blocks: MW-MHA / plain pre-norm blocks, or Audio-MAE's Swin blocks."""
    if cfg.decoder_kind == "swin":
        return swin_blocks(cfg)
    return _blocks(cfg, cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads, cfg.decoder_window_sizes)


# ----------------------------------------------------------------------------- encoder / decoder
class Encoder(nn.Module):
    """Patch embedding + position embedding (+ CLS) + blocks + final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(cfg.in_chans, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        extra = int(cfg.use_cls_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.use_cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + extra, d), requires_grad=not cfg.fixed_pos_embed)
        self.blocks = _blocks(cfg, d, cfg.depth, cfg.num_heads, cfg.window_sizes)
        # A fine-tuned Audio-MAE has no final norm: its features are the last block's tokens.
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.final_norm else nn.Identity()

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) spectrogram -> (B, L, D) patch tokens with position embedding."""
        if x.ndim != 3 or tuple(x.shape[1:]) != self.cfg.img_size:
            raise ValueError(f"expected (B, {self.cfg.img_size[0]}, {self.cfg.img_size[1]}), got {tuple(x.shape)}")
        x = self.patch_embed.proj(x.unsqueeze(1).to(self.pos_embed.dtype))  # (B, D, gt, gf)
        # (B, L, D), index t * gf + f; contiguous, so the residual stream is not strided
        # (every LayerNorm would copy it, every residual add would run strided)
        x = x.flatten(2).transpose(1, 2).contiguous()
        return x + self.pos_embed[:, 1:] if self.cls_token is not None else x + self.pos_embed

    def _run(self, x: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
        for i, blk in enumerate(self.blocks):
            x = blk(x) if draws is None else blk(x, draws[:, i])
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) normalised chunk -> (B, grid_t, grid_f * D): (B, 50, 5 * D) for MW-MAE
        4 x 16, (B, 64, 8 * D) for Audio-MAE. CLS dropped; the frequency patches of each
        time step are concatenated, frequency-major (feature index f * D + d).
        """
        x = self._run(self.embed_patches(x))
        if self.cls_token is not None:
            x = x[:, 1:]
        b, _, d = x.shape
        gt, gf = self.cfg.grid_size
        return x.reshape(b, gt, gf * d)

    def forward_masked(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encode only the kept patches. x (B, T, F), ids_keep (B, K) -> latent (B, K [+1 CLS first], D)."""
        return self.forward_tokens(x, ids_keep)

    def forward_tokens(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None,
                       draws: torch.Tensor | None = None) -> torch.Tensor:
        """The token sequence after the blocks (and the final norm, where the model has one).

        x (B, T, F) -> (B, [1 CLS +] K, D): every patch (K = L, time-major), or only those in
        `ids_keep` (B, K), in that order. `draws` (B, depth, 2): per-sample uniforms for the
        blocks' stochastic depth (see `set_drop_path`; None = no branch dropped).
        """
        tokens = self.embed_patches(x)
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return self._run(tokens, draws)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class Decoder(nn.Module):
    """Decoder: embed, un-shuffle with mask tokens, (+ position), blocks, norm, pixel prediction.

    With a CLS token, MW-MHA blocks see it (MW-MAE's MAE, Audio-MAE mode 0) and it is
    dropped from the prediction; Swin blocks work on the patch grid, so the CLS row is
    dropped before them (Audio-MAE mode 1).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.decoder_embed_dim
        self.embed = nn.Linear(cfg.embed_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + int(cfg.use_cls_token), d),
                                      requires_grad=not cfg.fixed_pos_embed)
        self.blocks = _decoder_blocks(cfg)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.pred = nn.Linear(d, cfg.patch_dim)
        self.cls_through_blocks = cfg.use_cls_token and cfg.decoder_kind != "swin"

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, K [+1], D), ids_restore (B, L) -> predicted patches (B, L, patch_dim)."""
        x = self.embed(latent)
        cls = None
        if self.cfg.use_cls_token:
            cls, x = x[:, :1], x[:, 1:]
        b, k, d = x.shape
        n = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.expand(b, n - k, d)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        if cls is not None:
            x = torch.cat([cls, x], dim=1)
        x = x + self.pos_embed
        if cls is not None and not self.cls_through_blocks:
            x = x[:, 1:]
        for blk in self.blocks:
            x = blk(x)
        x = self.pred(self.norm(x))
        return x[:, 1:] if self.cls_through_blocks else x


def masking_2d(noise: torch.Tensor, grid: tuple[int, int],
               keep: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Audio-MAE's time x frequency token masking (pre-training and fine-tuning).

    noise (B, grid_t + grid_f): uniform values, time rows first; the `keep` = (time rows,
    frequency columns) with the smallest noise are kept. Returns ids_keep (B, kt * kf) with
    the kept patches in ascending order (the authors' argsort(index + 999 * mask)), ids_restore
    (B, L) and mask (B, L) float (1 = removed). (The authors' fine-tuning gathers the same
    patches in noise order; attention and mean pooling do not depend on the order.)
    """
    (gt, gf), (kt, kf) = grid, keep
    b, n = noise.shape[0], gt * gf

    def kept(values: torch.Tensor, k: int) -> torch.Tensor:  # (B, m) -> (B, m) bool
        chosen = torch.zeros_like(values, dtype=torch.bool)
        return chosen.scatter_(1, torch.argsort(values, dim=1)[:, :k], True)

    keep_grid = kept(noise[:, :gt], kt)[:, :, None] & kept(noise[:, gt:], kf)[:, None, :]  # (B, gt, gf)
    mask = (~keep_grid).reshape(b, n).float()
    order = torch.argsort(torch.arange(n, device=noise.device) + n * mask, dim=1)
    return order[:, : kt * kf], torch.argsort(order, dim=1), mask


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # (B, L, patch_dim)
    mask: torch.Tensor  # (B, L), 1 = removed


class MWMAE(nn.Module):
    """Masked autoencoder of either family: `encoder` (what HEAR uses) + `decoder` (pre-training only)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fresh pre-training init as in the releases: xavier-uniform kernels, zero biases,
        sin-cos position embeddings (each family's layout), N(0, 0.02) tokens,
        truncated-normal bias tables; Swin blocks initialise their own extras."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, Attention):
                for table in m.relative_position_bias.values():
                    nn.init.trunc_normal_(table, std=0.02, a=-0.04, b=0.04)
            elif hasattr(m, "init_extra_parameters"):  # Swin attention: temperature, position MLP
                m.init_extra_parameters()
        cfg, extra = self.cfg, int(self.cfg.use_cls_token)
        enc, dec = self.encoder, self.decoder
        if cfg.family == "audiomae":
            enc.pos_embed[0, extra:] = sincos_audiomae(cfg.embed_dim, cfg.grid_size)
            dec.pos_embed[0, extra:] = sincos_audiomae(cfg.decoder_embed_dim, cfg.grid_size)
        else:
            enc.pos_embed[0, extra:] = sincos_2d(cfg.embed_dim, cfg.grid_size)
            dec.pos_embed[0, extra:] = sincos_1d(cfg.decoder_embed_dim, torch.arange(cfg.num_patches))
        enc.pos_embed[0, :extra] = 0
        dec.pos_embed[0, :extra] = 0
        nn.init.normal_(dec.mask_token, std=0.02)
        if enc.cls_token is not None:
            nn.init.normal_(enc.cls_token, std=0.02)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, L, pt * pf); patches time-major, pixels time-major within a patch
        (both releases' order)."""
        (gt, gf), (pt, pf) = self.cfg.grid_size, self.cfg.patch_size
        b = x.shape[0]
        x = x.reshape(b, gt, pt, gf, pf).permute(0, 1, 3, 2, 4)
        return x.reshape(b, gt * gf, pt * pf)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, L, pt * pf) -> (B, T, F)."""
        (gt, gf), (pt, pf) = self.cfg.grid_size, self.cfg.patch_size
        b = patches.shape[0]
        x = patches.reshape(b, gt, gf, pt, pf).permute(0, 1, 3, 2, 4)
        return x.reshape(b, gt * pt, gf * pf)

    def random_masking(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking by argsort of uniform noise.

        `noise`: (B, cfg.mask_noise_size) uniform values; drawn (with `generator`) if None.
        Unstructured: the len_keep patches with the smallest noise are kept, in that order.
        2-D (`cfg.mask_2d`, Audio-MAE): noise = time noise (B, grid_t) then frequency noise
        (B, grid_f), drawn in that order; the time rows and frequency columns with the
        smallest noise (`cfg.mask_2d_keep`) are kept, their patches in ascending order.
        Returns ids_keep (B, K), ids_restore (B, L), mask (B, L) float (1 = removed).
        """
        n = self.cfg.num_patches
        if noise is None:
            dev = generator.device if generator else device
            sizes = self.cfg.grid_size if self.cfg.mask_2d else (n,)
            noise = torch.cat([torch.rand(batch_size, s, generator=generator, device=dev) for s in sizes], dim=1)
        if tuple(noise.shape) != (batch_size, self.cfg.mask_noise_size):
            raise ValueError(f"masking noise must be ({batch_size}, {self.cfg.mask_noise_size}), "
                             f"got {tuple(noise.shape)}")
        noise = noise.to(device)
        if self.cfg.mask_2d:
            return self._masking_2d(noise)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, : self.cfg.len_keep]
        mask = torch.ones(batch_size, n, device=device)
        mask[:, : self.cfg.len_keep] = 0
        return ids_keep, ids_restore, torch.gather(mask, 1, ids_restore)

    def _masking_2d(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Audio-MAE's time x frequency masking from noise (B, grid_t + grid_f); see random_masking."""
        return masking_2d(noise, self.cfg.grid_size, self.cfg.mask_2d_keep)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over removed patches only."""
        if self.cfg.norm_pix_loss:
            mean = target.mean(-1, keepdim=True)
            var = target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self, x: torch.Tensor, ids_keep: torch.Tensor | None = None, ids_restore: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MAEOutput:
        """x (B, T, F) -> MAEOutput. Masks are drawn with `generator` unless given."""
        if ids_keep is None or ids_restore is None:
            ids_keep, ids_restore, mask = self.random_masking(x.shape[0], x.device, generator)
        else:
            mask = torch.ones_like(ids_restore, dtype=torch.float32)
            mask.scatter_(1, ids_keep, 0.0)
        pred = self.decoder(self.encoder.forward_masked(x, ids_keep), ids_restore)
        return MAEOutput(self.loss(pred, self.patchify(x), mask), pred, mask)


def set_fused_attention(model: nn.Module, fused: bool) -> None:
    """Choose SDPA (True) or the explicit reference path (False) for every attention layer
    (every module whose class declares a `fused` flag: `Attention`, `swin.WindowAttention`)."""
    for m in model.modules():
        if isinstance(getattr(type(m), "fused", None), bool):
            m.fused = fused


def set_drop_path(encoder: Encoder, rate: float) -> None:
    """Stochastic depth for fine-tuning: block i drops its branches at rate * i / (depth - 1)
    (timm's linearly increasing rule: block 0 never drops). 0 turns it off."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path rate must be in [0, 1), got {rate}")
    for blk, r in zip(encoder.blocks, torch.linspace(0, rate, len(encoder.blocks)).tolist()):
        blk.drop_path = r


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["Attention", "Block", "Decoder", "Encoder", "MAEOutput", "MWMAE", "count_parameters",
           "masking_2d", "set_drop_path", "set_fused_attention", "sincos_1d", "sincos_2d", "sincos_audiomae"]
