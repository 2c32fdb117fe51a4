"""The training loop both objectives share: pre-training (`trainer.py`) and fine-tuning
(`hear_mwmae.finetune.trainer`).

Per optimiser step: set the scheduled lr (times each parameter group's `lr_scale`, for
layer-wise decay), run `accum_steps` micro-batches (gradients synchronised across
processes only on the last one), unscale / clip (optional), step. Every `log_every` steps a
metrics line (the loss averaged over processes), at every epoch end the objective's own
evaluation, every `checkpoint_every` steps (default: each epoch) a checkpoint written by
the objective, on rank 0 only. What differs between the objectives comes in as functions:
the loss of a micro-batch, the epoch-end hook and the checkpoint writer.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed
from .data import SkippedFiles
from .metrics import MetricsLog
from .recipes import lr_at

log = logging.getLogger(__name__)

# A micro-batch's loss: (net, batch, device) -> (mean loss over the micro-batch, damaged clips met)
LossFn = Callable[[torch.nn.Module, Any, torch.device], tuple[torch.Tensor, list[tuple[int, str]]]]


def autocast(dtype: torch.dtype | None, dev: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA only (`dtype` bfloat16 / float16); nothing on the CPU or for None."""
    return torch.autocast("cuda", dtype=dtype) if dtype is not None and dev.type == "cuda" \
        else contextlib.nullcontext()


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Each group's lr = lr x its `lr_scale` (1 when it has none), as the Audio-MAE authors'
    `util/lr_sched.adjust_learning_rate` does."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def optimizer_step(net: torch.nn.Module, opt: torch.optim.Optimizer, batches: Iterator[Any], loss_fn: LossFn, *,
                   lr: float, accum_steps: int, grad_clip: float, dev: torch.device, ddp: bool,
                   amp: torch.dtype | None = None,
                   scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """One optimiser step over `accum_steps` micro-batches of `batches`.

    Returns the mean loss (a 0-d tensor) and the damaged clips the batches reported. `net` is
    the model or its DDP wrapper (gradients are all-reduced on the last micro-batch only).
    `scaler`: a GradScaler for float16 autocast.
    """
    set_lr(opt, lr)
    total = torch.zeros((), device=dev)
    damaged: list[tuple[int, str]] = []
    for micro_step in range(accum_steps):
        last = micro_step == accum_steps - 1
        with contextlib.nullcontext() if last or not ddp else net.no_sync():
            with autocast(amp, dev):
                loss, skipped = loss_fn(net, next(batches), dev)
            damaged += skipped
            scaled = loss / accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += loss.detach().float() / accum_steps
    if scaler is not None:
        scaler.unscale_(opt)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return total, damaged


def restore_and_wrap(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any] | None,
                     dev: torch.device, info: distributed.DistInfo) -> torch.nn.Module:
    """Load a training state's model and optimiser (when resuming); the module to train through:
    the model, or its DistributedDataParallel wrapper under torchrun."""
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        log.info("resuming at step %d", int(state["step"]))
    if not info.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def record_damaged(found: dict[int, str], paths: list, skipped: SkippedFiles, info: distributed.DistInfo) -> None:
    """Gather the damaged clips every process met; on rank 0 list the new ones and warn once each.

    Called by every process at the same steps (a collective under DDP)."""
    merged: dict[int, str] = {}
    for part in distributed.gather_objects(sorted(found.items()), info):
        merged.update(part)
    if not info.is_main:
        return
    new = [i for i in sorted(merged) if skipped.add(paths[i], merged[i])]
    for i in new:
        log.warning("damaged file %s (%s): trained on the next clip in its place; listed in %s",
                    paths[i], merged[i], skipped.path.name)
    if new:
        skipped.write()


@dataclass
class Schedule:
    """Where a run is and where it goes: optimiser steps (0-based), the lr schedule's shape."""

    start: int
    stop: int
    total: int
    warmup: int
    steps_per_epoch: int
    peak_lr: float
    min_lr: float
    batch_size: int  # global samples per optimiser step (for the throughput column)


def run_steps(sched: Schedule, net: torch.nn.Module, opt: torch.optim.Optimizer, batches: Iterator[Any],
              loss_fn: LossFn, *, accum_steps: int, grad_clip: float, dev: torch.device,
              info: distributed.DistInfo, metrics: MetricsLog | None, log_every: int, checkpoint_every: int,
              save: Callable[[int, float | None], None], paths: list, skipped: SkippedFiles,
              on_epoch_end: Callable[[int], dict[str, Any] | None] | None = None, amp: torch.dtype | None = None,
              scaler: torch.amp.GradScaler | None = None, elapsed_before: float = 0.0,
              desc: str = "train") -> tuple[int, float | None]:
    """Optimiser steps `sched.start` .. `sched.stop` (see the module docstring).

    `save(step, last_loss)`: write a checkpoint (called on every process at the same steps;
    it writes on rank 0 only and ends with a barrier). `on_epoch_end(epoch)`: called on every
    process after the last step of each epoch, before that step's checkpoint; what it
    returns is added to the metrics line written then. `paths`: the training clips (for the
    damaged-file list `skipped`). Returns (steps done, last logged loss).
    """
    began = time.perf_counter()
    step, last_loss = sched.start, None
    window_loss, window_steps, window_start = torch.zeros((), device=dev), 0, time.perf_counter()
    damaged: dict[int, str] = {}  # found by this process since the last metrics line
    ckpt_every = checkpoint_every or sched.steps_per_epoch
    with tqdm(total=sched.stop, initial=sched.start, disable=not info.is_main, desc=desc, unit="step") as bar:
        while step < sched.stop:
            lr = lr_at(step, sched.peak_lr, sched.warmup, sched.total, sched.min_lr)
            loss, found = optimizer_step(net, opt, batches, loss_fn, lr=lr, accum_steps=accum_steps,
                                         grad_clip=grad_clip, dev=dev, ddp=info.enabled, amp=amp, scaler=scaler)
            window_loss += loss
            damaged.update(found)
            step += 1
            window_steps += 1
            bar.update(1)
            epoch_end = step % sched.steps_per_epoch == 0
            extra = on_epoch_end(step // sched.steps_per_epoch) if epoch_end and on_epoch_end else None

            if step % log_every == 0 or step == sched.stop or extra:
                record_damaged(damaged, paths, skipped, info)
                damaged = {}
                if window_steps:
                    last_loss = distributed.mean_across(window_loss / window_steps, info).item()
                    if not math.isfinite(last_loss):
                        raise FloatingPointError(f"loss became {last_loss} at step {step}; lower the lr or enable "
                                                 "grad_clip")
                seconds = time.perf_counter() - window_start
                if metrics is not None:
                    metrics.write({"step": step, "epoch": round(step / sched.steps_per_epoch, 4), "loss": last_loss,
                                   "lr": lr, "samples_per_s": round(window_steps * sched.batch_size / seconds, 2),
                                   "time_s": round(elapsed_before + time.perf_counter() - began, 2),
                                   **(extra or {})})
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
                window_loss.zero_()
                window_steps, window_start = 0, time.perf_counter()

            if step % ckpt_every == 0 or step == sched.stop:
                save(step, last_loss)
    return step, last_loss


__all__ = ["LossFn", "Schedule", "autocast", "optimizer_step", "record_damaged", "restore_and_wrap", "run_steps",
           "set_lr"]
