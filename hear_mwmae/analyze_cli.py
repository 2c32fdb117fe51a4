"""`hear-mwmae analyze attention|pwcca`: the MW-MAE paper's analyses of any checkpoint we load.

    hear-mwmae analyze attention CKPT [CKPT ...] --out DIR (--audio DIR | --synthetic)
        [--clips 128] [--seed 0] [--part encoder|decoder|both] [--labels A,B] [--no-null]
    hear-mwmae analyze pwcca CKPT --out DIR (--audio DIR | --synthetic) [--part decoder|encoder]
        [--clips 128] [--seed 0] [--layers 0,1,...] [--epsilon 0] [--no-null]

attention writes DIR/attention.json (rows per head: layer, head, window, d_grid, d_time_ms,
d_freq, d_flat, entropy, ... with bootstrap intervals; the clips and seeds), attention.csv
and the figures attention_<part>_layers.png, attention_<part>_scatter.png and (when heads
have windows) attention_<part>_windows.png. pwcca writes DIR/pwcca_<part>.json (matrix
layer-major, head-minor; summary: same head index across layers vs other cross-layer pairs)
and pwcca_<part>.png. Each checkpoint is compared with the same architecture freshly
initialised with --seed (the "null"), unless --no-null. The clips, the decoder's masks,
the null's initialisation and the bootstrap all derive from --seed. See docs/analyses.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

from .files import atomic_write, sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CSV_COLUMNS = ("part", "model", "null", "layer", "head", "window", "window_shape", "shift", "d_grid", "d_time",
               "d_time_ms", "d_freq", "d_freq_mel", "d_flat", "d_bins", "entropy", "entropy_normalised")
CI_COLUMNS = ("d_grid", "d_time_ms", "d_freq", "d_flat", "entropy")


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=1)


def _labels(refs: Sequence[str], given: str | None) -> list[str]:
    if given:
        labels = [s.strip() for s in given.split(",")]
        if len(labels) != len(refs) or len(set(labels)) != len(labels) or not all(labels):
            raise ValueError(f"--labels needs {len(refs)} distinct names, got {labels}")
        return labels
    stems = [Path(str(r).rstrip("/")).stem or str(r) for r in refs]
    return [s if stems.count(s) == 1 else f"{s}#{i}" for i, s in enumerate(stems)]


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _load(ref: str, label: str, device: str):
    """(model on `device`, its facts); the checkpoint's own copy of the weights is not kept."""
    from .analysis.recording import from_checkpoint
    from .sources import load_checkpoint

    ckpt = load_checkpoint(ref)
    model = from_checkpoint(ckpt, label, str(ref)).to(device)
    return model, _model_facts(model, ckpt)


def _model_facts(model, ckpt=None) -> dict[str, Any]:
    cfg = model.config
    m = cfg.model
    facts: dict[str, Any] = {
        "label": model.label, "null": model.null, "source": model.source, "family": m.family,
        "encoder": {"embed_dim": m.embed_dim, "depth": m.depth, "num_heads": m.num_heads,
                    "window_sizes": list(m.window_sizes), "cls_token": m.use_cls_token},
        "decoder": None if model.mae is None else {
            "kind": m.decoder_kind, "depth": m.decoder_depth, "num_heads": m.decoder_num_heads,
            "window_sizes": list(m.decoder_window_sizes), "window": list(m.decoder_window),
            "mask_ratio": m.mask_ratio, "mask_2d": m.mask_2d},
        "grid": list(m.grid_size), "patch_size": list(m.patch_size), "time_patch_ms": m.patch_size[0] * cfg.hop_ms,
        "freq_patch_mel_bins": m.patch_size[1], "chunk_frames": cfg.chunk_frames, "frontend": cfg.frontend.kind,
    }
    if ckpt is not None and Path(model.source).is_file():
        facts["sha256"] = sha256_file(model.source)
    if ckpt is not None:
        facts["provenance"] = {k: v for k, v in ckpt.provenance.items() if k in ("source", "source_file", "step",
                                                                                   "recipe", "converter_version")}
    return facts


def _clips(args: argparse.Namespace, configs: Sequence[Any]) -> tuple[list, dict[str, Any]]:
    from .analysis.clips import audio_clips, segment_samples, synthetic_clips
    from .audio import SAMPLE_RATE

    if args.clips < 1:
        raise ValueError("--clips must be >= 1")
    longest = max(segment_samples(c) for c in configs) / SAMPLE_RATE
    if args.synthetic:
        clips = synthetic_clips(args.clips, args.seed, longest)
        return clips, {"kind": "synthetic", "generator": "hear_mwmae.pretrain.synth.make_clip(seed, index, duration)"}
    clips = audio_clips(args.audio, args.clips, args.seed, longest)
    return clips, {"kind": "audio", "folder": str(args.audio)}


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = list(CSV_COLUMNS) + [f"{k}_{end}" for k in CI_COLUMNS for end in ("lo", "hi")]
    writer.writerow(header)
    for r in rows:
        shape = "x".join(map(str, r["window_shape"])) if r["window_shape"] else ""
        values = [shape if k == "window_shape" else r[k] for k in CSV_COLUMNS]
        values += [r["ci"][k][i] for k in CI_COLUMNS for i in (0, 1)]
        writer.writerow([f"{v:.10g}" if isinstance(v, float) else v for v in values])
    return buf.getvalue()


