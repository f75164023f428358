"""Fit a routing / cascading policy to a cost budget (ALGORITHM.md §4).

A budget ``B`` bounds the mean cost per query. Fitting picks the policy's
parameters on a calibration set whose true per-model quality and cost are
known, so that the realised calibration cost is ``<= B`` and the realised
quality is as high as the search finds:

1. **One λ for every step.** Cost is (for routing provably, for the other
   strategies in practice) non-increasing in ``λ``: double an upper bound
   until the cost fits, then bisect in log space. Every point the search
   keeps has been *measured* to fit the budget, so monotonicity is used for
   speed, never for correctness.
2. **Per-step λ** (``per_step=True``): coordinate search over the shape
   ``w`` of ``λ = α·w``. For each candidate shape the scale ``α`` is
   re-solved by bisection, so every candidate meets the budget and shapes are
   compared by quality alone. We prefer this to a black-box optimiser such as
   optuna: the constraint needs no penalty, each step is a 1-D monotone
   search of about ten evaluations, and the result is deterministic.
3. **γ.** At the chosen ``λ``, the cheapest-tie and most-expensive-tie rules
   cost ``C_lo <= C_hi``; ``γ = clip((B - C_lo)/(C_hi - C_lo), 0, 1)``, then
   lowered if the realised cost (with the kernel's deterministic ``u``)
   would exceed ``B``.

The threshold cascade's ``θ`` is fitted the same way with ``θ = w - α``
(a larger ``α`` lowers every threshold, so fewer queries continue).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

import kernel
from estimators.estimator import Estimates

from .decision import DecisionRule
from .episodes import EpisodeOutcome, Episodes
from .metrics import upper_hull

__all__ = ["Policy", "SIGMA_TRANSFORMS", "fit_policy", "single_model_policy", "hull_policy", "single_outcomes",
           "fit_candidates", "choose_policy", "describe", "Choice", "BudgetError", "SCALE_RTOL", "MAX_DOUBLINGS",
           "MAX_SCALE", "LAMBDA_MOVES", "THRESHOLD_MOVES", "TIE_STANDARD_ERRORS"]

#: Bisection stops when the feasible and infeasible scales are this close (relative).
SCALE_RTOL = 2e-3
#: Widening steps allowed when looking for a scale that fits the budget.
MAX_DOUBLINGS = 40
#: Scales beyond this are not tried: the policy is as cheap as it gets long before.
MAX_SCALE = 1e200
#: Tolerance of the nested (λ, μ) search of a latency budget: each μ tried solves its own λ, so the
#: nested bisections stop ten times earlier than :data:`SCALE_RTOL`; the λ of the μ kept is then
#: re-solved to ``SCALE_RTOL``.
NESTED_RTOL = 2e-2
#: The two-budget search's bisections go on past their tolerance while the feasible end of the bracket is
#: more than this share of the budget under the infeasible one: where cost or latency is steep in the
#: multiplier (estimates that tie whole tasks), a bracket within :data:`NESTED_RTOL` can span a tenth of
#: the budget, and a λ over the cost-only one by that much can meet a latency budget by luck (μ = 0 kept,
#: the cost budget it "binds" left 17 % unspent on RouterBench).
BRACKET_SPREAD = 0.01
#: ... but they stop at this relative width of the bracket (outcomes are steps: one query can move more).
MIN_RTOL = 1e-4
#: Multiplicative moves tried per coordinate and sweep of the per-step search.
LAMBDA_MOVES = ((0.25, 4.0), (0.5, 2.0))
#: Additive moves (quality units) for per-step thresholds.
THRESHOLD_MOVES = ((-0.2, 0.2), (-0.05, 0.05))


class BudgetError(ValueError):
    """The budget cannot be met: it is below the cheapest policy's cost.

    Parameters
    ----------
    message : str
        What happened and what to do.
    cheapest_cost : float
        Mean calibration cost of the cheapest policy: the smallest budget that can be met.
    fastest_latency : float, optional
        With a latency budget: mean calibration latency of the fastest policy
        tried, the smallest latency budget that can be met; else NaN.
    """

    def __init__(self, message: str, cheapest_cost: float, fastest_latency: float = math.nan) -> None:
        super().__init__(message)
        self.cheapest_cost = cheapest_cost
        self.fastest_latency = fastest_latency


@dataclass(frozen=True)
class Policy(DecisionRule):
    """A fitted policy: a :class:`~training.decision.DecisionRule` plus its fit record.

    The rule's fields (``strategy``, ``lambdas``, ``thresholds``, ``gamma``,
    ``max_depth``, ``force_order``, ``n_samples``, ``sigma_scale``,
    ``sigma_power``, ``fixed_model``, ``mu``, ``constant_estimates``) decide;
    the fields below record what it was fitted to and what it realised
    there, and are keyword-only. A subclass rather than a ``rule`` field, so
    the policies pickled in existing artifacts (flat fields, same names)
    load unchanged and ``dataclasses.replace`` moves a rule's parameters
    during fitting; :attr:`rule` gives the bare rule.

    Fitting picks the σ transform (``sigma_scale``, ``sigma_power``) that
    serves the calibration set best: no estimator's σ is the one ``E[max]``
    needs (learned estimators treat models as independent, so ``E[max]`` can
    over-promise extra models whose estimates move together, and even the
    paper's simulated σ served cascade routing better squared; see
    ``sigma_transforms`` in :func:`fit_policy`). ``fixed_model`` is the
    single-model candidate fitting offered before the constant-estimate hull
    (:func:`hull_policy`) replaced it; still served, for artifacts that hold
    one. ``constant_estimates`` are each model's calibration mean quality
    and cost, which a :func:`hull_policy` routes on: at the critical ``λ``
    between two neighbouring hull models exactly those two tie, so ``γ``
    mixes them per query like any tie (ALGORITHM.md §4 point 4).

    Attributes
    ----------
    budget : float
        The budget it was fitted to.
    calibration_cost, calibration_quality : float
        Realised mean cost and quality on the calibration set.
    budget_status : str
        ``"met"``; ``"above_max"`` when the budget exceeds what the
        quality-maximising policy spends (the surplus stays unspent); or
        ``"below_min"`` when fitting was asked to clamp an infeasible budget
        to the cheapest policy (``calibration_cost > budget`` then).
    search_evaluations : int
        Episodes played to fit it (not compared).
    latency_budget : float or None
        The mean-latency budget (seconds) it was fitted to; ``None``: none.
    calibration_latency : float
        Realised mean latency on the calibration set (NaN without latency).
    """

    budget: float = field(kw_only=True)
    calibration_cost: float = field(default=math.nan, kw_only=True)
    calibration_quality: float = field(default=math.nan, kw_only=True)
    budget_status: str = field(default="met", kw_only=True)
    search_evaluations: int = field(default=0, compare=False, kw_only=True)
    latency_budget: float | None = field(default=None, kw_only=True)
    calibration_latency: float = field(default=math.nan, kw_only=True)

    def decide(self, quality: ArrayLike, cost: ArrayLike, *, sigma: ArrayLike | None = None,
               cov: ArrayLike | None = None, run: ArrayLike | None = None, u: ArrayLike | None = None,
               parallel: bool = True, latency: ArrayLike | None = None) -> NDArray[np.int64]:
        """Next model per query under this policy (``-1`` = stop), with σ scaled as the policy was fitted.

        Parameters
        ----------
        quality, cost : array-like of shape (N, K)
            Current estimates, models sorted by cost.
        sigma, cov, run, u, parallel
            As in :func:`kernel.decide`; ``sigma``/``cov`` go through
            :attr:`sigma_transform` first.
        latency : array-like of shape (N, K), optional
            Latency estimates; required when the policy weighs latency (``μ > 0``).

        Returns
        -------
        ndarray of int64, shape (N,)
            See :func:`kernel.decide`.
        """
        quality = np.asarray(quality)
        run = np.zeros(quality.shape, dtype=bool) if run is None else run
        estimates = Estimates(quality, None if sigma is None else np.asarray(sigma), np.asarray(cost),
                              None if cov is None else np.asarray(cov),
                              None if latency is None else np.asarray(latency))
        return self.plan(estimates, run, u, parallel=parallel)[0]

    def play(self, episodes: Episodes) -> EpisodeOutcome:
        """Play this policy over ``episodes`` (e.g. the test split), to measure it on queries it was not fitted on.

        Parameters
        ----------
        episodes : Episodes
            Queries with estimates and ground truth.

        Returns
        -------
        EpisodeOutcome
        """
        return episodes.play(self)


class _Search:
    """Counts evaluations and measures one parameter setting."""

    def __init__(self, episodes: Episodes, template: Policy) -> None:
        self.episodes = episodes
        self.template = template
        self.evaluations = 0

    def measure(self, **changes) -> EpisodeOutcome:
        self.evaluations += 1
        return self.episodes.play(replace(self.template, **changes))


class _LambdaFamily:
    """``λ = α·w`` with ``α >= 0``; cost falls as ``α`` grows."""

    moves = LAMBDA_MOVES

    def __init__(self, depth: int, cost_scale: float, rtol: float = SCALE_RTOL) -> None:
        self.initial_shape = np.ones(depth)
        self.cost_scale = cost_scale
        self.rtol = rtol

    @staticmethod
    def changes(alpha: float, shape: np.ndarray) -> dict:
        return {"lambdas": alpha * shape}

    @staticmethod
    def most_expensive(shape: np.ndarray) -> float:
        return 0.0

    def first_guess(self) -> float:
        """``λ`` at which a typical model's cost weighs 0.1 quality units."""
        return 0.1 / self.cost_scale if self.cost_scale > 0 else 1.0

    @staticmethod
    def step(alpha: float, width: int) -> float:
        """Move ``α`` up (``width > 0``) or down by a factor growing with ``|width|``."""
        return max(alpha, 1e-12) * 2.0 ** (math.copysign(2 ** (abs(width) - 1), width))

    @staticmethod
    def midpoint(low: float, high: float) -> float:
        return math.sqrt(max(low, 1e-300) * high) if low > 0 else high / 1024.0

    def close(self, low: float, high: float) -> bool:
        return high - low <= self.rtol * high

    @staticmethod
    def move(shape: np.ndarray, t: int, move: float) -> np.ndarray:
        moved = shape.copy()
        moved[t] *= move
        return moved


