"""Fine-tuning and tagging speed of a base-size classifier (random weights, 527 classes).

    PYTHONPATH=. nice python benchmarks/finetune_bench.py [--family mwmae audiomae] [--batch 8] [--steps 4] [--size base]
    PYTHONPATH=. python benchmarks/finetune_bench.py --device cuda --batch 64

Per family, each in a fresh subprocess (so the peak memory is its own):
  train  optimiser steps of the fine-tuning loop (`hear_mwmae.pretrain.loop.optimizer_step` with
         `finetune.model.classification_loss`): the authors' AS recipe's 2-D token masking 0.2 / 0.2
         and drop path 0.1, AdamW over the layer-decay groups; clips per second over `--steps`
         timed steps after one warm-up step (examples are made once: the data pipeline is not timed)
  tag    `get_logits` on 8 clips of 10 s (`--tag-clips`, `--tag-seconds`; the runtime's chunks): audio s per
         wall second, beside `get_scene_embeddings` on the same clips (the head's cost)
  rss    peak resident memory of the subprocess (CPU) or peak CUDA memory allocated
Prints one JSON line per family, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

FAMILIES = ("mwmae", "audiomae")


def _model(family: str, classes: int, size: str = "base"):
    from hear_mwmae.config import FbankConfig, FrontendConfig, HeadConfig, MWMAEConfig, audiomae_config, model_config

    small = {"depth": 2} if size == "tiny" else {}  # the test's size: 2 blocks of ViT-Tiny
    model = audiomae_config(size, final_norm=False, **small) if family == "audiomae" else \
        model_config(size, final_norm=False, **small)
    frontend = FbankConfig() if family == "audiomae" else FrontendConfig()
    return MWMAEConfig(model, frontend, HeadConfig.generic(classes))


def worker(family: str, batch: int, steps: int, device: str, classes: int, size: str = "base",
           tag_clips: int = 8, tag_seconds: float = 10.0) -> dict:
    from hear_mwmae.checkpoint import Checkpoint
    from hear_mwmae.classifier import PREFIX
    from hear_mwmae.finetune.model import build_classifier, build_optimizer, classification_loss, prepare
    from hear_mwmae.finetune.recipes import get_recipe
    from hear_mwmae.model import Encoder
    from hear_mwmae.pretrain.loop import optimizer_step
    from hear_mwmae.runtime import MWMAERuntime

    import hear_mwmae

    torch.manual_seed(0)
    config = _model(family, classes, size)
    encoder = Encoder(config.model)
    state = {"encoder." + k: v for k, v in encoder.state_dict().items()}
    cfg = get_recipe("audiomae-as20k-ft", ["num_workers=0"])
    dev = torch.device(device)
    model = prepare(build_classifier(Checkpoint(config, state), config, cfg), cfg, dev).train()
    opt = build_optimizer(model, cfg)
    loss_fn = classification_loss(model, cfg, multi_label=True)
    gt, gf = config.model.grid_size
    x = torch.randn(batch, *config.model.img_size)
    targets = (torch.rand(batch, classes) < 0.01).float()
    item = (x, targets, torch.rand(batch, gt + gf), torch.rand(batch, config.model.depth, 2), [])
    amp = torch.bfloat16 if dev.type == "cuda" else None

    def step() -> None:
        optimizer_step(model, opt, iter([item]), loss_fn, lr=1e-4, accum_steps=1, grad_clip=0.0, dev=dev, ddp=False,
                       amp=amp)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    began = time.perf_counter()
    for _ in range(steps):
        step()
    train_cps = steps * batch / (time.perf_counter() - began)

    params = sum(p.numel() for p in model.parameters())  # (before the runtime fuses the linears in place)
    runtime = MWMAERuntime(model.encoder, config, device=dev, classifier=model.classifier)
    del opt
    audio = torch.rand(tag_clips, int(16000 * tag_seconds)) * 0.2 - 0.1
    results = {}
    for name, fn in (("tag", lambda: hear_mwmae.get_logits(audio, runtime)),
                     ("embed", lambda: hear_mwmae.get_scene_embeddings(audio, runtime))):
        fn()
        best = min(_timed(fn, dev) for _ in range(2))
        results[name] = tag_clips * tag_seconds / best
    peak = (torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"family": family, "device": device, "batch": batch, "params_M": round(params / 1e6, 2),
            "train_clips_per_s": round(train_cps, 3), "tag_audio_s_per_s": round(results["tag"], 2),
            "embed_audio_s_per_s": round(results["embed"], 2), "peak_GiB": round(peak, 2),
            "threads": torch.get_num_threads(), "chunk": list(config.model.img_size)}


def _timed(fn, dev: torch.device) -> float:
    began = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--batch", type=int, default=8, help="clips per optimiser step")
    p.add_argument("--steps", type=int, default=4, help="timed optimiser steps")
    p.add_argument("--classes", type=int, default=527)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="base", choices=("tiny", "small", "base", "large"))
    p.add_argument("--tag-clips", type=int, default=8, help="clips of the tagging workload")
    p.add_argument("--tag-seconds", type=float, default=10.0, help="their length")
    p.add_argument("--worker", choices=FAMILIES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.steps, args.device, args.classes, args.size,
                                args.tag_clips, args.tag_seconds)), flush=True)
        return 0
    rows = []
    for family in args.family:
        cmd = [sys.executable, __file__, "--worker", family, "--batch", str(args.batch), "--steps", str(args.steps),
               "--classes", str(args.classes), "--device", args.device, "--size", args.size,
               "--tag-clips", str(args.tag_clips), "--tag-seconds", str(args.tag_seconds)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr[-3000:])
            return 1
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n| family ({args.size}, {args.classes} classes) | chunk | train clips/s (batch) | peak GiB | tag audio s/s | "
          "embed audio s/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} ({r['params_M']} M params) | {r['chunk'][0]} x {r['chunk'][1]} | "
              f"{r['train_clips_per_s']} ({r['batch']}) | {r['peak_GiB']} | {r['tag_audio_s_per_s']} | "
              f"{r['embed_audio_s_per_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
