"""Play a policy over a calibration or test set and measure what it costs and earns.

Policy fitting evaluates hundreds of candidate parameter settings; the
evaluator is the only thing it needs from the data. :class:`TableEpisodes`
covers estimates that come as ex-ante / post-hoc tables (the paper's
simulated estimators, or any estimator whose post-hoc estimate of a model
depends only on that model having run) with one compiled
:func:`kernel.simulate` call per evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

import kernel

__all__ = ["Episodes", "EpisodeOutcome", "TableEpisodes"]


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
        result = kernel.simulate(*self.tables, parallel=self.parallel, **options)
        return EpisodeOutcome(result.cost, result.quality, result.order)