class _ThresholdFamily:
    """``θ = w - α``; a larger ``α`` lowers the thresholds, so cost falls."""

    moves = THRESHOLD_MOVES

    def __init__(self, depth: int, quality_span: tuple[float, float]) -> None:
        self.initial_shape = np.zeros(depth)
        self.low_q, self.high_q = quality_span

    def changes(self, alpha: float, shape: np.ndarray) -> dict:
        return {"thresholds": shape - alpha}

    def most_expensive(self, shape: np.ndarray) -> float:
        return float((shape.min() if shape.size else 0.0) - self.high_q - 1.0)

    def first_guess(self) -> float:
        return float(0.5 * (self.low_q + self.high_q))

    def step(self, alpha: float, width: int) -> float:
        """Move ``α`` up (``width > 0``) or down by a span growing with ``|width|``."""
        return alpha + math.copysign((self.high_q - self.low_q + 1e-3) * 2.0 ** (abs(width) - 3), width)

    @staticmethod
    def midpoint(low: float, high: float) -> float:
        return 0.5 * (low + high)

    def close(self, low: float, high: float) -> bool:
        return high - low <= SCALE_RTOL * max(1e-9, self.high_q - self.low_q)

    @staticmethod
    def move(shape: np.ndarray, t: int, move: float) -> np.ndarray:
        moved = shape.copy()
        moved[t] += move
        return moved


