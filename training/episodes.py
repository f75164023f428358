"""Play a policy over a calibration or test set and measure what it costs and earns.

Policy fitting evaluates hundreds of candidate parameter settings; the
evaluator is the only thing it needs from the data. :class:`TableEpisodes`
covers estimates that come as ex-ante / post-hoc tables (the paper's
simulated estimators, or any estimator whose post-hoc estimate of a model
depends only on that model having run) with one compiled
:func:`kernel.simulate` call per evaluation; :class:`EstimatorEpisodes`
covers learned estimators whose post-hoc estimates depend on the whole run
set; its step loop, :func:`~training.decision.play_cascades`, is also what batch scoring
replays logged traffic with, so evaluation and replay make the same
decisions by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

import kernel
from estimators.estimator import Estimates, Estimator

from .decision import DecisionRule, play_cascades
from .defaults import MIN_FULLY_LOGGED  # re-exported: the --min-fully-logged default

if TYPE_CHECKING:
    from estimators.table import RoutingTable

__all__ = ["MIN_FULLY_LOGGED", "Episodes", "EpisodeOutcome", "EstimatorEpisodes", "TableEpisodes",
           "calibration_episodes"]


@dataclass(frozen=True)
class EpisodeOutcome:
    """Per-query result of playing a policy.

    Attributes
    ----------
    cost, quality : ndarray of shape (N,)
        Realised cost (all models run) and true quality of the answer.
    order : ndarray of int64, shape (N, max_depth)
        Models run in order, ``-1`` padded.
    latency : ndarray of shape (N,), or None
        Realised latency: the run models' seconds added up, since a cascade
        runs them one after another (ALGORITHM.md §7); ``None`` when the
        episodes have no latency.
    """

    cost: NDArray[np.float64]
    quality: NDArray[np.float64]
    order: NDArray[np.int64]
    latency: NDArray[np.float64] | None = None

    @property
    def mean_cost(self) -> float:
        """Realised mean cost per query: what a budget bounds."""
        return float(self.cost.mean())

    @property
    def mean_latency(self) -> float:
        """Realised mean latency per query in seconds (what a latency budget bounds); NaN without latency."""
        return math.nan if self.latency is None else float(self.latency.mean())

    @property
    def mean_quality(self) -> float:
        """Mean true quality of the answers: what fitting maximises."""
        return float(self.quality.mean())


class Episodes(Protocol):
    """Anything that can play a decision rule over a fixed set of queries."""

    n_queries: int
    n_models: int
    #: Range of the quality estimates, where thresholds can matter.
    quality_span: tuple[float, float]
    #: Typical cost of one model run, which sets the scale of useful ``λ``.
    cost_scale: float
    #: Typical latency of one model run in seconds (the scale of useful ``μ``); NaN without latency.
    latency_scale: float

    def play(self, rule: DecisionRule) -> EpisodeOutcome:
        """Play ``rule`` over every query.

        Parameters
        ----------
        rule : DecisionRule
            The rule to play (a :class:`~training.policy.Policy` is one).

        Returns
        -------
        EpisodeOutcome
        """


class TableEpisodes:
    """Episodes over estimate tables, one compiled call per evaluation.

    Parameters
    ----------
    ante_quality, ante_sigma, ante_cost, post_quality, post_sigma, post_cost : array-like (N, K)
        Estimates before and after each model has run.
    true_quality, true_cost : array-like (N, K)
        Ground truth used to score the episodes.
    parallel : bool
        Use the multi-threaded kernel.
    latency : (array-like, array-like, array-like), optional
        Ex-ante, post-hoc and true latency ``(N, K)`` in seconds, for
        policies fitted to a latency budget; default none.
    """

    def __init__(self, ante_quality: ArrayLike, ante_sigma: ArrayLike, ante_cost: ArrayLike,
                 post_quality: ArrayLike, post_sigma: ArrayLike, post_cost: ArrayLike,
                 true_quality: ArrayLike, true_cost: ArrayLike, *, parallel: bool = True,
                 latency: tuple[ArrayLike, ArrayLike, ArrayLike] | None = None) -> None:
        self.tables = tuple(np.ascontiguousarray(a, dtype=np.float64) for a in (
            ante_quality, ante_sigma, ante_cost, post_quality, post_sigma, post_cost,
            true_quality, true_cost))
        self.latency = None if latency is None else tuple(np.ascontiguousarray(a, dtype=np.float64) for a in latency)
        self.parallel = parallel
        self.n_queries, self.n_models = self.tables[0].shape
        if self.n_queries == 0:
            raise ValueError("no queries to evaluate on: the calibration/test split is empty")
        if self.latency is not None and (len(self.latency) != 3 or any(
                a.shape != self.tables[0].shape or not (np.isfinite(a) & (a >= 0)).all() for a in self.latency)):
            raise ValueError(f"latency must be three (ante, post, true) arrays of shape {self.tables[0].shape}, "
                             "finite and >= 0 (seconds)")
        ante_quality, _, ante_cost, post_quality = self.tables[:4]
        self.quality_span = (float(min(ante_quality.min(), post_quality.min())),
                             float(max(ante_quality.max(), post_quality.max())))
        self.cost_scale = float(ante_cost.mean())
        self.latency_scale = math.nan if self.latency is None else float(self.latency[0].mean())

    @classmethod
    def from_estimates(cls, estimates: object, true_quality: NDArray[np.float64], true_cost: NDArray[np.float64],
                       rows: ArrayLike | None = None, *, parallel: bool = True,
                       latency: tuple[ArrayLike, ArrayLike, ArrayLike] | None = None) -> TableEpisodes:
        """Build from an object with ``ante_*``/``post_*`` attributes, optionally on ``rows``.

        The evaluation protocol's way to play simulated estimates on one split.

        Parameters
        ----------
        estimates : object
            With ``(N, K)`` array attributes ``ante_quality``, ``ante_sigma``,
            ``ante_cost``, ``post_quality``, ``post_sigma``, ``post_cost``
            (e.g. :class:`~estimators.simulated.SimulatedEstimates`).
        true_quality, true_cost : ndarray of float64, shape (N, K)
            Ground truth.
        rows : array-like of int or bool, optional
            Queries to keep (indexes every array); default all.
        parallel : bool, default=True
            Use the multi-threaded kernel.
        latency : (array-like, array-like, array-like), optional
            Ex-ante, post-hoc and true latency ``(N, K)``, indexed by ``rows`` like the rest.

        Returns
        -------
        TableEpisodes
        """
        names = ("ante_quality", "ante_sigma", "ante_cost", "post_quality", "post_sigma", "post_cost")
        arrays = [getattr(estimates, name) for name in names] + [true_quality, true_cost]
        if rows is not None:
            index = np.asarray(rows)
            arrays = [a[index] for a in arrays]
            if latency is not None:
                latency = (np.asarray(latency[0])[index], np.asarray(latency[1])[index], np.asarray(latency[2])[index])
        return cls(*arrays, parallel=parallel, latency=latency)

    def play(self, rule: DecisionRule) -> EpisodeOutcome:
        """Play ``rule`` in one compiled :func:`kernel.simulate` call.

        Parameters
        ----------
        rule : DecisionRule
            The rule to play; its σ transform applies to both σ tables.

        Returns
        -------
        EpisodeOutcome
            With the realised latency when the episodes have latency.
        """
        result = rule.simulate(self.tables, self.latency, parallel=self.parallel)
        if self.latency is None:
            return EpisodeOutcome(result.cost, result.quality, result.order)
        run = _run_mask(result.order, self.n_models)
        cost = (self.tables[7] * run).sum(axis=1) if rule.mu > 0 else result.cost
        return EpisodeOutcome(cost, result.quality, result.order, (self.latency[2] * run).sum(axis=1))


class EstimatorEpisodes:
    """Episodes driven by a fitted estimator: decide, run, re-estimate, decide again.

    Learned post-hoc estimates depend on the whole run set (agreement among
    the answers so far), so they cannot come as two tables. Each step asks
    the estimator for the queries still going, with the run sets they have
    reached (:func:`~training.decision.play_cascades`). Estimates are cached per (query, run
    set): policy fitting plays hundreds of parameter settings that mostly
    revisit the same run sets, so after the first few evaluations a play
    costs only kernel calls.

    On a partially logged table the episodes use the **direct method**
    (ALGORITHM.md §7): a model not logged on a query has as its outcome the
    estimator's post-hoc quality and cost given every model that *was*
    logged there, computed once. When a policy runs such a model, nothing
    new is observed: the features see only the logged models it has run,
    and that model's estimate is its direct-method outcome, with σ 0 (its
    outcome is what the episode will count). The other models' σ follows
    the number of logged models run, an approximation the fully logged
    calibration avoids.

    Parameters
    ----------
    estimator : Estimator
        Fitted.
    table : RoutingTable
        Queries to play, with ground truth and the logged answers that stand
        in for running a model.
    direct_method : bool, default=True
        Allow outcomes that are not logged, taken from the estimator. Test
        episodes pass ``False``: a policy is scored on real outcomes only.

    Attributes
    ----------
    quality, cost : ndarray of float64, shape (N, K)
        The outcomes episodes are scored with: the table's where logged, the
        direct method's elsewhere.
    latency : ndarray of float64, shape (N, K), or None
        Likewise for latency; ``None`` unless both the table and the
        estimator have latency.
    imputed_cells : int
        (query, model) outcomes that come from the direct method.
    """

    def __init__(self, estimator: Estimator, table: RoutingTable, *, direct_method: bool = True) -> None:
        self.estimator = estimator
        self.table = table
        self.n_queries, self.n_models = table.quality.shape
        if self.n_queries == 0:
            raise ValueError("no queries to evaluate on: the calibration/test split is empty")
        self._bits = np.int64(1) << np.arange(self.n_models, dtype=np.int64)
        self._slots: dict[tuple[int, int], int] = {}  # (query, run-set mask) -> row of the cache arrays
        self._stored: tuple[np.ndarray | None, ...] | None = None  # per Estimates field, (slots, K[, K])
        self.logged = table.logged
        self.imputed_cells = int((~self.logged).sum())
        if self.imputed_cells and not direct_method:
            raise ValueError(f"{int((~table.fully_logged).sum())} of these {self.n_queries} queries are not logged "
                             "for every model, and scoring them would count predicted outcomes as real")
        self.quality, self.cost, self.latency = table.quality, table.cost, table.latency
        if self.imputed_cells:
            direct = estimator.predict_table(table, run=self.logged)
            self.quality = np.where(self.logged, table.quality, direct.quality)
            self.cost = np.where(self.logged, table.cost, direct.cost)
            if table.latency is not None and direct.latency is not None:  # self.latency is table.latency
                self.latency = np.where(self.logged, table.latency, direct.latency)
        ante = self.estimates(np.arange(self.n_queries), np.zeros(table.quality.shape, bool))
        self.quality_span = (float(ante.quality.min()), float(ante.quality.max()))
        self.cost_scale = float(ante.cost.mean())
        if ante.latency is None:  # latency is scored only where the estimator can also weigh it
            self.latency = None
        self.latency_scale = math.nan if self.latency is None or ante.latency is None else float(ante.latency.mean())

    def estimates(self, rows: NDArray[np.int64], run: NDArray[np.bool_], with_sigma: bool = True) -> Estimates:
        """Estimates of queries ``rows`` with run sets ``run``, from the cache where they were seen before.

        The :data:`~training.decision.EstimateStep` of :func:`~training.decision.play_cascades`.

        Parameters
        ----------
        rows : ndarray of int, shape (M,)
            Query indices into the table.
        run : ndarray of bool, shape (M, K)
            Their run sets.
        with_sigma : bool, default=True
            Accepted for :func:`~training.decision.play_cascades`; σ is always returned (it is cached anyway).

        Returns
        -------
        Estimates
            Shape ``(M, K)``.
        """
        keys = list(zip(np.asarray(rows).tolist(), (run.astype(np.int64) @ self._bits).tolist(), strict=True))
        slots = np.fromiter((self._slots.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
        missing = np.flatnonzero(slots < 0)
        if missing.size:
            found = self._estimate(rows[missing], run[missing])
            for n in missing.tolist():  # a (query, run set) twice in one call gets one slot
                slots[n] = self._slots.setdefault(keys[n], len(self._slots))
            self._store(found, slots[missing])
        if self._stored is None:  # no query asked yet, so nothing to look up
            return self._estimate(rows, run)
        return Estimates._make(None if stored is None else stored[slots] for stored in self._stored)

    def _store(self, found: Estimates, slots: NDArray[np.int64]) -> None:
        """Write ``found`` into the cache arrays at ``slots``, growing them by doubling."""
        if self._stored is None:
            self._stored = tuple(None if value is None else np.empty((0, *value.shape[1:])) for value in found)
        needed = int(slots.max()) + 1
        grown = []
        for stored, value in zip(self._stored, found, strict=True):
            if stored is not None and stored.shape[0] < needed:
                bigger = np.empty((max(needed, 2 * stored.shape[0]), *stored.shape[1:]))
                bigger[: stored.shape[0]] = stored
                stored = bigger
            if stored is not None:
                stored[slots] = value
            grown.append(stored)
        self._stored = tuple(grown)

    def _estimate(self, rows: NDArray[np.int64], run: NDArray[np.bool_]) -> Estimates:
        """The estimator's estimates, with the direct method's outcome for run models that were not logged."""
        observed = run & self.logged[rows]
        found = self.estimator.predict_table(self.table, observed, rows=rows)
        unseen = run & ~observed
        if not unseen.any():
            return found
        cov = found.cov
        if cov is not None:
            cov = np.where(unseen[:, :, None] | unseen[:, None, :], 0.0, cov)
        latency = found.latency
        if latency is not None and self.latency is not None:
            latency = np.where(unseen, self.latency[rows], latency)
        sigma = None if found.sigma is None else np.where(unseen, 0.0, found.sigma)
        return Estimates(np.where(unseen, self.quality[rows], found.quality), sigma,
                         np.where(unseen, self.cost[rows], found.cost), cov, latency)

    def play(self, rule: DecisionRule, *, u: ArrayLike | None = None) -> EpisodeOutcome:
        """Play ``rule`` step by step with the estimator (:func:`~training.decision.play_cascades`).

        Parameters
        ----------
        rule : DecisionRule
            The rule to play (a :class:`~training.policy.Policy` is one).
        u : array-like of shape (N,), optional
            Per-query tie-break uniforms; default :func:`kernel.default_uniforms`.

        Returns
        -------
        EpisodeOutcome
            Realised cost (and latency, when the table and the estimator
            have it) sums that of every model run (logged, or the direct
            method's), quality is that of the selected answer.
        """
        uniforms = kernel.default_uniforms(self.n_queries) if u is None else np.asarray(u)
        order, run, answer = play_cascades(rule, self.estimates, self.n_queries, self.n_models, u=uniforms)
        cost = (self.cost * run).sum(axis=1)
        latency = None if self.latency is None else (self.latency * run).sum(axis=1)
        return EpisodeOutcome(cost, self.quality[np.arange(self.n_queries), answer], order, latency)


def _run_mask(order: NDArray[np.int64], n_models: int) -> NDArray[np.bool_]:
    """``(N, K)`` run sets from the ``-1``-padded order of the models run."""
    run = np.zeros((order.shape[0], n_models), dtype=bool)
    rows, steps = np.nonzero(order >= 0)
    run[rows, order[rows, steps]] = True
    return run


def calibration_episodes(estimator: Estimator, table: RoutingTable, *,
                         min_fully_logged: int = MIN_FULLY_LOGGED) -> tuple[EstimatorEpisodes, dict[str, Any]]:
    """Episodes to fit policies on, chosen as ALGORITHM.md §7 orders: fully logged queries, else the direct method.

    Parameters
    ----------
    estimator : Estimator
        Fitted (on other queries).
    table : RoutingTable
        The calibration queries, partially logged or not.
    min_fully_logged : int, default=MIN_FULLY_LOGGED
        With at least this many queries logged for every model, policies
        are fitted on those alone (real outcomes only); with fewer, on every
        calibration query, the outcomes not logged coming from the estimator
        (:class:`EstimatorEpisodes`).

    Returns
    -------
    episodes : EstimatorEpisodes
    used : dict
        ``method`` (``"fully_logged"`` or ``"direct"``), ``n_queries`` (of
        the calibration table), ``n_fully_logged``, ``n_used`` (queries
        played), ``imputed_cells`` (outcomes predicted) and ``min_fully_logged``,
        for the report.
    """
    fully = table.fully_logged
    n_fully = int(fully.sum())
    direct = n_fully < min(min_fully_logged, table.n_queries)
    episodes = EstimatorEpisodes(estimator, table if direct else table.subset(np.flatnonzero(fully)))
    return episodes, {"method": "direct" if direct else "fully_logged", "n_queries": table.n_queries,
                      "n_fully_logged": n_fully, "n_used": episodes.n_queries,
                      "imputed_cells": episodes.imputed_cells, "min_fully_logged": int(min_fully_logged)}
