"""Figures of `hear-mwmae analyze` (matplotlib, Agg backend, PNG). Input: the row dicts of
`study.AttentionResult.rows()` and `study.PwccaResult`; every plot shows the null model
(the same architecture freshly initialised) in grey next to each checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

NULL_COLOUR = "0.6"
# (row key, axis label) of the per-layer figure
LAYER_PANELS = (("d_grid", "distance (patches)"), ("d_time_ms", "time distance (ms)"),
                ("d_freq_mel", "frequency distance (mel bins)"), ("entropy", "entropy (nats)"))


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the figures need matplotlib: pip install 'hear-mwmae[analysis]' (or pass --no-figures)") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _split(rows: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, list[dict]], dict[str, list[dict]]]:
    """Model labels in order, rows per checkpoint and the null rows each checkpoint is compared with."""
    labels = list(dict.fromkeys(r["model"] for r in rows if not r["null"]))
    by = {m: [r for r in rows if r["model"] == m] for m in dict.fromkeys(r["model"] for r in rows)}
    nulls = {m: by.get(by[m][0].get("null_model", ""), []) for m in labels}
    return labels, by, nulls


def _err(rows: Sequence[dict], key: str) -> np.ndarray:
    v = np.array([r[key] for r in rows])
    ci = np.array([r["ci"][key] for r in rows]).reshape(-1, 2)
    return np.abs(np.stack([v - ci[:, 0], ci[:, 1] - v]))


def _layer_x(rows: Sequence[dict], heads: int, offset: float) -> np.ndarray:
    """Layer on x; heads spread within +-0.3 of it; the null shifted by `offset`."""
    spread = 0.0 if heads == 1 else 0.5 / (heads - 1)
    return np.array([r["layer"] + (r["head"] - (heads - 1) / 2) * spread * 0.6 + offset for r in rows])


def layers_figure(rows: Sequence[dict[str, Any]], part: str, path: Path) -> Path:
    """Per layer (x) each head's distance (grid, ms, mel) and entropy (rows), one column per
    checkpoint, bootstrap 95 % intervals as bars, the null model in grey."""
    plt = _pyplot()
    labels, by, nulls = _split(rows)
    fig, axes = plt.subplots(len(LAYER_PANELS), len(labels), figsize=(max(6.5, 4.2 * len(labels) + 0.6), 9.5),
                             squeeze=False, sharey="row")
    for col, label in enumerate(labels):
        mine, null = by[label], nulls[label]
        heads = 1 + max(r["head"] for r in mine)
        for row, (key, ylabel) in enumerate(LAYER_PANELS):
            ax = axes[row, col]
            if null:
                ax.errorbar(_layer_x(null, heads, 0.08), [r[key] for r in null], yerr=_err(null, key), fmt="o",
                            ms=3, mfc="none", color=NULL_COLOUR, lw=0.8, label="null (fresh init)")
            ax.errorbar(_layer_x(mine, heads, 0.0), [r[key] for r in mine], yerr=_err(mine, key), fmt="o", ms=3.5,
                        color="C0", lw=0.8, label=label)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(ylabel)
            if row == 0:
                ax.set_title(label, fontsize=10)
                ax.legend(fontsize=7, loc="best")
            if row == len(LAYER_PANELS) - 1:
                ax.set_xlabel(f"{part} layer")
            ax.set_xticks(range(1 + max(r["layer"] for r in mine)))
    fig.suptitle(f"{part}: mean attention distance and entropy per head\n(bars: 95 % bootstrap over clips; grey: "
                 "the same architecture freshly initialised)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scatter_figure(rows: Sequence[dict[str, Any]], part: str, path: Path) -> Path:
    """Distance vs entropy, one dot per head coloured by layer; null heads as grey crosses."""
    plt = _pyplot()
    labels, by, nulls = _split(rows)
    fig, axes = plt.subplots(1, len(labels), figsize=(4.6 * len(labels) + 0.8, 4.2), squeeze=False,
                             sharex=True, sharey=True)
    for col, label in enumerate(labels):
        ax, mine, null = axes[0, col], by[label], nulls[label]
        if null:
            ax.scatter([r["d_grid"] for r in null], [r["entropy"] for r in null], marker="x", s=18,
                       color=NULL_COLOUR, label="null (fresh init)")
        depth = 1 + max(r["layer"] for r in mine)
        points = ax.scatter([r["d_grid"] for r in mine], [r["entropy"] for r in mine], c=[r["layer"] for r in mine],
                            cmap="viridis", vmin=0, vmax=max(1, depth - 1), s=22, edgecolors="k", linewidths=0.3)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("mean attention distance (patches)")
        ax.grid(alpha=0.3)
        if null:
            ax.legend(fontsize=7, loc="lower right")
        fig.colorbar(points, ax=ax, label=f"{part} layer")
    axes[0, 0].set_ylabel("entropy (nats)")
    fig.suptitle(f"{part}: distance vs entropy per head", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bound(row: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """(distance key, its bound, entropy bound) of a head's window."""
    w = row["window"]
    if row.get("window_shape"):
        wt, wf = row["window_shape"]
        return "d_grid", math.hypot(wt - 1, wf - 1), math.log(w)
    if w:
        return "d_flat", w - 1.0, math.log(w)
    return "d_flat", None, None