@dataclass(frozen=True)
class _Budgets:
    """The mean cost and mean latency a policy must stay within; ``None`` for a budget not set."""

    cost: float | None
    latency: float | None = None

    def allows(self, mean_cost: float, mean_latency: float) -> bool:
        return ((self.cost is None or mean_cost <= self.cost)
                and (self.latency is None or mean_latency <= self.latency))

    def fits(self, outcome: EpisodeOutcome) -> bool:
        return self.allows(outcome.mean_cost, outcome.mean_latency)

    def share(self, low: EpisodeOutcome, high: EpisodeOutcome) -> float:
        """How far from ``low`` towards ``high`` every budget allows, if both figures move linearly."""
        share = 1.0
        for limit, a, b in ((self.cost, low.mean_cost, high.mean_cost),
                            (self.latency, low.mean_latency, high.mean_latency)):
            if limit is not None and b > a:
                share = min(share, (limit - a) / (b - a))
        return float(np.clip(share, 0.0, 1.0))


def _solve_scale(measure: Callable[[float], EpisodeOutcome], family, shape: np.ndarray,
                 fits: Callable[[EpisodeOutcome], bool], guess: float | None,
                 excess: Callable[[EpisodeOutcome], float] | None = None) -> tuple[float, EpisodeOutcome, str]:
    """Smallest measured ``α`` (to the family's tolerance) whose realised outcome ``fits`` the budgets.

    ``measure(α)`` plays the policy at scale ``α``. Without a ``guess`` the
    most expensive setting is measured first, to report a budget above it.
    With one (the per-step search passes the last solution) the bracket is
    found by walking from it, which takes one or two evaluations instead of
    a fresh doubling. With ``excess`` (how far an outcome is over the budget
    that binds, as a share of it, ``> 0`` when it does not fit) the bracket
    is cut where the line through its ends' excesses crosses 0, in ``log α``,
    kept within the middle 80 % so it always shrinks (the nested search of a
    latency budget, where every step costs a search of its own), and it is
    narrowed past the family's tolerance until its ends' excesses are within
    :data:`BRACKET_SPREAD` of each other (or it is :data:`MIN_RTOL` wide), so
    the outcome kept sits at the budget even where it is steep in ``α``.

    Returns ``(alpha, outcome, status)`` with status ``met``, ``above_max``
    (even the most expensive setting fits) or ``below_min`` (nothing fits;
    ``alpha`` is then the cheapest setting tried).
    """
    floor = family.most_expensive(shape)
    if guess is None:
        outcome = measure(floor)
        if fits(outcome):
            return floor, outcome, "above_max"
        guess = family.first_guess()
    high = max(guess, floor)
    high_outcome = measure(high)
    low = low_outcome = None
    for width in range(1, MAX_DOUBLINGS + 1):
        if not fits(high_outcome):
            wider = family.step(high, width)
            if not abs(wider) < MAX_SCALE:
                break
            low, low_outcome, high = high, high_outcome, wider
            high_outcome = measure(high)
            continue
        if low is not None:
            break
        candidate = family.step(high, -width)
        if candidate <= floor:
            low = floor
            break
        candidate_outcome = measure(candidate)
        if not fits(candidate_outcome):
            low, low_outcome = candidate, candidate_outcome
            break
        high, high_outcome = candidate, candidate_outcome
    if not fits(high_outcome):
        return high, high_outcome, "below_min"
    while not family.close(low, high) or (
            excess is not None and low_outcome is not None and high - low > MIN_RTOL * abs(high)
            and excess(low_outcome) - excess(high_outcome) > BRACKET_SPREAD):
        middle = family.midpoint(low, high)
        if excess is not None and low is not None and low > 0 and low_outcome is not None:
            over, under = excess(low_outcome), excess(high_outcome)
            if over > under:
                share = min(max(over / (over - under), 0.1), 0.9)
                middle = math.exp(math.log(low) + share * (math.log(high) - math.log(low)))
        if not low < middle < high:
            break
        middle_outcome = measure(middle)
        if fits(middle_outcome):
            high, high_outcome = middle, middle_outcome
        else:
            low, low_outcome = middle, middle_outcome
    return high, high_outcome, "met"


