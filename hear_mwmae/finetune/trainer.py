"""Fine-tuning: one process, or many under `torchrun` (DDP), on the loop pre-training uses
(`hear_mwmae.pretrain.loop`).

    finetune(cfg, model, task, run_dir)    train, validate every epoch, keep the best, test

Run directory (rank 0 writes it; on several machines it must be shared storage):
    train_config.json  the FinetuneConfig        checkpoint.pt   latest training state (resume)
    run.json           model, data, environment  metrics.jsonl   loss, lr, throughput, valid_* per epoch
    model.pt           the fine-tuned model (best validation epoch, or the last): load_model(RUN/model.pt)
    results.json       validation and test metrics of model.pt, the labels, the recipe
    skipped_files.txt  clips that could not be read      loss_curve.png
A k-fold task runs once per fold into RUN/fold<i>/ (fold i tests, fold i + 1 validates) and
RUN/results.json holds every fold's test metrics and their mean and standard deviation.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checkpoint import Checkpoint, save_checkpoint
from ..classifier import PREFIX
from ..config import HeadConfig
from ..files import atomic_write
from ..pretrain import distributed, loop
from ..pretrain.data import SKIPPED_NAME, SkippedFiles
from ..pretrain.metrics import METRICS_NAME, PLOT_NAME, MetricsLog, plot_loss_curve
from ..pretrain.state import CHECKPOINT_NAME, load_train_state, restore_rng, save_train_state
from ..pretrain.trainer import pick_device
from ..sources import checkpoint_sha256, load_checkpoint
from . import data as fdata
from .dataset import EpochSampler, FinetuneDataset, Shapes, collate, sample_weights
from .evaluate import runtime_of, score_split
from .model import build_classifier, build_optimizer, classification_loss, finetuned_config, prepare
from .recipes import FinetuneConfig

log = logging.getLogger(__name__)
MODEL_NAME = "model.pt"
RESULTS_NAME = "results.json"
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class FinetuneResult:
    run_dir: Path
    step: int  # optimiser steps done (of the last fold)
    total_steps: int
    results: dict[str, Any] | None  # results.json, once the run is complete


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as fh:
        fh.write((json.dumps(obj, indent=2, default=float) + "\n").encode())


def _head(data: fdata.LabelledData, cfg: FinetuneConfig) -> HeadConfig:
    v = data.vocab
    return HeadConfig(len(v), v.names, v.ids, v.source, multi_label=data.multi_label, pooling=cfg.pooling,
                      dropout=cfg.head_dropout)


def finetune(cfg: FinetuneConfig, model: str | Path, task: str | Path, run_dir: str | Path, *,
             valid: str | Path | None = None, test: str | Path | None = None, labels: str | Path | None = None,
             resume: bool = False, stop_at_step: int | None = None, device: str | None = None,
             dist_info: distributed.DistInfo | None = None, sha256: str | None = None) -> FinetuneResult:
    """Fine-tune `model` (a checkpoint reference, as `load_model` takes) on `task` (see
    `finetune.data.load`: a HEAR task, the authors' JSON, a CSV or class folders) into `run_dir`.

    resume: continue from run_dir's checkpoint (an error if one exists and resume is False).
    stop_at_step: stop (with a checkpoint) after this many optimiser steps, schedule unchanged.
    """
    info = dist_info or distributed.current()
    run_dir = Path(run_dir)
    data = fdata.load(task, valid=valid, test=test, labels=labels, multi_label=cfg.multi_label, seed=cfg.seed)
    ckpt = load_checkpoint(model, sha256=sha256)
    base = {"model": str(model), "sha256": checkpoint_sha256(str(model)), "provenance": ckpt.provenance}
    sources = {"model": str(model), "task": str(task), "valid": _opt(valid), "test": _opt(test),
               "labels": _opt(labels)}
    if not data.folds:
        return _run_split(cfg, ckpt, base, data, data.splits, run_dir, resume=resume, stop_at_step=stop_at_step,
                          device=device, info=info, task=str(task), sources=sources)
    folds: list[dict[str, Any]] = []
    result = None
    for i, name in enumerate(data.folds):
        result = _run_split(cfg, ckpt, base, data, data.fold_splits(i), run_dir / f"fold{i}", resume=resume,
                            stop_at_step=stop_at_step, device=device, info=info, task=f"{task} (test fold {name})",
                            sources=sources)
        if result.results is None:  # stopped early: the later folds wait for a resume
            return FinetuneResult(run_dir, result.step, result.total_steps, None)
        folds.append({"test_fold": name, **result.results})
    summary = _fold_summary(folds, data)
    if info.is_main:
        _write_json(run_dir / RESULTS_NAME, summary)
    return FinetuneResult(run_dir, result.step, result.total_steps, summary)


def _opt(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _fold_summary(folds: list[dict[str, Any]], data: fdata.LabelledData) -> dict[str, Any]:
    primary = folds[0]["test"]["primary"]
    values = np.array([f["test"][primary] for f in folds])
    return {"task": data.source, "folds": folds, "metric": primary, "test_mean": float(values.mean()),
            "test_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "n_folds": len(folds)}


def _check_resumable(state: dict[str, Any], cfg: FinetuneConfig, facts: dict[str, Any]) -> None:
    if state.get("objective") != "finetune":
        raise ValueError("the run directory holds a pre-training run; use another --out")
    saved = FinetuneConfig.from_dict(state["train_config"]["finetune"])
    a, b = saved.result_fields(), cfg.result_fields()
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if diff:
        raise ValueError(f"the checkpoint was fine-tuned with different settings ({', '.join(diff)}); resume with "
                         "the run's own settings (omit --recipe / --set)")
    if state["data"] != facts:
        changed = sorted(k for k in facts if state["data"].get(k) != facts[k])
        raise ValueError(f"the data or the model changed since the checkpoint ({', '.join(changed)})")


def _run_split(cfg: FinetuneConfig, ckpt: Checkpoint, base: dict[str, Any], data: fdata.LabelledData,
               splits: dict[str, list[fdata.Example]], run_dir: Path, *, resume: bool, stop_at_step: int | None,
               device: str | None, info: distributed.DistInfo, task: str,
               sources: dict[str, str | None]) -> FinetuneResult:
    began = time.perf_counter()
    dev = pick_device(device, info)
    ckpt_path = run_dir / CHECKPOINT_NAME
    config = finetuned_config(ckpt.config, _head(data, cfg), cfg)
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    facts = {"train_clips": len(train), "valid_clips": len(valid), "test_clips": len(test),
             "labels": list(data.vocab.names), "multi_label": data.multi_label, "base_sha256": base["sha256"]}
    state = None
    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or use another --out")
        state = load_train_state(ckpt_path)
        _check_resumable(state, cfg, facts)
    elif resume:
        log.warning("no checkpoint in %s: starting a new run", run_dir)

    model = prepare(build_classifier(ckpt, config, cfg), cfg, dev)
    opt = build_optimizer(model, cfg)
    weights = sample_weights(train, len(data.vocab)) if cfg.weighted_sampler else None
    micro = cfg.micro_batch(info.world_size)
    probe = EpochSampler(len(train), cfg.batch_size, 1, 0, 1, cfg.seed, 0, 0, weights, cfg.epoch_len)
    steps_per_epoch = probe.steps_per_epoch
    total, warmup = cfg.total_steps(steps_per_epoch), cfg.warmup_steps(steps_per_epoch)
    start = int(state["step"]) if state is not None else 0
    if start >= total and (run_dir / RESULTS_NAME).is_file():  # a finished run (e.g. an earlier fold)
        return FinetuneResult(run_dir, start, total, json.loads((run_dir / RESULTS_NAME).read_text()))
    stop = total if stop_at_step is None else min(stop_at_step, total)
    extra = dict(state.get("extra") or {}) if state is not None else {}
    net = loop.restore_and_wrap(model, opt, state, dev, info)

    skipped = SkippedFiles(run_dir / SKIPPED_NAME)
    if state is not None:
        for path, why in SkippedFiles.read(skipped.path).items():
            skipped.add(path, why)
    train_config = {"finetune": cfg.to_dict(), **sources}
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "train_config.json").write_text(json.dumps(train_config, indent=2, sort_keys=True) + "\n")
        _write_json(run_dir / "run.json", {
            **{k: v for k, v in facts.items() if k != "labels"}, "num_classes": len(data.vocab), "task": task,
            "model": base["model"], "family": config.family, "chunk_frames": config.chunk_frames,
            "steps_per_epoch": steps_per_epoch, "total_steps": total, "warmup_steps": warmup, "peak_lr": cfg.peak_lr,
            "world_size": info.world_size, "micro_batch": micro, "device": str(dev), "resumed_at": start,
            "torch": torch.__version__, "python": platform.python_version()})

    shapes = Shapes(config.chunk_frames, config.model.grid_size, config.model.depth, len(data.vocab))
    dataset = FinetuneDataset(train, len(data.vocab), config.frontend, shapes, cfg, cache=cfg.cache_clips)
    sampler = EpochSampler(len(train), cfg.batch_size, info.world_size, info.rank, cfg.accum_steps, cfg.seed, start,
                           stop, weights, cfg.epoch_len)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate,
                        pin_memory=dev.type == "cuda", persistent_workers=False)
    metrics = MetricsLog(run_dir, resume_step=start if state is not None else None) if info.is_main else None
    log.info("%s: %d classes (%s), %d / %d / %d clips (train / valid / test), %d steps/epoch, steps %d..%d of %d "
             "(warm-up %d), global batch %d = %d process(es) x %d micro-step(s) x %d, peak lr %.3g, device %s",
             task, len(data.vocab), "multi-label" if data.multi_label else "single-label", len(train), len(valid),
             len(test), steps_per_epoch, start, stop, total, warmup, cfg.batch_size, info.world_size,
             cfg.accum_steps, micro, cfg.peak_lr, dev)
    eval_cache: dict[str, dict[int, np.ndarray]] = {"valid": {}, "test": {}} if cfg.cache_clips else {}
    targets = {name: data.targets(rows) for name, rows in (("valid", valid), ("test", test))}

    def export(model_dir: Path, metrics_valid: dict[str, Any] | None, epoch: int, step: int) -> None:
        state_dict = {("encoder." + k): v for k, v in model.encoder.state_dict().items()}
        state_dict.update({PREFIX + k: v for k, v in model.classifier.state_dict().items()})
        provenance = {"source": "hear_mwmae.finetune", "recipe": cfg.name, "base_model": base["model"],
                      "base_sha256": base["sha256"], "base_provenance": _short(base["provenance"]), "task": task,
                      "epoch": epoch, "step": step, "valid": metrics_valid, "finetune_config": cfg.to_dict()}
        if "license" in base["provenance"]:
            provenance["license"] = base["provenance"]["license"]
        save_checkpoint(model_dir / MODEL_NAME, config, state_dict, provenance=provenance, encoder_only=True)

    def on_epoch_end(epoch: int) -> dict[str, Any] | None:
        if epoch < cfg.first_eval_epoch:
            return None
        model.eval()
        result = score_split(runtime_of(model, config, dev), valid, targets["valid"], data.multi_label, info,
                             eval_cache.get("valid"), "valid")
        model.train()
        value = result[result["primary"]]
        best = extra.get("best")
        if not cfg.select_best or best is None or value > best["value"]:
            extra["best"] = {"epoch": epoch, "step": epoch * steps_per_epoch, "metric": result["primary"],
                             "value": value, "valid": result}
            if info.is_main:
                export(run_dir, result, epoch, epoch * steps_per_epoch)
        log.info("epoch %d: valid %s %.4f (best %.4f at epoch %d)", epoch, result["primary"], value,
                 extra["best"]["value"], extra["best"]["epoch"])
        return {f"valid_{k}": result[k] for k in ("mAP", "mAUC", "d_prime", "top1_acc") if k in result}

    earlier_s = float(state.get("train_seconds", 0.0)) if state is not None else 0.0
    can_plot = importlib.util.find_spec("matplotlib") is not None

    def save(step: int, last_loss: float | None) -> None:
        if info.is_main:
            save_train_state(ckpt_path, train_config=train_config, step=step, model=model.state_dict(),
                             optimizer=opt.state_dict(), world_size=info.world_size, last_loss=last_loss, data=facts,
                             seconds=earlier_s + time.perf_counter() - began, objective="finetune", extra=extra)
            if can_plot and step == stop:
                plot_loss_curve(run_dir / METRICS_NAME, run_dir / PLOT_NAME, title=f"fine-tuning, recipe {cfg.name}")
        distributed.barrier(info)

    batches = iter(loader)
    if state is not None:
        restore_rng(state["rng"])
    model.train()
    amp = AMP_DTYPES[cfg.amp]
    scaler = torch.amp.GradScaler("cuda") if amp is torch.float16 and dev.type == "cuda" else None
    sched = loop.Schedule(start, stop, total, warmup, steps_per_epoch, cfg.peak_lr, cfg.min_lr, cfg.batch_size)
    step, _ = loop.run_steps(
        sched, net, opt, batches, classification_loss(model, cfg, data.multi_label), accum_steps=cfg.accum_steps,
        grad_clip=cfg.grad_clip, dev=dev, info=info, metrics=metrics, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, save=save, paths=[e.path for e in train], skipped=skipped,
        on_epoch_end=on_epoch_end, amp=amp, scaler=scaler, elapsed_before=earlier_s + time.perf_counter() - began,
        desc="finetune")
    if step < total:
        return FinetuneResult(run_dir, step, total, None)

    if "best" not in extra or not cfg.select_best:  # never evaluated, or the last epoch is the model
        if info.is_main:
            export(run_dir, extra.get("best", {}).get("valid"), total // steps_per_epoch, total)
    distributed.barrier(info)
    final = load_checkpoint(run_dir / MODEL_NAME)
    from .. import load_model

    runtime = load_model(str(run_dir / MODEL_NAME), device=str(dev))
    test_metrics = score_split(runtime, test, targets["test"], data.multi_label, info, eval_cache.get("test"), "test")
    results = {"task": task, "recipe": cfg.name, "model": base["model"], "labels": list(data.vocab.names),
               "multi_label": data.multi_label, "selected": "best validation epoch" if cfg.select_best else "last epoch",
               "epoch": final.provenance.get("epoch"), "valid": final.provenance.get("valid"), "test": test_metrics,
               "train_seconds": round(earlier_s + time.perf_counter() - began, 1)}
    if info.is_main:
        _write_json(run_dir / RESULTS_NAME, results)
        log.info("test %s %.4f (model of epoch %s): %s", test_metrics["primary"],
                 test_metrics[test_metrics["primary"]], results["epoch"], run_dir / RESULTS_NAME)
    return FinetuneResult(run_dir, step, total, results)


def _short(provenance: dict[str, Any]) -> dict[str, Any]:
    """The base model's provenance without its bulky entries (configs, argument dumps)."""
    return {k: v for k, v in provenance.items() if k not in ("source_config", "source_args", "train_config")}


__all__ = ["FinetuneResult", "MODEL_NAME", "RESULTS_NAME", "finetune"]
