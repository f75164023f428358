"""The decision rule: a policy's parameters and the one step from them to the kernel.

A :class:`DecisionRule` holds what decides (strategy, ``λ`` per step or
``θ``, ``γ``, depth, σ transform, ``μ``, a fixed model or constant
estimates) and nothing about how it was fitted; a fitted
:class:`~training.policy.Policy` is a rule plus its fit record.
:meth:`DecisionRule.plan` is the only place where a rule meets
:func:`kernel.plan`: fitting (through the episodes), evaluation, batch
replay and the serving router all plan with it, so they make the same
decisions by construction. :func:`play_cascades` is the step loop they
share: decide, run, re-estimate, decide again.

The translations the kernel does not know live here too, once each:

* the σ transform ``σ → a·σ^p`` (:func:`uncertainty_keywords`);
* a latency multiplier ``μ > 0`` becomes the per-model penalty
  ``λ·c + μ·ℓ`` given to the kernel as the cost with ``λ = 1``
  (ALGORITHM.md §7, :meth:`DecisionRule.kernel_cost`);
* constant estimates (the hull, :func:`training.policy.hull_policy`) replace
  every query's estimates with the per-model constants, σ 0;
* a fixed model (the single-model policy of older artifacts) needs no
  kernel: call that model when nothing ran, else stop;
* excluded models: each group of queries with the same excluded set is
  planned on the columns that remain (:meth:`DecisionRule.restricted`).
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

import kernel
from estimators.estimator import Estimates

__all__ = ["DecisionRule", "EstimateStep", "constant_tables", "play_cascades", "uncertainty_keywords"]


def uncertainty_keywords(sigma: ArrayLike | None, cov: ArrayLike | None,
                         transform: tuple[float, float] = (1.0, 1.0)) -> dict[str, Any]:
    """The kernel's uncertainty keyword: ``sigma = a·σ^p``, or (when given) ``cov`` with that σ, correlations kept.

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
        root = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
        factor = np.divide(scale * root**power, root, out=np.zeros_like(root), where=root > 0)
        return {"cov": cov * factor[:, :, None] * factor[:, None, :]}
    if identity or sigma is None:
        return {"sigma": sigma}
    sigma = np.asarray(sigma)
    return {"sigma": scale * (sigma if power == 1.0 else sigma**power)}


