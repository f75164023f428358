"""Budget pacing: adjust ``λ`` online so that realised spend tracks the budget.

Beyond the paper. A policy's ``λ`` is fitted so that the *calibration*
traffic costs ``B`` per query on average. When live traffic drifts (more
hard prompts, longer prompts, a price change), the same ``λ`` overspends or
underspends, because cost is a property of the traffic as much as of the
policy. :class:`PacedRouter` multiplies the fitted ``λ`` by a factor
``m = exp(u)`` that a small PI controller moves after every finished query:

* **P**: the exponentially weighted mean cost ``E`` (half-life
  ``half_life`` queries) relative to the budget, ``E/B − 1``: reacts to a
  change within a few half-lives;
* **I**: the running sum of ``c_t/B − 1`` over finished queries, i.e. the
  cumulative overspend in units of one query's budget. Driving it to zero
  is what makes the *mean* cost per query equal ``B`` (the proportional
  term alone would leave a steady-state offset);
* ``u = gain·(E/B − 1) + integral_gain·Σ(c_t/B − 1)``, clamped to
  ``[−log band, +log band]``. The integral stops accumulating while the
  output sits at a clamp and the error pushes further out (conditional
  integration), so it cannot wind up during a long drift the band cannot
  absorb and recovers at once when traffic returns.

``λ`` is therefore never negative, always within
``[λ_fit/band, λ_fit·band]``, and scales every step of a per-step ``λ``
vector together (its shape, fitted for quality, is kept). Multiplicative
control suits ``λ``: cost falls roughly with ``log λ``, and the useful range
of ``λ`` spans orders of magnitude.

All controller state sits behind one lock: ``decide`` reads a consistent
policy, ``record`` updates it, from any number of threads.
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from typing import NamedTuple, Sequence

import numpy as np

from ..policy import Policy
from .router import Observed, Plan, Router

__all__ = ["PaceController", "PacedRouter", "PacingState"]


class PacingState(NamedTuple):
    """A consistent snapshot of the controller.

    Attributes
    ----------
    factor : float
        Current multiplier of the fitted ``λ`` (``exp(u)``).
    lambdas : ndarray
        Current ``λ`` per step.
    mean_cost : float
        Exponentially weighted mean cost per query ``E``.
    overspend : float
        Integral term: ``Σ(c_t/B − 1)`` over the queries that counted.
    n_queries : int
        Finished queries recorded.
    total_cost : float
        Their summed cost.
    """

    factor: float
    lambdas: np.ndarray
    mean_cost: float
    overspend: float
    n_queries: int
    total_cost: float

    @property
    def realised_mean(self) -> float:
        """Mean cost per recorded query (NaN before the first)."""
        return self.total_cost / self.n_queries if self.n_queries else math.nan


class PaceController:
    """PI controller of ``log(λ/λ_fit)`` driven by realised cost per query.

    Parameters
    ----------
    budget : float
        Target mean cost per query (> 0).
    band : float, default=10.0
        ``λ`` stays within ``[λ_fit/band, λ_fit·band]`` (``band > 1``). Spend
        moves slowly with ``λ`` near a fitted policy (on the synthetic
        benchmark, ``λ`` ×8 cut spend by a third), so a band of a few units
        saturates under a modest drift.
    half_life : float, default=100
        Half-life, in finished queries, of the weighted mean cost used by the
        proportional term.
    gain : float, default=0.5
        Proportional gain on ``E/B − 1``.
    integral_gain : float, default=0.05
        Gain on the cumulative overspend: 20 queries' worth of overspend
        raise ``λ`` by a factor ``e``. Tuned on a simulated drift (the second
        half of the stream costlier queries at 1.5× prices, +42 % spend at
        fixed ``λ``): 0.02 left the stream 7 % over budget, 0.05 3 %, 0.1
        1.5 %; larger gains track faster but let single expensive queries
        jolt ``λ`` (at 0.05, one query at 8× budget moves it by 40 %).

    Notes
    -----
    Not thread-safe on its own; :class:`PacedRouter` holds the lock.
    """

    def __init__(self, budget: float, *, band: float = 10.0, half_life: float = 100.0,
                 gain: float = 0.5, integral_gain: float = 0.05) -> None:
        checks = {"budget": (budget, 0.0), "half_life": (half_life, 0.0), "band": (band, 1.0)}
        for name, (value, low) in checks.items():
            if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value) and value > low):
                raise ValueError(f"{name} must be a finite number > {low:g}, got {value!r}")
        for name, value in (("gain", gain), ("integral_gain", integral_gain)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.budget = float(budget)
        self.limit = math.log(band)
        self.alpha = 1.0 - 0.5 ** (1.0 / half_life)
        self.gain, self.integral_gain = float(gain), float(integral_gain)
        self.mean_cost = self.budget  # start on budget: no kick before the first observation
        self.overspend = 0.0
        self.log_factor = 0.0
        self.n_queries = 0
        self.total_cost = 0.0

    def update(self, cost: float) -> float:
        """Record one finished query's realised cost; return the new ``log`` factor."""
        cost = float(cost)
        if not (math.isfinite(cost) and cost >= 0):
            raise ValueError(f"cost must be a finite number >= 0 (the query's realised cost), got {cost!r}")
        self.n_queries += 1
        self.total_cost += cost
        self.mean_cost += self.alpha * (cost - self.mean_cost)
        error = cost / self.budget - 1.0
        proportional = self.gain * (self.mean_cost / self.budget - 1.0)
        trial = proportional + self.integral_gain * (self.overspend + error)
        if abs(trial) <= self.limit or (trial > 0) != (error > 0):
            self.overspend += error  # integrate unless it pushes further into a clamp
        output = proportional + self.integral_gain * self.overspend
        self.log_factor = min(max(output, -self.limit), self.limit)
        return self.log_factor

    @property
    def factor(self) -> float:
        return math.exp(self.log_factor)


