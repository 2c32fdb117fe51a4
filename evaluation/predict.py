"""One seed of heareval's downstream training and test on a task's cached embeddings.

Each run happens in its own work folder under --out, filled with links to the cached
embedding files: heareval writes its predictions, Lightning logs and checkpoints there
(heareval puts them under `logs/<embedding path>`, and an absolute embedding path makes
that the work folder itself). The seed's result is stored atomically, then the work folder
is removed; a crash leaves only a work folder that the next run replaces.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from .compat import heareval_compat, swapped
from .embed import embedding_size
from .grids import Grid, grid_size
from .store import output_to, read_json, write_json_atomic

log = logging.getLogger(__name__)
heareval_log = logging.getLogger("evaluation.heareval")  # the logger handed to heareval
heareval_log.setLevel(logging.INFO)
SCORES_FILE = "test.predicted-scores.json"


@contextlib.contextmanager
def configured(grid: Grid, seed: int) -> Iterator[None]:
    """Make heareval's task_predictions use `grid` (as its "default") and seed `seed`.

    Also undoes the process-wide `torch.use_deterministic_algorithms(True)` that Lightning's
    deterministic trainer leaves behind.
    """
    import pytorch_lightning as pl
    import torch
    from heareval.predictions import task_predictions as tp

    def seed_everything(_heareval_seed: int = 42, workers: bool = False) -> int:
        return pl.seed_everything(seed, workers=workers)

    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        with swapped(tp, "PARAM_GRID", grid), swapped(tp, "seed_everything", seed_everything):
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


def lightning_gpus(device: str) -> list[int] | None:
    """heareval's `gpus` argument for a torch device string."""
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return [int(index or 0)]
    if device != "cpu":
        raise ValueError(f"heareval's trainer runs on cpu or cuda, not {device!r}")
    return None


def primary_score(scores: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """(task score, per-test-fold scores) from heareval's test.predicted-scores.json.

    The task score is heareval's `test_score` (the task's first metric); for k-fold tasks
    the mean over folds that heareval reports as aggregated_scores.test_score_mean.
    """
    folds = {name: float(v["test_score"]) for name, v in scores.items()
             if isinstance(v, dict) and "test_score" in v}
    if "aggregated_scores" in scores:
        return float(scores["aggregated_scores"]["test_score_mean"]), folds
    if len(folds) != 1:
        raise ValueError(f"expected one test fold or aggregated scores, got {sorted(folds)}")
    return next(iter(folds.values())), folds


def link_embeddings(embed_dir: Path, work_dir: Path) -> None:
    """A fresh `work_dir` whose files are symbolic links to the files of `embed_dir`."""
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    for src in embed_dir.iterdir():
        if src.is_file() and not src.name.startswith("."):
            os.symlink(src.resolve(), work_dir / src.name)


def run_seed(embed_dir: Path, work_dir: Path, result_path: Path, *, seed: int, grid: Grid,
             device: str, record: dict[str, Any], quiet: bool = True) -> dict[str, Any]:
    """Train and test heareval's predictor for one seed; store and return the result.

    record: fields added to the stored result (task, grid name, checkpoint hash, ...).
    quiet: send heareval's and Lightning's console output to <work_dir>/heareval.log.
    """
    from heareval.predictions.task_predictions import task_predictions

    work_dir = work_dir.resolve()
    link_embeddings(embed_dir, work_dir)
    start = time.perf_counter()
    out_file = work_dir / "heareval.log"
    with contextlib.ExitStack() as stack:
        stack.enter_context(output_to(out_file, quiet))
        if quiet:
            handler = logging.StreamHandler()  # bound to the redirected stderr
            heareval_log.addHandler(handler)
            stack.callback(heareval_log.removeHandler, handler)
            stack.enter_context(swapped(heareval_log, "propagate", False))
        stack.enter_context(heareval_compat(work_dir))
        stack.enter_context(configured(grid, seed))
        try:
            task_predictions(
                embedding_path=work_dir, embedding_size=embedding_size(embed_dir),
                grid_points=grid_size(grid), gpus=lightning_gpus(device), in_memory=True,
                deterministic=True, grid="default", logger=heareval_log,
            )
        except Exception as exc:
            where = f" (heareval's output: {out_file})" if quiet else ""
            raise RuntimeError(f"heareval failed on {embed_dir.name}, seed {seed}{where}: {exc!r}") from exc
    scores = read_json(work_dir / SCORES_FILE)
    score, folds = primary_score(scores)
    result = {**record, "seed": seed, "score": score, "fold_scores": folds,
              "hparams": scores.get("hparams"), "seconds": round(time.perf_counter() - start, 1),
              "heareval_scores": scores}
    write_json_atomic(result_path, result)
    shutil.rmtree(work_dir)
    return result