def _fit_gamma(search: _Search, changes: dict, outcome: EpisodeOutcome,
               budgets: _Budgets) -> tuple[float, EpisodeOutcome]:
    """Mix in the most-expensive tie-break as far as the budgets allow."""
    expensive = search.measure(gamma=1.0, **changes)
    if expensive.mean_cost <= outcome.mean_cost and not expensive.mean_latency > outcome.mean_latency:
        return 0.0, outcome
    if budgets.fits(expensive):
        return 1.0, expensive
    gamma = budgets.share(outcome, expensive)
    trial = search.measure(gamma=gamma, **changes)
    if budgets.fits(trial):
        return gamma, trial
    # The realised share of queries with u < γ can exceed γ by a query or
    # two: bisect γ between the feasible 0 and the estimate.
    feasible, feasible_outcome, infeasible = 0.0, outcome, gamma
    for _ in range(10):
        middle = 0.5 * (feasible + infeasible)
        trial = search.measure(gamma=middle, **changes)
        if budgets.fits(trial):
            feasible, feasible_outcome = middle, trial
        else:
            infeasible = middle
    return feasible, feasible_outcome


#: σ transforms ``(scale, power)`` policy fitting chooses among on calibration, for every estimator kind:
#: the identity first (kept on ties), no uncertainty (``E[max]`` then ranks supermodels by their best
#: estimate alone), half and double the σ, and the square the authors' code uses (ALGORITHM.md §2 takes
#: σ; their ``E[max]`` multiplies the draws by the variance and scored higher even on simulated estimates).
SIGMA_TRANSFORMS = ((1.0, 1.0), (0.0, 1.0), (0.5, 1.0), (2.0, 1.0), (1.0, 2.0))


def fit_policy(episodes: Episodes, budget: float | None, *, strategy: str = "cascade_routing",
               per_step: bool = False, max_depth: int | None = None,
               max_depths: tuple[int, ...] | None = None, force_order: bool = False,
               n_samples: int = 64, on_infeasible: str = "raise",
               sigma_transforms: tuple[tuple[float, float], ...] | None = None,
               sigma_transform: tuple[float, float] = (1.0, 1.0),
               latency_budget: float | None = None) -> Policy:
    """Fit ``strategy`` to ``budget`` (and ``latency_budget``) on calibration ``episodes``.

    Parameters
    ----------
    episodes : Episodes
        Calibration queries with estimates and ground truth, e.g.
        :class:`training.episodes.TableEpisodes`.
    budget : float or None
        Mean cost per query to stay within (same unit as the costs);
        ``None`` for no cost budget (then ``latency_budget`` is required).
    strategy : str
        Any strategy of :func:`kernel.decide`.
    per_step : bool
        Also search a per-step ``λ_t`` (or ``θ_j``) shape; slower, usually
        better. Cost budgets only.
    max_depth : int, optional
        Most models run per query; default all.
    max_depths : tuple of int, optional
        Fit each of these depths and keep the best calibration quality.
    sigma_transforms : tuple of (float, float), optional
        Likewise for σ transforms ``(scale, power)``, ``σ → scale · σ^power``
        (with ``max_depths``: every combination); ties keep the first.
    sigma_transform : (float, float), default=(1.0, 1.0)
        The one σ transform when neither ``max_depths`` nor
        ``sigma_transforms`` is given.
    force_order, n_samples
        Passed to the kernel.
    on_infeasible : {"raise", "clamp"}
        What to do when even the cheapest (fastest) policy exceeds the
        budgets: raise :class:`BudgetError` naming the cheapest reachable
        cost (and fastest latency), or return that policy with
        ``budget_status="below_min"``.
    latency_budget : float, optional
        Mean latency per query in seconds (ALGORITHM.md §7). The latency
        multiplier ``μ`` is searched like ``λ``: the smallest ``μ`` whose
        policy, with ``λ`` re-solved for ``budget`` at that ``μ``, meets
        both budgets on calibration (each figure falls as its multiplier
        grows; every point kept is measured, so monotonicity only guides the
        search). Routing, cascades and cascade routing; not the threshold
        cascade, which has no multiplier.

    Returns
    -------
    Policy
        With ``calibration_cost <= budget`` and ``calibration_latency <=
        latency_budget`` unless clamped below. Without a cost budget its
        ``budget`` is ``inf``.

    Raises
    ------
    ValueError
        On a budget that is not a finite number >= 0, no budget at all, a
        latency budget for episodes without latency, with ``per_step`` or
        for the threshold cascade.
    BudgetError
        If the budgets cannot be met and ``on_infeasible="raise"``.
    """
    for name, value in (("budget", budget), ("latency_budget", latency_budget)):
        if value is not None and not (isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
                                      and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if budget is None and latency_budget is None:
        raise ValueError("give a cost budget, a latency_budget, or both")
    if on_infeasible not in ("raise", "clamp"):
        raise ValueError(f"on_infeasible must be 'raise' or 'clamp', got {on_infeasible!r}")
    kernel_strategies = kernel.STRATEGIES
    if strategy not in kernel_strategies:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(kernel_strategies)}")
    if latency_budget is not None:
        if not math.isfinite(episodes.latency_scale):
            raise ValueError("a latency budget needs latency: these episodes have none. Give the table a "
                             "latency_s column, or a throughput table (ttft_s, output_tokens_per_s) and "
                             "output_tokens to derive it")
        if strategy == "threshold":
            raise ValueError("the threshold cascade has no multiplier to trade latency with; fit routing, "
                             "cascade or cascade_routing to a latency budget")
        if per_step:
            raise ValueError("a per-step λ is fitted for a cost budget only; drop per_step or the latency budget")
    if max_depths or sigma_transforms:
        variants = [(depth, transform) for depth in (max_depths or (max_depth,))
                    for transform in (sigma_transforms or (sigma_transform,))]
        fitted = [fit_policy(episodes, budget, strategy=strategy, per_step=per_step, max_depth=depth,
                             force_order=force_order, n_samples=n_samples, on_infeasible=on_infeasible,
                             sigma_transform=transform, latency_budget=latency_budget)
                  for depth, transform in variants]
        return max(fitted, key=lambda p: (p.budget_status != "below_min", p.calibration_quality))
    n_models = episodes.n_models
    depth = n_models if max_depth is None else int(min(max_depth, n_models))
    if depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    family: _ThresholdFamily | _LambdaFamily
    if strategy == "threshold":
        family = _ThresholdFamily(n_models - 1, episodes.quality_span)
        steps = depth - 1
    else:
        family = _LambdaFamily(depth, episodes.cost_scale)
        steps = 1 if strategy == "routing" else depth
    template = Policy(strategy=strategy, lambdas=np.zeros(0 if strategy == "threshold" else depth),
                      thresholds=np.zeros(n_models - 1) if strategy == "threshold" else None,
                      gamma=0.0, max_depth=depth, force_order=bool(force_order), n_samples=n_samples,
                      budget=math.inf if budget is None else float(budget), sigma_scale=float(sigma_transform[0]),
                      sigma_power=float(sigma_transform[1]),
                      latency_budget=None if latency_budget is None else float(latency_budget))
    search = _Search(episodes, template)
    budgets = _Budgets(budget, latency_budget)

    shape = family.initial_shape
    if latency_budget is None:
        alpha, outcome, status = _solve_scale(lambda a: search.measure(**family.changes(a, shape)),
                                              family, shape, budgets.fits, None)
        mu = 0.0
    else:
        mu, alpha, outcome, status = _solve_multipliers(
            search, family, episodes.latency_scale, budgets)  # type: ignore[arg-type]  # threshold: refused above
    if status == "below_min" and on_infeasible == "raise":
        raise _infeasible(strategy, budgets, outcome)
    if per_step and status == "met" and steps > 1:
        alpha, shape, outcome = _coordinate_search(search, family, alpha, shape, outcome, budgets, steps)
    changes = {**family.changes(alpha, shape), "mu": mu}
    gamma, outcome = (_fit_gamma(search, changes, outcome, budgets) if status != "below_min"
                      else (0.0, outcome))
    return replace(template, **changes, gamma=gamma, calibration_cost=outcome.mean_cost,
                   calibration_quality=outcome.mean_quality, calibration_latency=outcome.mean_latency,
                   budget_status=status, search_evaluations=search.evaluations)


