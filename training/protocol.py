"""The paper's evaluation protocol as one library call (ALGORITHM.md §6).

:func:`evaluate_strategies` compares routing, the threshold cascade, the
optimal cascade and cascade routing on one benchmark table the way the paper
does on RouterBench:

1. split the queries, with a seed, into a calibration part and a test part;
2. simulate noisy-but-calibrated estimates (:func:`estimators.simulated.simulate_estimates`)
   whose recalibration lines are fitted on the **calibration rows only**
   (the authors fit them on every row, test rows included, which leaks the
   test labels into the estimator);
3. place budgets along the hull of the single models' mean test cost and
   quality, 10 per hull segment (:func:`training.metrics.budget_grid`);
4. for each strategy and budget, fit the policy on the calibration queries
   (an infeasible budget is clamped to the cheapest policy and its status is
   recorded, never raised) and play it on the test queries;
5. summarise each strategy's test curve by its AUC ×100 over the single
   models' cost range, next to the "linear" baseline (the single models'
   hull), with paired bootstrap intervals over test queries for every
   strategy and every difference between two of them.

The result is an :class:`EvaluationReport`; ``report.to_dict()`` is what
``python -m training.evaluate --json`` writes.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from estimators.accuracy import auroc, brier
from estimators.estimator import RouterEstimator, make_router_estimator
from estimators.simulated import NOISE_LEVELS, simulate_estimates
from estimators.table import RoutingTable

from . import metrics
from .data import coverage
from .episodes import MIN_FULLY_LOGGED, Episodes, EstimatorEpisodes, TableEpisodes, calibration_episodes
from .policy import SIGMA_TRANSFORMS, choose_policy, describe, fit_candidates, fit_policy, single_outcomes
from .splits import prompt_groups, shared_groups
from .splits import split as split_logged

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .display import QualityCostDisplay

__all__ = ["DEFAULT_STRATEGIES", "REPORTED_NAMES", "EvaluationReport", "SharedPromptWarning", "evaluate_strategies",
           "learned_split"]

DEFAULT_STRATEGIES = ("routing", "threshold", "cascade", "cascade_routing")

#: Name in reports of each kernel strategy; the kernel's ``threshold`` is the
#: paper's baseline threshold cascade.
REPORTED_NAMES = {
    "routing": "routing",
    "threshold": "threshold_cascade",
    "cascade": "cascade",
    "cascade_routing": "cascade_routing",
}

#: Order of the strategies in reports and bootstrap differences, cascade
#: routing first and the linear baseline last, so that differences read
#: ``cascade_routing-routing`` and ``routing-linear``.
_RANK = ("cascade_routing", "cascade", "threshold", "routing")
_LINEAR = "linear"
#: Budgets per segment of the single models' hull (endpoints included), as in the paper.
BUDGETS_PER_SEGMENT = 10


@dataclass(frozen=True)
class EvaluationReport:
    """What :func:`evaluate_strategies` measured, ready for a table, JSON or a plot.

    Strategy keys are the reported names (:data:`REPORTED_NAMES`) plus
    ``"linear"`` for the single models' hull.

    Attributes
    ----------
    auc : dict of str to float
        Test AUC ×100 per strategy, and of the linear baseline.
    auc_ci : dict of str to (float, float)
        Bootstrap percentile interval of each AUC.
    differences : dict of str to (float, float, float)
        ``"a-b"`` → ``(AUC(a) − AUC(b), low, high)`` from the same (paired)
        resamples, for every pair, in the order cascade routing, cascade,
        threshold cascade, routing, linear.
    curves : dict of str to list of dict
        Per strategy, one point per budget: ``budget``, test ``cost`` and
        ``quality``, ``calibration_cost``, ``calibration_quality`` and the
        fit's ``status`` (``met``, ``above_max`` or ``below_min``, see
        :class:`training.policy.Policy`).
    single_models : list of dict
        ``model``, mean test ``cost`` and ``quality`` of always running it.
    models : tuple of str
        The pool, ordered by mean calibration cost (the cascade order).
    n_calibration, n_test : int
        Sizes of the two splits.
    noise : str
        Noise level of the simulated estimates.
    seed : int
        Seed of the split, the noise and the bootstrap.
    calibration_fraction : float
        Share of queries used for calibration.
    max_depth : dict of str to int
        Most models run per query, per strategy, as fitted.
    per_step : bool
        Whether a per-step ``λ_t`` (``θ_j``) shape was searched.
    n_boot : int
        Bootstrap resamples.
    fit_seconds : dict of str to float
        Wall time spent fitting and playing each strategy.
    seconds : float
        Wall time of the whole evaluation.
    coverage : list of dict
        Per model, training queries logged and their share
        (:func:`training.data.coverage`); empty for simulated estimates.
    calibration : dict
        What the policies were fitted on (:func:`training.episodes.calibration_episodes`);
        empty for simulated estimates.
    budget_differences : dict of str to list of dict
        ``"cascade_routing-routing"`` (when both are evaluated) → per
        budget: ``budget``, the mean test quality ``difference`` of cascade
        routing minus routing and its paired bootstrap interval ``low``,
        ``high`` (:func:`training.metrics.paired_budget_differences`), so a
        reader sees at which budgets cascading pays.
    estimate_scores : dict
        How good the learned estimates were on the test split
        (:func:`estimators.accuracy.brier`, :func:`~estimators.accuracy.auroc`):
        ``ex_ante`` over every (query, model) before any model ran, and
        ``post_hoc`` over the models of a random run set of
        ``run_set_size`` = min(3, K) models per query, the estimates an answer
        is selected on; empty for simulated estimates.
    """

    auc: dict[str, float]
    auc_ci: dict[str, tuple[float, float]]
    differences: dict[str, tuple[float, float, float]]
    curves: dict[str, list[dict[str, Any]]]
    single_models: list[dict[str, Any]]
    models: tuple[str, ...]
    n_calibration: int
    n_test: int
    noise: str
    seed: int
    calibration_fraction: float
    max_depth: dict[str, int]
    per_step: bool
    n_boot: int
    fit_seconds: dict[str, float]
    seconds: float
    coverage: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    estimate_scores: dict[str, Any] = field(default_factory=dict)
    budget_differences: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    @property
    def strategies(self) -> list[str]:
        """Reported names of the evaluated strategies, most general first."""
        return list(self.curves)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain floats, ints, strings and lists).

        ``auc_ci`` holds each strategy's ``[low, high]`` and, under
        ``"differences"``, each difference's ``[low, high]``; the difference's
        point estimate is ``auc[a] - auc[b]``.
        """
        auc_ci: dict[str, Any] = {name: list(interval) for name, interval in self.auc_ci.items()}
        auc_ci["differences"] = {name: [low, high] for name, (_, low, high) in self.differences.items()}
        return {
            "auc": dict(self.auc),
            "auc_ci": auc_ci,
            "curves": {name: [dict(point) for point in points] for name, points in self.curves.items()},
            "single_models": [dict(row) for row in self.single_models],
            "models": list(self.models),
            "n_calibration": self.n_calibration,
            "n_test": self.n_test,
            "noise": self.noise,
            "seed": self.seed,
            "calibration_fraction": self.calibration_fraction,
            "max_depth": dict(self.max_depth),
            "per_step": self.per_step,
            "n_boot": self.n_boot,
            "fit_seconds": dict(self.fit_seconds),
            "seconds": self.seconds,
            "coverage": [dict(row) for row in self.coverage],
            "calibration": dict(self.calibration),
            "estimate_scores": {name: dict(scores) for name, scores in self.estimate_scores.items()},
            "budget_differences": {name: [dict(row) for row in rows] for name, rows in self.budget_differences.items()},
        }

    def plot(self, ax: Axes | None = None, **plot_kwargs: Any) -> QualityCostDisplay:
        """Draw every strategy's test curve with the single models and their hull.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Axes to draw on; a new figure by default.
        **plot_kwargs
            Passed to :meth:`training.display.QualityCostDisplay.plot`
            (``log_cost``, ``title``, line styles).

        Returns
        -------
        QualityCostDisplay

        Raises
        ------
        ImportError
            If matplotlib is not installed.
        """
        from .display import QualityCostDisplay

        curves = {
            name: ([p["cost"] for p in points], [p["quality"] for p in points])
            for name, points in self.curves.items()
        }
        singles = {row["model"]: (row["cost"], row["quality"]) for row in self.single_models}
        return QualityCostDisplay.from_curves(curves, singles, ax=ax, **plot_kwargs)


