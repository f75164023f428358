"""Play a policy over a calibration or test set and measure what it costs and earns.

Policy fitting evaluates hundreds of candidate parameter settings; the
evaluator is the only thing it needs from the data. :class:`TableEpisodes`
covers estimates that come as ex-ante / post-hoc tables (the paper's
simulated estimators, or any estimator whose post-hoc estimate of a model
depends only on that model having run) with one compiled
:func:`kernel.simulate` call per evaluation; :class:`EstimatorEpisodes`
covers learned estimators whose post-hoc estimates depend on the whole run
set; its step loop, :func:`play_cascades`, is also what batch scoring
replays logged traffic with, so evaluation and replay make the same
decisions by construction.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

import kernel
from estimators.estimator import Estimates, Estimator

from .defaults import MIN_FULLY_LOGGED  # re-exported: the --min-fully-logged default

if TYPE_CHECKING:
    from estimators.table import RoutingTable

__all__ = ["CONSTANT_ESTIMATES", "FIXED_MODEL", "LATENCY_MULTIPLIER", "MIN_FULLY_LOGGED", "Episodes", "EpisodeOutcome",
           "EstimateStep", "EstimatorEpisodes", "TableEpisodes", "calibration_episodes", "constant_tables",
           "penalised_cost", "plan_next", "play_cascades", "uncertainty_keywords"]


def uncertainty_keywords(sigma: ArrayLike | None, cov: ArrayLike | None,
                         transform: tuple[float, float] = (1.0, 1.0)) -> dict[str, Any]:
    """The kernel's uncertainty keyword: ``sigma = a·σ^p``, or (when given) ``cov`` with that σ and its correlations.

    The one place where a policy's fitted σ transform ``(a, p)`` meets the
    estimates: no estimator's σ is calibrated to what the decision rule's
    ``E[max]`` needs (learned σ ignores that estimates of models run together
    move together; even the paper's simulated σ, the spread of ex-ante minus
    post-hoc estimates, scored below its square in the authors' code, which
    multiplies the draws by the variance), so fitting picks ``(a, p)`` per
    budget on calibration, and every decision made with the policy
    (evaluation, serving, replay) must use the σ it was fitted with.

    Parameters
    ----------
    sigma : array-like of shape (N, K), or None
        Standard deviations of the quality estimates.
    cov : array-like of shape (N, K, K), or None
        Error covariance; used instead of ``sigma`` when given: its diagonal
        is transformed as ``sigma`` and its correlations are kept.
    transform : (float, float), default=(1.0, 1.0)
        The policy's ``(sigma_scale, sigma_power)``: finite, scale ``>= 0``, power ``> 0``.

    Returns
    -------
    dict
        ``{"cov": ...}`` or ``{"sigma": ...}``, to pass as ``**`` keywords to
        :func:`kernel.decide` / :func:`kernel.plan` / :func:`kernel.simulate`;
        the input itself (not a copy) for the identity ``(1, 1)``.

    Raises
    ------
    ValueError
        If the scale is negative, the power not positive, or either not finite.
    """
    scale, power = transform
    if not (np.isfinite(scale) and scale >= 0 and np.isfinite(power) and power > 0):
        raise ValueError(f"a σ transform needs a finite scale >= 0 and a finite power > 0, got {transform!r}")
    identity = scale == 1.0 and power == 1.0
    if cov is not None:
        if identity:
            return {"cov": cov}
        cov = np.asarray(cov)
        if power == 1.0:
            return {"cov": cov * scale**2}
        spread = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
        factor = np.divide(scale * spread**power, spread, out=np.zeros_like(spread), where=spread > 0)
        return {"cov": cov * factor[:, :, None] * factor[:, None, :]}
    if identity or sigma is None:
        return {"sigma": sigma}
    sigma = np.asarray(sigma)
    return {"sigma": scale * (sigma if power == 1.0 else sigma**power)}


#: Kernel-options key of a policy that calls one model (by column index) and stops: the single-model candidate.
FIXED_MODEL = "fixed_model"
#: Kernel-options key of a policy that routes on constant estimates, a ``(2, K)`` array of each model's mean
#: quality and cost (the constant-estimate hull, :func:`training.policy.hull_policy`).
CONSTANT_ESTIMATES = "constant_estimates"
#: Kernel-options key of a policy's latency multiplier ``μ`` (ALGORITHM.md §7); present only when ``μ > 0``.
LATENCY_MULTIPLIER = "latency_multiplier"


def penalised_cost(cost: ArrayLike, latency: ArrayLike | None,
                   options: dict[str, Any]) -> tuple[ArrayLike, dict[str, Any]]:
    """The kernel's cost and options for a policy: ``λ·c + μ·ℓ`` with multiplier 1 when it weighs latency.

    ALGORITHM.md §7 keeps the kernel unchanged: a policy with a latency
    multiplier ``μ`` gives it the per-model penalty ``λ·c_i + μ·ℓ_i`` as
    the cost and ``λ = 1``, so ``τ(M) = Q(M) − λ·C(M) − μ·L(M)``, and ties
    and "cheapest next" use the penalty. Such a policy has one ``λ`` for
    every step (fitting refuses a per-step ``λ`` with a latency budget).
    Options without :data:`LATENCY_MULTIPLIER` pass through unchanged, so a
    cost-only policy decides exactly as before latency existed.

    Parameters
    ----------
    cost : array-like of shape (N, K)
        Cost estimates (or true costs, for scoring).
    latency : array-like of shape (N, K), or None
        Latency estimates in seconds; needed when the options weigh latency.
    options : dict
        Kernel options (:meth:`~training.policy.Policy.kernel_options`).

    Returns
    -------
    (array-like, dict)
        The cost the kernel is given and the options without the latency key.

    Raises
    ------
    ValueError
        If the options weigh latency and ``latency`` is ``None``, or their
        ``λ`` differs between steps.
    """
    mu = options.get(LATENCY_MULTIPLIER)
    if mu is None:
        return cost, options
    if latency is None:
        raise ValueError("this policy weighs latency (it was fitted to a latency budget) but the estimates have "
                         "none: fit the estimator on a table with latency_s (or a throughput table)")
    lambdas = np.asarray(options["lambdas"], dtype=np.float64)
    if lambdas.size and np.ptp(lambdas) > 0:
        raise ValueError("a policy that weighs latency has one λ for every step; got per-step λ "
                         f"{lambdas.tolist()}")
    options = {name: value for name, value in options.items() if name != LATENCY_MULTIPLIER}
    options["lambdas"] = np.ones_like(lambdas)
    lam = float(lambdas[0]) if lambdas.size else 0.0
    return lam * np.asarray(cost, dtype=np.float64) + float(mu) * np.asarray(latency, dtype=np.float64), options


def plan_next(quality: ArrayLike, cost: ArrayLike, options: dict[str, Any], *, run: ArrayLike,
              u: ArrayLike | None, parallel: bool, sigma: ArrayLike | None = None,
              cov: ArrayLike | None = None, latency: ArrayLike | None = None
              ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """:func:`kernel.plan` for a policy's kernel options, where a fixed-model policy needs no kernel.

    A policy with :data:`FIXED_MODEL` in its options calls that model when
    nothing has run yet and stops otherwise (one model per query, like its
    ``max_depth`` of 1; its plan: that model, or the run set when stopping),
    so the best single model can compete with fitted policies and be served
    by the same code. A policy with :data:`CONSTANT_ESTIMATES` decides with
    those per-model constants as every query's quality and cost (σ 0)
    instead of the estimates given: the kernel unchanged, so a hull mix of
    two models is the kernel's own γ tie-break (:func:`constant_tables`).

    Parameters
    ----------
    quality, cost : array-like of shape (N, K)
        Current estimates.
    options : dict
        :meth:`~training.policy.Policy.kernel_options`.
    run, u, parallel, sigma, cov
        As in :func:`kernel.plan`.
    latency : array-like of shape (N, K), optional
        Latency estimates, for a policy that weighs them (:func:`penalised_cost`).

    Returns
    -------
    (ndarray of int64, ndarray of int64)
        Next model per query (``kernel.STOP`` to stop) and the plan as a bit mask.
    """
    if CONSTANT_ESTIMATES in options:
        options = dict(options)
        quality, cost = constant_tables(options.pop(CONSTANT_ESTIMATES), np.shape(quality)[0])
        sigma = cov = None
    if FIXED_MODEL not in options:
        cost, options = penalised_cost(cost, latency, options)
        if cov is None and np.shape(quality)[0] == 1:  # one query: a service's call, on the single-query path
            decider = _decider(np.shape(quality)[1], options)
            row = decider.plan(np.asarray(quality)[0], np.asarray(cost)[0], run=np.asarray(run)[0],
                               sigma=None if sigma is None else np.asarray(sigma)[0],
                               u=None if u is None else float(np.asarray(u)[0]))
            return np.array([row[0]], dtype=np.int64), np.array([row[1]], dtype=np.int64)
        return kernel.plan(quality, cost, run=run, u=u, parallel=parallel, sigma=sigma, cov=cov, **options)
    model = int(options[FIXED_MODEL])
    run = np.asarray(run, dtype=bool)
    stop = run.any(axis=1)
    masks = run.astype(np.int64) @ (np.int64(1) << np.arange(run.shape[1], dtype=np.int64))
    return (np.where(stop, kernel.STOP, model).astype(np.int64),
            np.where(stop, masks, np.int64(1) << model).astype(np.int64))


def _decider(n_models: int, options: dict[str, Any]) -> kernel.Decider:
    """The :class:`kernel.Decider` of a policy's kernel options, built once per process and options.

    A service decides one query per call with a handful of policies (one
    per budget, and the paced ``λ`` of a :class:`~training.serving.router.PacedRouter`,
    which changes slowly); checking them once each is what makes the
    single-query path cheap. The options are keyed by value.
    """
    key = tuple(sorted((name, _hashable(value)) for name, value in options.items()))
    return _cached_decider(int(n_models), key)


def _hashable(value: Any) -> Any:
    """Option values as a cache key: arrays as their float64 bytes, shape and dtype kept."""
    if isinstance(value, (np.ndarray, list, tuple)):
        array = np.asarray(value, dtype=np.float64)
        return ("array", array.shape, array.tobytes())
    return value


@functools.lru_cache(maxsize=256)
def _cached_decider(n_models: int, key: tuple) -> kernel.Decider:
    options = {name: (np.frombuffer(value[2]).reshape(value[1]).copy()
                      if isinstance(value, tuple) and value[:1] == ("array",) else value) for name, value in key}
    return kernel.Decider(n_models, **options)


def constant_tables(constants: ArrayLike, n_queries: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Every query's quality and cost estimates under a constant-estimate policy: the ``(2, K)`` constants, tiled.

    Parameters
    ----------
    constants : array-like of shape (2, K)
        Mean quality (row 0) and cost (row 1) per model.
    n_queries : int
        Rows to tile to.

    Returns
    -------
    (ndarray, ndarray)
        Quality and cost, each ``(n_queries, K)``, C-contiguous.
    """
    constants = np.asarray(constants, dtype=np.float64)
    return (np.tile(constants[0], (n_queries, 1)), np.tile(constants[1], (n_queries, 1)))