def has_windows(rows: Sequence[dict[str, Any]]) -> bool:
    return any(r["window"] for r in rows)


def windows_figure(rows: Sequence[dict[str, Any]], part: str, path: Path) -> Path:
    """Heads grouped by window (x), their distance (top: d_flat for windows of the sequence,
    d_grid for windows of the grid) and entropy (bottom) with each window's bound (w - 1,
    ln w) as a red bar; dots coloured by layer; null in grey."""
    plt = _pyplot()
    labels, by, nulls = _split(rows)
    labels = [m for m in labels if has_windows(by[m])]  # checkpoints with windowed heads only
    if not labels:
        raise ValueError(f"no {part} head has a window")
    fig, axes = plt.subplots(2, len(labels), figsize=(4.6 * len(labels) + 0.6, 7.0), squeeze=False)
    for col, label in enumerate(labels):
        mine, null = by[label], nulls[label]
        cats = sorted({(r["window"] or math.inf, _label(r)) for r in mine})
        pos = {name: i for i, (_, name) in enumerate(cats)}
        depth = 1 + max(r["layer"] for r in mine)
        dist_key = "d_grid" if any(r.get("window_shape") for r in mine) else "d_flat"
        for row, key in enumerate((dist_key, "entropy")):
            ax = axes[row, col]
            for group, colour in ((null, NULL_COLOUR), (mine, None)):
                if not group:
                    continue
                base, width = (0.3, 0.15) if colour else (-0.12, 0.45)  # null to the right of its checkpoint
                x = np.array([pos.get(_label(r), np.nan) for r in group]) + base
                x = x + (np.array([r["layer"] for r in group]) / max(1, depth - 1) - 0.5) * width
                kw = {"color": colour, "marker": "x"} if colour else {"c": [r["layer"] for r in group],
                                                                      "cmap": "viridis", "vmin": 0,
                                                                      "vmax": max(1, depth - 1)}
                ax.scatter(x, [r[key] for r in group], s=20, **kw)
            for r in {_label(r): r for r in mine}.values():
                bound = _bound(r)[1 if row == 0 else 2]
                if bound is not None:
                    i = pos[_label(r)]
                    ax.hlines(bound, i - 0.4, i + 0.45, color="red", lw=1.5)
            ax.set_xticks(range(len(cats)), [name for _, name in cats])
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{label} (red: window bound)", fontsize=10)
                ax.set_ylabel("d_flat (tokens), bound w - 1" if key == "d_flat" else "d_grid (patches)")
            else:
                ax.set_ylabel("entropy (nats), bound ln w")
                ax.set_xlabel("window (tokens; grid windows time x freq)")
    fig.suptitle(f"{part} heads by window (colour: layer, dark = first; null in grey crosses)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(row: dict[str, Any]) -> str:
    if not row["window"]:
        return "global"
    return "x".join(map(str, row["window_shape"])) if row.get("window_shape") else str(row["window"])


def pwcca_figure(panels: Sequence[tuple[str, np.ndarray, Sequence[Any], dict[str, Any]]], part: str,
                 path: Path) -> Path:
    """Heatmaps (row/column = heads, layer-major, head-minor) on one colour scale [0, 1], with
    layer boundaries and the same-head vs other cross-layer summary in each title.
    panels: (title, matrix, heads (HeadInfo), summary)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 0.8, 5.0), squeeze=False)
    image = None
    for ax, (title, matrix, heads, summary) in zip(axes[0], panels):
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        layers = [h.layer for h in heads]
        starts = [i for i in range(len(layers)) if i == 0 or layers[i] != layers[i - 1]]
        for s in starts[1:]:
            ax.axhline(s - 0.5, color="w", lw=0.6)
            ax.axvline(s - 0.5, color="w", lw=0.6)
        centres = [(s + e - 1) / 2 for s, e in zip(starts, starts[1:] + [len(layers)])]
        ax.set_xticks(centres, [f"L{layers[s]}" for s in starts], fontsize=7)
        ax.set_yticks(centres, [f"L{layers[s]}" for s in starts], fontsize=7)
        same, other = summary.get("same_head_cross_layer"), summary.get("other_cross_layer")
        text = f"same head, other layer {same:.3f} | other cross-layer {other:.3f}" if same is not None else ""
        ax.set_title(f"{title}\n{text}", fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), label="PWCCA", shrink=0.85)
    fig.suptitle(f"{part}: PWCCA between head outputs (rows/columns: layer-major, head-minor)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["has_windows", "layers_figure", "pwcca_figure", "scatter_figure", "windows_figure"]
