"""The frozen-model baseline fine-tuning has to beat: a linear probe on HEAR scene embeddings.

    python -m hear_mwmae.finetune.probe hear-tasks/my_task --model weights/demo-tiny.pt

The encoder stays frozen: every clip of a HEAR scene task (train / valid / test) becomes
one scene embedding (`hear_mwmae.get_scene_embeddings`), the features are standardised
with the training split's mean and standard deviation, and a multinomial logistic
regression (softmax, L-BFGS, L2 on the weights) is fitted on the training split for each
strength of a small grid. The strength with the best validation top-1 accuracy (ties: the
stronger one) is scored on the test split. Single-label tasks only: a multi-label task
raises ValueError. A k-fold task is probed one fold at a time (`fold`, heareval's rule:
fold i tests, fold i + 1 validates, the rest train).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

import hear_mwmae

from ..audio import AudioError, read_audio
from . import data as finetune_data

log = logging.getLogger(__name__)

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # L2 strengths tried (penalty l2 * ||W||^2 beside the mean cross-entropy)
BATCH_SIZE = 64  # equal-length clips per get_scene_embeddings call


# ----------------------------------------------------------------------------- the classifier
def fit_logreg(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> torch.Tensor:
    """Softmax regression of x (n, D) on class indices y (n,); returns weights (D + 1, C), bias last.

    Runs single-threaded: for problems this small, threads only add overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_logreg(x, y, n_classes, l2)
    finally:
        torch.set_num_threads(threads)


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> torch.Tensor:
    xb = _with_bias(x)
    w = torch.zeros(xb.shape[1], n_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=300, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xb @ w, y) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def accuracy(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of weights w (D + 1, C) on x (n, D) against class indices y (n,)."""
    return float(((_with_bias(x) @ w).argmax(1) == y).double().mean())


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


# ----------------------------------------------------------------------------- features
@torch.no_grad()
def scene_embeddings(model: torch.nn.Module, paths: Sequence[Path], batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(n, D) float32 scene embeddings of audio files, read at 16 kHz; clips of equal length are
    batched together (up to `batch_size` per call)."""
    audio = []
    for path in tqdm(paths, desc="reading", unit="clip", leave=False):
        try:
            audio.append(read_audio(path)[0])
        except AudioError as exc:
            raise AudioError(f"{path}: {exc}") from None
    by_length: dict[int, list[int]] = {}
    for i, clip in enumerate(audio):
        by_length.setdefault(len(clip), []).append(i)
    out: list[np.ndarray | None] = [None] * len(audio)
    with tqdm(total=len(audio), desc="embedding", unit="clip", leave=False) as bar:
        for rows in by_length.values():
            for start in range(0, len(rows), batch_size):
                idx = rows[start : start + batch_size]
                batch = torch.from_numpy(np.stack([audio[i] for i in idx]))
                emb = hear_mwmae.get_scene_embeddings(batch, model).float().cpu().numpy()
                for i, row in zip(idx, emb):
                    out[i] = row
                bar.update(len(idx))
    return np.stack(out)


# ----------------------------------------------------------------------------- the probe
def linear_probe(model: str | Path | torch.nn.Module, task_dir: str | Path, *, device: str | None = None,
                 seed: int = 0, fold: int | None = None, l2_grid: Sequence[float] = L2_GRID) -> dict:
    """Linear-probe accuracy of a frozen model on a single-label HEAR scene task.

    model: anything `hear_mwmae.load_model` takes (loaded on `device`), or a loaded model.
    task_dir: a HEAR scene task folder (read by `hear_mwmae.finetune.data.load`; a task
        without a valid / test split gets them held out of train with `seed`).
    fold: which run of a k-fold task (required there, None for a train/valid/test task).
    Returns {"valid_top1_acc", "test_top1_acc", "l2", "n_train", "n_valid", "n_test",
    "embedding_size", "seconds"}. Raises ValueError (DataError, AudioError) for a task it
    cannot probe: multi-label, an event task, a fold missing or out of range, bad audio.
    """
    began = time.perf_counter()
    task = finetune_data.load(task_dir, seed=seed)
    if task.multi_label:
        raise ValueError(f"{task.source}: a multi-label task; the linear probe is single-label (softmax, top-1)")
    splits = _run_splits(task, fold)
    if not isinstance(model, torch.nn.Module):
        model = hear_mwmae.load_model(str(model), device=device)
    examples = [e for name in finetune_data.SPLITS for e in splits[name]]
    feats = torch.from_numpy(scene_embeddings(model, [e.path for e in examples])).double()  # (n, D)
    labels = torch.tensor([e.labels[0] for e in examples])  # (n,)
    sizes = [len(splits[name]) for name in finetune_data.SPLITS]
    (x_tr, x_va, x_te), (y_tr, y_va, y_te) = feats.split(sizes), labels.split(sizes)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_va, x_te = ((x - mean) / std for x in (x_tr, x_va, x_te))
    n_classes = len(task.vocab)
    fits = {l2: fit_logreg(x_tr, y_tr, n_classes, l2) for l2 in l2_grid}
    valid = {l2: accuracy(w, x_va, y_va) for l2, w in fits.items()}
    best = max(l2_grid, key=lambda l2: (valid[l2], l2))  # ties: the stronger penalty
    log.info("validation top-1 per L2 strength: %s", ", ".join(f"{k:g}: {v:.3f}" for k, v in valid.items()))
    return {"valid_top1_acc": valid[best], "test_top1_acc": accuracy(fits[best], x_te, y_te), "l2": best,
            "n_train": len(y_tr), "n_valid": len(y_va), "n_test": len(y_te), "embedding_size": int(feats.shape[1]),
            "seconds": round(time.perf_counter() - began, 2)}


def _run_splits(task: finetune_data.LabelledData, fold: int | None) -> dict[str, list[finetune_data.Example]]:
    if not task.folds:
        if fold is not None:
            raise ValueError(f"{task.source}: a train/valid/test task has no folds; leave out fold")
        return task.splits
    k = len(task.folds)
    if fold is None or not 0 <= fold < k:
        raise ValueError(f"{task.source}: a {k}-fold task; choose the run with fold=0..{k - 1} (--fold)")
    return task.fold_splits(fold)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hear_mwmae.finetune.probe",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="Prints the result as JSON. Exit code 2 for unusable data or model.")
    parser.add_argument("task", type=Path, help="a HEAR scene task folder (single-label)")
    parser.add_argument("--model", required=True, help="a checkpoint file or a released model's name")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="of held-out splits when the task lacks valid / test")
    parser.add_argument("--fold", type=int, default=None, help="the run of a k-fold task (0..k-1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ..registry import FetchError

    try:
        result = linear_probe(args.model, args.task, device=args.device, seed=args.seed, fold=args.fold)
    except (ValueError, FetchError, OSError) as exc:  # DataError, AudioError, CheckpointError: ValueErrors
        log.error("%s", exc)
        return 2
    sys.stdout.write(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
