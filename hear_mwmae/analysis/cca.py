"""Projection-weighted CCA (PWCCA, Morcos et al. 2018) as google/svcca computes it.

Inputs are (neurons, datapoints). What the reference (google/svcca @ 1f3fbf1,
`cca_core.get_cca_similarity` + `pwcca.compute_pwcca`) does, and so do we:
1. sample covariances of both sides (centred, divided by m - 1), each side divided by the
   largest |entry| of its own covariance, the cross block by the geometric mean of the two;
2. neurons whose scaled variance is below `epsilon` are dropped, `epsilon * I` is added;
3. inverse square roots (pseudo-inverse, then the eigen-decomposition square root);
   canonical correlations = singular values of Sxx^-1/2 Sxy Syy^-1/2 = u s v^T;
4. the side with fewer kept neurons supplies the weights: basis = u^T (x - mean) + mean
   (the *uncentred* activations enter here, so neuron offsets change PWCCA although no
   canonical correlation changes), orthonormalised (QR); weight of direction i =
   sum over neurons k of |<basis_i, x_k>|, normalised to sum 1; PWCCA = sum_i w_i s_i.

Differences, all where the reference fails: with more neurons kept in acts1 the reference
raises IndexError (its else-branch indexes acts1 with acts2's neuron mask); we return the
symmetric result `pwcca(acts2, acts1)`. Eigenvalues of the pseudo-inverse that rounding
makes slightly negative are taken as 0 (the reference would give NaN). Inputs with
neurons >= datapoints, or a side with no variance at all, are errors (the reference
asserts on the first and divides by zero on the second).

Step 4 needs only second moments: with G = (m-1) u^T C u + m mu mu^T = basis basis^T and
M = (m-1) u^T C + m mu mu^T = basis x^T, QR's R is the Cholesky factor of G (up to signs,
which |.| removes) and the weights are the row sums of |R^-T M|. So PWCCA of any pair of
groups of neurons follows from one covariance matrix and the means (`CovarianceAccumulator`
+ `pwcca_from_moments`), never storing activations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Side:
    """One side of a CCA: raw covariance and mean of its neurons, its scale and kept neurons."""

    cov: np.ndarray  # (n, n) sample covariance (ddof 1)
    mean: np.ndarray  # (n,)
    scale: float  # max |cov|
    kept: np.ndarray  # (n,) bool
    invsqrt: np.ndarray  # (k, k) of the scaled, cropped, regularised covariance


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return np.dot(v, np.dot(np.diag(np.sqrt(np.clip(w, 0.0, None))), v.conj().T))


def _side(cov: np.ndarray, mean: np.ndarray, epsilon: float, what: str) -> _Side:
    scale = float(np.max(np.abs(cov))) if cov.size else 0.0
    if not scale > 0:
        raise ValueError(f"{what} has no variance (every neuron is constant): CCA is undefined")
    scaled = cov / scale
    kept = np.abs(np.diagonal(scaled)) >= epsilon
    if not kept.any():
        raise ValueError(f"{what}: no neuron has scaled variance >= epsilon={epsilon}")
    crop = scaled[kept][:, kept] + epsilon * np.eye(int(kept.sum()))
    return _Side(cov, mean, scale, kept, _psd_sqrt(np.linalg.pinv(crop)))


def _weights(side: _Side, u: np.ndarray, count: int) -> np.ndarray:
    """Normalised projection weights of the canonical directions u (k, k) of `side`."""
    c = side.cov[side.kept][:, side.kept]
    mu = side.mean[side.kept]
    outer = count * np.outer(mu, mu)
    gram = (count - 1) * (u.T @ c @ u) + outer  # basis basis^T
    cross = (count - 1) * (u.T @ c) + outer  # basis x^T
    try:
        chol = np.linalg.cholesky(gram)
    except np.linalg.LinAlgError:  # a dependent direction (e.g. a zero neuron with zero mean)
        log.warning("PWCCA: degenerate projection basis; regularising its Gram matrix by 1e-12 * trace")
        chol = np.linalg.cholesky(gram + 1e-12 * np.trace(gram) / len(gram) * np.eye(len(gram)))
    w = np.abs(np.linalg.solve(chol, cross)).sum(axis=1)
    return w / np.sum(w)


def _pwcca_sides(x: _Side, y: _Side, cov_xy: np.ndarray, count: int) -> tuple[float, np.ndarray, np.ndarray]:
    if x.kept.sum() > y.kept.sum():  # the reference raises here; answer symmetrically
        return _pwcca_sides(y, x, cov_xy.T, count)
    cross = (cov_xy / np.sqrt(x.scale * y.scale))[x.kept][:, y.kept]
    u, s, _ = np.linalg.svd(np.dot(x.invsqrt, np.dot(cross, y.invsqrt)))
    coefs = np.abs(s)
    weights = _weights(x, u, count)
    return float(np.sum(weights * coefs)), weights, coefs


def _check_acts(acts: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    a = np.asarray(acts.detach().cpu() if isinstance(acts, torch.Tensor) else acts, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D (neurons, datapoints), got shape {a.shape}")
    if a.shape[0] >= a.shape[1]:
        raise ValueError(f"{what} has {a.shape[0]} neurons and {a.shape[1]} datapoints: PWCCA needs "
                         "(neurons, datapoints) with fewer neurons than datapoints (transposed?)")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or Inf")
    return a


def pwcca(acts1: np.ndarray | torch.Tensor, acts2: np.ndarray | torch.Tensor,
          epsilon: float = 0.0) -> tuple[float, np.ndarray, np.ndarray]:
    """PWCCA of two sets of neurons: acts1 (n1, m), acts2 (n2, m) -> (mean, weights, coefs).

    `mean` = sum(weights * coefs), the PWCCA similarity; `weights` (k,) sum to 1 and `coefs`
    (k,) are the canonical correlations, descending, k = min(kept n1, kept n2). Equal to
    google/svcca's `compute_pwcca(acts1, acts2, epsilon)` (float64; do not centre the inputs
    first: the reference weights see the uncentred activations); symmetric result where the
    reference raises (acts1 larger). Not symmetric in general: the smaller side's weights.
    """
    a1, a2 = _check_acts(acts1, "acts1"), _check_acts(acts2, "acts2")
    if a1.shape[1] != a2.shape[1]:
        raise ValueError(f"acts1 and acts2 need the same datapoints, got {a1.shape[1]} and {a2.shape[1]}")
    n1, count = a1.shape[0], a1.shape[1]
    cov = np.cov(a1, a2)
    x = _side(cov[:n1, :n1], a1.mean(axis=1), epsilon, "acts1")
    y = _side(cov[n1:, n1:], a2.mean(axis=1), epsilon, "acts2")
    return _pwcca_sides(x, y, cov[:n1, n1:], count)


class CovarianceAccumulator:
    """Running mean and covariance of D features over batches of datapoints (float64).

    Sums are taken around the first batch's mean, so large offsets cost no precision.
    """

    def __init__(self) -> None:
        self.count = 0
        self._shift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None

    def add(self, features: torch.Tensor) -> None:
        """features (m, D), one row per datapoint."""
        x = features.detach().to(torch.float64, copy=True)  # (m, D), shifted in place below
        if self._shift is None:
            self._shift = x.mean(0)
            self._sum = torch.zeros_like(self._shift)
            self._outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        if x.shape[1] != self._shift.shape[0]:
            raise ValueError(f"expected {self._shift.shape[0]} features, got {x.shape[1]}")
        x.sub_(self._shift)
        self._sum += x.sum(0)
        self._outer.addmm_(x.T, x)
        self.count += x.shape[0]

    def mean(self) -> np.ndarray:
        """(D,) float64."""
        if self._shift is None:
            raise ValueError("no data added")
        return (self._shift + self._sum / self.count).cpu().numpy()

    def covariance(self) -> np.ndarray:
        """(D, D) float64 sample covariance (divided by count - 1, as np.cov)."""
        if self.count < 2:
            raise ValueError("a covariance needs at least 2 datapoints")
        s = self._sum
        out = torch.outer(s, s).div_(-self.count).add_(self._outer).div_(self.count - 1)  # one D x D temporary
        return out.cpu().numpy()


def pwcca_matrix(cov: np.ndarray, mean: np.ndarray, count: int, groups: Sequence[slice], epsilon: float = 0.0,
                 progress: bool = False) -> np.ndarray:
    """PWCCA of every ordered pair of neuron groups from one covariance (D, D) and mean (D,)
    over `count` datapoints: entry (a, b) = pwcca(acts[groups[a]], acts[groups[b]])[0]."""
    from tqdm import tqdm

    if any(g.stop - g.start >= count for g in groups):
        raise ValueError(f"PWCCA needs fewer neurons per group than datapoints ({count})")
    sides = [_side(cov[g, g], mean[g], epsilon, f"group {i}") for i, g in enumerate(groups)]
    n = len(groups)
    out = np.empty((n, n))
    with tqdm(total=n * n, desc="PWCCA pairs", unit="pair", disable=not progress, leave=False) as bar:
        for a, ga in enumerate(groups):
            for b, gb in enumerate(groups):
                out[a, b] = _pwcca_sides(sides[a], sides[b], cov[ga, gb], count)[0]
            bar.update(n)
    return out


def pwcca_from_moments(cov: np.ndarray, mean: np.ndarray, count: int, group1: slice, group2: slice,
                       epsilon: float = 0.0) -> tuple[float, np.ndarray, np.ndarray]:
    """`pwcca` of two groups of neurons given only their joint covariance and means."""
    x = _side(cov[group1, group1], mean[group1], epsilon, "group1")
    y = _side(cov[group2, group2], mean[group2], epsilon, "group2")
    return _pwcca_sides(x, y, cov[group1, group2], count)


__all__ = ["CovarianceAccumulator", "pwcca", "pwcca_from_moments", "pwcca_matrix"]
