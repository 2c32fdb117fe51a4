"""The two analyses over clips, in bounded memory.

`attention_study`: per micro-batch of clips and per block, the recomputed attention
probabilities are reduced at once to per-clip, per-head statistics (C, L, H, 6), so
memory never holds more than one block's (b, H, N, N) maps. `pwcca_study`: per
micro-batch, each head's output before `proj` ((b * N, head_dim) datapoints) goes into one
running covariance of all heads, from which every pair's PWCCA follows (`cca.py`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .cca import CovarianceAccumulator, pwcca_matrix
from .clips import ChunkMaker, Clip
from .metrics import STATISTICS, bootstrap_ci, drop_cls, head_statistics
from .recording import HeadInfo, LoadedModel, ModelPart, attention_hooks

log = logging.getLogger(__name__)
MEMORY_BUDGET = 512 * 2**20  # bytes of attention maps (or head features) and their temporaries per micro-batch
MAX_BATCH = 32


def auto_batch_size(parts: Sequence[ModelPart]) -> int:
    """Clips per micro-batch so that one block's maps (float32) and the float64 temporaries of
    their statistics (about 28 bytes per attention weight) stay within MEMORY_BUDGET."""
    worst = max(p.num_heads * (p.num_patches + 1) ** 2 * 28 for p in parts)
    return int(max(1, min(MAX_BATCH, MEMORY_BUDGET // worst)))


def _batches(clips: Sequence[Clip], size: int) -> list[Sequence[Clip]]:
    return [clips[i:i + size] for i in range(0, len(clips), size)]


@dataclass
class AttentionResult:
    """Per-clip statistics of one part of one model: per_clip (C, L, H, len(STATISTICS))."""

    model: LoadedModel
    part: str
    heads: list[list[HeadInfo]]
    per_clip: np.ndarray
    grid: tuple[int, int]
    patch_size: tuple[int, int]
    hop_ms: float

    def rows(self, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
        """One dict per head: window facts, every statistic (mean over clips, with derived units)
        and percentile-bootstrap intervals over clips."""
        mean = self.per_clip.mean(axis=0)  # (L, H, S)
        low, high = bootstrap_ci(self.per_clip, resamples, level, seed)
        ms = self.patch_size[0] * self.hop_ms  # one time patch in ms
        mel = self.patch_size[1]  # one frequency patch in mel bins
        ln_n = math.log(self.grid[0] * self.grid[1])
        scale = {"d_time_ms": ("d_time", ms), "d_freq_mel": ("d_freq", mel),
                 "entropy_normalised": ("entropy", 1 / ln_n)}
        out = []
        for layer_heads in self.heads:
            for info in layer_heads:
                idx = (info.layer, info.head)
                row: dict[str, Any] = {
                    "model": self.model.label, "null": self.model.null, "layer": info.layer, "head": info.head,
                    "window": info.window, "window_shape": list(info.window_shape) if info.window_shape else None,
                    "shift": info.shift}
                ci: dict[str, list[float]] = {}
                for k, name in enumerate(STATISTICS):
                    row[name] = float(mean[idx][k])
                    ci[name] = [float(low[idx][k]), float(high[idx][k])]
                for name, (base, factor) in scale.items():
                    row[name] = row[base] * factor
                    ci[name] = [v * factor for v in ci[base]]
                row["ci"] = ci
                out.append(row)
        return out


def attention_study(model: LoadedModel, parts: Sequence[str], clips: Sequence[Clip], mask_seed: int = 0,
                    batch_size: int | None = None, progress: bool = True) -> list[AttentionResult]:
    """Per-head attention statistics of the given parts of `model` over `clips`."""
    runs = [ModelPart(model, p, mask_seed) for p in parts]
    size = batch_size or auto_batch_size(runs)
    make = ChunkMaker(model.config)
    stats = [np.full((len(clips), r.depth, r.num_heads, len(STATISTICS)), np.nan) for r in runs]
    desc = f"attention {model.label}"
    first = 0
    for batch in tqdm(_batches(clips, size), desc=desc, unit="batch", disable=not progress, leave=False):
        x = make(batch).to(model.device)
        ids = [c.index for c in batch]
        for run, out in zip(runs, stats):
            def reduce(layer: int, probs: torch.Tensor, _: torch.Tensor, run=run, out=out) -> None:
                probs = drop_cls(probs, run.extra_tokens(probs.shape[-1]))
                out[first:first + len(batch), layer] = head_statistics(probs, run.grid, run.patch_size).cpu().numpy()

            with attention_hooks(run.modules, reduce):
                run.forward(x, ids)
        first += len(batch)
    for run, out in zip(runs, stats):
        if np.isnan(out).any():
            raise RuntimeError(f"{model.label} {run.name}: some blocks were never recorded")
    hop_ms = model.config.hop_ms
    return [AttentionResult(model, r.name, r.heads, s, r.grid, r.patch_size, hop_ms) for r, s in zip(runs, stats)]


@dataclass
class PwccaResult:
    """Head-by-head PWCCA of one part: matrix (n, n) over `heads` (layer-major, head-minor)."""

    model: LoadedModel
    part: str
    heads: list[HeadInfo]
    matrix: np.ndarray
    datapoints: int
    summary: dict[str, Any] = field(default_factory=dict)


def pwcca_summary(matrix: np.ndarray, heads: Sequence[HeadInfo]) -> dict[str, Any]:
    """Mean PWCCA of same-head-index pairs in different layers (same window in MW-MAE's
    decoder) vs all other cross-layer pairs, within-layer pairs, and per window."""
    layer = np.array([h.layer for h in heads])
    index = np.array([h.head for h in heads])
    cross = layer[:, None] != layer[None, :]
    same = index[:, None] == index[None, :]
    off = ~np.eye(len(heads), dtype=bool)

    def mean(mask: np.ndarray) -> float | None:
        return float(matrix[mask].mean()) if mask.any() else None

    by_window: dict[str, list[float]] = {}
    for a in range(len(heads)):
        for b in range(len(heads)):
            if cross[a, b] and same[a, b]:
                by_window.setdefault(heads[a].label(), []).append(float(matrix[a, b]))
    s, o = mean(cross & same), mean(cross & ~same)
    return {
        "same_head_cross_layer": s, "other_cross_layer": o,
        "difference": None if s is None or o is None else s - o,
        "within_layer": mean(~cross & off), "diagonal": mean(~off),
        "pairs": {"same_head_cross_layer": int((cross & same).sum()), "other_cross_layer": int((cross & ~same).sum()),
                  "within_layer": int((~cross & off).sum())},
        "same_head_cross_layer_by_window": {k: float(np.mean(v)) for k, v in by_window.items()},
    }


def pwcca_study(model: LoadedModel, part: str, clips: Sequence[Clip], layers: Sequence[int] | None = None,
                epsilon: float = 0.0, mask_seed: int = 0, batch_size: int | None = None,
                progress: bool = True) -> PwccaResult:
    """PWCCA between the outputs (before `proj`) of every pair of heads of `part`'s blocks
    (or of `layers`), datapoints = every patch token of every clip (CLS dropped)."""
    run = ModelPart(model, part, mask_seed)
    chosen = list(range(run.depth)) if layers is None else sorted(set(layers))
    if not chosen or min(chosen) < 0 or max(chosen) >= run.depth:
        raise ValueError(f"layers must lie in 0..{run.depth - 1}, got {layers}")
    features = len(chosen) * run.num_heads * int(getattr(run.modules[0], "head_dim", 64))
    # per clip: N tokens x features as float32 (per layer and concatenated) and float64 (accumulator)
    feature_bytes = (run.num_patches + 1) * features * 24
    size = batch_size or max(1, min(auto_batch_size([run]), MEMORY_BUDGET // feature_bytes))
    make = ChunkMaker(model.config)
    acc = CovarianceAccumulator()
    head_dim = None
    for batch in tqdm(_batches(clips, size), desc=f"pwcca {model.label}", unit="batch", disable=not progress,
                      leave=False):
        outputs: dict[int, torch.Tensor] = {}

        def keep(layer: int, _: torch.Tensor, head_out: torch.Tensor) -> None:
            if layer in chosen:
                extra = run.extra_tokens(head_out.shape[2])
                o = head_out[:, :, extra:]  # (b, H, N, hd)
                outputs[layer] = o.permute(0, 2, 1, 3).reshape(-1, o.shape[1] * o.shape[3])  # (b N, H hd)

        with attention_hooks(run.modules, keep):
            run.forward(make(batch).to(model.device), [c.index for c in batch])
        head_dim = next(iter(outputs.values())).shape[1] // run.num_heads
        acc.add(torch.cat([outputs[l] for l in chosen], dim=1))
    heads = [h for l in chosen for h in run.heads[l]]
    groups = [slice(k * head_dim, (k + 1) * head_dim) for k in range(len(heads))]
    log.info("%s %s: PWCCA of %d heads (%d-d) over %d datapoints", model.label, part, len(heads), head_dim, acc.count)
    matrix = pwcca_matrix(acc.covariance(), acc.mean(), acc.count, groups, epsilon, progress)
    return PwccaResult(model, part, heads, matrix, acc.count, pwcca_summary(matrix, heads))


__all__ = ["AttentionResult", "PwccaResult", "attention_study", "auto_batch_size", "pwcca_study", "pwcca_summary"]
