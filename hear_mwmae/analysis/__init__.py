"""The MW-MAE paper's analyses: per-head attention distance and entropy, PWCCA of heads.

Public API (other tools call these; shapes in each docstring):
    attention_distance(attn, grid, kind="grid"|"time"|"freq"|"flat") -> (H,) float64
    attention_entropy(attn) -> (H,) float64, nats, per query then averaged
    pwcca(acts1, acts2, epsilon=0.0) -> (mean, weights, coefs), inputs (neurons, datapoints)
    attention_hooks(modules, callback)  context manager: recomputed attention of each block

Numbers only; the figures are made by `plots.py` for `hear-mwmae analyze` (see
docs/analyses.md for the definitions and conventions).
"""

from .cca import CovarianceAccumulator, pwcca, pwcca_from_moments, pwcca_matrix
from .metrics import (KINDS, STATISTICS, attention_distance, attention_distance_per_query, attention_entropy,
                      attention_entropy_per_query, bootstrap_ci, distance_matrix, drop_cls, head_statistics)
from .recording import AnalysisError, HeadInfo, ModelPart, attention_hooks, attention_module, collect_attention

__all__ = ["AnalysisError", "CovarianceAccumulator", "HeadInfo", "KINDS", "ModelPart", "STATISTICS",
           "attention_distance", "attention_distance_per_query", "attention_entropy", "attention_entropy_per_query",
           "attention_hooks", "attention_module", "bootstrap_ci", "collect_attention", "distance_matrix", "drop_cls",
           "head_statistics", "pwcca", "pwcca_from_moments", "pwcca_matrix"]
