"""How accurate quality estimates are (Brier score, AUROC, σ coverage), as the tests and docs report them.

Kept next to the estimators so a user comparing families computes exactly
what the documentation quotes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import roc_auc_score

__all__ = ["brier", "auroc", "coverage"]


def brier(quality: ArrayLike, estimate: ArrayLike, mask: NDArray[np.bool_] | None = None) -> float:
    """Mean squared error of ``estimate`` against observed ``quality`` (over ``mask``).

    How close, not only how well ranked.

    Parameters
    ----------
    quality, estimate : array-like of float, shape (N, K)
        Observed quality and its estimate.
    mask : ndarray of bool, shape (N, K), optional
        Cells to score; default all.

    Returns
    -------
    float
    """
    error = (np.asarray(quality) - np.asarray(estimate)) ** 2
    return float(error.mean() if mask is None else error[mask].mean())


def auroc(quality: ArrayLike, estimate: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean over models of the AUROC of ``estimate`` for ``quality >= 0.5``.

    Per model, because routing compares queries for one model; models whose
    selected cells are all right or all wrong are left out. NaN if none is left.

    Parameters
    ----------
    quality, estimate : array-like of float, shape (N, K)
        Observed quality and its estimate.
    mask : array-like of bool, shape (N, K), optional
        Cells to score; default all.

    Returns
    -------
    float
    """
    quality, estimate = np.asarray(quality), np.asarray(estimate)
    mask = np.ones(quality.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    scores = []
    for i in range(quality.shape[1]):
        label = quality[mask[:, i], i] >= 0.5
        if 0 < label.sum() < len(label):
            scores.append(roc_auc_score(label, estimate[mask[:, i], i]))
    return float(np.mean(scores)) if scores else float("nan")


def coverage(quality: ArrayLike, estimate: ArrayLike, sigma: ArrayLike, k: float,
             mask: NDArray[np.bool_] | None = None) -> float:
    """Share of cells with ``|quality - estimate| <= k * sigma`` (over ``mask``): whether σ means what it says.

    Parameters
    ----------
    quality, estimate, sigma : array-like of float, shape (N, K)
        Observed quality, its estimate and the estimate's σ.
    k : float
        Width of the interval in σ (1 and 2 are reported).
    mask : ndarray of bool, shape (N, K), optional
        Cells to score; default all.

    Returns
    -------
    float
        Gaussian errors would give about 0.683 for ``k=1`` and 0.954 for ``k=2``.
    """
    inside = np.abs(np.asarray(quality) - np.asarray(estimate)) <= k * np.asarray(sigma)
    return float(inside.mean() if mask is None else inside[mask].mean())
