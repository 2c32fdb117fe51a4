"""GPU figures in one prepared run: embedding throughput per precision, fidelity, torch.compile,
micro-batch size, and pre-training throughput. Writes JSON + Markdown.

    python benchmarks/gpu_bench.py --out gpu_results                  # on a GPU machine, ~5 min
    python benchmarks/gpu_bench.py --device cpu --quick --out /tmp/g  # smoke run (CI), seconds

Everything runs in this one process, one section after another; the JSON and Markdown are
rewritten after each section, so a run stopped early keeps what it measured. Weights are
random (seeded; speed does not depend on the values), size `base` (`--quick`: `tiny` with 2
blocks, one small workload, one timed run per case, no compile).
  embed    `MWMAERuntime.embed` of MW-MAE on 1 x 60 s, 64 x 10 s and 512 x 2 s in fp32,
           bf16 and fp16 (autocast): audio s/s, achieved TFLOP/s (2 x multiply-adds of the
           chunks run), share of the GPU's bf16 dense peak, peak CUDA memory over the set-up,
           chunks per encoder pass; bf16 / fp16 embeddings against fp32 on the same clips
           (relative L2 error, max |x - ref| / max |ref|, worst per-step cosine). fp32 is
           torch's default (TF32 off).
  compile  the same with `compile=True` (warm-up, i.e. compile, time reported apart).
  chunks   bf16 on 512 x 2 s for several `max_chunks_per_batch`: the GPU default's evidence.
  ceiling  bf16 / fp32 matrix products (8192^3 and the MLP's shape of one 128-chunk
           micro-batch): what the device reaches outside the model.
  pretrain the `released` recipe (bf16 autocast, micro-batch = its batch of 1024) through
           `hear_mwmae.pretrain.trainer.build_model` / `optimizer_step` on synthetic tensors
           for 30 timed steps after 3 warm-up steps: samples/s, peak memory, final loss.
Times: best of `--repeats` runs after a full warm-up run, CUDA synchronised around each.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from hear_mwmae.config import model_config


def _sibling(name: str) -> Any:
    """Import benchmarks/<name>.py (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


rb = _sibling("runtime_bench")

log = logging.getLogger("gpu_bench")

# bf16 dense (no sparsity) tensor-core peaks, TFLOP/s, from the vendors' data sheets
BF16_PEAKS = (("H200", 989.4), ("GH200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
              ("H800", 989.4), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0))
WORKLOADS = ("60s", "64x10s", "512x2s")
QUICK_WORKLOADS = ("2x2s",)
PRECISIONS = ("fp32", "bf16", "fp16")
CHUNK_SWEEP = (32, 64, 128, 256, 512)


def bf16_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, where it came from)."""
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "not a GPU"
    name = torch.cuda.get_device_name(device)
    for key, peak in BF16_PEAKS:
        if key in name:
            return peak, f"data sheet ({key})"
    return None, f"unknown GPU {name!r}: pass --peak-tflops"


def matmul_tflops(device: torch.device, dtype: torch.dtype, m: int, k: int, n: int, repeats: int) -> float:
    """Best TFLOP/s of one (m, k) @ (k, n) product on random data."""
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(m, k, device=device, dtype=dtype, generator=g)
    b = torch.randn(k, n, device=device, dtype=dtype, generator=g)
    with torch.inference_mode():
        a @ b
        times, _ = rb.timed_runs(lambda: a @ b, device, repeats, math.inf)
    return 2 * m * k * n / min(times) / 1e12


class Bench:
    """Holds the run's settings and results; each section adds to `self.results`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.quick = args.quick
        self.size = "tiny, 2 blocks" if args.quick else args.size
        self.cfg = (rb.MWMAEConfig(model=model_config("tiny", depth=2)) if args.quick
                    else rb.bench_config("mwmae", args.size))
        self.peak, self.peak_source = bf16_peak(self.device, args.peak_tflops)
        self.started = time.perf_counter()
        self.results: dict[str, Any] = {
            "device": str(self.device), "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
            else platform.processor() or platform.machine(),
            "torch": torch.__version__, "size": self.size, "bf16_peak_tflops": self.peak,
            "bf16_peak_source": self.peak_source, "tf32": torch.backends.cuda.matmul.allow_tf32,
            "embed": [], "compile": [], "chunks": [], "ceiling": {}, "pretrain": {}, "skipped": [],
        }

    # -- helpers
    def over_budget(self, section: str) -> bool:
        spent = time.perf_counter() - self.started
        if spent > self.args.budget_s:
            log.warning("skipping %s: %.0f s spent of the %.0f s budget", section, spent, self.args.budget_s)
            self.results["skipped"].append(section)
            return True
        return False

    def runtime(self, precision: str, compiled: bool = False, chunks: int | None = None) -> rb.MWMAERuntime:
        return rb.build_runtime(self.cfg, self.args.seed, self.device, precision, compiled, chunks)

    def peak_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None

    def measure(self, rt: rb.MWMAERuntime, workload: str, label: str) -> tuple[dict[str, Any], torch.Tensor]:
        """Warm up (full run: compiles, cuBLAS heuristics), then time; returns (row, embeddings)."""
        clips, seconds = rb.WORKLOADS[workload]
        audio = rb.make_audio(clips, seconds, self.args.seed)
        began = time.perf_counter()
        rt.embed(audio)
        rb.sync(self.device)
        warmup_s = time.perf_counter() - began
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        times, (emb, _) = rb.timed_runs(lambda: rt.embed(audio), self.device, self.args.repeats, math.inf,
                                        f"{workload} {label}")
        chunks = rb.chunks_run("ours", clips, seconds, self.cfg)
        tflops = chunks * rb.chunk_flops(self.cfg.model) / min(times) / 1e12
        peak = self.peak_mb()
        row = {"workload": workload, "config": label, "audio_s_per_s": clips * seconds / min(times),
               "best_s": min(times), "times_s": times, "warmup_s": warmup_s, "tflops": tflops,
               "of_bf16_peak": tflops / self.peak if self.peak else None,
               "peak_mb": None if peak is None else peak - before / 2**20, "chunks": chunks,
               "max_chunks_per_batch": rt.max_chunks_per_batch, "chunks_per_pass": min(chunks, rt.max_chunks_per_batch)}
        return row, emb

    # -- sections
    def embed(self) -> None:
        """Eager runtimes per precision; bf16 / fp16 compared with fp32 on the same clips."""
        runtimes = {p: self.runtime(p) for p in self.args.precisions}
        for workload in self.workloads:
            ref = None
            for precision, rt in runtimes.items():
                row, emb = self.measure(rt, workload, precision)
                if precision == "fp32":
                    ref = emb
                elif ref is not None:
                    row.update(rb.compare(emb, ref))
                self.results["embed"].append(row)
                log.info("%s", row)
                del emb
            del ref
        del runtimes

    def compile(self) -> None:
        for precision in self.args.compile_precisions:
            if self.over_budget(f"compile {precision}"):
                return
            rt = self.runtime(precision, compiled=True)
            for workload in self.workloads:
                row, emb = self.measure(rt, workload, f"{precision}-compile")
                self.results["compile"].append(row)
                del emb
            del rt
            self.write()

    def chunks(self) -> None:
        workload = self.workloads[-1]
        for chunks in self.sweep:
            if self.over_budget(f"chunks {chunks}"):
                return
            row, emb = self.measure(self.runtime("bf16", chunks=chunks), workload, f"bf16 x{chunks}")
            self.results["chunks"].append(row)
            del emb

    def ceiling(self) -> None:
        n = 512 if self.quick else 8192
        d = self.cfg.model.embed_dim
        m = (2 if self.quick else 128) * self.cfg.model.num_patches  # tokens of one micro-batch
        out = {}
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            out[f"{name}_square_{n}"] = matmul_tflops(self.device, dtype, n, n, n, self.args.repeats)
            out[f"{name}_mlp_{m}x{d}x{4 * d}"] = matmul_tflops(self.device, dtype, m, d, 4 * d, self.args.repeats)
        self.results["ceiling"] = out

    def pretrain(self) -> None:
        from hear_mwmae.pretrain.recipes import get_recipe, lr_at
        from hear_mwmae.pretrain.trainer import build_model, optimizer_step

        cfg = get_recipe("released")
        if self.quick:
            cfg = dataclasses.replace(cfg, model=model_config("tiny", depth=2, decoder_depth=1, decoder_embed_dim=64),
                                      batch_size=4)
        steps, warm = (2, 1) if self.quick else (self.args.pretrain_steps, 3)
        model, opt = build_model(cfg, self.device)
        model.train()
        batch = cfg.micro_batch(1)
        g = torch.Generator(self.device).manual_seed(0)
        pool = [(torch.randn(batch, *cfg.model.img_size, device=self.device, generator=g),
                 torch.rand(batch, cfg.model.mask_noise_size, device=self.device, generator=g), [])
                for _ in range(2)]

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, list]]:
            i = 0
            while True:
                yield pool[i % len(pool)]
                i += 1

        source = batches()
        lr = lr_at(100, cfg.peak_lr, 10, 1000)

        def step() -> torch.Tensor:
            return optimizer_step(cfg, model, model, opt, source, lr, self.device, ddp=False)[0]

        for _ in range(warm):
            step()
        rb.sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        began = time.perf_counter()
        losses = [step() for _ in range(steps)]
        rb.sync(self.device)
        elapsed = time.perf_counter() - began
        loss = float(losses[-1])
        if not math.isfinite(loss):
            raise RuntimeError(f"pre-training loss is {loss}")
        self.results["pretrain"] = {
            "recipe": cfg.name, "bf16_autocast": cfg.bf16 and self.device.type == "cuda", "batch": cfg.batch_size,
            "micro_batch": batch, "steps": steps, "seconds": elapsed, "samples_per_s": steps * cfg.batch_size / elapsed,
            "step_s": elapsed / steps, "peak_mb": self.peak_mb(), "last_loss": loss,
            "size": "tiny (quick)" if self.quick else "base (released)"}

    # -- output
    @property
    def workloads(self) -> tuple[str, ...]:
        return QUICK_WORKLOADS if self.quick else WORKLOADS

    @property
    def sweep(self) -> tuple[int, ...]:
        return (2, 4) if self.quick else CHUNK_SWEEP

    def write(self) -> None:
        self.results["elapsed_s"] = time.perf_counter() - self.started
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_bench.json").write_text(json.dumps(self.results, indent=1))
        (out / "gpu_bench.md").write_text(markdown(self.results))

    def run(self) -> dict[str, Any]:
        sections: list[tuple[str, Callable[[], None]]] = [("embed", self.embed), ("ceiling", self.ceiling),
                                                          ("pretrain", self.pretrain), ("chunks", self.chunks)]
        if self.args.compile_precisions:
            sections.append(("compile", self.compile))
        for name, fn in sections:
            if self.over_budget(name):
                continue
            log.info("section %s", name)
            fn()
            self.write()
        return self.results


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(r: dict[str, Any]) -> str:
    """The JSON's tables as Markdown."""
    lines = [f"# gpu_bench: {r['gpu']} ({r['device']}), torch {r['torch']}, size {r['size']}", "",
             f"bf16 dense peak: {_fmt(r['bf16_peak_tflops'], '.0f')} TFLOP/s ({r['bf16_peak_source']}); "
             f"TF32 for fp32 matmuls: {r['tf32']}", ""]

    def rows(items: list[dict[str, Any]], title: str) -> None:
        if not items:
            return
        lines.extend([f"## {title}", "", "| workload | config | audio s/s | TFLOP/s | of bf16 peak | peak MB | "
                      "chunks/pass | rel err | rel max abs | worst cos | warm-up s |", "|" + "---|" * 11])
        for x in items:
            lines.append(f"| {x['workload']} | {x['config']} | {x['audio_s_per_s']:.1f} | {x['tflops']:.1f} | "
                         f"{_fmt(x['of_bf16_peak'], '.3f')} | {_fmt(x['peak_mb'], '.0f')} | {x['chunks_per_pass']} | "
                         f"{_fmt(x.get('rel_err'), '.1e')} | {_fmt(x.get('rel_max_abs'), '.1e')} | "
                         f"{_fmt(x.get('worst_cos'), '.5f')} | {x['warmup_s']:.1f} |")
        lines.append("")

    rows(r["embed"], "embed (eager)")
    rows(r["compile"], "embed with compile=True")
    rows(r["chunks"], "bf16 by max_chunks_per_batch")
    if r["ceiling"]:
        lines += ["## matrix-product ceiling (TFLOP/s)", "", "| product | TFLOP/s |", "|---|---|",
                  *(f"| {k} | {v:.1f} |" for k, v in r["ceiling"].items()), ""]
    if r["pretrain"]:
        p = r["pretrain"]
        lines += ["## pre-training", "",
                  "| recipe | size | bf16 | batch | steps | samples/s | s/step | peak MB | loss |",
                  "|" + "---|" * 9, f"| {p['recipe']} | {p['size']} | {p['bf16_autocast']} | {p['batch']} | "
                  f"{p['steps']} | {p['samples_per_s']:.1f} | {p['step_s']:.3f} | {_fmt(p['peak_mb'], '.0f')} | "
                  f"{p['last_loss']:.4f} |", ""]
    if r["skipped"]:
        lines.append(f"skipped (time budget): {', '.join(r['skipped'])}")
    lines.append(f"total {r.get('elapsed_s', 0):.0f} s")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_bench.json and gpu_bench.md")
    p.add_argument("--device", default="cuda", help="cuda[:i], or cpu for a smoke run")
    p.add_argument("--quick", action="store_true", help="tiny model, short clips, few steps, no compile")
    p.add_argument("--size", default="base")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (the best counts)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of fp32,bf16,fp16")
    p.add_argument("--compile-precisions", default="fp32,bf16",
                   help="precisions to also run with compile=True (empty: none; --quick: none)")
    p.add_argument("--pretrain-steps", type=int, default=30)
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak, if the GPU is not recognised")
    p.add_argument("--budget-s", type=float, default=480.0, help="skip sections that would start after this")
    args = p.parse_args(argv)
    args.precisions = [x for x in args.precisions.split(",") if x]
    if args.precisions[0] != "fp32":
        p.error("--precisions must start with fp32 (the reference)")
    args.compile_precisions = [] if args.quick else [x for x in args.compile_precisions.split(",") if x]
    if args.quick:
        args.repeats = 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("CUDA is not available here; use --device cpu --quick for a smoke run")
    bench = Bench(args)
    bench.run()
    sys.stdout.write(markdown(bench.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
