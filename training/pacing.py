"""Budget pacing: adjust ``λ`` online so that realised spend tracks the budget.

Beyond the paper. A policy's ``λ`` is fitted so that the *calibration*
traffic costs ``B`` per query on average. When live traffic drifts (more
hard prompts, longer prompts, a price change), the same ``λ`` overspends or
underspends, because cost is a property of the traffic as much as of the
policy. :class:`~training.router.PacedRouter` multiplies the fitted ``λ`` by a factor
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

:class:`~training.router.PacedRouter` applies the controller to a
router and holds the lock that makes it safe to share between threads.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

__all__ = ["PaceController", "PacingState"]


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
    mu : float
        Current latency multiplier (0 for a cost-only policy).
    latency_factor : float
        Current multiplier of the fitted ``μ`` (1 without latency pacing).
    mean_latency : float
        Exponentially weighted mean latency per query (NaN without latency pacing).
    """

    factor: float
    lambdas: NDArray[np.float64]
    mean_cost: float
    overspend: float
    n_queries: int
    total_cost: float
    mu: float = 0.0
    latency_factor: float = 1.0
    mean_latency: float = math.nan

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
    Not thread-safe on its own; :class:`~training.router.PacedRouter` holds the lock.
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
        """Record one finished query's realised cost; return the new ``log`` factor.

        Parameters
        ----------
        cost : float
            The query's realised total cost, finite and ``>= 0``.

        Returns
        -------
        float
            ``log`` of the new :attr:`factor`, within ``[-log band, log band]``.

        Raises
        ------
        ValueError
            If ``cost`` is negative or not finite (the state is then unchanged).
        """
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
        """The current multiplier of the fitted ``λ``."""
        return math.exp(self.log_factor)
