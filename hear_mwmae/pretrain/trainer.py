"""Pre-training: one process, or many under `torchrun` (DDP), on the shared loop (`loop.py`).

Per optimiser step: set the scheduled lr, run `accum_steps` micro-batches (gradients are
synchronised across processes only on the last one), clip (optional), AdamW step. Each
micro-batch is (B, T, F) normalised spectrogram crops ((B, 200, 80) log-mel for MW-MAE,
(B, 1024, 128) fbank for Audio-MAE) plus per-sample masking noise (B, mask_noise_size)
from the dataset, so masks do not depend on the process layout. Nothing here depends on
the model family: the config decides the data, the masking, the loss and the optimiser's
parameter groups.

Run directory:
    train_config.json   the full TrainConfig        checkpoint.pt   latest training state
    metrics.jsonl       loss / lr / throughput       loss_curve.png  plot of metrics.jsonl
    run.json            data and environment facts   skipped_files.txt  inputs not trained on
Only global rank 0 writes it; on resume every process reads `checkpoint.pt`, so on several
machines the run directory (and the data) must be on shared storage. `skipped_files.txt`
lists each unusable file once: those `scan` rejects at the start, and damaged ones found
while training (NaN / Inf, truncated), gathered from every process at each metrics line
and warned about once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from ..model import MWMAE, set_fused_attention
from . import distributed, loop
from .data import SKIPPED_NAME, CropDataset, SkippedFiles, StepSampler, collate, scan
from .loop import LossFn
from .metrics import METRICS_NAME, PLOT_NAME, MetricsLog, plot_loss_curve
from .recipes import TrainConfig
from .state import CHECKPOINT_NAME, load_train_state, restore_rng, save_train_state

log = logging.getLogger(__name__)
PLOT_INTERVAL_S = 600.0  # redraw the loss curve at checkpoints at most this often (and at the end)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    step: int  # optimiser steps done
    total_steps: int  # steps of the whole schedule
    last_loss: float | None  # mean loss of the last logging window
    seconds: float  # wall time of this call


def pick_device(device: str | None, info: distributed.DistInfo) -> torch.device:
    """`device` if given; else this process's GPU when CUDA is available, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", info.local_rank)
    return torch.device(device)


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay_1d: bool) -> list[dict]:
    """AdamW parameter groups of the trained parameters (`requires_grad`; fixed position
    embeddings are left out). `no_decay_1d`: biases and parameters with at most one
    dimension get no weight decay (the Audio-MAE authors' timm `add_weight_decay` rule:
    `ndim == 1 or name.endswith(".bias")`; their 3-D CLS and mask tokens are decayed).
    Returns [{"params", "weight_decay"}, ...]: one group, or (no decay, decay)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not no_decay_1d:
        return [{"params": [p for _, p in named], "weight_decay": weight_decay}]
    plain = [p for n, p in named if p.ndim <= 1 or n.endswith(".bias")]
    decayed = [p for n, p in named if not (p.ndim <= 1 or n.endswith(".bias"))]
    return [{"params": plain, "weight_decay": 0.0}, {"params": decayed, "weight_decay": weight_decay}]


def build_model(cfg: TrainConfig, dev: torch.device) -> tuple[MWMAE, torch.optim.AdamW]:
    """Freshly initialised model (seeded by cfg.seed, so equal on every process) and its AdamW."""
    torch.manual_seed(cfg.seed)
    model = MWMAE(cfg.model)
    set_fused_attention(model, cfg.fused_attention if cfg.fused_attention is not None else dev.type == "cuda")
    model.to(dev)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.no_weight_decay_1d), lr=cfg.peak_lr,
                            betas=cfg.betas, eps=cfg.adam_eps)
    return model, opt


Batch = tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]  # what `data.collate` returns


def mae_loss(model: MWMAE) -> LossFn:
    """The pre-training loss of a micro-batch (crops (B, T, F), masking noise (B, mask_noise_size),
    damaged clips): masks from the noise, the MAE loss through `net` (the model or its DDP wrapper)."""
    def loss(net: torch.nn.Module, batch: Batch, dev: torch.device) -> tuple[torch.Tensor, list[tuple[int, str]]]:
        x, noise, skipped = batch
        x, noise = x.to(dev, non_blocking=True), noise.to(dev, non_blocking=True)
        ids_keep, ids_restore, _ = model.random_masking(x.shape[0], dev, noise=noise)
        return net(x, ids_keep, ids_restore).loss, skipped
    return loss


def amp_dtype(cfg: TrainConfig) -> torch.dtype | None:
    return torch.bfloat16 if cfg.bf16 else None


def optimizer_step(cfg: TrainConfig, model: MWMAE, net: torch.nn.Module, opt: torch.optim.Optimizer,
                   batches: Iterator[Batch], lr: float, dev: torch.device,
                   ddp: bool) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """One pre-training optimiser step over `accum_steps` micro-batches (`loop.optimizer_step`).

    Returns the mean loss (a 0-d tensor) and the damaged clips the batches reported.
    `net` is `model`, or its DDP wrapper (gradients are all-reduced on the last micro-batch only).
    """
    return loop.optimizer_step(net, opt, batches, mae_loss(model), lr=lr, accum_steps=cfg.accum_steps,
                               grad_clip=cfg.grad_clip, dev=dev, ddp=ddp, amp=amp_dtype(cfg))


def _check_resumable(saved: TrainConfig, cfg: TrainConfig) -> None:
    a, b = saved.result_fields(), cfg.result_fields()
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if diff:
        raise ValueError(f"the checkpoint was trained with different settings ({', '.join(diff)}); "
                         "resume with the run's own train_config.json (omit --recipe/--set)")


def train(cfg: TrainConfig, sources: Sequence[str | Path], run_dir: str | Path, *, resume: bool = False,
          stop_at_step: int | None = None, device: str | None = None,
          dist_info: distributed.DistInfo | None = None) -> TrainResult:
    """Pre-train (or continue pre-training) into `run_dir`.

    resume: continue from `run_dir/checkpoint.pt` (an error if it exists and resume is False).
    stop_at_step: stop (with a checkpoint) after this many optimiser steps, without changing
        the schedule; a later `resume=True` call continues exactly.
    dist_info: the process group (default: the one already joined, or a single process).
    """
    began = time.perf_counter()
    info = dist_info or distributed.current()
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    dev = pick_device(device, info)

    state = None
    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or use another --out")
        state = load_train_state(ckpt_path)
        _check_resumable(TrainConfig.from_dict(state["train_config"]), cfg)
    elif resume:
        log.warning("no checkpoint in %s: starting a new run", run_dir)

    # data
    clips, unreadable = scan(sources, cfg.frontend, warn=info.is_main)
    if not clips:
        raise ValueError(f"no usable audio or precomputed feature files in {list(map(str, sources))}")
    skipped = SkippedFiles(run_dir / SKIPPED_NAME)
    for path, why in unreadable:
        skipped.add(path, why)
    index_of = {c.path: i for i, c in enumerate(clips)}
    found_before = {}  # damaged files an earlier part of this run found while training: kept listed, not reread
    if state is not None:
        for path, why in SkippedFiles.read(skipped.path).items():
            skipped.add(path, why)
            if path in index_of:
                found_before[index_of[path]] = why
    dataset = CropDataset(clips, cfg.frontend, cfg.crop_frames, cfg.model.mask_noise_size, cfg.seed,
                          cfg.cache_clips, pad=cfg.short_clip_pad, gain_aug=cfg.gain_aug, known_bad=found_before)
    steps_per_epoch = len(clips) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{len(clips)} usable clips are fewer than one batch ({cfg.batch_size})")
    data_facts = {"num_clips": len(clips), "steps_per_epoch": steps_per_epoch}
    if state is not None and state["data"] != data_facts:
        raise ValueError(f"the data changed since the checkpoint: {state['data']} then, {data_facts} now")
    total = cfg.total_steps(steps_per_epoch)
    warmup = cfg.warmup_steps(steps_per_epoch)
    start = int(state["step"]) if state is not None else 0
    stop = total if stop_at_step is None else min(stop_at_step, total)
    micro = cfg.micro_batch(info.world_size)

    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "train_config.json").write_text(cfg.to_json() + "\n")
        skipped.write()
        facts = {**data_facts, "family": cfg.model.family, "frontend": cfg.frontend.kind,
                 "skipped_files": len(skipped.entries), "total_steps": total, "warmup_steps": warmup,
                 "world_size": info.world_size, "micro_batch": micro, "device": str(dev), "resumed_at": start,
                 "torch": torch.__version__, "python": platform.python_version()}
        (run_dir / "run.json").write_text(json.dumps(facts, indent=2) + "\n")

    model, opt = build_model(cfg, dev)
    net = loop.restore_and_wrap(model, opt, state, dev, info)

    sampler = StepSampler(len(clips), cfg.batch_size, info.world_size, info.rank, cfg.accum_steps, cfg.seed,
                          start, stop)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate,
                        pin_memory=dev.type == "cuda", persistent_workers=False)
    metrics = MetricsLog(run_dir, resume_step=start if state is not None else None) if info.is_main else None
    log.info("%d clips, %d steps/epoch, steps %d..%d of %d (warm-up %d), global batch %d = %d process(es) x "
             "%d micro-step(s) x %d, peak lr %.3g, device %s", len(clips), steps_per_epoch, start, stop, total,
             warmup, cfg.batch_size, info.world_size, cfg.accum_steps, micro, cfg.peak_lr, dev)

    earlier_s = float(state.get("train_seconds", 0.0)) if state is not None else 0.0  # before this call
    can_plot = importlib.util.find_spec("matplotlib") is not None
    if info.is_main and not can_plot:
        log.warning("matplotlib is not installed (pip install 'hear-mwmae[train]'): no %s will be drawn", PLOT_NAME)
    plotted = time.perf_counter()
    batches = iter(loader)  # draws the loader's base seed from the global generator
    if state is not None:
        # Restored only now, so that the global generators (e.g. the Swin decoder's dropout)
        # continue exactly where the checkpointed run left them, whatever setup drew before.
        restore_rng(state["rng"])
    model.train()

    def save(step: int, last_loss: float | None) -> None:
        nonlocal plotted
        if info.is_main:
            save_train_state(ckpt_path, train_config=cfg.to_dict(), step=step, model=model.state_dict(),
                             optimizer=opt.state_dict(), world_size=info.world_size, last_loss=last_loss,
                             data=data_facts, seconds=earlier_s + time.perf_counter() - began)
            if can_plot and (step == stop or time.perf_counter() - plotted > PLOT_INTERVAL_S):
                plot_loss_curve(run_dir / METRICS_NAME, run_dir / PLOT_NAME,
                                title=f"{cfg.model.family} pre-training, recipe {cfg.name}")
                plotted = time.perf_counter()
        distributed.barrier(info)

    sched = loop.Schedule(start, stop, total, warmup, steps_per_epoch, cfg.peak_lr, cfg.min_lr, cfg.batch_size)
    step, last_loss = loop.run_steps(
        sched, net, opt, batches, mae_loss(model), accum_steps=cfg.accum_steps, grad_clip=cfg.grad_clip, dev=dev,
        info=info, metrics=metrics, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, save=save,
        paths=[c.path for c in clips], skipped=skipped, amp=amp_dtype(cfg),
        elapsed_before=earlier_s + time.perf_counter() - began, desc="pretrain")

    seconds = time.perf_counter() - began
    log.info("stopped at step %d of %d after %.1f s; last loss %s", step, total, seconds,
             f"{last_loss:.4f}" if last_loss is not None else "n/a")
    return TrainResult(run_dir, step, total, last_loss, seconds)


__all__ = ["TrainResult", "build_model", "optimizer_step", "param_groups", "pick_device", "train"]