class PacedRouter:
    """A :class:`~training.serving.router.Router` whose ``λ`` is paced to a budget.

    Parameters
    ----------
    router : Router
        Fitted router; its policies must be λ-based (not ``threshold``).
    budget : float
        Target mean cost per query, in the unit of the logged costs.
    policy : Policy, optional
        The policy whose ``λ`` is paced. Default: the fitted policy whose
        budget is nearest to ``budget`` on a log scale, among those with a
        positive ``λ`` (a ``λ = 0`` policy cannot be scaled).
    **controller
        ``band``, ``half_life``, ``gain``, ``integral_gain`` of
        :class:`PaceController`.

    Examples
    --------
    >>> paced = router.paced(0.0006)                          # doctest: +SKIP
    >>> nxt = paced.decide([prompt], [observed], tasks=[t])[0]  # doctest: +SKIP
    >>> paced.record(total_cost_of_the_finished_query)          # doctest: +SKIP
    """

    def __init__(self, router: Router, budget: float, *, policy: Policy | None = None,
                 **controller) -> None:
        self.router = router
        self.controller = PaceController(budget, **controller)
        self.base = policy if policy is not None else self._nearest_policy(router, float(budget))
        if self.base.strategy == "threshold":
            raise ValueError("pacing scales λ; a threshold cascade has none. Fit a λ strategy "
                             "(cascade_routing, cascade or routing)")
        if not np.any(np.asarray(self.base.lambdas) > 0):
            raise ValueError("the policy's λ is 0 everywhere, which no factor can move; "
                             "pass a policy fitted to a smaller budget")
        self._lock = threading.Lock()
        self._policy = self.base

    @staticmethod
    def _nearest_policy(router: Router, budget: float) -> Policy:
        scalable = [p for p in router.policies if p.strategy != "threshold" and np.any(np.asarray(p.lambdas) > 0)]
        if not scalable:
            raise ValueError("no fitted policy has a positive λ to pace; refit with smaller budgets "
                             f"(fitted: {router.budgets})")
        return min(scalable, key=lambda p: abs(math.log(max(p.budget, 1e-300) / budget)))

    @property
    def budget(self) -> float:
        return self.controller.budget

    @property
    def policy(self) -> Policy:
        """The policy with the current ``λ`` (an immutable snapshot)."""
        return self._policy

    def state(self) -> PacingState:
        """A consistent snapshot of the controller."""
        with self._lock:
            c = self.controller
            return PacingState(c.factor, np.asarray(self._policy.lambdas).copy(), c.mean_cost,
                               c.overspend, c.n_queries, c.total_cost)

    def record(self, cost: float | Sequence[float]) -> None:
        """Report the realised total cost of one finished query (or of several, in order).

        Call it once per query, when its cascade has stopped, with the sum of
        what every model called for it cost.
        """
        costs = np.atleast_1d(np.asarray(cost, dtype=np.float64))
        with self._lock:
            for value in costs:
                self.controller.update(value)
            self._policy = replace(self.base, lambdas=np.asarray(self.base.lambdas) * self.controller.factor)

    def plan(self, prompts: Sequence[str], observed: Observed | None = None, *,
             tasks: Sequence[str] | None = None, subtasks: Sequence[str] | None = None) -> list[Plan]:
        """:meth:`Router.plan` with the current paced policy."""
        return self.router.plan(prompts, observed, tasks=tasks, subtasks=subtasks, policy=self._policy)

    def decide(self, prompts: Sequence[str], observed: Observed | None = None, *,
               tasks: Sequence[str] | None = None, subtasks: Sequence[str] | None = None) -> list[str | None]:
        """:meth:`Router.decide` with the current paced policy."""
        return self.router.decide(prompts, observed, tasks=tasks, subtasks=subtasks, policy=self._policy)

    def select(self, prompts: Sequence[str], observed: Observed, *, tasks: Sequence[str] | None = None,
               subtasks: Sequence[str] | None = None) -> list[str]:
        """:meth:`Router.select` (pacing does not change which answer is best)."""
        return self.router.select(prompts, observed, tasks=tasks, subtasks=subtasks)
