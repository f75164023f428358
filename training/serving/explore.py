"""Exploration with known propensities (issue 34): a little traffic on models the policy would not call.

Why this scheme: a cascade's later calls depend on the earlier answers, so
the probability that a policy calls a model *at all* is not known from the
logs (it depends on answers of models it did not call). Here exploration
never changes the policy's cascade: with probability ``ε`` a request draws
one model uniformly from the artifact's ``K`` models, independently of
everything else; if the cascade did not call it, the service calls it too
(after answering, off the request's time) and logs its answer. Then, with
every model's potential answer held fixed, a model's row is logged with
probability exactly 1 if the cascade called it and exactly ``ε / K`` if it
did not, and that number is the row's ``propensity``. Inverse-propensity
weights are therefore unbiased for any (query, model) quantity, and the
user always gets the policy's answer.

The cost: ``ε`` times the mean cost of a uniformly drawn model, per request.
Only requests served by the paced policy explore, and their exploration
spend is recorded with their cascade's cost, so the pacing controller holds
the mean cost per query (cascade plus exploration) to the budget like any
other spend.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Exploration"]


@dataclass(frozen=True)
class Exploration:
    """Draw, with probability ``epsilon``, one model uniformly (see the module docstring).

    Parameters
    ----------
    epsilon : float
        Probability in [0, 1] that a request explores.
    """

    epsilon: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"the exploration probability is {self.epsilon}; give a probability in [0, 1] "
                             "(0.05 explores one request in twenty)")

    def draw(self, rng: random.Random, models: Sequence[str]) -> str | None:
        """The model this request explores, or ``None`` (probability ``1 - epsilon``)."""
        if self.epsilon == 0.0 or rng.random() >= self.epsilon:
            return None
        return models[rng.randrange(len(models))]

    def propensity(self, n_models: int) -> float:
        """Probability that a model the cascade did not call was logged: ``epsilon / n_models``."""
        return self.epsilon / n_models
