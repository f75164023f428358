"""Exploration with known propensities (issue 34): a little traffic on models the policy would not call.

Why this scheme: a cascade's later calls depend on the earlier answers, so
the probability that a policy calls a model *at all* is not known from the
logs (it depends on answers of models it did not call). Here exploration
never changes the policy's cascade: with probability ``ε`` a request draws
``m`` distinct models uniformly from the artifact's ``K`` models,
independently of everything else, and the service also calls (after
answering, off the request's time) those the cascade did not call, and logs
their answers. With every model's potential answer held fixed, a model's
row is then logged with probability exactly 1 if the cascade called it and
exactly ``ε m / K`` if it did not: that number is the row's
``propensity``, so inverse-propensity weights are unbiased for any (query,
model) quantity, and the user always gets the policy's answer.

Evaluating another policy off-line needs its whole path observed: a path
that leaves the logging cascade at ``j`` models is observed with
probability ``ε C(K-j, m-j) / C(K, m)`` (:meth:`Exploration.path_probability`),
nonzero when ``j <= m``; so ``m`` at the largest cascade depth gives every
candidate support (:mod:`training.offpolicy`).

The cost: ``ε`` times the cost of ``m`` uniformly drawn models less those
the cascade called, per request. Only requests served by the paced policy
explore, and their exploration spend is recorded with their cascade's
cost, so the pacing controller holds the mean cost per query (cascade plus
exploration) to the budget like any other spend.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

__all__ = ["Exploration"]


@dataclass(frozen=True)
class Exploration:
    """Draw, with probability ``epsilon``, ``models`` distinct models uniformly (see the module docstring).

    Parameters
    ----------
    epsilon : float
        Probability in [0, 1] that a request explores.
    models : int, default=1
        Models drawn per exploring request (at most the artifact's number of models).
    """

    epsilon: float
    models: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"the exploration probability is {self.epsilon}; give a probability in [0, 1] "
                             "(0.05 explores one request in twenty)")
        if self.models < 1:
            raise ValueError(f"an exploring request draws {self.models} models; give at least 1")

    def draw(self, rng: random.Random, models: Sequence[str]) -> tuple[str, ...]:
        """The models this request explores: none with probability ``1 - epsilon``."""
        if self.epsilon == 0.0 or rng.random() >= self.epsilon:
            return ()
        return tuple(rng.sample(list(models), min(self.models, len(models))))

    def propensity(self, n_models: int) -> float:
        """Probability that a model the cascade did not call was logged: ``epsilon m / K``."""
        return self.epsilon * min(self.models, n_models) / n_models

    def path_probability(self, outside: int, n_models: int) -> float:
        """Probability that ``outside`` given models the cascade did not call were all logged."""
        if outside == 0:
            return 1.0
        m = min(self.models, n_models)
        if outside > m:
            return 0.0
        return self.epsilon * comb(n_models - outside, m - outside) / comb(n_models, m)
