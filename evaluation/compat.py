"""Narrow, reversible fixes that let heareval 2021.1.3 run on torch >= 2.6 and Lightning 1.9.

Nothing in site-packages is edited; each fix is a context manager that swaps one attribute
and puts it back on exit, and `heareval_compat` applies all of them for one prediction run.

1. `trust_checkpoints_under(root)`: torch >= 2.6 loads with `weights_only=True` by default
   and refuses the checkpoints heareval's Lightning trainer writes (their hyperparameters
   hold classes and functions, e.g. torch.nn.BatchNorm1d). Only `.ckpt` files inside
   `root` (a folder this package created for the run) are loaded with full unpickling;
   every other `torch.load` call is untouched.
2. `restore_best_epoch_for_test()`: heareval's `task_predictions_test` sets
   `trainer.fit_loop.current_epoch = best_epoch` so that event tasks test with the
   post-processing chosen at the best epoch. Lightning >= 1.8 has no such setter (the
   assignment only adds an unused attribute), so `trainer.current_epoch` stays at the last
   epoch and the lookup fails with a KeyError. The fix sets the epoch counter Lightning
   actually reads before heareval's function runs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


@contextlib.contextmanager
def swapped(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Set `owner.name = value` for the duration of the block, then restore it."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _source_path(f: Any) -> Path | None:
    """The file system path behind torch.load's first argument, if it has one."""
    if isinstance(f, (str, os.PathLike)):
        return Path(f)
    name = getattr(f, "name", None)  # open files, and fsspec's LocalFileOpener by delegation
    return Path(name) if isinstance(name, (str, os.PathLike)) else None


def _is_trusted(f: Any, root: Path) -> bool:
    path = _source_path(f)
    if path is None or path.suffix != ".ckpt":
        return False
    return path.resolve().is_relative_to(root)


@contextlib.contextmanager
def trust_checkpoints_under(root: Path) -> Iterator[None]:
    """Load `.ckpt` files under `root` with `weights_only=False`; leave all else as is."""
    root = Path(root).resolve()
    original: Callable[..., Any] = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if "weights_only" not in kwargs and _is_trusted(f, root):
            kwargs["weights_only"] = False
        return original(f, *args, **kwargs)

    with swapped(torch, "load", load):
        yield


@contextlib.contextmanager
def restore_best_epoch_for_test() -> Iterator[None]:
    """Make heareval's `task_predictions_test` test at the best epoch it asks for."""
    from heareval.predictions import task_predictions as tp

    original = tp.task_predictions_test

    def task_predictions_test(*args: Any, **kwargs: Any) -> Any:
        grid_point = kwargs["grid_point"] if "grid_point" in kwargs else args[1]
        grid_point.trainer.fit_loop.epoch_progress.current.completed = grid_point.epoch
        return original(*args, **kwargs)

    with swapped(tp, "task_predictions_test", task_predictions_test):
        yield


@contextlib.contextmanager
def heareval_compat(checkpoint_root: Path) -> Iterator[None]:
    """All fixes, for a heareval prediction run whose Lightning files go under checkpoint_root."""
    with trust_checkpoints_under(checkpoint_root), restore_best_epoch_for_test():
        yield
