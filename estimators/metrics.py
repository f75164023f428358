"""Scores of quality estimates, as the tests and ``docs/estimators.md`` report them.

Kept next to the estimators so a user comparing families computes exactly
what the documentation quotes.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["brier", "auroc", "coverage"]


def brier(quality: np.ndarray, estimate: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error of ``estimate`` against observed ``quality`` (over ``mask``)."""
    error = (np.asarray(quality) - np.asarray(estimate)) ** 2
    return float(error.mean() if mask is None else error[mask].mean())


def auroc(quality: np.ndarray, estimate: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean over models of the AUROC of ``estimate`` for ``quality >= 0.5``.

    Per model, because routing compares queries for one model; models whose
    selected cells are all right or all wrong are left out. NaN if none is left.
    """
    quality, estimate = np.asarray(quality), np.asarray(estimate)
    mask = np.ones(quality.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    scores = []
    for i in range(quality.shape[1]):
        label = quality[mask[:, i], i] >= 0.5
        if 0 < label.sum() < len(label):
            scores.append(roc_auc_score(label, estimate[mask[:, i], i]))
    return float(np.mean(scores)) if scores else float("nan")


def coverage(quality: np.ndarray, estimate: np.ndarray, sigma: np.ndarray, k: float,
             mask: np.ndarray | None = None) -> float:
    """Share of cells with ``|quality - estimate| <= k * sigma`` (over ``mask``)."""
    inside = np.abs(np.asarray(quality) - np.asarray(estimate)) <= k * np.asarray(sigma)
    return float(inside.mean() if mask is None else inside[mask].mean())
