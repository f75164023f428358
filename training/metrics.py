"""Quality-cost evaluation of a model-selection strategy (ALGORITHM.md §6).

A strategy fitted at several budgets traces a curve of (mean cost, mean
quality) points on the test queries. This module turns such curves into the
paper's single number, the area under the curve (AUC) over the cost range of
the single models, and puts a paired bootstrap interval on it:

* :func:`single_model_points`, :func:`upper_hull` and :func:`budget_grid`
  place the budgets between the single models that matter;
* :func:`auc` and :func:`linear_auc` compute the area, ×100;
* :func:`bootstrap_auc` resamples the test queries, the same resample for
  every strategy, so that differences between strategies get their own
  (narrower) interval.

Everything is plain NumPy and vectorised: the bootstrap evaluates all resamples
of a strategy at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from typing import NamedTuple, TypedDict

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "AUC_LABELS",
    "auc_label",
    "AucInterval",
    "BootstrapResult",
    "auc",
    "auc_bounds",
    "bootstrap_auc",
    "budget_grid",
    "paired_budget_differences",
    "linear_auc",
    "single_model_points",
    "upper_hull",
]

_COLLINEAR_RTOL = 1e-12


class AucInterval(NamedTuple):
    """A point estimate with a bootstrap percentile interval (AUC units, ×100)."""

    estimate: float
    low: float
    high: float


class BootstrapResult(TypedDict):
    """Output of :func:`bootstrap_auc`.

    ``strategies`` maps each strategy to its AUC interval; ``differences``
    maps each pair ``(a, b)`` (in the order the strategies were given) to the
    interval of ``AUC(a) − AUC(b)``.
    """

    strategies: dict[str, AucInterval]
    differences: dict[tuple[str, str], AucInterval]


def single_model_points(quality: ArrayLike, cost: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean cost and mean quality of always running one model.

    Parameters
    ----------
    quality, cost : array-like of shape (N, K)
        Per-query quality and cost of each of the ``K`` models.

    Returns
    -------
    mean_cost, mean_quality : ndarray of shape (K,)
        The ``K`` single-model points of the quality-cost plane.
    """
    quality = _finite(quality, "quality", ndim=2)
    cost = _finite(cost, "cost", ndim=2)
    if quality.shape != cost.shape:
        raise ValueError(f"cost has shape {cost.shape} but quality has shape {quality.shape}; they must match")
    if quality.shape[0] == 0:
        raise ValueError("quality and cost have no rows; pass at least one query")
    return cost.mean(axis=0), quality.mean(axis=0)


def upper_hull(costs: ArrayLike, qualities: ArrayLike) -> NDArray[np.intp]:
    """Indices of the points on the quality-cost frontier, cheapest first.

    The frontier is the upper-left convex hull from the cheapest point to the
    best one: what a user can reach by mixing single models per query. A point
    is on it only if it is strictly better than every cheaper point and lies
    strictly above the segment joining its neighbours.

    Parameters
    ----------
    costs, qualities : array-like of shape (K,)
        One point per model, for example from :func:`single_model_points`.

    Returns
    -------
    ndarray of int
        Indices into ``costs``, sorted by increasing cost (and quality).
        Costs and qualities along it are strictly increasing and the slopes
        strictly decreasing.

    Notes
    -----
    Ties: among points of equal cost only the best is kept (the lowest index
    if they are equal in quality too); a point no better than a cheaper one is
    dominated and left out; a point on the line between two hull points (up to
    a relative tolerance of 1e-12) is left out, because it adds no vertex, so
    the budget grid depends only on the frontier's shape. A single model is its
    own hull.
    """
    costs, qualities = _points(costs, qualities, "costs", "qualities")
    order = np.lexsort((-qualities, costs))
    hull: list[int] = []
    best = -np.inf
    for index in order:
        if qualities[index] <= best:
            continue
        best = qualities[index]
        while len(hull) >= 2 and not _strictly_above(costs, qualities, hull[-2], hull[-1], index):
            hull.pop()
        hull.append(int(index))
    return np.array(hull, dtype=np.intp)


def budget_grid(costs: ArrayLike, qualities: ArrayLike, per_segment: int = 10) -> NDArray[np.float64]:
    """Budgets spread evenly along the cost range of the frontier's segments.

    Each pair of neighbouring hull models (see :func:`upper_hull`) gets
    ``per_segment`` evenly spaced budgets **including both its endpoints**, as
    in the paper; an endpoint shared by two segments appears once. With ``H``
    hull models there are ``(per_segment − 1)·(H − 1) + 1`` budgets, strictly
    increasing. A single hull model gives its cost alone.

    Parameters
    ----------
    costs, qualities : array-like of shape (K,)
        Single-model points.
    per_segment : int, default=10
        Budgets per segment, endpoints included; at least 2.

    Returns
    -------
    ndarray of float64
        The budgets, increasing.
    """
    if isinstance(per_segment, bool) or not isinstance(per_segment, (int, np.integer)) or per_segment < 2:
        raise ValueError(f"per_segment must be an integer >= 2, got {per_segment!r}")
    costs = np.asarray(costs, dtype=np.float64)
    hull_costs = costs[upper_hull(costs, qualities)]
    segments = [np.linspace(a, b, per_segment)[:-1] for a, b in zip(hull_costs[:-1], hull_costs[1:], strict=True)]
    return np.concatenate([*segments, hull_costs[-1:]])


