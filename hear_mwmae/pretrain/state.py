"""Training checkpoints: everything needed to continue a run exactly, written atomically.

`RUN_DIR/checkpoint.pt` is a plain dict loadable with `torch.load(weights_only=True)`:
    {"format": "hear-mwmae-train", "format_version": 1, "train_config": TrainConfig.to_dict(),
     "step": optimiser steps done, "model": state dict, "optimizer": state dict,
     "rng": {"torch", "cuda", "numpy", "python"}, "world_size": int, "last_loss": float,
     "data": {"num_clips", "steps_per_epoch"}, "train_seconds": float,
     "objective": "pretrain" | "finetune", "extra": {...}}  (files without "objective" are pre-training)
Data position and masks need no state of their own: they are functions of
(seed, epoch, sample index) and the step count (see `data.py`). The RNG states are
saved anyway so that any other use of the global generators also continues exactly.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write

TRAIN_FORMAT = "hear-mwmae-train"
TRAIN_FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def capture_rng() -> dict[str, Any]:
    """Global RNG states (torch, CUDA, numpy, python) as tensors and plain containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` to a temporary file beside `path`, fsync, then `os.replace`.

    A crash at any moment leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    with atomic_write(path) as fh:
        torch.save(obj, fh)
    return path


def save_train_state(path: str | Path, *, train_config: dict[str, Any], step: int, model: dict[str, torch.Tensor],
                     optimizer: dict[str, Any], world_size: int, last_loss: float | None,
                     data: dict[str, Any], seconds: float, objective: str = "pretrain",
                     extra: dict[str, Any] | None = None) -> Path:
    """Write a training checkpoint (call on one process only). `data` describes the dataset
    (number of clips, steps per epoch) so that a resume can check it is the same; `seconds`
    is the wall time spent training so far, over all resumptions. `objective`: "pretrain" or
    "finetune"; `extra`: the objective's own state (plain data, e.g. the best validation score)."""
    return atomic_save({
        "format": TRAIN_FORMAT, "format_version": TRAIN_FORMAT_VERSION, "train_config": train_config,
        "step": int(step), "model": {k: v.detach().cpu() for k, v in model.items()}, "optimizer": optimizer,
        "rng": capture_rng(), "world_size": int(world_size), "last_loss": last_loss, "data": data,
        "train_seconds": float(seconds), "objective": objective, "extra": dict(extra or {}),
    }, path)


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (a run directory or the file itself) onto the CPU; weights-only.

    A file that is not one, is damaged, pickles anything but tensors and plain containers, or
    whose model weights are views of fewer stored elements than they claim raises
    `CheckpointError` (a ValueError) with a one-line reason; torch's advice to reload the file
    unsafely is never relayed.
    """
    from ..checkpoint import CheckpointError
    from ..files import refuse_compressed_records, refused_pickle_reason, safe_reason
    from ..state_checks import WeightsError, check_tensors

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    try:
        refuse_compressed_records(path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused: it pickles objects other than tensors and plain containers, which are "
                              f"never unpickled with code execution ({refused_pickle_reason(exc)}); `hear-mwmae "
                              "pretrain` writes none, so this file comes from elsewhere") from exc
    except Exception as exc:  # torch raises many unrelated types for a damaged file
        raise CheckpointError(f"{path}: not a readable training checkpoint (truncated or corrupt?): "
                              f"{type(exc).__name__}: {safe_reason(exc)}") from exc
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is not a hear-mwmae training checkpoint")
    if state.get("format_version") != TRAIN_FORMAT_VERSION:
        raise CheckpointError(f"{path}: training checkpoint version {str(state.get('format_version'))[:20]} is not "
                              "supported")
    missing = [key for key in ("train_config", "step", "model", "optimizer") if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete training checkpoint (no usable {missing[0]!r}); export the run's "
                              "last good checkpoint, or resume the run to write a new one")
    try:
        check_tensors(state.get("model"))
    except WeightsError as exc:
        raise CheckpointError(f"{path}: model weights: {exc}") from exc
    return state


__all__ = ["CHECKPOINT_NAME", "atomic_save", "capture_rng", "load_train_state", "restore_rng", "save_train_state"]
