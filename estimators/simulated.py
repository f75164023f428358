"""Simulated quality and cost estimators with controlled noise (ALGORITHM.md §6).

The paper evaluates the decision rules on RouterBench with *simulated*
estimators: the true quality and cost of every (query, model) pair are known,
so an estimator of a chosen accuracy can be made by adding Gaussian noise to
the truth and recalibrating it. This isolates the decision rules from the
quality of any learned estimator: how much does each strategy gain when the
estimates are good (``"low"`` noise) or poor (``"high"``)?

Ex-ante estimates (before a model runs) are noisier than post-hoc ones (after
it ran), which is what makes running a cheap model first informative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["NOISE_LEVELS", "NoiseLevel", "SimulatedEstimates", "simulate_estimates"]

#: The noise levels of :data:`NOISE_LEVELS`, as a type.
NoiseLevel = Literal["low", "medium", "high"]

#: Noise standard deviations per level: ``(quality ex-ante, quality post-hoc,
#: cost ex-ante)``. A cost of ``None`` means the ex-ante cost estimate is
#: uninformative (the model's mean cost). The paper also lists a post-hoc cost
#: noise; it has no use here because a model that has run has a known bill.
NOISE_LEVELS: dict[str, tuple[float, float, float | None]] = {
    "low": (0.6, 0.3, 0.0002),
    "medium": (1.6, 0.8, 0.0004),
    "high": (2.4, 1.2, None),
}


@dataclass(frozen=True)
class SimulatedEstimates:
    """Per-query, per-model estimates before and after a model runs.

    Every attribute is a float64 array of shape ``(N, K)``, aligned with the
    ``quality`` and ``cost`` tables it was simulated from. The kernel reads
    the ``ante_*`` value of a model not yet run and the ``post_*`` value of a
    model already run.

    Attributes
    ----------
    ante_quality : ndarray
        Quality estimate of a model not yet run.
    ante_sigma : ndarray
        Standard deviation (not variance) of the ex-ante quality estimate,
        constant per model.
    ante_cost : ndarray
        Cost estimate of a model not yet run, ``>= 0``.
    post_quality : ndarray
        Quality estimate once the model has run.
    post_sigma : ndarray
        Standard deviation once the model has run: exactly 0.
    post_cost : ndarray
        Cost once the model has run: the true cost.
    """

    ante_quality: NDArray[np.float64]
    ante_sigma: NDArray[np.float64]
    ante_cost: NDArray[np.float64]
    post_quality: NDArray[np.float64]
    post_sigma: NDArray[np.float64]
    post_cost: NDArray[np.float64]


def simulate_estimates(
    quality: ArrayLike,
    cost: ArrayLike,
    *,
    noise: NoiseLevel = "low",
    fit_rows: ArrayLike | Sequence[int] | None = None,
    seed: int | np.random.Generator = 0,
) -> SimulatedEstimates:
    """Simulate the paper's noisy-but-calibrated estimators from the truth.

    Quality: the ex-ante estimate of model ``k`` is a least-squares line,
    fitted per model on ``fit_rows``, from the signal ``y + N(0, σ_ante²)`` to
    the true ``y``, applied to every row; the post-hoc estimate is the same
    with ``σ_post``. The line makes the estimates calibrated conditional means
    (on the fit rows their mean equals the mean of ``y``), as a well-trained
    estimator would be; the noise level sets how much they know per query.

    Uncertainty: the ex-ante standard deviation of model ``k`` is the std
    (``ddof=0``) over ``fit_rows`` of (ex-ante − post-hoc estimate), i.e. how
    far the estimate is expected to move once the model runs; post-hoc it is
    exactly 0 (the answer is known).

    Cost: the ex-ante estimate is recalibrated from ``c + N(0, σ²)`` the same
    way at ``"low"`` and ``"medium"`` noise, and is the per-model mean cost
    over ``fit_rows`` at ``"high"`` (uninformative). Estimated costs are
    clipped at 0, because a negative cost estimate would reward running a
    model. The post-hoc cost is the true cost at every level: a model that
    has run has a known bill.

    Parameters
    ----------
    quality : array-like of shape (N, K)
        True quality of each model on each query; finite.
    cost : array-like of shape (N, K)
        True cost of each model on each query; finite and ``>= 0``.
    noise : {"low", "medium", "high"}, default="low"
        Noise level, see :data:`NOISE_LEVELS`.
    fit_rows : array-like of int or bool, optional
        Rows the recalibration lines, the uncertainties and the mean costs are
        fitted on (in the evaluation protocol, the calibration split), as
        indices or an ``(N,)`` boolean mask selecting at least two distinct
        rows. Default: all rows.
    seed : int or numpy.random.Generator, default=0
        Seed of the noise. With an int seed every noise level scales the same
        standard-normal draws, so levels differ only in their noise scale.

    Returns
    -------
    SimulatedEstimates
        Float64 ``(N, K)`` arrays; see the class for their meaning.

    Raises
    ------
    ValueError
        If ``quality`` or ``cost`` is not a 2-D finite array, their shapes
        differ, a cost is negative, ``noise`` is unknown or ``fit_rows`` is
        invalid.

    Notes
    -----
    The ex-ante and post-hoc noises are independent draws, and errors are
    independent across models (the paper's setting). Quality estimates are
    not clipped to the range of ``y``: a calibrated linear estimate may leave
    it slightly, and clipping would bias it.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> y = rng.integers(0, 2, size=(200, 3)).astype(float)
    >>> c = np.tile([0.001, 0.002, 0.01], (200, 1))
    >>> est = simulate_estimates(y, c, noise="medium", seed=0)
    >>> est.ante_quality.shape, bool((est.post_sigma == 0).all())
    ((200, 3), True)
    """
    quality = _as_table(quality, "quality")
    cost = _as_table(cost, "cost")
    if cost.shape != quality.shape:
        raise ValueError(f"cost has shape {cost.shape} but quality has shape {quality.shape}; they must match")
    _check_non_negative(cost)
    if noise not in NOISE_LEVELS:
        raise ValueError(f"noise must be one of {sorted(NOISE_LEVELS)}, got {noise!r}")
    rows = _fit_rows(fit_rows, quality.shape[0])
    sigma_ante, sigma_post, sigma_cost = NOISE_LEVELS[noise]

    rng = np.random.default_rng(seed)
    z_ante, z_post, z_cost = (rng.standard_normal(quality.shape) for _ in range(3))

    ante_quality = _recalibrate(quality + sigma_ante * z_ante, quality, rows)
    post_quality = _recalibrate(quality + sigma_post * z_post, quality, rows)
    spread = np.std(ante_quality[rows] - post_quality[rows], axis=0)

    if sigma_cost is None:
        ante_cost = np.broadcast_to(cost[rows].mean(axis=0), cost.shape)
    else:
        ante_cost = _recalibrate(cost + sigma_cost * z_cost, cost, rows)

    return SimulatedEstimates(
        ante_quality=ante_quality,
        ante_sigma=np.broadcast_to(spread, quality.shape).copy(),
        ante_cost=np.clip(ante_cost, 0.0, None),
        post_quality=post_quality,
        post_sigma=np.zeros(quality.shape),
        post_cost=cost.copy(),
    )


def _recalibrate(signal: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Apply, per column, the least-squares line from ``signal`` to ``truth`` fitted on ``rows``.

    A column whose signal is constant on ``rows`` gets slope 0 (its estimate is
    the mean truth), the least-squares solution of smallest norm.
    """
    x, y = signal[rows], truth[rows]
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    spread = ((x - x_mean) ** 2).sum(axis=0)
    covariance = ((x - x_mean) * (y - y_mean)).sum(axis=0)
    slope = np.divide(covariance, spread, out=np.zeros_like(spread), where=spread > 0)
    return y_mean + slope * (signal - x_mean)


def _as_table(values: ArrayLike, name: str) -> NDArray[np.float64]:
    """Return ``values`` as a finite float64 ``(N, K)`` array with N, K >= 1."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array (queries x models), got shape {array.shape}")
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        row, col = bad[0]
        raise ValueError(
            f"{name} must be finite; it has {len(bad)} NaN/inf value(s), first at row {row}, column {col}"
        )
    return array


def _check_non_negative(cost: np.ndarray) -> None:
    negative = np.argwhere(cost < 0)
    if negative.size:
        row, col = negative[0]
        raise ValueError(f"cost must be >= 0; column {col} has {float(cost[row, col])!r} at row {row}")


def _fit_rows(fit_rows: ArrayLike | Sequence[int] | None, n: int) -> NDArray[np.intp]:
    """Return the fit rows as sorted unique indices, checking them against ``n`` rows."""
    if fit_rows is None:
        rows = np.arange(n)
    else:
        given = np.asarray(fit_rows)
        if given.dtype == bool:
            if given.shape != (n,):
                raise ValueError(f"fit_rows as a boolean mask must have shape ({n},), got {given.shape}")
            rows = np.flatnonzero(given)
        elif given.ndim == 1 and (given.size == 0 or np.issubdtype(given.dtype, np.integer)):
            if given.size and (given.min() < -n or given.max() >= n):
                raise ValueError(f"fit_rows has indices outside [-{n}, {n}) for {n} rows")
            rows = np.unique(given % n) if given.size else given.astype(np.intp)
        else:
            raise ValueError(
                f"fit_rows must be 1-D integer indices or a boolean mask, got dtype {given.dtype}, "
                f"shape {given.shape}"
            )
    if rows.size < 2:
        raise ValueError(f"fit_rows must select at least 2 distinct rows to fit a line, got {rows.size}")
    return rows