def _check_figures(args: argparse.Namespace) -> None:
    """Fail before the work, not after it, when the figures cannot be drawn."""
    if not args.no_figures:
        from .errors import require

        require("matplotlib", "for the figures (or pass --no-figures)", extra="analysis")


def run_attention(args: argparse.Namespace) -> int:
    """Entry point of `hear-mwmae analyze attention`."""
    from .analysis import plots
    from .analysis.recording import null_model
    from .analysis.study import attention_study

    start = time.perf_counter()
    _check_figures(args)
    if args.bootstrap < 1:
        raise ValueError("--bootstrap must be >= 1")
    parts = ["encoder", "decoder"] if args.part == "both" else [args.part]
    refs = [str(c) for c in args.checkpoints]
    labels = _labels(refs, args.labels)
    device = _device(args.device)
    loaded = [_load(r, label, device) for r, label in zip(refs, labels)]
    for m, _ in loaded:
        if "decoder" in parts and m.mae is None:
            raise ValueError(f"{m.label}: encoder-only checkpoint, it has no decoder to analyse (use --part encoder)")
    clips, inputs = _clips(args, [m.config for m, _ in loaded])
    facts = [f for _, f in loaded]
    nulls: dict[str, tuple[Any, str]] = {}  # config JSON -> (config, label) of its null model
    null_of: dict[str, str] = {}
    if not args.no_null:
        for m, _ in loaded:
            key = json.dumps(m.config.to_dict(), sort_keys=True)
            nulls.setdefault(key, (m.config, f"null ({m.label} arch.)"))
            null_of[m.label] = nulls[key][1]
    checkpoints = [m for m, _ in loaded]
    del loaded, m

    def models():  # one at a time: each is dropped once analysed, nulls are built only when due
        while checkpoints:
            yield checkpoints.pop(0)
        for config, label in nulls.values():
            null = null_model(config, args.seed, label).to(device)
            facts.append(_model_facts(null))
            yield null

    rows: dict[str, list[dict[str, Any]]] = {p: [] for p in parts}
    for model in models():
        log.info("analysing %s (%s) on %d clips", model.label, ", ".join(parts), len(clips))
        for result in attention_study(model, parts, clips, args.seed, args.batch_size, not args.no_progress):
            for row in result.rows(args.bootstrap, 0.95, args.seed):
                row["null_model"] = null_of.get(model.label)
                rows[result.part].append(row)
        del model, result
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "format": "hear-mwmae-analyze-attention", "format_version": FORMAT_VERSION,
        "seed": args.seed, "mask_seed": args.seed, "null_init_seed": None if args.no_null else args.seed,
        "bootstrap": {"resamples": args.bootstrap, "level": 0.95, "over": "clips", "seed": args.seed},
        "inputs": inputs, "n_clips": len(clips), "clips": [c.to_dict() for c in clips],
        "models": facts,
        "units": {"d_grid": "patches (Euclidean on the (time, freq) grid)", "d_time": "time patches",
                  "d_time_ms": "ms", "d_freq": "frequency patches", "d_freq_mel": "mel bins",
                  "d_flat": "tokens of the flattened time-major sequence", "d_bins": "frames / mel bins mixed",
                  "entropy": "nats, per query then averaged", "entropy_normalised": "entropy / ln(patches)",
                  "window": "tokens a head may attend to, 0 = global"},
        "encoder": rows.get("encoder", []), "decoder": rows.get("decoder", []),
    }
    _write_json(out / "attention.json", summary)
    with atomic_write(out / "attention.csv", "w") as fh:
        fh.write(_csv_text([{**r, "part": p} for p in parts for r in rows[p]]))
    figures = []
    if not args.no_figures:
        for p in parts:
            figures.append(plots.layers_figure(rows[p], p, out / f"attention_{p}_layers.png"))
            figures.append(plots.scatter_figure(rows[p], p, out / f"attention_{p}_scatter.png"))
            if plots.has_windows(rows[p]):
                figures.append(plots.windows_figure(rows[p], p, out / f"attention_{p}_windows.png"))
    log.info("wrote %s, %s%s in %.1f s", out / "attention.json", out / "attention.csv",
             "".join(f", {f.name}" for f in figures), time.perf_counter() - start)
    return 0


