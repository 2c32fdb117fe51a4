"""Classification metrics of a split: scores (n, C) against targets (n, C) multi-hot.

    multi-label    mAP (macro average precision), macro ROC-AUC, d' = sqrt(2) * Phi^-1(AUC)
    single-label   top-1 accuracy (and the same ranking metrics, for reference)

Average precision is sklearn's non-interpolated definition (sum over thresholds of
recall increase x precision; tied scores form one threshold), the Audio-MAE authors'
`util/stat.py`; ROC-AUC counts ties as one half. The authors average over every class and
crash on a class without positives; here such classes (and, for AUC, classes without
negatives) are left out of the averages and counted (`classes_without_positives`).
Pure numpy / scipy (tests check them against sklearn).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata


def average_precision(target: np.ndarray, score: np.ndarray) -> float:
    """AP of one class: target (n,) {0, 1}, score (n,). NaN without positives."""
    positives = target.sum()
    if positives == 0:
        return math.nan
    order = np.argsort(-score, kind="stable")
    s, t = score[order], target[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0.0, tp]) / positives
    return float(np.sum(recall_gain * precision))


def roc_auc(target: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC of one class by the rank-sum statistic (ties: mid-ranks). NaN without both kinds."""
    pos = target.sum()
    neg = len(target) - pos
    if pos == 0 or neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[target == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def d_prime(auc: float) -> float:
    """sqrt(2) * Phi^-1(AUC), the AudioSet literature's d' (the authors' util/stat.py)."""
    return float(math.sqrt(2.0) * norm.ppf(auc)) if 0.0 < auc < 1.0 else (math.inf if auc >= 1.0 else -math.inf)


def classification_metrics(scores: np.ndarray, targets: np.ndarray, multi_label: bool) -> dict[str, Any]:
    """Metrics of a split. `scores` (n, C): logits or probabilities (rankings are what counts,
    except for accuracy's argmax); `targets` (n, C) multi-hot (a single 1 per row when single-label).

    Returns {"mAP", "mAUC", "d_prime", "classes_without_positives", "n"} and for single-label
    "top1_acc"; `primary` names the one the run selects on (mAP / top1_acc). A value that is
    not finite (no class with positives; d' of a perfect AUC) is None, so results stay JSON.
    """
    scores, targets = np.asarray(scores, np.float64), (np.asarray(targets) > 0.5).astype(np.int64)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (n, classes)")
    aps = np.array([average_precision(targets[:, c], scores[:, c]) for c in range(scores.shape[1])])
    aucs = np.array([roc_auc(targets[:, c], scores[:, c]) for c in range(scores.shape[1])])
    m_auc = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan
    out: dict[str, Any] = {
        "n": int(scores.shape[0]),
        "mAP": float(np.nanmean(aps)) if np.isfinite(aps).any() else math.nan,
        "mAUC": m_auc,
        "d_prime": d_prime(m_auc) if math.isfinite(m_auc) else math.nan,
        "classes_without_positives": int(np.isnan(aps).sum()),
    }
    if not multi_label:
        out["top1_acc"] = float((scores.argmax(1) == targets.argmax(1)).mean()) if len(scores) else math.nan
    out["primary"] = "mAP" if multi_label else "top1_acc"
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


__all__ = ["average_precision", "classification_metrics", "d_prime", "roc_auc"]