def auc_bounds(costs: ArrayLike, qualities: ArrayLike) -> tuple[float, float, float]:
    """The protocol's AUC range and left anchor from the single-model points.

    Every strategy's AUC is taken over the same range, so that the areas are
    comparable across strategies.

    Parameters
    ----------
    costs, qualities : array-like of shape (K,)
        Single-model points, for example from :func:`single_model_points`.

    Returns
    -------
    lo, hi : float
        Cheapest and most expensive single-model cost.
    left_quality : float
        Quality of the cheapest model (the best one if several share that cost).
    """
    costs, qualities = _points(costs, qualities, "costs", "qualities")
    cheapest = upper_hull(costs, qualities)[0]
    return float(costs.min()), float(costs.max()), float(qualities[cheapest])


def auc(
    curve_costs: ArrayLike,
    curve_qualities: ArrayLike,
    lo: float,
    hi: float,
    *,
    left_quality: float,
) -> float:
    """Mean height ×100 of a quality-cost curve over ``[lo, hi]``.

    The curve is built from the (cost, quality) points a strategy reached:

    1. The point ``(lo, left_quality)`` is added: at the cheapest single
       model's cost, a user can always run that model.
    2. Points are sorted by cost and quality is replaced by its running
       maximum: a user with budget ``c`` can use any policy that costs at most
       ``c``, so the best quality reachable at ``c`` never decreases. (A point
       that costs more and gives less is not a loss; it is never chosen.)
    3. Between points the curve is linear, because mixing two policies per
       query mixes their costs and qualities in the same proportion; beyond
       the most expensive point it is flat (spending more is optional).

    Nothing more is credited: the curve is not replaced by its concave hull.

    Parameters
    ----------
    curve_costs, curve_qualities : array-like of shape (P,)
        Mean cost and mean quality at each budget, in any order; ``P >= 1``.
        Points outside ``[lo, hi]`` shape the curve but the area is taken over
        ``[lo, hi]`` only.
    lo, hi : float
        Integration range, ``lo < hi``; in the protocol the cheapest and most
        expensive single-model cost (:func:`auc_bounds`).
    left_quality : float
        Quality of the cheapest single model.

    Returns
    -------
    float
        ``100 · ∫_lo^hi q(c) dc / (hi − lo)``.
    """
    curve_costs, curve_qualities = _points(curve_costs, curve_qualities, "curve_costs", "curve_qualities")
    lo, hi, left_quality = _range(lo, hi, left_quality)
    return float(_auc_rows(curve_costs[None, :], curve_qualities[None, :], lo, hi, left_quality)[0])


#: How a printed table names an AUC: the reports' key ``linear`` is the single models' hull (their linear
#: interpolation), not the ridge estimator of ``--estimator linear``, so it is printed ``hull``.
AUC_LABELS = {"linear": "hull"}


def auc_label(name: str) -> str:
    """The name an AUC row or entry is printed under (:data:`AUC_LABELS`; a strategy keeps its own name).

    Parameters
    ----------
    name : str
        A key of a report's ``auc``.

    Returns
    -------
    str
    """
    return AUC_LABELS.get(name, name)


def linear_auc(
    costs: ArrayLike,
    qualities: ArrayLike,
    lo: float | None = None,
    hi: float | None = None,
) -> float:
    """AUC of the frontier of single models: the paper's "linear" baseline.

    Parameters
    ----------
    costs, qualities : array-like of shape (K,)
        Single-model points.
    lo, hi : float, optional
        Integration range; default: the cheapest and most expensive cost.

    Returns
    -------
    float
        :func:`auc` of the :func:`upper_hull` points, anchored at the cheapest
        model's quality.
    """
    default_lo, default_hi, left_quality = auc_bounds(costs, qualities)
    hull = upper_hull(costs, qualities)
    return auc(
        np.asarray(costs, dtype=np.float64)[hull],
        np.asarray(qualities, dtype=np.float64)[hull],
        default_lo if lo is None else lo,
        default_hi if hi is None else hi,
        left_quality=left_quality,
    )


