"""Throughput and memory of `MWMAERuntime.embed` against the release's per-chunk loop.

Strategies (same encoder weights, same frontend):
  loop  the release's `RuntimeMAE.encode`: reflect-pad the log-mel by `200 - T % 200` frames
        (a whole extra chunk when T % 200 == 0), run each 200-frame chunk of all clips
        through the encoder in its own call (batch = number of clips), copy every output to
        numpy and back (the release's host round trip), concatenate and trim.
  ours  `MWMAERuntime.embed`: all chunks of all clips batched, `max_chunks_per_batch` at a time.
Configurations are `<strategy>-<precision>`, e.g. loop-fp32, ours-fp32, ours-bf16.

Every (workload, configuration) runs in a fresh subprocess, so peak memory is per
configuration: on CPU the peak RSS (`ru_maxrss`) minus the RSS just before the timed runs
(model and input already built), on CUDA `torch.cuda.max_memory_allocated` minus the memory
allocated before. Throughput is audio seconds per wall second, the best of up to --repeats
timed runs (after a one-chunk warm-up); repeating stops once a configuration has spent
--repeat-budget-s seconds, so slow configurations run once. Weights are random (seeded),
the size is `base` by default.

    PYTHONPATH=. nice python benchmarks/runtime_bench.py --workloads 16x2s,8x10s,60s
    PYTHONPATH=. python benchmarks/runtime_bench.py --device cuda --peak-tflops 989 --quick
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hear_mwmae.config import MWMAEConfig, ModelConfig, model_config
from hear_mwmae.frontend import reflect_indices
from hear_mwmae.model import MWMAE
from hear_mwmae.runtime import PRECISIONS, MWMAERuntime

log = logging.getLogger("runtime_bench")

SR = 16000
WORKLOADS: dict[str, tuple[int, float]] = {  # name -> (clips, seconds per clip)
    "16x2s": (16, 2.0), "8x10s": (8, 10.0), "60s": (1, 60.0), "20min": (1, 1200.0),
    # 31840 samples = exactly 200 frames: the release adds a padding-only chunk, ours does not
    "16x1.99s": (16, 1.99)}
CONFIGS = ("loop-fp32", "ours-fp32", "ours-bf16")


# ----------------------------------------------------------------------------- the two strategies
def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


@torch.inference_mode()
def release_loop(rt: MWMAERuntime, audio: torch.Tensor, precision: str) -> torch.Tensor:
    """The release's encode loop. audio (B, N) -> (B, steps, D) float32 on the device."""
    device, unit = rt.device, rt.config.model.img_size[0]
    mel = rt.frontend(audio.to(device))  # (B, T, F)
    frames = mel.shape[1]
    pad = unit - frames % unit  # never 0: a full extra chunk when frames % unit == 0
    x = mel[:, reflect_indices(frames, 0, pad, device)]  # (B, C * unit, F), numpy-style reflection
    outs = []
    for i in range(x.shape[1] // unit):
        with _autocast(device, precision):
            y = rt.encoder.forward_features(x[:, i * unit:(i + 1) * unit]).float()  # (B, 50, D)
        outs.append(torch.from_numpy(y.cpu().numpy()).to(device))
    emb = torch.cat(outs, dim=1)
    drop = int(outs[0].shape[1] * pad / unit)
    return emb[:, :emb.shape[1] - drop]


def chunks_run(strategy: str, clips: int, seconds: float, cfg: MWMAEConfig) -> int:
    """Encoder chunks each strategy computes for a workload."""
    frames, unit = 1 + int(seconds * SR) // cfg.frontend.hop_length, cfg.model.img_size[0]
    per_clip = frames // unit + 1 if strategy == "loop" else math.ceil(frames / unit)
    return clips * per_clip


def chunk_flops(cfg: ModelConfig) -> float:
    """Multiply-adds x 2 of one encoder pass over one chunk (~44.8 GFLOP for base)."""
    d, n, hidden = cfg.embed_dim, cfg.num_patches + int(cfg.use_cls_token), int(cfg.embed_dim * cfg.mlp_ratio)
    per_block = 2 * n * (4 * d * d + 2 * d * hidden) + 4 * n * n * d  # qkv+proj, mlp, q@k and attn@v
    return cfg.depth * per_block + 2 * cfg.num_patches * d * cfg.patch_dim


# ----------------------------------------------------------------------------- worker (one subprocess)
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def make_audio(clips: int, seconds: float, seed: int) -> torch.Tensor:
    """(clips, n) float32: a tone per clip plus noise, reproducible."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float32) / SR
    freq = 100 + 900 * torch.rand(clips, 1, generator=g)
    return 0.3 * torch.sin(2 * math.pi * freq * t) + 0.05 * torch.randn(clips, n, generator=g)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time one configuration on one workload; returns the measurements."""
    strategy, precision = args.config.split("-")
    clips, seconds = WORKLOADS[args.workload]
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = MWMAEConfig(model=model_config(args.size))
    encoder = MWMAE(cfg.model).encoder  # realistic random init (xavier, sin-cos positions)
    rt = MWMAERuntime(encoder, cfg, device=device, precision=precision if strategy == "ours" else "fp32",
                      max_chunks_per_batch=args.max_chunks_per_batch)
    audio = make_audio(clips, seconds, args.seed)

    def once(x: torch.Tensor) -> torch.Tensor:
        out = release_loop(rt, x, precision) if strategy == "loop" else rt.embed(x)[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    once(audio[:1, :SR])  # warm-up: one chunk
    gc.collect()
    rss0, maxrss0 = _rss_bytes(), _maxrss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda0 = torch.cuda.memory_allocated(device)
    times: list[float] = []
    while len(times) < args.repeats and (not times or sum(times) < args.repeat_budget_s):
        out = None  # free the previous output before the next run
        start = time.perf_counter()
        out = once(audio)
        times.append(time.perf_counter() - start)
        log.info("%s %s: %.2f s", args.workload, args.config, times[-1])
    maxrss = _maxrss_bytes()
    result = {
        "workload": args.workload, "config": args.config, "device": str(device), "threads": torch.get_num_threads(),
        "audio_s": clips * seconds, "times_s": times, "best_s": min(times),
        "chunks": chunks_run(strategy, clips, seconds, cfg), "chunk_gflop": chunk_flops(cfg.model) / 1e9,
        "peak_rss_mb": maxrss / 2**20, "rss_delta_mb": (maxrss - rss0) / 2**20,
        "rss_delta_is_upper_bound": maxrss == maxrss0,  # the run never exceeded the set-up's peak
        "output_shape": list(out.shape),
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = (torch.cuda.max_memory_allocated(device) - cuda0) / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
    if args.save_output:
        np.save(args.save_output, out.cpu().numpy())
    return result


# ----------------------------------------------------------------------------- driver
def plan(workloads: list[str], configs: list[str], quick: bool) -> list[tuple[str, str]]:
    runs = [(w, c) for w in workloads for c in configs]
    if quick:
        runs = [(w, c) for w, c in runs if not (w == "20min" and c.startswith("loop"))]
    return runs


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| in float64."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


def spawn(workload: str, config: str, args: argparse.Namespace, tmp: Path, save: bool) -> dict[str, Any] | None:
    result_file = tmp / f"{workload}-{config}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--workload", workload, "--config", config,
           "--result", str(result_file), "--device", args.device, "--threads", str(args.threads),
           "--size", args.size, "--seed", str(args.seed), "--repeats", str(args.repeats),
           "--repeat-budget-s", str(args.repeat_budget_s)]
    if args.max_chunks_per_batch:
        cmd += ["--max-chunks-per-batch", str(args.max_chunks_per_batch)]
    if save:
        cmd += ["--save-output", str(tmp / f"{workload}-{config}.npy")]
    log.info("running %s / %s", workload, config)
    proc = subprocess.run(cmd)
    if proc.returncode:
        log.error("%s / %s failed (exit code %d)", workload, config, proc.returncode)
        return None
    return json.loads(result_file.read_text())


def report(results: dict[tuple[str, str], dict[str, Any]], errors: dict[tuple[str, str], float],
           workloads: list[str], peak_tflops: float | None) -> str:
    """The summary table (throughput in audio seconds per wall second) and per-run details.

    `errors[(workload, config)]`: ||config - ours-fp32|| / ||ours-fp32|| of the embeddings.
    """
    def speed(w: str, c: str) -> float | None:
        r = results.get((w, c))
        return r["audio_s"] / r["best_s"] if r else None

    def fmt(x: float | None, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    cuda = any("cuda_peak_mb" in r for r in results.values())
    peak_key = "cuda_peak_mb" if cuda else "rss_delta_mb"
    head = ["workload", "loop fp32", "ours fp32", "ratio", "ours bf16", "bf16/fp32", "rel err",
            f"peak MB {'CUDA' if cuda else 'RSS delta'} (loop/fp32/bf16)"]
    rows = []
    for w in workloads:
        loop, ours, bf16 = speed(w, "loop-fp32"), speed(w, "ours-fp32"), speed(w, "ours-bf16")
        peaks = "/".join(fmt(results[(w, c)][peak_key], ".0f") if (w, c) in results else "-"
                         for c in ("loop-fp32", "ours-fp32", "ours-bf16"))
        rows.append([w, fmt(loop), fmt(ours), fmt(ours / loop if ours and loop else None), fmt(bf16),
                     fmt(bf16 / ours if bf16 and ours else None), fmt(errors.get((w, "ours-bf16")), ".2e"), peaks])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [" | ".join(str(c).rjust(n) for c, n in zip(r, widths)) for r in [head, *rows]]
    lines.insert(1, "-+-".join("-" * n for n in widths))
    lines += ["", "throughput = audio seconds per wall second (best run); ratio = ours / loop; rel err = bf16 vs fp32",
              "", "per run: workload config | times (s) | audio s/s | chunks | GFLOP/s"
              + (" | FLOP-bound fraction" if peak_tflops else "") + " | peak RSS MB (abs) | RSS delta MB"]
    for (w, c), r in results.items():
        gflops = r["chunks"] * r["chunk_gflop"] / r["best_s"]
        frac = f" | {gflops / (peak_tflops * 1e3):.3f}" if peak_tflops else ""
        bound = "<=" if r["rss_delta_is_upper_bound"] else ""
        lines.append(f"{w} {c} | {', '.join(f'{t:.2f}' for t in r['times_s'])} | {r['audio_s'] / r['best_s']:.2f} | "
                     f"{r['chunks']} | {gflops:.1f}{frac} | {r['peak_rss_mb']:.0f} | {bound}{r['rss_delta_mb']:.0f}"
                     + (f" | CUDA peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""))
    for (w, c), v in errors.items():
        lines.append(f"{w}: {c} vs ours-fp32 embeddings: rel err {v:.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list of {loop,ours}-{fp32,bf16,fp16}")
    p.add_argument("--quick", action="store_true", help="skip the loop baseline on the 20 min workload")
    p.add_argument("--repeats", type=int, default=3,
                   help="at most this many timed runs per configuration (the best counts)")
    p.add_argument("--repeat-budget-s", type=float, default=60.0,
                   help="no further runs once a configuration's runs took this long in total")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--size", default="base", help="encoder size preset (random weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-chunks-per-batch", type=int, default=None,
                   help="chunks per encoder pass for ours (default: the runtime's, 16 on CPU / 128 on GPU)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense peak TFLOP/s for the precision used, to report the FLOP-bound fraction")
    p.add_argument("--json", type=Path, help="also write all measurements here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--save-output", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.worker:
        args.result.write_text(json.dumps(worker(args)))
        return 0

    workloads, configs = args.workloads.split(","), args.configs.split(",")
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}")
    for c in configs:
        strategy, _, precision = c.partition("-")
        if strategy not in ("loop", "ours") or precision not in PRECISIONS:
            p.error(f"unknown configuration {c!r}")
    runs = plan(workloads, configs, args.quick)
    log.info("plan: %s", ", ".join(f"{w}/{c}" for w, c in runs))
    results: dict[tuple[str, str], dict[str, Any]] = {}
    errors: dict[tuple[str, str], float] = {}

    def dump() -> None:
        if args.json:
            args.json.write_text(json.dumps({"runs": list(results.values()),
                                             "rel_err_vs_ours_fp32": [[w, c, e] for (w, c), e in errors.items()]},
                                            indent=1))

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for w in workloads:
            mine = [c for ww, c in runs if ww == w]
            compare = "ours-fp32" in mine and len(mine) > 1
            for c in mine:
                r = spawn(w, c, args, Path(tmp), save=compare)
                if r:
                    results[(w, c)] = r
                    dump()
            saved = {c: Path(tmp) / f"{w}-{c}.npy" for c in mine if (Path(tmp) / f"{w}-{c}.npy").exists()}
            if "ours-fp32" in saved:
                ref = np.load(saved.pop("ours-fp32"))
                for c, path in saved.items():
                    errors[(w, c)] = rel_err(np.load(path), ref)
                    path.unlink()
                dump()
    log.info("total benchmark time %.0f s", time.perf_counter() - start)
    print(report(results, errors, workloads, args.peak_tflops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
