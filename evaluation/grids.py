"""Hyperparameter grids for heareval's downstream MLP, injected into task_predictions.

`paper` is the authors' protocol (their modified heareval): one hidden layer of 1024 units
with BatchNorm, Adam at lr 1e-4, batch 1024, up to 500 epochs with patience 20, dropout
chosen on the validation split from {0.1, 0.25}, Xavier-normal initialisation.
`default` is heareval 2021.1.3's own grid (16 points, 8 sampled by heareval's default).
`fast` finishes in seconds per task on a CPU, for tests and smoke runs.
Every point of the selected grid is trained (the search is exhaustive).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

Grid = dict[str, list[Any]]

PAPER: Grid = {
    "hidden_layers": [1],
    "hidden_dim": [1024],
    "dropout": [0.1, 0.25],
    "lr": [1e-4],
    "patience": [20],
    "max_epochs": [500],
    "check_val_every_n_epoch": [3],
    "batch_size": [1024],
    "hidden_norm": [torch.nn.BatchNorm1d],
    "norm_after_activation": [False],
    "embedding_norm": [torch.nn.Identity],
    "initialization": [torch.nn.init.xavier_normal_],
    "optim": [torch.optim.Adam],
}

DEFAULT: Grid = {
    **PAPER,
    "hidden_layers": [1, 2],
    "dropout": [0.1],
    "lr": [3.2e-3, 1e-3, 3.2e-4, 1e-4],
    "initialization": [torch.nn.init.xavier_uniform_, torch.nn.init.xavier_normal_],
}

FAST: Grid = {
    **PAPER,
    "hidden_dim": [128],
    "dropout": [0.1],
    "lr": [1e-3],
    "patience": [3],
    "max_epochs": [20],
    "check_val_every_n_epoch": [1],
    "batch_size": [64],
}

GRIDS: dict[str, Grid] = {"paper": PAPER, "default": DEFAULT, "fast": FAST}


def get_grid(name: str) -> Grid:
    """A copy of the named grid (paper, default or fast)."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose one of {sorted(GRIDS)}")
    return copy.copy(GRIDS[name])


def grid_size(grid: Grid) -> int:
    """Number of points of the grid."""
    size = 1
    for values in grid.values():
        size *= len(values)
    return size