#: ``estimate(rows, run, with_sigma)``: estimates of queries ``rows`` with run sets ``run``.
EstimateStep = Callable[[np.ndarray, np.ndarray, bool], Estimates]


@overload
def play_cascades(estimate: EstimateStep, n_queries: int, n_models: int, options: dict[str, Any], *,
                  u: NDArray[np.float64], sigma_transform: tuple[float, float] = ..., parallel: bool = ...,
                  timings: dict[str, float] | None = ..., available: None = ...
                  ) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64]]: ...


@overload
def play_cascades(estimate: EstimateStep, n_queries: int, n_models: int, options: dict[str, Any], *,
                  u: NDArray[np.float64], sigma_transform: tuple[float, float] = ..., parallel: bool = ...,
                  timings: dict[str, float] | None = ..., available: ArrayLike
                  ) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]: ...


def play_cascades(estimate: EstimateStep, n_queries: int, n_models: int, options: dict[str, Any], *,
                  u: NDArray[np.float64], sigma_transform: tuple[float, float] = (1.0, 1.0), parallel: bool = True,
                  timings: dict[str, float] | None = None, available: ArrayLike | None = None
                  ) -> (tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64]]
                        | tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]):
    """Decide, run, re-estimate, decide again, until every query stops; then select the answers.

    Each step asks ``estimate`` for the queries still going, with the run
    sets they have reached, and the kernel for their next model; "running"
    it is up to ``estimate`` (the logged outcome stands in for the call).

    With ``available`` (partial logs: only some models' outcomes are known
    per query), a query whose next model is not available stops right there,
    before that model is run: its ``order`` and ``run`` hold what was run up
    to that point, that model is reported in ``needed``, and no answer is
    selected for it (``answer`` is ``-1``). The other queries play exactly as
    without ``available``.

    Parameters
    ----------
    estimate : callable
        ``estimate(rows, run, with_sigma)`` -> :class:`~estimators.estimator.Estimates`
        of queries ``rows`` given run sets ``run``; ``with_sigma=False`` (the
        final selection) needs quality only.
    n_queries, n_models : int
        ``N`` and ``K``.
    options : dict
        Kernel options of the policy (:meth:`~training.policy.Policy.kernel_options`).
    u : ndarray of shape (n_queries,)
        Per-query tie-break uniforms.
    sigma_transform : (float, float), default=(1.0, 1.0)
        The policy's ``(sigma_scale, sigma_power)`` (see :func:`uncertainty_keywords`).
    parallel : bool, default=True
        Multi-threaded kernel (same decisions).
    timings : dict, optional
        Seconds spent in the kernel are added under ``"kernel"``.
    available : array-like of bool, shape (n_queries, n_models), optional
        Which models' outcomes are known per query. Default: all of them
        (and the result has no ``needed``).

    Returns
    -------
    order : ndarray of int64, shape (n_queries, max_depth)
        Models run in order, ``-1`` padded.
    run : ndarray of bool, shape (n_queries, n_models)
        Final run sets.
    answer : ndarray of int64, shape (n_queries,)
        Selected model (best post-hoc quality estimate among those run);
        ``-1`` for a query stopped by ``available``.
    needed : ndarray of int64, shape (n_queries,)
        Only when ``available`` is given: the model a query needed and that
        was not available, ``-1`` for the queries that played to the end.

    Raises
    ------
    ValueError
        If ``available`` does not have shape ``(n_queries, n_models)``.
    """
    needed = None
    if available is not None:
        available = np.asarray(available, dtype=bool)
        if available.shape != (n_queries, n_models):
            raise ValueError(f"available must have shape (n_queries, n_models) = {(n_queries, n_models)}, "
                             f"got {available.shape}")
        needed = np.full(n_queries, kernel.STOP, dtype=np.int64)
    depth = int(options.get("max_depth") or n_models)
    run = np.zeros((n_queries, n_models), dtype=bool)
    order = np.full((n_queries, depth), kernel.STOP, dtype=np.int64)
    active = np.arange(n_queries)
    kernel_seconds = 0.0
    for step in range(depth):
        if active.size == 0:
            break
        found = estimate(active, run[active], True)
        began = time.perf_counter()
        chosen = plan_next(found.quality, found.cost, options, run=run[active], u=u[active], parallel=parallel,
                           latency=found.latency, **uncertainty_keywords(found.sigma, found.cov, sigma_transform))[0]
        kernel_seconds += time.perf_counter() - began
        going = chosen != kernel.STOP
        if needed is not None and available is not None:  # a model not logged cannot be run: the query stops
            lacking = going & ~available[active, np.maximum(chosen, 0)]
            needed[active[lacking]] = chosen[lacking]
            going &= ~lacking
        active, chosen = active[going], chosen[going]
        order[active, step] = chosen
        run[active, chosen] = True
    if needed is None:
        final = estimate(np.arange(n_queries), run, False)
        began = time.perf_counter()
        answer = kernel.select_answer(final.quality, run)
    else:  # select only for the queries that played to the end
        finished = np.flatnonzero(needed == kernel.STOP)
        answer = np.full(n_queries, kernel.STOP, dtype=np.int64)
        began = time.perf_counter()
        if finished.size:
            final = estimate(finished, run[finished], False)
            began = time.perf_counter()
            answer[finished] = kernel.select_answer(final.quality, run[finished])
    if timings is not None:
        timings["kernel"] = timings.get("kernel", 0.0) + kernel_seconds + time.perf_counter() - began
    if needed is None:
        return order, run, answer
    return order, run, answer, needed


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
    """Anything that can play kernel options over a fixed set of queries."""

    n_queries: int
    n_models: int
    #: Range of the quality estimates, where thresholds can matter.
    quality_span: tuple[float, float]
    #: Typical cost of one model run, which sets the scale of useful ``λ``.
    cost_scale: float
    #: Typical latency of one model run in seconds (the scale of useful ``μ``); NaN without latency.
    latency_scale: float

    def play(self, options: dict[str, Any]) -> EpisodeOutcome:
        """Play the policy given by ``kernel.simulate`` keyword ``options``.

        Parameters
        ----------
        options : dict
            Kernel options plus ``sigma_transform`` (:meth:`~training.policy.Policy.play_options`).

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

    def play(self, options: dict[str, Any]) -> EpisodeOutcome:
        """Play the policy given by ``options`` in one compiled :func:`kernel.simulate` call.

        Parameters
        ----------
        options : dict
            Kernel options plus, optionally, ``sigma_transform`` (applied to both σ tables).

        Returns
        -------
        EpisodeOutcome
            With the realised latency when the episodes have latency.
        """
        options = dict(options)
        transform = options.pop("sigma_transform", (1.0, 1.0))
        tables = list(self.tables)
        for index in (1, 4):  # ante_sigma, post_sigma
            tables[index] = uncertainty_keywords(tables[index], None, transform)["sigma"]
        if CONSTANT_ESTIMATES in options:  # the same constants before and after a model ran, σ 0
            quality, cost = constant_tables(options.pop(CONSTANT_ESTIMATES), self.n_queries)
            tables[:6] = [quality, np.zeros_like(quality), cost, quality, np.zeros_like(quality), cost]
        weighs_latency = LATENCY_MULTIPLIER in options
        if weighs_latency:  # the kernel sees penalties; what was spent is added up from the models run below
            latency = (None,) * 3 if self.latency is None else self.latency
            kernel_options = options
            for index, seconds in zip((2, 5, 7), latency, strict=True):
                tables[index], kernel_options = penalised_cost(  # type: ignore[call-overload]  # array in, array out
                    tables[index], seconds, options)
            options = kernel_options
        result = kernel.simulate(*tables, parallel=self.parallel, **options)
        if self.latency is None:
            return EpisodeOutcome(result.cost, result.quality, result.order)
        run = _run_mask(result.order, self.n_models)
        cost = (self.tables[7] * run).sum(axis=1) if weighs_latency else result.cost
        return EpisodeOutcome(cost, result.quality, result.order, (self.latency[2] * run).sum(axis=1))


class EstimatorEpisodes:
    """Episodes driven by a fitted estimator: decide, run, re-estimate, decide again.

    Learned post-hoc estimates depend on the whole run set (agreement among
    the answers so far), so they cannot come as two tables. Each step asks
    the estimator for the queries still going, with the run sets they have
    reached (:func:`play_cascades`). Estimates are cached per (query, run
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

        The :data:`EstimateStep` of :func:`play_cascades`.

        Parameters
        ----------
        rows : ndarray of int, shape (M,)
            Query indices into the table.
        run : ndarray of bool, shape (M, K)
            Their run sets.
        with_sigma : bool, default=True
            Accepted for :func:`play_cascades`; σ is always returned (it is cached anyway).

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

    def play(self, options: dict[str, Any]) -> EpisodeOutcome:
        """Play the policy given by ``options`` step by step with the estimator (:func:`play_cascades`).

        Parameters
        ----------
        options : dict
            Kernel options plus ``sigma_transform`` and, optionally, ``u`` (the
            per-query tie-break uniforms; default :func:`kernel.default_uniforms`).

        Returns
        -------
        EpisodeOutcome
            Realised cost (and latency, when the table and the estimator
            have it) sums that of every model run (logged, or the direct
            method's), quality is that of the selected answer.
        """
        options = dict(options)
        transform = options.pop("sigma_transform", (1.0, 1.0))
        u = np.asarray(options.pop("u", kernel.default_uniforms(self.n_queries)))
        order, run, answer = play_cascades(self.estimates, self.n_queries, self.n_models, options, u=u,
                                           sigma_transform=transform)
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