def _solve_multipliers(search: _Search, family: _LambdaFamily, latency_scale: float,
                       budgets: _Budgets) -> tuple[float, float, EpisodeOutcome, str]:
    """``(μ, λ, outcome, status)``: the smallest ``μ`` that meets the latency budget, ``λ`` solved at each ``μ``.

    Each ``μ`` tried is measured with its own ``λ``: the smallest that
    meets the cost budget at that ``μ`` (0 without a cost budget, or when
    the cost budget does not bind), so the outer search compares policies
    that all meet the cost budget, as the per-step search does with shapes.
    """
    shape = family.initial_shape
    solved: dict[float, tuple[float, str]] = {}
    cost_only = _Budgets(budgets.cost)
    nested = _LambdaFamily(len(shape), family.cost_scale, NESTED_RTOL)

    def over_cost(outcome: EpisodeOutcome) -> float:
        return outcome.mean_cost / budgets.cost - 1.0  # type: ignore[operator]  # both budgets are set here

    def measure_at(mu: float) -> Callable[[float], EpisodeOutcome]:
        return lambda alpha: search.measure(**family.changes(alpha, shape), mu=mu)

    def measure_mu(mu: float) -> EpisodeOutcome:
        free = measure_at(mu)(0.0)
        if cost_only.fits(free):  # the cost budget does not bind at this μ (or there is none)
            solved[mu] = (0.0, "above_max")
            return free
        # λ moves little between neighbouring μ: walking from the last solution brackets it in a step or two
        last = [alpha for alpha, _ in solved.values() if alpha > 0]
        alpha, outcome, status = _solve_scale(measure_at(mu), nested, shape, cost_only.fits,
                                              last[-1] if last else None, over_cost)
        solved[mu] = (alpha, status)
        return outcome

    mu_family = _LambdaFamily(1, latency_scale, NESTED_RTOL)
    def over_latency(outcome: EpisodeOutcome) -> float:
        return outcome.mean_latency / budgets.latency - 1.0  # type: ignore[operator]  # both budgets are set here

    mu, outcome, status = _solve_scale(measure_mu, mu_family, mu_family.initial_shape, budgets.fits, None,
                                       over_latency)
    alpha, cost_status = solved[mu]
    if status == "above_max":  # latency does not bind (μ = 0): the status is the cost budget's
        status = cost_status
    if alpha > 0 and status != "below_min":  # the kept μ's λ, to the cost-only search's precision
        finer, finer_outcome, _ = _solve_scale(measure_at(mu), family, shape, cost_only.fits, alpha, over_cost)
        if budgets.fits(finer_outcome) and finer_outcome.mean_quality >= outcome.mean_quality:
            alpha, outcome = finer, finer_outcome
    return mu, alpha, outcome, status


