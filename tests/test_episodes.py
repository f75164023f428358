"""Step-wise episodes with an estimator agree with the compiled table episodes."""

from __future__ import annotations

import numpy as np
import pytest

from estimators.estimator import Estimates
from estimators.table import RoutingTable
from training.decision import DecisionRule
from training.episodes import EstimatorEpisodes, TableEpisodes


class TableEstimator:
    """An 'estimator' that serves ex-ante values for models not run and post-hoc ones for run models."""

    def __init__(self, ante, post):
        self.ante, self.post = ante, post
        self.calls = 0

    def predict_table(self, table, run, rows):
        self.calls += 1
        picked = [np.where(run, p[rows], a[rows]) for a, p in zip(self.ante, self.post, strict=True)]
        return Estimates(*picked)


def tables(seed=0, n=300, k=5):
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, k)) < np.linspace(0.5, 0.9, k)).astype(float)
    cost = np.geomspace(1e-4, 5e-3, k) * rng.lognormal(0, 0.3, (n, k))
    ante = (np.clip(truth * 0.4 + 0.3 + rng.normal(0, 0.2, truth.shape), 0, 1),
            np.full((n, k), 0.2), np.tile(cost.mean(axis=0), (n, 1)))
    post = (np.clip(truth * 0.8 + 0.1 + rng.normal(0, 0.05, truth.shape), 0, 1), np.zeros((n, k)), cost)
    table = RoutingTable(models=tuple(f"m{i}" for i in range(k)), query_ids=np.arange(n).astype(str),
                         quality=truth, cost=cost)
    return table, ante, post


@pytest.mark.parametrize("strategy", ["routing", "cascade", "cascade_routing", "threshold"])
def test_stepwise_episodes_equal_compiled_ones(strategy):
    table, ante, post = tables()
    stepwise = EstimatorEpisodes(TableEstimator(ante, post), table)
    compiled = TableEpisodes(*ante, *post, table.quality, table.cost)
    rule = DecisionRule(strategy, np.array([20.0, 60.0, 5.0]), np.full(4, 0.6), 0.4, 3, False, 64)
    a, b = stepwise.play(rule), compiled.play(rule)
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_allclose(a.cost, b.cost, rtol=1e-12)
    np.testing.assert_array_equal(a.quality, b.quality)


def test_estimates_are_cached_per_query_and_run_set():
    table, ante, post = tables(1)
    estimator = TableEstimator(ante, post)
    episodes = EstimatorEpisodes(estimator, table)
    rule = DecisionRule("cascade_routing", np.full(3, 30.0), None, 0.0, 3, False, 64)
    first = episodes.play(rule)
    calls = estimator.calls
    second = episodes.play(rule)
    assert estimator.calls == calls  # nothing new to estimate
    np.testing.assert_array_equal(first.order, second.order)