def constant_tables(constants: ArrayLike, n_queries: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Every query's quality and cost estimates under a constant-estimate rule: the ``(2, K)`` constants, tiled.

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
    table = np.asarray(constants, dtype=np.float64)
    return (np.tile(table[0], (n_queries, 1)), np.tile(table[1], (n_queries, 1)))


@dataclass(frozen=True)
class DecisionRule:
    """What decides the next model: plain arrays and scalars, picklable, no compiled state.

    Attributes
    ----------
    strategy : str
        ``routing``, ``cascade``, ``cascade_routing`` or ``threshold``
        (:func:`kernel.plan`); ``single`` for a fixed-model rule.
    lambdas : ndarray
        ``λ_t`` per step (unused by ``threshold``).
    thresholds : ndarray or None
        ``θ_j`` of the threshold cascade.
    gamma : float
        Probability of breaking ties towards the most expensive candidate.
    max_depth, force_order, n_samples
        The kernel's options of the same names.
    sigma_scale, sigma_power : float
        The σ transform ``σ → sigma_scale · σ^sigma_power`` applied to the
        estimators' σ (``cov``: its diagonal, correlations kept) before
        deciding (:func:`uncertainty_keywords`).
    fixed_model : int or None
        Column of the one model this rule calls (then stops), or ``None``.
    mu : float
        The latency multiplier ``μ`` (per second, in quality units) of
        ``τ(M) = Q(M) − λ·C(M) − μ·L(M)`` (ALGORITHM.md §7); 0 decides on cost alone.
    constant_estimates : ndarray of shape (2, K), or None
        Per-model mean quality (row 0) and cost (row 1) to decide on in place
        of the estimates, for every query (σ 0); ``None``: the estimates.
    """

    strategy: str
    lambdas: NDArray[np.float64]
    thresholds: NDArray[np.float64] | None
    gamma: float
    max_depth: int
    force_order: bool
    n_samples: int
    sigma_scale: float = 1.0
    sigma_power: float = 1.0
    fixed_model: int | None = None
    mu: float = 0.0
    constant_estimates: NDArray[np.float64] | None = None

    @property
    def sigma_transform(self) -> tuple[float, float]:
        """``(sigma_scale, sigma_power)``, as :func:`uncertainty_keywords` takes it."""
        return (self.sigma_scale, self.sigma_power)

    @property
    def rule(self) -> DecisionRule:
        """The bare rule (for a :class:`~training.policy.Policy`: without its fit record)."""
        names = DecisionRule.__dataclass_fields__
        return DecisionRule(**{name: getattr(self, name) for name in names})

    def depth(self, n_models: int) -> int:
        """Most models a query can run under this rule among ``n_models``."""
        return 1 if self.fixed_model is not None else int(self.max_depth or n_models)

    def kernel_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`kernel.plan` / :func:`kernel.simulate` / :class:`kernel.Decider`.

        Only the kernel's own options: with ``μ > 0`` every step's ``λ`` is
        1 because :meth:`kernel_cost` folds ``λ`` into the cost.

        Returns
        -------
        dict
            ``strategy``, ``max_depth``, ``force_order``, ``gamma``,
            ``n_samples``, and ``thresholds`` (threshold cascade) or ``lambdas``.

        Raises
        ------
        ValueError
            For a fixed-model rule, which needs no kernel.
        """
        if self.fixed_model is not None:
            raise ValueError("a fixed-model rule calls its one model without the kernel; it has no kernel options")
        options: dict[str, Any] = dict(strategy=self.strategy, max_depth=self.max_depth,
                                       force_order=self.force_order, gamma=self.gamma, n_samples=self.n_samples)
        if self.strategy == "threshold":
            options["thresholds"] = self.thresholds
        elif self.mu > 0:
            options["lambdas"] = np.ones_like(np.asarray(self.lambdas, dtype=np.float64))
        else:
            options["lambdas"] = self.lambdas
        return options

    def kernel_cost(self, cost: ArrayLike, latency: ArrayLike | None) -> ArrayLike:
        """The cost the kernel decides on: ``cost`` itself, or ``λ·c + μ·ℓ`` when the rule weighs latency.

        ALGORITHM.md §7 keeps the kernel unchanged: a rule with a latency
        multiplier ``μ > 0`` gives it the per-model penalty ``λ·c_i + μ·ℓ_i``
        as the cost and ``λ = 1`` (:meth:`kernel_options`), so
        ``τ(M) = Q(M) − λ·C(M) − μ·L(M)``, and ties and "cheapest next" use
        the penalty. Such a rule has one ``λ`` for every step.

        Parameters
        ----------
        cost : array-like of shape (N, K)
            Cost estimates (or true costs, for scoring).
        latency : array-like of shape (N, K), or None
            Latency in seconds; needed when ``μ > 0``.

        Returns
        -------
        array-like
            ``cost`` unchanged when ``μ = 0``.

        Raises
        ------
        ValueError
            If the rule weighs latency and ``latency`` is ``None``, or its ``λ`` differs between steps.
        """
        if self.mu <= 0:
            return cost
        if latency is None:
            raise ValueError("this policy weighs latency (it was fitted to a latency budget) but the estimates have "
                             "none: fit the estimator on a table with latency_s (or a throughput table)")
        lambdas = np.asarray(self.lambdas, dtype=np.float64)
        if lambdas.size and np.ptp(lambdas) > 0:
            raise ValueError("a policy that weighs latency has one λ for every step; got per-step λ "
                             f"{lambdas.tolist()}")
        lam = float(lambdas[0]) if lambdas.size else 0.0
        return lam * np.asarray(cost, dtype=np.float64) + float(self.mu) * np.asarray(latency, dtype=np.float64)

    def restricted(self, keep: NDArray[np.intp]) -> DecisionRule | None:
        """The rule over the model columns ``keep`` only (sorted): for queries that may not call the others.

        A threshold cascade keeps the ``θ_j`` of the models that remain
        (``θ_j`` is read after model ``j`` answers, whichever model comes
        next); a constant-estimate rule keeps their constants; a fixed model
        is renumbered.

        Returns
        -------
        DecisionRule or None
            ``None`` when nothing can be called: no column kept, or the fixed model excluded.
        """
        changes: dict[str, Any] = {}
        if self.fixed_model is not None:
            position = int(np.searchsorted(keep, self.fixed_model))
            if position >= keep.size or keep[position] != self.fixed_model:
                return None
            changes["fixed_model"] = position
        if keep.size == 0:
            return None
        if self.thresholds is not None:
            changes["thresholds"] = np.asarray(self.thresholds)[keep[:-1]]
        if self.constant_estimates is not None:
            changes["constant_estimates"] = np.asarray(self.constant_estimates)[:, keep]
        return DecisionRule(**{**{name: getattr(self, name) for name in DecisionRule.__dataclass_fields__},
                               **changes})

    def simulate(self, tables: Sequence[NDArray[np.float64]],
                 latency: Sequence[NDArray[np.float64]] | None = None, *, parallel: bool = True
                 ) -> kernel.SimulationResult:
        """Whole episodes over estimate tables in one :func:`kernel.simulate` call (:meth:`plan`, compiled).

        Parameters
        ----------
        tables : sequence of 8 ndarray of shape (N, K)
            ``ante_quality, ante_sigma, ante_cost, post_quality, post_sigma,
            post_cost, true_quality, true_cost``; both σ tables go through
            :attr:`sigma_transform`, a constant-estimate rule replaces the six
            estimate tables with its constants (σ 0).
        latency : sequence of 3 ndarray of shape (N, K), optional
            Ex-ante, post-hoc and true latency; needed when ``μ > 0``, when
            the kernel's costs (true cost included) are the penalties
            ``λ·c + μ·ℓ`` (:meth:`kernel_cost`), so the result's ``cost`` is
            then the realised penalty, not money.

        Returns
        -------
        kernel.SimulationResult
        """
        arrays: list[Any] = list(tables)
        for index in (1, 4):  # ante_sigma, post_sigma
            arrays[index] = uncertainty_keywords(arrays[index], None, self.sigma_transform)["sigma"]
        if self.constant_estimates is not None:  # the same constants before and after a model ran, σ 0
            quality, cost = constant_tables(self.constant_estimates, arrays[0].shape[0])
            arrays[:6] = [quality, np.zeros_like(quality), cost, quality, np.zeros_like(quality), cost]
        if self.mu > 0:
            seconds = (None,) * 3 if latency is None else tuple(latency)
            for index, spent in zip((2, 5, 7), seconds, strict=True):
                arrays[index] = self.kernel_cost(arrays[index], spent)
        return kernel.simulate(*arrays, parallel=parallel, **self.kernel_options())

    def plan(self, estimates: Estimates, run: ArrayLike, uniforms: ArrayLike | None, *, parallel: bool,
             excluded: NDArray[np.bool_] | None = None) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Next model and planned supermodel per query: the one step from a rule to :func:`kernel.plan`.

        Parameters
        ----------
        estimates : Estimates
            Current estimates ``(N, K)``, models sorted by cost; ``sigma`` /
            ``cov`` go through :attr:`sigma_transform` first, ``latency`` is
            needed when ``μ > 0``.
        run : array-like of bool, shape (N, K)
            Models already run per query.
        uniforms : array-like of shape (N,), or None
            Per-query tie-break uniforms (``None``: :func:`kernel.default_uniforms`).
        parallel : bool
            Spread the kernel over threads (same decisions).
        excluded : ndarray of bool, shape (N, K), optional
            Models each query may not call: queries are grouped by their
            excluded set and each group is planned on the columns that remain.

        Returns
        -------
        (ndarray of int64, ndarray of int64)
            Next model per query (``kernel.STOP`` to stop) and the plan as a bit mask over the ``K`` models.
        """
        uncertainty = uncertainty_keywords(estimates.sigma, estimates.cov, self.sigma_transform)
        sigma, cov = uncertainty.get("sigma"), uncertainty.get("cov")
        if excluded is None or not np.asarray(excluded).any():
            return self._plan(estimates.quality, estimates.cost, run=run, u=uniforms, parallel=parallel,
                              sigma=sigma, cov=cov, latency=estimates.latency)
        run = np.asarray(run, dtype=bool)
        u = kernel.default_uniforms(run.shape[0]) if uniforms is None else np.asarray(uniforms)
        quality, cost = np.asarray(estimates.quality), np.asarray(estimates.cost)
        per_model = {"sigma": sigma, "cov": cov, "latency": estimates.latency}
        n, k = run.shape
        next_model = np.full(n, kernel.STOP, dtype=np.int64)
        bits = np.int64(1) << np.arange(k, dtype=np.int64)
        masks = run.astype(np.int64) @ bits  # a query with nothing left to call stops with what ran
        patterns, group = np.unique(np.asarray(excluded, dtype=bool), axis=0, return_inverse=True)
        for g, pattern in enumerate(patterns):
            rows = np.flatnonzero(group.ravel() == g)
            keep = np.flatnonzero(~pattern)
            rule = self.restricted(keep)
            if rule is None:
                continue
            columns = {name: None if value is None else _keep_columns(np.asarray(value)[rows], keep)
                       for name, value in per_model.items()}
            chosen, plan = rule._plan(quality[np.ix_(rows, keep)], cost[np.ix_(rows, keep)],
                                      run=run[np.ix_(rows, keep)], u=u[rows], parallel=parallel, **columns)
            going = chosen != kernel.STOP
            next_model[rows[going]] = keep[chosen[going]]
            masks[rows] = ((plan[:, None] >> np.arange(keep.size, dtype=np.int64)) & 1).astype(bool) @ bits[keep]
        return next_model, masks

    def _plan(self, quality: ArrayLike, cost: ArrayLike, *, run: ArrayLike, u: ArrayLike | None, parallel: bool,
              sigma: ArrayLike | None, cov: ArrayLike | None, latency: ArrayLike | None
              ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """:meth:`plan` on every column, σ already transformed."""
        if self.fixed_model is not None:  # call the one model when nothing ran, else stop with what ran
            ran = np.asarray(run, dtype=bool)
            stop = ran.any(axis=1)
            masks = ran.astype(np.int64) @ (np.int64(1) << np.arange(ran.shape[1], dtype=np.int64))
            return (np.where(stop, kernel.STOP, self.fixed_model).astype(np.int64),
                    np.where(stop, masks, np.int64(1) << self.fixed_model).astype(np.int64))
        if self.constant_estimates is not None:
            quality, cost = constant_tables(self.constant_estimates, np.shape(quality)[0])
            sigma = cov = None
        cost = self.kernel_cost(cost, latency)
        if cov is None and np.shape(quality)[0] == 1:  # one query: a service's call, on the single-query path
            decider = _rule_decider(self, np.shape(quality)[1])
            row = decider.plan(np.asarray(quality)[0], np.asarray(cost)[0], run=np.asarray(run)[0],
                               sigma=None if sigma is None else np.asarray(sigma)[0],
                               u=None if u is None else float(np.asarray(u)[0]))
            return np.array([row[0]], dtype=np.int64), np.array([row[1]], dtype=np.int64)
        return kernel.plan(quality, cost, run=run, u=u, parallel=parallel, sigma=sigma, cov=cov,
                           **self.kernel_options())


def _keep_columns(value: np.ndarray, keep: NDArray[np.intp]) -> np.ndarray:
    """The model columns ``keep`` of a per-model array: the last axis, and the last two of a covariance."""
    value = value[..., keep]
    return value[:, keep, :] if value.ndim == 3 else value


#: :func:`_rule_decider`'s deciders by rule identity: ``id(rule) → (weak reference to it, K, decider)``.
_RULE_DECIDERS: dict[int, tuple[weakref.ReferenceType[DecisionRule], int, kernel.Decider]] = {}


def _rule_decider(rule: DecisionRule, n_models: int) -> kernel.Decider:
    """:func:`_decider` of ``rule``'s kernel options, found by the rule's identity while it lives.

    Rules are immutable snapshots (a paced router makes a new one when its
    ``λ`` moves), so the decider found once for a rule object stays its
    decider; building the value key (the options, sorted, arrays as bytes)
    at every step cost more than the compiled decision itself. An entry goes
    when its rule is collected, so a reused ``id`` never finds it.
    """
    entry = _RULE_DECIDERS.get(id(rule))
    if entry is not None and entry[0]() is rule and entry[1] == n_models:
        return entry[2]
    decider = _decider(n_models, rule.kernel_options())
    key = id(rule)
    _RULE_DECIDERS[key] = (weakref.ref(rule, lambda _: _RULE_DECIDERS.pop(key, None)), n_models, decider)
    return decider


def _decider(n_models: int, options: dict[str, Any]) -> kernel.Decider:
    """The :class:`kernel.Decider` of a rule's kernel options, built once per process and options.

    A service decides one query per call with a handful of rules (one per
    budget, and the paced ``λ`` of a paced router, which changes slowly);
    checking them once each is what makes the single-query path cheap. The
    options are keyed by value.
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
def _cached_decider(n_models: int, key: tuple[tuple[str, Any], ...]) -> kernel.Decider:
    options = {name: (np.frombuffer(value[2]).reshape(value[1]).copy()
                      if isinstance(value, tuple) and value[:1] == ("array",) else value) for name, value in key}
    return kernel.Decider(n_models, **options)


#: ``estimate(rows, run, with_sigma)``: estimates of queries ``rows`` with run sets ``run``.
EstimateStep = Callable[[np.ndarray, np.ndarray, bool], Estimates]


@overload
def play_cascades(rule: DecisionRule, estimate: EstimateStep, n_queries: int, n_models: int, *,
                  u: NDArray[np.float64], parallel: bool = ..., timings: dict[str, float] | None = ...,
                  available: None = ...) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64]]: ...


@overload
def play_cascades(rule: DecisionRule, estimate: EstimateStep, n_queries: int, n_models: int, *,
                  u: NDArray[np.float64], parallel: bool = ..., timings: dict[str, float] | None = ...,
                  available: ArrayLike
                  ) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]: ...


def play_cascades(rule: DecisionRule, estimate: EstimateStep, n_queries: int, n_models: int, *,
                  u: NDArray[np.float64], parallel: bool = True, timings: dict[str, float] | None = None,
                  available: ArrayLike | None = None
                  ) -> (tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64]]
                        | tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]):
    """Decide, run, re-estimate, decide again, until every query stops; then select the answers.

    Each step asks ``estimate`` for the queries still going, with the run
    sets they have reached, and ``rule`` (:meth:`DecisionRule.plan`) for
    their next model; "running" it is up to ``estimate`` (the logged outcome
    stands in for the call). Policy evaluation and batch replay both play
    with this loop, so they make the same decisions.

    With ``available`` (partial logs: only some models' outcomes are known
    per query), a query whose next model is not available stops right there,
    before that model is run: its ``order`` and ``run`` hold what was run up
    to that point, that model is reported in ``needed``, and no answer is
    selected for it (``answer`` is ``-1``). The other queries play exactly as
    without ``available``.

    Parameters
    ----------
    rule : DecisionRule
        The rule to play (a :class:`~training.policy.Policy` is one).
    estimate : callable
        ``estimate(rows, run, with_sigma)`` -> :class:`~estimators.estimator.Estimates`
        of queries ``rows`` given run sets ``run``; ``with_sigma=False`` (the
        final selection) needs quality only.
    n_queries, n_models : int
        ``N`` and ``K``.
    u : ndarray of shape (n_queries,)
        Per-query tie-break uniforms.
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
    logged = None
    if available is not None:
        logged = np.asarray(available, dtype=bool)
        if logged.shape != (n_queries, n_models):
            raise ValueError(f"available must have shape (n_queries, n_models) = {(n_queries, n_models)}, "
                             f"got {logged.shape}")
        needed = np.full(n_queries, kernel.STOP, dtype=np.int64)
    depth = rule.depth(n_models)
    run = np.zeros((n_queries, n_models), dtype=bool)
    order = np.full((n_queries, depth), kernel.STOP, dtype=np.int64)
    active = np.arange(n_queries)
    kernel_seconds = 0.0
    for step in range(depth):
        if active.size == 0:
            break
        found = estimate(active, run[active], True)
        began = time.perf_counter()
        chosen = rule.plan(found, run[active], u[active], parallel=parallel)[0]
        kernel_seconds += time.perf_counter() - began
        going = chosen != kernel.STOP
        if needed is not None and logged is not None:  # a model without a logged outcome cannot be run
            lacking = going & ~logged[active, np.maximum(chosen, 0)]
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