def _infeasible(strategy: str, budgets: _Budgets, outcome: EpisodeOutcome) -> BudgetError:
    """The error for budgets below what the cheapest (fastest) policy tried needs, naming what it reached."""
    if budgets.latency is None:
        return BudgetError(
            f"budget {budgets.cost:.6g} is below the cheapest {strategy} policy, which costs "
            f"{outcome.mean_cost:.6g} per query on the calibration set; raise the budget "
            "or pass on_infeasible='clamp'", outcome.mean_cost)
    cost = "" if budgets.cost is None else f" and cost budget {budgets.cost:.6g}"
    return BudgetError(
        f"latency budget {budgets.latency:.6g} s{cost} cannot be met: the fastest {strategy} policy tried takes "
        f"{outcome.mean_latency:.6g} s and costs {outcome.mean_cost:.6g} per query on the calibration set; "
        "raise the latency budget (or the cost budget) or pass on_infeasible='clamp'",
        outcome.mean_cost, outcome.mean_latency)


def _coordinate_search(search, family, alpha, shape, outcome, budgets, steps):
    """Improve the per-step shape one coordinate at a time, re-solving the scale each try."""
    for moves in family.moves:
        for t in range(steps):
            for move in moves:
                trial_shape = family.move(shape, t, move)
                trial_alpha, trial, status = _solve_scale(
                    lambda a, w=trial_shape: search.measure(**family.changes(a, w)), family, trial_shape,
                    budgets.fits, alpha)
                if status != "below_min" and budgets.fits(trial) \
                        and trial.mean_quality > outcome.mean_quality + 1e-12:
                    alpha, shape, outcome = trial_alpha, trial_shape, trial
    return alpha, shape, outcome


def single_model_policy(model: int, budget: float) -> Policy:
    """The policy that calls model ``model`` once and answers with it (``fixed_model``).

    Fitting no longer offers it (the constant-estimate hull, :func:`hull_policy`,
    holds every single model and every mix of two); artifacts fitted before
    that hold such policies, and the router and the episodes still serve them.

    Parameters
    ----------
    model : int
        Column of the model (cheapest first).
    budget : float
        The budget it stands for.

    Returns
    -------
    Policy
        With ``fixed_model=model``; calibration figures unset.
    """
    return Policy(strategy="single", lambdas=np.zeros(0), thresholds=None, gamma=0.0, max_depth=1,
                  force_order=False, n_samples=64, budget=float(budget), fixed_model=int(model))


#: A simpler candidate is kept when the best one beats it on calibration by at most this many standard errors
#: of the paired per-query difference (the one-standard-error rule of model selection; docs/decisions.md).
TIE_STANDARD_ERRORS = 1.0


def single_outcomes(episodes: Episodes) -> list[EpisodeOutcome]:
    """Each model's outcome on ``episodes`` when it alone answers every query: the points of the calibration hull.

    Parameters
    ----------
    episodes : Episodes
        Calibration queries.

    Returns
    -------
    list of EpisodeOutcome
        One per model column, played as a constant-estimate policy that
        calls that model (so any :class:`~training.episodes.Episodes` will do).
    """
    outcomes = []
    for model in range(episodes.n_models):
        constants = np.zeros((2, episodes.n_models))
        constants[0, model] = 1.0
        outcomes.append(episodes.play(_constant_policy(constants, 0.0, math.inf, None)))
    return outcomes


def _constant_policy(constants: NDArray[np.float64], lam: float, budget: float, latency_budget: float | None,
                     n_samples: int = 64) -> Policy:
    """Routing on ``constants`` at ``λ = lam``: the template of the hull's candidates."""
    return Policy(strategy="routing", lambdas=np.array([float(lam)]), thresholds=None, gamma=0.0, max_depth=1,
                  force_order=False, n_samples=n_samples, budget=float(budget), latency_budget=latency_budget,
                  constant_estimates=constants)