def evaluate_strategies(
    table: RoutingTable,
    *,
    noise: str = "low",
    calibration_fraction: float = 0.05,
    max_depth: int | None | Mapping[str, int | None] = 5,
    seed: int = 0,
    n_boot: int = 500,
    per_step: bool = False,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    progress: bool = True,
    estimator: str = "simulated",
    train_fraction: float = 0.5,
    sigma_transforms: tuple[tuple[float, float], ...] = SIGMA_TRANSFORMS,
    min_fully_logged: int = MIN_FULLY_LOGGED,
    latency_budget: float | None = None,
) -> EvaluationReport:
    """Fit and test every strategy at the protocol's budgets; AUCs with bootstrap intervals.

    Parameters
    ----------
    table : RoutingTable
        True per-query quality and cost of every model of the pool (select
        the pool first with :meth:`RoutingTable.select_models`).
    noise : {"low", "medium", "high"}, default="low"
        Noise of the simulated estimates (:data:`estimators.simulated.NOISE_LEVELS`).
    calibration_fraction : float, default=0.05
        Share of queries, in (0, 1), used to fit the estimates' recalibration
        and the policies; the rest is the test set. The paper's 5 % assumes
        ~36k queries: on a few thousand, use more (our RouterBench
        reproduction uses 0.3), or the policies are fitted on noise.
    max_depth : int, None or mapping, default=5
        Most models cascade routing runs per query (``None``: all); the
        threshold and optimal cascades may run every model (ALGORITHM.md §6,
        as in the authors' experiments: a depth-5 cascade over 11 models
        sorted by cost could never reach the best one). A mapping from kernel
        strategy name to depth sets it per strategy instead, absent ones
        running up to all models (ablations).
    seed : int, default=0
        Seeds the split, the estimate noise and the bootstrap, so a report is
        reproducible bit for bit.
    n_boot : int, default=500
        Bootstrap resamples of the test queries.
    per_step : bool, default=False
        Search a per-step ``λ_t`` (or ``θ_j``) shape too; slower, usually a
        little better (ALGORITHM.md §4).
    strategies : sequence of str
        Kernel strategies to evaluate, any of :data:`DEFAULT_STRATEGIES`.
    progress : bool, default=True
        Show a tqdm bar per strategy.
    estimator : {"simulated", "learned", "pooled", "linear", "knn", "task-mean", "mlp", "mf"}, default="simulated"
        ``simulated``: the paper's noisy-oracle estimates at ``noise`` (full
        tables only). Any of :data:`~estimators.estimator.ESTIMATOR_KINDS`: a
        :class:`~estimators.estimator.RouterEstimator` (:func:`~estimators.estimator.make_router_estimator`;
        LightGBM / one LightGBM for all models / ridge, or a peer router's quality model,
        :mod:`estimators.peers`) fitted on a training split of ``train_fraction`` of
        the queries; policies are fitted on the calibration split and played
        on the rest, re-estimating after every model run.
    train_fraction : float, default=0.5
        Share of queries the learned estimators train on (``estimator`` not
        ``simulated`` only); calibration takes ``calibration_fraction``, the
        test split the rest.
    sigma_transforms : tuple of (float, float), default=SIGMA_TRANSFORMS
        σ transforms ``(scale, power)`` that policy fitting chooses among on
        calibration, per budget, for the strategies that use ``σ`` (cascade,
        cascade routing), whatever the estimator: learned σ ignores that
        estimates of models run together move together, and the simulated
        σ served cascade routing better squared (the authors' code). Pass
        ``((1.0, 1.0),)`` for σ as the estimator gives it.
    min_fully_logged : int, default=MIN_FULLY_LOGGED
        Partial logs (learned estimators only): fit policies on the
        calibration queries logged for every model when there are at least
        this many, else with the direct method
        (:func:`training.episodes.calibration_episodes`).
    latency_budget : float, optional
        Mean latency per query (seconds) every policy is also fitted to
        (ALGORITHM.md §7), so each curve is quality against cost at that
        latency budget; every point reports its test latency. Needs
        ``table.latency``; not with the threshold cascade (it has no
        multiplier). Simulated estimates know each model's mean latency on
        calibration ex-ante and its true latency once it ran.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    ValueError
        On an unknown noise level or strategy, a fraction outside (0, 1),
        a split with fewer than 2 queries on either side, or a bad depth or
        bootstrap count.

    Notes
    -----
    The models are ordered by their mean **calibration** cost, the cascade
    order a deployment would know before any test query arrives. The
    single-model points, budgets and AUC range come from the test split, as
    in the paper. In the bootstrap the AUC range, the left anchor and which
    models form the linear baseline's hull stay fixed at their full-test
    values (they define the protocol); the points move with each resample.

    Examples
    --------
    >>> import numpy as np
    >>> from estimators.table import RoutingTable
    >>> rng = np.random.default_rng(0)
    >>> quality = (rng.random((400, 3)) < [0.5, 0.7, 0.9]).astype(float)
    >>> cost = np.tile([1e-4, 4e-4, 2e-3], (400, 1))
    >>> table = RoutingTable(("a", "b", "c"), np.arange(400), quality, cost)
    >>> report = evaluate_strategies(table, calibration_fraction=0.5, n_boot=50,
    ...                              strategies=("routing",), progress=False)
    >>> sorted(report.auc)
    ['linear', 'routing']
    """
    started = time.perf_counter()
    order = _check_strategies(strategies)
    depths = _resolve_depths(max_depth, order, table.n_models)
    _check_settings(noise, calibration_fraction, seed, n_boot)
    if latency_budget is not None:
        if table.latency is None:
            raise ValueError("a latency budget needs latency: the table has no latency_s column (or a throughput "
                             "table to derive it from output_tokens)")
        if "threshold" in order:
            raise ValueError("the threshold cascade has no multiplier to trade latency with; leave it out of "
                             "strategies with a latency budget")
    if estimator == "simulated":
        if table.is_partial:
            raise ValueError("simulated estimates perturb every model's true outcome, but "
                             f"{int((~table.logged).sum())} "
                             "(query, model) outcomes are not logged; use a learned estimator ('learned' or 'linear'), "
                             "which learns from what was logged")
        calibration, test = _split(table.n_queries, calibration_fraction, seed)
    else:
        train, calibration, test = learned_split(table, seed, train_fraction, calibration_fraction)
        _warn_of_shared_prompts((train, calibration, test), table.prompts)
    columns = np.argsort(np.nanmean(table.cost[calibration], axis=0), kind="stable")
    ordered = table.reorder_models(columns)
    models, quality, cost = ordered.models, ordered.quality, ordered.cost

    if estimator == "simulated":
        estimates = simulate_estimates(quality, cost, fit_rows=calibration, seed=seed,
                                       noise=noise)  # type: ignore[arg-type]  # a str, checked by simulate_estimates
        latency = None
        if ordered.latency is not None:  # ex-ante: each model's mean on calibration; once run: the truth
            latency = (np.tile(ordered.latency[calibration].mean(axis=0), (ordered.n_queries, 1)),
                       ordered.latency, ordered.latency)
        calibration_play: TableEpisodes | EstimatorEpisodes = TableEpisodes.from_estimates(
            estimates, quality, cost, calibration, latency=latency)
        test_episodes: TableEpisodes | EstimatorEpisodes = TableEpisodes.from_estimates(
            estimates, quality, cost, test, latency=latency)
        logs: dict[str, Any] = {}
    else:
        fitted = make_router_estimator(estimator).fit(ordered, train)
        calibration_play, used = calibration_episodes(fitted, ordered.subset(calibration),
                                                      min_fully_logged=min_fully_logged)
        test_episodes = EstimatorEpisodes(fitted, ordered.subset(test), direct_method=False)
        logs = {"coverage": coverage(ordered, train), "calibration": used,
                "estimate_scores": _estimate_scores(fitted, ordered.subset(test), seed)}

    single_cost, single_quality = metrics.single_model_points(quality[test], cost[test])
    budgets = metrics.budget_grid(single_cost, single_quality, per_segment=BUDGETS_PER_SEGMENT)
    lo, hi, left_quality = metrics.auc_bounds(single_cost, single_quality)

    curves, per_query_quality, per_query_cost, fit_seconds = {}, {}, {}, {}
    # Learned estimators: every point is the candidate kept on calibration (ALGORITHM.md §4 point 4); the
    # paper's simulated protocol fits each strategy as it is (docs/decisions.md item 40)
    singles = None if estimator == "simulated" else single_outcomes(calibration_play)
    for strategy in order:
        name = REPORTED_NAMES[strategy]
        strategy_started = time.perf_counter()
        curves[name], per_query_quality[name], per_query_cost[name] = _trace_curve(
            strategy, budgets, calibration_play, test_episodes,
            depth=depths[name], per_step=per_step, progress=progress, latency_budget=latency_budget,
            sigma_transforms=sigma_transforms if strategy in ("cascade", "cascade_routing") else None,
            singles=singles, models=models)
        fit_seconds[name] = time.perf_counter() - strategy_started

    hull = metrics.upper_hull(single_cost, single_quality)
    per_query_quality[_LINEAR] = quality[test][:, hull].T
    per_query_cost[_LINEAR] = cost[test][:, hull].T
    boot = metrics.bootstrap_auc(per_query_quality, per_query_cost, lo, hi, left_quality,
                                 n_boot=n_boot, seed=seed)
    names = [*curves, _LINEAR]
    budget_differences = {}
    if "cascade_routing" in curves and "routing" in curves:
        budget_differences["cascade_routing-routing"] = [
            {"budget": float(budget), "difference": d.estimate, "low": d.low, "high": d.high}
            for budget, d in zip(budgets, metrics.paired_budget_differences(
                per_query_quality["cascade_routing"], per_query_quality["routing"], n_boot=n_boot, seed=seed),
                                  strict=True)]
    return EvaluationReport(
        auc={name: boot["strategies"][name].estimate for name in [_LINEAR, *curves]},
        auc_ci={name: (boot["strategies"][name].low, boot["strategies"][name].high)
                for name in [_LINEAR, *curves]},
        differences={f"{a}-{b}": (boot["differences"][(a, b)].estimate, boot["differences"][(a, b)].low,
                                   boot["differences"][(a, b)].high) for a, b in _pairs(names)},
        curves=curves,
        single_models=[{"model": m, "cost": float(c), "quality": float(q),
                        **({} if ordered.latency is None else {"latency": float(ordered.latency[test, i].mean())})}
                       for i, (m, c, q) in enumerate(zip(models, single_cost, single_quality, strict=True))],
        models=models,
        n_calibration=int(calibration.size),
        n_test=int(test.size),
        noise=noise if estimator == "simulated" else estimator,
        seed=int(seed),
        calibration_fraction=float(calibration_fraction),
        max_depth=depths,
        per_step=bool(per_step),
        n_boot=int(n_boot),
        fit_seconds=fit_seconds,
        seconds=time.perf_counter() - started,
        budget_differences=budget_differences,
        **logs,
    )


