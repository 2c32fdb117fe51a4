"""Where one encoder pass spends its time, per operator (torch.profiler), grouped into matrix
products and the rest.

    PYTHONPATH=. nice python benchmarks/profile_encoder.py                      # base, 16 chunks, fp32
    PYTHONPATH=. nice python benchmarks/profile_encoder.py --precision int8 --passes 3
    PYTHONPATH=. nice python benchmarks/profile_encoder.py --family audiomae --batch 8 --precision bf16

Random weights (seeded), `forward_features` on (batch, T, F) normalised chunks under
`torch.inference_mode`, after one warm-up pass, run as the CPU runtime runs it: fp32 and bf16
with the fused oneDNN linears (`--unfused`: plain `nn.Linear`, bf16 under autocast), int8
quantised and one chunk at a time. Self CPU time per operator, summed over `--passes`
passes; groups: GEMM (the linear layers' products: addmm / mm / oneDNN / int8 linear),
attention (SDPA: its own q@k, softmax, @v), pointwise (GELU, residual adds, LayerNorm),
quantise / cast (int8: each input's max |x|, scaling and conversion to 8 bits; bf16 casts),
copies (copy_ / clone: layout changes, bias broadcast, autocast's weight casts), other.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from hear_mwmae.config import FbankConfig, MWMAEConfig, audiomae_config, model_config
from hear_mwmae.model import MWMAE

GROUPS = {
    "GEMM": ("aten::addmm", "aten::mm", "aten::bmm", "quantized::linear_dynamic", "mkldnn::_linear_pointwise",
             "onednn::qlinear_pointwise",
             "mkl::_mkl_linear", "aten::_int_mm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                  "aten::_softmax", "aten::softmax"),
    "pointwise": ("aten::gelu", "aten::add", "aten::native_layer_norm", "aten::div"),
    "quantise / cast": ("aten::aminmax", "aten::mul", "aten::add_", "aten::_to_copy"),
    "copies": ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat"),
}


def group_of(name: str) -> str:
    for group, names in GROUPS.items():
        if name in names:
            return group
    return "other"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=("mwmae", "audiomae"), default="mwmae")
    p.add_argument("--size", default="base")
    p.add_argument("--batch", type=int, default=16, help="chunks per pass (the CPU runtime's default)")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--passes", type=int, default=1)
    p.add_argument("--rows", type=int, default=14, help="operators listed")
    p.add_argument("--unfused", action="store_true",
                   help="fp32 / bf16: plain nn.Linear + GELU, bf16 under autocast (default: the runtime's fused "
                        "oneDNN linears, if available)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = (MWMAEConfig(model=audiomae_config(args.size), frontend=FbankConfig()) if args.family == "audiomae"
           else MWMAEConfig(model=model_config(args.size)))
    encoder = MWMAE(cfg.model).encoder.eval().requires_grad_(False)
    run = encoder.forward_features
    fused = False
    if args.precision == "int8":
        from hear_mwmae.quantize import chunk_by_chunk, quantize_encoder

        quantize_encoder(encoder)
        run = chunk_by_chunk(encoder.forward_features)  # as the runtime runs int8
    elif not args.unfused:
        from hear_mwmae import cpu_fused

        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        if cpu_fused.available(dtype):
            cpu_fused.fuse_encoder(encoder, dtype)
            fused = True
    x = torch.randn(args.batch, *cfg.model.img_size)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" and not fused
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        run(x)  # warm-up
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.passes):
                run(x)
        wall = (time.perf_counter() - start) / args.passes
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total
    out = [f"{args.family} {args.size}, {args.batch} chunks, {args.precision}{' fused' if fused else ''}, "
           f"{args.threads} threads: "
           f"{wall:.3f} s per pass (profiled), self CPU {total / 1e6 / args.passes:.3f} s per pass", "",
           f"{'group':<10} {'share':>7} {'s/pass':>8}"]
    out += [f"{g:<10} {t / total:>7.1%} {t / 1e6 / args.passes:>8.3f}"
            for g, t in sorted(groups.items(), key=lambda kv: -kv[1])]
    out += ["", f"{'operator':<52} {'group':<10} {'calls':>6} {'share':>7} {'ms/pass':>8}"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
        out.append(f"{e.key[:52]:<52} {group_of(e.key):<10} {e.count // args.passes:>6} "
                   f"{e.self_cpu_time_total / total:>7.1%} {e.self_cpu_time_total / 1e3 / args.passes:>8.1f}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