def hull_policy(episodes: Episodes, budget: float | None, *, latency_budget: float | None = None,
                singles: list[EpisodeOutcome] | None = None) -> Policy | None:
    """The best fixed mix of single models within the budgets, as measured on calibration (ALGORITHM.md §4 point 4).

    Each model's calibration mean quality and cost are its constant
    estimates; the upper hull of those points (:func:`~training.metrics.upper_hull`)
    is what mixing single models per query can reach. Routing on the
    constants at the critical ``λ* = (q_b − q_a)/(c_b − c_a)`` of two
    neighbouring hull models ties exactly those two (every other model lies
    below their line), so ``γ`` mixes them per query through the kernel's
    own tie-break, fitted like any policy's ``γ`` (the realised share of
    ``u < γ`` measured, and lowered if it overshoots). Beyond the last hull
    model, ``λ = 0`` calls the best model alone. With a cost budget only,
    the segment around the budget is the best mix; with a latency budget,
    every hull segment whose cheaper end meets both budgets is fitted and
    the best kept (mixes along the cost hull's edges, not the whole
    two-constraint optimum).

    Parameters
    ----------
    episodes : Episodes
        Calibration queries.
    budget : float or None
        Mean cost per query; ``None``: no cost budget.
    latency_budget : float, optional
        Mean latency per query (seconds).
    singles : list of EpisodeOutcome, optional
        :func:`single_outcomes` of ``episodes``, when the caller has them (one per fit otherwise).

    Returns
    -------
    Policy or None
        A routing policy with ``constant_estimates`` and its calibration
        figures, or ``None`` when even the cheapest hull model exceeds the budgets.
    """
    singles = single_outcomes(episodes) if singles is None else singles
    cost = np.array([o.mean_cost for o in singles])
    quality = np.array([o.mean_quality for o in singles])
    latency = np.array([o.mean_latency for o in singles])
    constants = np.vstack([quality, cost])
    hull = upper_hull(cost, quality).tolist()
    budgets = _Budgets(budget, latency_budget)
    segments = [(a, b) for a, b in zip(hull, hull[1:] + [None], strict=True) if budgets.allows(cost[a], latency[a])]
    if latency_budget is None:
        segments = segments[-1:]  # the hull is concave: the segment around the budget mixes best
    best = None
    for a, b in segments:
        lam = 0.0 if b is None else (quality[b] - quality[a]) / (cost[b] - cost[a])
        search = _Search(episodes, _constant_policy(constants, lam, budgets.cost if budgets.cost is not None
                                                    else math.inf, latency_budget))
        changes = {"lambdas": np.array([lam])}
        outcome = search.measure(**changes)  # the cheapest-tie rule: model a alone
        gamma = 0.0
        if b is not None and budgets.fits(outcome):
            gamma, outcome = _fit_gamma(search, changes, outcome, budgets)
        if not budgets.fits(outcome):
            continue
        status = "above_max" if b is None and (budgets.cost is None or outcome.mean_cost < budgets.cost) else "met"
        policy = replace(search.template, gamma=gamma, calibration_cost=outcome.mean_cost,
                         calibration_quality=outcome.mean_quality, calibration_latency=outcome.mean_latency,
                         budget_status=status, search_evaluations=search.evaluations)
        if best is None or policy.calibration_quality > best.calibration_quality:
            best = policy
    return best


def fit_candidates(episodes: Episodes, budget: float | None, *, strategy: str = "cascade_routing",
                   max_depth: int | None = None, per_step: bool = False,
                   sigma_transforms: tuple[tuple[float, float], ...] | None = None,
                   latency_budget: float | None = None, on_infeasible: str = "clamp", n_samples: int = 64,
                   singles: list[EpisodeOutcome] | None = None) -> list[Policy]:
    """Every candidate for one budget, simplest first, each fitted on calibration (ALGORITHM.md §4 point 4).

    The constant-estimate hull (:func:`hull_policy`, when some mix of single
    models fits the budgets), then for ``cascade_routing`` cascade routing
    at each depth ``1 … max_depth`` (depth 1 is routing; deeper ones choose
    their σ transform among ``sigma_transforms`` and, with ``per_step``, a
    per-step ``λ`` shape), or for another strategy that strategy as asked.
    :func:`choose_policy` picks among them.

    Parameters
    ----------
    episodes : Episodes
        Calibration queries.
    budget, latency_budget, per_step, n_samples, on_infeasible
        As in :func:`fit_policy`; ``on_infeasible="raise"`` raises
        :class:`BudgetError` when the strategy's cheapest policy exceeds the budgets.
    strategy : str
        The kernel strategy asked for.
    max_depth : int, optional
        Most models per query; default all.
    sigma_transforms : tuple of (float, float), optional
        σ transforms the strategies that use σ choose among.
    singles : list of EpisodeOutcome, optional
        :func:`single_outcomes` of ``episodes``, computed once by a caller that fits many budgets.

    Returns
    -------
    list of Policy
        Simplest first: the hull (if any), then by depth.
    """
    depth = episodes.n_models if max_depth is None else int(min(max_depth, episodes.n_models))
    options: dict[str, Any] = dict(per_step=per_step, on_infeasible=on_infeasible, latency_budget=latency_budget,
                                   n_samples=n_samples)
    if strategy == "cascade_routing":
        fitted = [fit_policy(episodes, budget, strategy="routing", max_depth=1, **options)]
        fitted += [fit_policy(episodes, budget, strategy=strategy, max_depth=d, sigma_transforms=sigma_transforms,
                              **options) for d in range(2, depth + 1)]
    else:
        fitted = [fit_policy(episodes, budget, strategy=strategy, max_depth=depth,
                             sigma_transforms=sigma_transforms if strategy == "cascade" else None, **options)]
    hull = hull_policy(episodes, budget, latency_budget=latency_budget, singles=singles)
    return ([] if hull is None else [replace(hull, n_samples=n_samples)]) + fitted