def _trace_curve(strategy: str, budgets: np.ndarray, calibration: Episodes, test: Episodes,
                 *, depth: int, per_step: bool, progress: bool,
                 sigma_transforms: tuple[tuple[float, float], ...] | None,
                 latency_budget: float | None = None, singles: list | None = None,
                 models: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Fit ``strategy`` at every budget on calibration and play it on test.

    With ``singles`` (the calibration hull's points, :func:`~training.policy.single_outcomes`)
    each point is the candidate :func:`~training.policy.choose_policy` keeps among
    :func:`~training.policy.fit_candidates` (the constant-estimate hull, and for
    cascade routing every depth up to ``depth``), named in the point's ``chosen``;
    without, the strategy fitted at ``depth``.

    Returns the curve points and the per-query test quality and cost, shaped
    ``(n_budgets, n_test)`` for the paired bootstrap.
    """
    points, qualities, costs = [], [], []
    for budget in tqdm(budgets, desc=f"{REPORTED_NAMES[strategy]:>17}", unit="budget",
                       disable=not progress, leave=False):
        chosen = {}
        if singles is None:
            policy = fit_policy(calibration, float(budget), strategy=strategy, per_step=per_step,
                                max_depth=depth, on_infeasible="clamp", sigma_transforms=sigma_transforms,
                                latency_budget=latency_budget)
        else:
            choice = choose_policy(calibration, fit_candidates(
                calibration, float(budget), strategy=strategy, max_depth=depth, per_step=per_step,
                sigma_transforms=sigma_transforms, latency_budget=latency_budget, singles=singles))
            policy = choice.policy
            chosen = {"chosen": describe(policy, models), "calibration_margin": choice.margin}
        outcome = policy.play(test)
        points.append({
            "budget": float(budget),
            "cost": outcome.mean_cost,
            "quality": outcome.mean_quality,
            "calibration_cost": float(policy.calibration_cost),
            "calibration_quality": float(policy.calibration_quality),
            "status": policy.budget_status,
            "sigma_transform": list(policy.sigma_transform),
            **chosen,
            **({} if outcome.latency is None else {
                "latency": outcome.mean_latency, "calibration_latency": float(policy.calibration_latency),
                "latency_budget": latency_budget, "mu": float(policy.mu)}),
        })
        qualities.append(outcome.quality)
        costs.append(outcome.cost)
    return points, np.array(qualities), np.array(costs)


def learned_split(table: RoutingTable, seed: int, train_fraction: float,
                  calibration_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The protocol's train / calibration / test rows for a learned estimator (:func:`evaluate_strategies`).

    Public so that the analyses in ``docs/`` replay exactly the protocol's
    split instead of restating it.

    Parameters
    ----------
    table : RoutingTable
        The table evaluated.
    seed : int
        Seed of the split.
    train_fraction, calibration_fraction : float
        Shares of the queries; test takes the rest.

    Returns
    -------
    train, calibration, test : ndarray of int
        Sorted row indices, together a partition of the queries.

    Raises
    ------
    ValueError
        If ``train_fraction`` is not in ``(0, 1 - calibration_fraction)``.
    """
    if not 0 < train_fraction < 1 - calibration_fraction:
        raise ValueError(f"train_fraction must be in (0, 1 - calibration_fraction), got {train_fraction!r}")
    if table.is_partial:  # the test split holds only queries logged for every model
        train, calibration, test = split_logged(
            table.n_queries, (train_fraction, calibration_fraction, 1 - train_fraction - calibration_fraction),
            seed, table.fully_logged)
        return train, calibration, test
    # the protocol's own split, which the published learned-estimator figures used
    train, rest = _split(table.n_queries, train_fraction, seed)
    calibration, test = (rest[part] for part in _split(rest.size, calibration_fraction / (1 - train_fraction),
                                                         seed + 1))
    return train, calibration, test


#: Models run per query for the post-hoc estimate scores (fewer when the pool is smaller).
POST_HOC_RUN_SET_SIZE = 3


def _estimate_scores(fitted: RouterEstimator, test: RoutingTable, seed: int) -> dict[str, dict[str, float]]:
    """Brier score and AUROC of the test estimates, ex-ante and after a random run set.

    See :class:`EvaluationReport`.
    """
    truth = test.quality
    ante = fitted.predict_table(test).quality
    size = min(POST_HOC_RUN_SET_SIZE, test.n_models)
    chosen = np.argsort(np.random.default_rng([seed, 3]).random(truth.shape), axis=1)[:, :size]
    run = np.zeros(truth.shape, dtype=bool)
    np.put_along_axis(run, chosen, True, axis=1)
    post = fitted.predict_table(test, run=run).quality
    return {"ex_ante": {"brier": brier(truth, ante), "auroc": auroc(truth, ante)},
            "post_hoc": {"run_set_size": size, "brier": brier(truth, post, run), "auroc": auroc(truth, post, run)}}


class SharedPromptWarning(UserWarning):
    """One prompt text stands in more than one part of a protocol split, so test figures may be optimistic."""


def _warn_of_shared_prompts(parts: tuple[np.ndarray, ...], prompts: np.ndarray | None) -> None:
    """Say how many prompts the learned estimator may have seen in training before being tested on them.

    The protocol splits by query id, as the published figures did (so they
    stay reproducible); retries logged under new ids repeat a prompt across
    parts, where a kNN estimator finds its own answer. ``training.fit``
    keeps such queries together (:func:`training.splits.split`); here the
    count is reported instead, so a reader knows to deduplicate.
    """
    shared = shared_groups(parts, prompt_groups(prompts))
    if shared:
        warnings.warn(f"{shared} distinct prompt texts appear in more than one of the train / calibration / test "
                      "parts (one prompt logged under several query ids, e.g. retries), so the learned estimators' "
                      "test figures may be optimistic; keep one query per prompt to measure without that leak",
                      SharedPromptWarning, stacklevel=3)


def _split(n_queries: int, calibration_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random calibration / test rows, each sorted, together a partition of the queries."""
    n_calibration = int(round(calibration_fraction * n_queries))
    if n_calibration < 2 or n_queries - n_calibration < 2:
        raise ValueError(
            f"calibration_fraction={calibration_fraction} splits {n_queries} queries into "
            f"{n_calibration} calibration and {n_queries - n_calibration} test queries; each side "
            "needs at least 2: use more queries or a fraction nearer 0.5")
    permutation = np.random.default_rng(seed).permutation(n_queries)
    return np.sort(permutation[:n_calibration]), np.sort(permutation[n_calibration:])


def _pairs(names: list[str]) -> list[tuple[str, str]]:
    """Every ordered pair ``(a, b)`` with ``a`` before ``b`` in ``names``."""
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]


def _check_strategies(strategies: Sequence[str]) -> list[str]:
    """Return the strategies in report order, rejecting unknown, repeated or no names."""
    given = [strategies] if isinstance(strategies, str) else list(strategies)
    unknown = [s for s in given if s not in REPORTED_NAMES]
    if unknown:
        raise ValueError(f"unknown strategy {unknown}; choose from {list(DEFAULT_STRATEGIES)}")
    if not given or len(set(given)) != len(given):
        raise ValueError(f"strategies must name each strategy once and at least one, got {given}")
    return [s for s in _RANK if s in given]


def _resolve_depths(max_depth: int | None | Mapping[str, int | None], strategies: list[str],
                    n_models: int) -> dict[str, int]:
    """Depth per reported strategy name, ``None`` (all models) resolved to ``n_models``."""
    if isinstance(max_depth, Mapping):
        unknown = [s for s in max_depth if s not in REPORTED_NAMES]
        if unknown:
            raise ValueError(f"max_depth names unknown strategies {unknown}; use {list(DEFAULT_STRATEGIES)}")
        chosen = {s: max_depth.get(s) for s in strategies}
    else:  # ALGORITHM.md §6: the depth limits cascade routing only (checked even when it is not evaluated)
        chosen = {**{s: None for s in strategies}, "cascade_routing": max_depth}
    depths = {}
    for strategy, depth in chosen.items():
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, (int, np.integer))
                                  or depth < 1):
            raise ValueError(f"max_depth must be an integer >= 1 or None, got {depth!r} for {strategy!r}")
        if strategy in strategies:
            depths[REPORTED_NAMES[strategy]] = n_models if depth is None else int(min(depth, n_models))
    return depths


def _check_settings(noise: str, calibration_fraction: float, seed: int, n_boot: int) -> None:
    """Reject bad scalar settings before any work is done."""
    if noise not in NOISE_LEVELS:
        raise ValueError(f"noise must be one of {list(NOISE_LEVELS)}, got {noise!r}")
    if not (isinstance(calibration_fraction, (int, float)) and math.isfinite(calibration_fraction)
            and 0 < calibration_fraction < 1):
        raise ValueError(f"calibration_fraction must be a number in (0, 1), got {calibration_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
