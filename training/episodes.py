"""Play a policy over a calibration or test set and measure what it costs and earns.

Policy fitting evaluates hundreds of candidate parameter settings; the
evaluator is the only thing it needs from the data. :class:`TableEpisodes`
covers estimates that come as ex-ante / post-hoc tables (the paper's
simulated estimators, or any estimator whose post-hoc estimate of a model
depends only on that model having run) with one compiled
:func:`kernel.simulate` call per evaluation; :class:`EstimatorEpisodes`
covers learned estimators whose post-hoc estimates depend on the whole run
set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

import kernel

__all__ = ["Episodes", "EpisodeOutcome", "EstimatorEpisodes", "TableEpisodes", "scale_uncertainty"]


def scale_uncertainty(sigma, cov, scale: float):
    """``(σ·scale, Σ·scale²)``; ``None`` stays ``None``."""
    if scale == 1.0:
        return sigma, cov
    if scale < 0 or not np.isfinite(scale):
        raise ValueError(f"sigma_scale must be a finite number >= 0, got {scale!r}")
    return (None if sigma is None else np.asarray(sigma) * scale,
            None if cov is None else np.asarray(cov) * scale**2)


@dataclass(frozen=True)
class EpisodeOutcome:
    """Per-query result of playing a policy.

    Attributes
    ----------
    cost, quality : ndarray of shape (N,)
        Realised cost (all models run) and true quality of the answer.
    order : ndarray of int64, shape (N, max_depth)
        Models run in order, ``-1`` padded.
    """

    cost: np.ndarray
    quality: np.ndarray
    order: np.ndarray

    @property
    def mean_cost(self) -> float:
        return float(self.cost.mean())

    @property
    def mean_quality(self) -> float:
        return float(self.quality.mean())


class Episodes(Protocol):
    """Anything that can play kernel options over a fixed set of queries."""

    n_queries: int
    n_models: int
    #: Range of the quality estimates, where thresholds can matter.
    quality_span: tuple[float, float]
    #: Typical cost of one model run, which sets the scale of useful ``λ``.
    cost_scale: float

    def play(self, options: dict) -> EpisodeOutcome:
        """Play the policy given by ``kernel.simulate`` keyword ``options``."""


class TableEpisodes:
    """Episodes over estimate tables, one compiled call per evaluation.

    Parameters
    ----------
    ante_quality, ante_sigma, ante_cost, post_quality, post_sigma, post_cost : ndarray (N, K)
        Estimates before and after each model has run.
    true_quality, true_cost : ndarray (N, K)
        Ground truth used to score the episodes.
    parallel : bool
        Use the multi-threaded kernel.
    """

    def __init__(self, ante_quality, ante_sigma, ante_cost, post_quality, post_sigma, post_cost,
                 true_quality, true_cost, *, parallel: bool = True) -> None:
        self.tables = tuple(np.ascontiguousarray(a, dtype=np.float64) for a in (
            ante_quality, ante_sigma, ante_cost, post_quality, post_sigma, post_cost,
            true_quality, true_cost))
        self.parallel = parallel
        self.n_queries, self.n_models = self.tables[0].shape
        if self.n_queries == 0:
            raise ValueError("no queries to evaluate on: the calibration/test split is empty")
        ante_quality, _, ante_cost, post_quality = self.tables[:4]
        self.quality_span = (float(min(ante_quality.min(), post_quality.min())),
                             float(max(ante_quality.max(), post_quality.max())))
        self.cost_scale = float(ante_cost.mean())

    @classmethod
    def from_estimates(cls, estimates, true_quality, true_cost, rows=None, *, parallel: bool = True):
        """Build from an object with ``ante_*``/``post_*`` attributes, optionally on ``rows``."""
        names = ("ante_quality", "ante_sigma", "ante_cost", "post_quality", "post_sigma", "post_cost")
        arrays = [getattr(estimates, name) for name in names] + [true_quality, true_cost]
        if rows is not None:
            arrays = [a[rows] for a in arrays]
        return cls(*arrays, parallel=parallel)

    def play(self, options: dict) -> EpisodeOutcome:
        options = dict(options)
        scale = options.pop("sigma_scale", 1.0)
        tables = list(self.tables)
        for index in (1, 4):  # ante_sigma, post_sigma
            tables[index] = scale_uncertainty(tables[index], None, scale)[0]
        result = kernel.simulate(*tables, parallel=self.parallel, **options)
        return EpisodeOutcome(result.cost, result.quality, result.order)


class EstimatorEpisodes:
    """Episodes driven by a fitted estimator: decide, run, re-estimate, decide again.

    Learned post-hoc estimates depend on the whole run set (agreement among
    the answers so far), so they cannot come as two tables. Each step asks
    the estimator for the queries still going, with the run sets they have
    reached. Estimates are cached per (query, run set): policy fitting plays
    hundreds of parameter settings that mostly revisit the same run sets, so
    after the first few evaluations a play costs only kernel calls.

    Parameters
    ----------
    estimator : object
        Fitted, with ``predict_table(table, run, rows=...)`` returning
        ``quality``, ``sigma``, ``cost`` (and optionally ``cov``) arrays for
        ``rows``.
    table : RoutingTable
        Queries to play, with ground truth and the logged answers that stand
        in for running a model.
    """

    def __init__(self, estimator, table) -> None:
        self.estimator = estimator
        self.table = table
        self.n_queries, self.n_models = table.quality.shape
        if self.n_queries == 0:
            raise ValueError("no queries to evaluate on: the calibration/test split is empty")
        self._bits = np.int64(1) << np.arange(self.n_models, dtype=np.int64)
        self._cache: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
        ante = self.estimates(np.arange(self.n_queries), np.zeros(table.quality.shape, bool))
        self.quality_span = (float(ante[0].min()), float(ante[0].max()))
        self.cost_scale = float(ante[2].mean())

    def estimates(self, rows: np.ndarray, run: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(quality, sigma, cost, cov or None)`` for ``rows`` with run sets ``run``."""
        masks = run.astype(np.int64) @ self._bits
        missing = [n for n, (row, mask) in enumerate(zip(rows, masks)) if (row, mask) not in self._cache]
        if missing:
            found = self.estimator.predict_table(self.table, run[missing], rows=rows[missing])
            has_cov = getattr(found, "cov", None) is not None
            for j, n in enumerate(missing):
                self._cache[(int(rows[n]), int(masks[n]))] = (
                    found.quality[j], found.sigma[j], found.cost[j], found.cov[j] if has_cov else None)
        cached = [self._cache[(int(row), int(mask))] for row, mask in zip(rows, masks)]
        quality, sigma, cost = (np.array([c[i] for c in cached]) for i in range(3))
        cov = np.array([c[3] for c in cached]) if cached and cached[0][3] is not None else None
        return quality, sigma, cost, cov

    def play(self, options: dict) -> EpisodeOutcome:
        options = dict(options)
        scale = options.pop("sigma_scale", 1.0)
        u = np.asarray(options.pop("u", kernel.default_uniforms(self.n_queries)))
        depth = int(options.get("max_depth") or self.n_models)
        run = np.zeros((self.n_queries, self.n_models), bool)
        order = np.full((self.n_queries, depth), kernel.STOP, dtype=np.int64)
        active = np.arange(self.n_queries)
        for step in range(depth):
            if active.size == 0:
                break
            quality, sigma, cost, cov = self.estimates(active, run[active])
            sigma, cov = scale_uncertainty(sigma, cov, scale)
            spread = {"cov": cov} if cov is not None else {"sigma": sigma}
            chosen = kernel.decide(quality, cost, run=run[active], u=u[active], **spread, **options)
            going = chosen != kernel.STOP
            active, chosen = active[going], chosen[going]
            order[active, step] = chosen
            run[active, chosen] = True
        every = np.arange(self.n_queries)
        final_quality = self.estimates(every, run)[0]
        answer = kernel.select_answer(final_quality, run)
        cost = (self.table.cost * run).sum(axis=1)
        return EpisodeOutcome(cost, self.table.quality[every, answer], order)