@dataclass(frozen=True)
class Choice:
    """What :func:`choose_policy` measured and kept.

    Attributes
    ----------
    policy : Policy
        The candidate kept.
    candidates : tuple of Policy
        Every candidate, simplest first, with its calibration figures measured.
    within : tuple of bool
        Whether each met the budgets on calibration.
    best : int
        Index of the highest calibration quality within the budgets (``-1``: none was within).
    kept : int
        Index of :attr:`policy`.
    gaps : tuple of float
        Mean paired calibration quality of the best minus each candidate (NaN where not within).
    standard_errors : tuple of float
        Standard error of that paired mean (NaN where not within).
    margin : float or None
        The kept candidate's calibration quality minus the best other
        candidate's within the budgets (negative when a simpler candidate was
        kept inside the noise); ``None`` with no other candidate within.
    """

    policy: Policy
    candidates: tuple[Policy, ...]
    within: tuple[bool, ...]
    best: int
    kept: int
    gaps: tuple[float, ...]
    standard_errors: tuple[float, ...]
    margin: float | None


def choose_policy(episodes: Episodes, candidates: list[Policy]) -> Choice:
    """Keep the best calibration quality within the budgets, or a simpler candidate inside its noise.

    Every candidate is played on the same calibration queries. Let ``b`` be
    the one with the highest mean quality among those within the budgets
    (cost, and latency when set; a budget above what a candidate can spend
    counts as within). A candidate ``c`` is tied with ``b`` when the mean of
    the paired per-query differences ``q_b − q_c`` is at most
    :data:`TIE_STANDARD_ERRORS` times its standard error
    (``sd(q_b − q_c) / √n``, what a paired bootstrap of the mean estimates,
    in closed form); the first tied candidate in the given order (simplest
    first, :func:`fit_candidates`) that no simpler candidate within the
    budgets beats is kept. The kept candidate is therefore never below the
    constant-estimate hull (the simplest) on calibration. So a quality tie keeps the
    simpler, cheaper candidate, and a fitted policy must beat the
    constant-estimate hull by more than the noise of the calibration set to
    be served. With no candidate within the budgets (a clamped, infeasible
    budget) the cheapest on calibration is kept.

    Parameters
    ----------
    episodes : Episodes
        The calibration queries the candidates were fitted on.
    candidates : list of Policy
        Simplest first (at least one).

    Returns
    -------
    Choice
    """
    if not candidates:
        raise ValueError("choose_policy needs at least one candidate")
    measured, qualities, within = [], [], []
    for candidate in candidates:
        outcome = candidate.play(episodes)
        measured.append(replace(candidate, calibration_cost=outcome.mean_cost,
                                calibration_quality=outcome.mean_quality, calibration_latency=outcome.mean_latency))
        qualities.append(outcome.quality)
        budgets = _Budgets(None if math.isinf(candidate.budget) else candidate.budget, candidate.latency_budget)
        within.append(candidate.budget_status != "below_min" and budgets.fits(outcome))
    inside = [i for i, ok in enumerate(within) if ok]
    nan = math.nan
    if not inside:
        kept = min(range(len(measured)), key=lambda i: measured[i].calibration_cost)
        return Choice(measured[kept], tuple(measured), tuple(within), -1, kept, (nan,) * len(measured),
                      (nan,) * len(measured), None)
    best = max(inside, key=lambda i: measured[i].calibration_quality)
    gaps, errors = [nan] * len(measured), [nan] * len(measured)
    for i in inside:
        difference = qualities[best] - qualities[i]
        gaps[i] = float(difference.mean())
        errors[i] = float(difference.std(ddof=1) / math.sqrt(difference.size)) if difference.size > 1 else 0.0
    simpler_best = -math.inf  # a candidate is kept only if no simpler one within the budgets beats it
    for i in inside:
        if gaps[i] <= TIE_STANDARD_ERRORS * errors[i] + 1e-12 and measured[i].calibration_quality >= simpler_best:
            kept = i
            break
        simpler_best = max(simpler_best, measured[i].calibration_quality)
    others = [measured[i].calibration_quality for i in inside if i != kept]
    margin = measured[kept].calibration_quality - max(others) if others else None
    return Choice(measured[kept], tuple(measured), tuple(within), best, kept, tuple(gaps), tuple(errors), margin)


def describe(policy: Policy, models: Sequence[str]) -> str:
    """A candidate's name in reports: its depth, or which single models the hull mixes with which ``γ``.

    Parameters
    ----------
    policy : Policy
        A fitted candidate.
    models : sequence of str
        Model names by column.

    Returns
    -------
    str
        ``"routing"``, ``"cascade_routing depth 3"`` (``", per-step λ"``
        when the steps' ``λ`` differ), ``"hull: single model m"``,
        ``"hull mix: a + b (γ 0.37 to b)"``, ``"single model m"``, or the strategy.
    """
    if policy.fixed_model is not None:
        return f"single model {models[policy.fixed_model]}"
    if policy.constant_estimates is not None:
        quality, cost = np.asarray(policy.constant_estimates)
        tau = quality - float(policy.lambdas[0]) * cost
        tied = np.flatnonzero(tau >= tau.max() - 1e-9 * max(1.0, abs(tau.max())))
        cheap, dear = tied[np.argmin(cost[tied])], tied[np.argmax(cost[tied])]
        if cheap == dear or policy.gamma <= 0:
            return f"hull: single model {models[cheap]}"
        if policy.gamma >= 1:
            return f"hull: single model {models[dear]}"
        return f"hull mix: {models[cheap]} + {models[dear]} (γ {policy.gamma:.3g} to {models[dear]})"
    if policy.strategy == "cascade_routing":
        shape = "" if np.ptp(policy.lambdas) == 0 else ", per-step λ"
        return f"cascade_routing depth {policy.max_depth}{shape}"
    return policy.strategy