def _parse_layers(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--layers takes comma-separated block indices, got {text!r}") from None


def run_pwcca(args: argparse.Namespace) -> int:
    """Entry point of `hear-mwmae analyze pwcca`."""
    from .analysis import plots
    from .analysis.recording import null_model
    from .analysis.study import pwcca_study

    start = time.perf_counter()
    _check_figures(args)
    label = _labels([str(args.checkpoint)], args.label)[0]
    device = _device(args.device)
    model, facts = _load(str(args.checkpoint), label, device)
    clips, inputs = _clips(args, [model.config])
    layers = _parse_layers(args.layers)
    if args.epsilon < 0 or not math.isfinite(args.epsilon):
        raise ValueError("--epsilon must be a finite number >= 0")
    models = [model]
    if not args.no_null:
        models.append(null_model(model.config, args.seed, f"null ({label} arch.)").to(device))
    results = [pwcca_study(m, args.part, clips, layers, args.epsilon, args.seed, args.batch_size,
                           not args.no_progress) for m in models]

    def block(r) -> dict[str, Any]:
        return {"model": r.model.label, "summary": r.summary, "matrix": r.matrix.tolist()}

    first = results[0]
    heads = [{"index": i, "layer": h.layer, "head": h.head, "window": h.window,
              "window_shape": list(h.window_shape) if h.window_shape else None, "shift": h.shift}
             for i, h in enumerate(first.heads)]
    summary = {
        "format": "hear-mwmae-analyze-pwcca", "format_version": FORMAT_VERSION, "part": args.part,
        "seed": args.seed, "mask_seed": args.seed, "null_init_seed": None if args.no_null else args.seed,
        "epsilon": args.epsilon, "datapoints": first.datapoints,
        "representation": "each head's output before the output projection, datapoints = clips x patch tokens",
        "reference": "google/svcca compute_pwcca (uncentred projection weights); entry (a, b) = pwcca(a, b)",
        "inputs": inputs, "n_clips": len(clips), "clips": [c.to_dict() for c in clips],
        "model": facts, "heads": heads, **block(first),
        "null": block(results[1]) if len(results) > 1 else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / f"pwcca_{args.part}.json", summary)
    figure = None
    if not args.no_figures:
        panels = [(r.model.label, r.matrix, r.heads, r.summary) for r in results]
        figure = plots.pwcca_figure(panels, args.part, out / f"pwcca_{args.part}.png")
    s = first.summary
    print(f"{label} {args.part}: PWCCA same head index across layers {s['same_head_cross_layer']:.4f}, "
          f"other cross-layer pairs {s['other_cross_layer']:.4f}, within layer {s['within_layer']:.4f}"
          + ("" if len(results) < 2 else f"; null: {results[1].summary['same_head_cross_layer']:.4f} vs "
             f"{results[1].summary['other_cross_layer']:.4f}"))
    log.info("wrote %s%s in %.1f s", out / f"pwcca_{args.part}.json", f", {figure.name}" if figure else "",
             time.perf_counter() - start)
    return 0


def _common(p: argparse.ArgumentParser, default_part: str, parts: Sequence[str]) -> None:
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if needed)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", type=Path, metavar="DIR",
                     help="clips from the audio files under DIR (read_audio + each model's frontend)")
    src.add_argument("--synthetic", action="store_true", help="clips of hear_mwmae.pretrain.synth sounds")
    p.add_argument("--clips", type=int, default=128, help="number of clips (one chunk each; default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of clips, decoder masks, null init, bootstrap")
    p.add_argument("--part", choices=parts, default=default_part, help=f"default {default_part}")
    p.add_argument("--no-null", action="store_true", help="skip the freshly initialised reference model")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="clips per forward pass (default: sized to keep one block's maps ~768 MB)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-figures", action="store_true", help="write the numbers only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `analyze attention` and `analyze pwcca` to the `hear-mwmae` command line."""
    p = subparsers.add_parser("analyze", help="the paper's analyses: attention distance / entropy per head, PWCCA",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="analysis", required=True)
    a = sub.add_parser("attention", help="mean attention distance and entropy per head, with figures")
    a.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoints compared side by side")
    a.add_argument("--labels", help="comma-separated names for the checkpoints (default: file stems)")
    a.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over clips (default 1000)")
    _common(a, "encoder", ("encoder", "decoder", "both"))
    a.set_defaults(func=run_attention)
    w = sub.add_parser("pwcca", help="head-by-head PWCCA matrix of the decoder (or encoder), with heatmap")
    w.add_argument("checkpoint", metavar="CKPT")
    w.add_argument("--label", help="name of the checkpoint in outputs (default: file stem)")
    w.add_argument("--layers", help="comma-separated block indices (default: all)")
    w.add_argument("--epsilon", type=float, default=0.0, help="PWCCA epsilon (as google/svcca; default 0)")
    _common(w, "decoder", ("decoder", "encoder"))
    w.set_defaults(func=run_pwcca)
    return p


__all__ = ["register", "run_attention", "run_pwcca"]