def bootstrap_auc(
    per_query_quality: Mapping[str, ArrayLike],
    per_query_cost: Mapping[str, ArrayLike],
    lo: float,
    hi: float,
    left_quality: float,
    *,
    n_boot: int = 500,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> BootstrapResult:
    """AUC of every strategy with paired bootstrap intervals over test queries.

    Each resample draws ``N`` test queries with replacement and recomputes
    every strategy's curve (mean cost and quality per budget) and AUC on it.
    All strategies see the **same** resamples, so the interval of a difference
    reflects how consistently one strategy beats the other query by query,
    which is far tighter than comparing two marginal intervals.

    Parameters
    ----------
    per_query_quality, per_query_cost : dict of str to array-like of shape (B, N)
        Per strategy, the realised quality and cost of each of the ``N`` test
        queries at each of its ``B`` budgets. The keys must match; ``N`` (the
        same queries, in the same order) must be shared, ``B`` may differ.
    lo, hi, left_quality : float
        As in :func:`auc`. They are held fixed across resamples: the AUC range
        is part of the protocol's definition, set once from the full test set.
    n_boot : int, default=500
        Number of resamples.
    confidence : float, default=0.95
        Coverage of the percentile intervals (0.95: 2.5th and 97.5th).
    seed : int or numpy.random.Generator, default=0
        Seed of the resampling.

    Returns
    -------
    BootstrapResult
        ``strategies[name]`` is the AUC on the full test set with its
        interval; ``differences[(a, b)]`` is ``AUC(a) − AUC(b)`` with its
        interval, for every pair in the order the strategies were given.
    """
    names, quality, cost = _per_query(per_query_quality, per_query_cost)
    lo, hi, left_quality = _range(lo, hi, left_quality)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    weights = _resample_weights(quality[names[0]].shape[1], n_boot, np.random.default_rng(seed))

    point, samples = {}, {}
    for name in names:
        mean_cost, mean_quality = cost[name].mean(axis=1)[None], quality[name].mean(axis=1)[None]
        point[name] = _auc_rows(mean_cost, mean_quality, lo, hi, left_quality)[0]
        samples[name] = _auc_rows(weights @ cost[name].T, weights @ quality[name].T, lo, hi, left_quality)

    return BootstrapResult(
        strategies={name: _interval(point[name], samples[name], confidence) for name in names},
        differences={
            (a, b): _interval(point[a] - point[b], samples[a] - samples[b], confidence)
            for a, b in combinations(names, 2)
        },
    )


def paired_budget_differences(
    quality_a: ArrayLike,
    quality_b: ArrayLike,
    *,
    n_boot: int = 500,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> list[AucInterval]:
    """Per budget, the mean test quality of strategy ``a`` minus ``b``, with a paired bootstrap interval.

    Where a curve's AUC sums every budget, this says at which budgets one
    strategy beats the other (issue 28: where cascading pays and where not).
    Each resample draws ``N`` test queries with replacement, the same
    resample for every budget and both strategies, and takes the mean of the
    per-query differences ``q_a − q_b``.

    Parameters
    ----------
    quality_a, quality_b : array-like of shape (B, N)
        Realised quality of each of the ``N`` test queries (the same ones, in
        the same order) under each strategy at each of the ``B`` budgets.
    n_boot : int, default=500
        Number of resamples.
    confidence : float, default=0.95
        Coverage of the percentile intervals.
    seed : int or numpy.random.Generator, default=0
        Seed of the resampling.

    Returns
    -------
    list of AucInterval
        One per budget: ``(mean difference, low, high)`` in quality units (not ×100).
    """
    a = _finite(quality_a, "quality_a", ndim=2)
    b = _finite(quality_b, "quality_b", ndim=2)
    if a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(f"quality_a {a.shape} and quality_b {b.shape} must have the same shape (budgets, queries), "
                         "with at least one query")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    difference = a - b
    draws = _resample_weights(a.shape[1], n_boot, np.random.default_rng(seed)) @ difference.T  # (n_boot, B)
    return [_interval(float(difference[j].mean()), draws[:, j], confidence) for j in range(a.shape[0])]


def _interval(estimate: float, draws: np.ndarray, confidence: float) -> AucInterval:
    """``estimate`` with the central ``confidence`` percentile interval of ``draws``."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return AucInterval(float(estimate), float(low), float(high))


def _auc_rows(costs: np.ndarray, qualities: np.ndarray, lo: float, hi: float, left_quality: float) -> np.ndarray:
    """:func:`auc` of each row of ``(R, P)`` point arrays, as an ``(R,)`` array."""
    rows = costs.shape[0]
    x = np.concatenate([np.full((rows, 1), lo), costs], axis=1)
    y = np.concatenate([np.full((rows, 1), left_quality), qualities], axis=1)
    # Sort by cost, best quality first among equal costs, so a tied group
    # carries its best quality from its first point on.
    order = np.lexsort((-y, x), axis=-1)
    x = np.take_along_axis(x, order, axis=1)
    y = np.maximum.accumulate(np.take_along_axis(y, order, axis=1), axis=1)

    x0, x1, y0, y1 = x[:, :-1], x[:, 1:], y[:, :-1], y[:, 1:]
    a, b = np.clip(x0, lo, hi), np.clip(x1, lo, hi)
    width = x1 - x0
    # The line's value at the midpoint of [a, b], from the position of that
    # midpoint as a fraction of the segment: a slope (dy / width) would
    # overflow on a segment of subnormal width.
    # Clipping to [0, 1] is exact: the midpoint lies in the segment whenever
    # [a, b] has width, and a segment outside [lo, hi] has b - a = 0.
    with np.errstate(over="ignore"):
        fraction = np.divide((a + b) / 2 - x0, width, out=np.zeros_like(width), where=width > 0)
    fraction = np.clip(fraction, 0.0, 1.0)
    inner = ((b - a) * (y0 + (y1 - y0) * fraction)).sum(axis=1)
    right = (hi - np.clip(x[:, -1], lo, hi)) * y[:, -1]
    return 100 * (inner + right) / (hi - lo)


def _resample_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n)`` weights, each row the share of every query in one resample.

    ``weights @ values`` is then the resampled mean of ``values`` for all
    resamples at once, without materialising the resampled arrays.
    """
    draws = rng.integers(0, n, size=(n_boot, n))
    flat = (draws + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n) / n


def _strictly_above(costs: np.ndarray, qualities: np.ndarray, left: int, middle: int, right: int) -> bool:
    """Whether ``middle`` lies strictly above the segment from ``left`` to ``right``."""
    run_middle, rise_middle = costs[middle] - costs[left], qualities[middle] - qualities[left]
    run_right, rise_right = costs[right] - costs[left], qualities[right] - qualities[left]
    cross = rise_middle * run_right - rise_right * run_middle
    scale = abs(rise_middle * run_right) + abs(rise_right * run_middle)
    return bool(cross > _COLLINEAR_RTOL * scale)


def _finite(values: ArrayLike, name: str, *, ndim: int) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite; it has {np.count_nonzero(~np.isfinite(array))} NaN/inf value(s)")
    return array


def _points(
    costs: ArrayLike, qualities: ArrayLike, cost_name: str, quality_name: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    x = _finite(costs, cost_name, ndim=1)
    y = _finite(qualities, quality_name, ndim=1)
    if x.shape != y.shape:
        raise ValueError(f"{cost_name} has {x.size} points but {quality_name} has {y.size}")
    if x.size == 0:
        raise ValueError(f"{cost_name} is empty; pass at least one point")
    return x, y


def _range(lo: float, hi: float, left_quality: float) -> tuple[float, float, float]:
    lo, hi, left_quality = float(lo), float(hi), float(left_quality)
    if not np.isfinite([lo, hi, left_quality]).all():
        raise ValueError(f"lo, hi and left_quality must be finite, got {lo!r}, {hi!r}, {left_quality!r}")
    if not lo < hi:
        raise ValueError(f"the AUC range needs lo < hi, got lo={lo!r}, hi={hi!r}")
    return lo, hi, left_quality


def _per_query(
    per_query_quality: Mapping[str, ArrayLike], per_query_cost: Mapping[str, ArrayLike]
) -> tuple[list[str], dict[str, NDArray[np.float64]], dict[str, NDArray[np.float64]]]:
    """Validate the per-strategy ``(B, N)`` tables; return names and float64 copies."""
    names = list(per_query_quality)
    if not names:
        raise ValueError("per_query_quality is empty; pass at least one strategy")
    if set(names) != set(per_query_cost):
        raise ValueError(
            f"per_query_quality and per_query_cost must name the same strategies, got {sorted(names)} "
            f"and {sorted(per_query_cost)}"
        )
    quality = {name: _finite(per_query_quality[name], f"per_query_quality[{name!r}]", ndim=2) for name in names}
    cost = {name: _finite(per_query_cost[name], f"per_query_cost[{name!r}]", ndim=2) for name in names}
    n_queries = quality[names[0]].shape[1]
    for name in names:
        if quality[name].shape != cost[name].shape:
            raise ValueError(
                f"per_query_quality[{name!r}] has shape {quality[name].shape} but per_query_cost[{name!r}] "
                f"has shape {cost[name].shape}; they must match"
            )
        if quality[name].shape[1] != n_queries or 0 in quality[name].shape:
            raise ValueError(
                f"per_query_quality[{name!r}] has shape {quality[name].shape}; every strategy needs at least "
                f"one budget and the same {n_queries} test queries (a non-empty (B, N) array)"
            )
    return names, quality, cost
