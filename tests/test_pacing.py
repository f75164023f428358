"""Budget pacing: the controller's clamps, and spend on a drifting stream."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from training.data import read_table
from training.fit import fit_router
from training.pacing import PaceController
from training.router import PacedRouter
from training.synthetic import default_table, make_benchmark, synthetic_prices

BUDGET = 0.0006


@pytest.fixture(scope="module")
def router():
    fitted, _ = fit_router(default_table(800, seed=0), [BUDGET], estimator="linear", prices=synthetic_prices())
    return fitted


#: Price rise in the second half of the stream (every model, as a provider's new price list).
PRICE_RISE = 1.5
#: λ may move by up to this factor either way.
BAND = 16.0


@pytest.fixture(scope="module")
def drifting_stream(router):
    """First half drawn like the calibration traffic; second half from its costliest quarter, at
    ``PRICE_RISE`` times the logged prices.

    Rows are queries of a fresh synthetic table (seed 11); the logged
    responses and costs stand in for calling the models. Both drifts raise
    what the fitted λ spends; the price rise does so whatever the estimator
    (which still predicts the old prices), so the test does not depend on
    how a given estimator reacts to costlier prompts.
    """
    table = read_table(make_benchmark(2400, seed=11)).select_models(list(router.models_))
    rng = np.random.default_rng(0)
    half = 700
    like_calibration = rng.choice(table.n_queries, half, replace=False)
    costly = np.argsort(-table.cost.mean(axis=1))[: table.n_queries // 4]
    order = np.concatenate([like_calibration, rng.choice(costly, half, replace=True)])
    price = np.where(np.arange(2 * half) < half, 1.0, PRICE_RISE)
    return table, order, price, half


def replay(decider, table, order, price, models, record=None, after_record=None, batch=8):
    """Run every query's cascade with logged outcomes (costs times ``price``), ``batch`` queries in flight."""
    costs = np.zeros(len(order))
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        observed = [{} for _ in rows]
        active = list(range(len(rows)))
        while active:
            picks = decider.decide([table.prompts[rows[a]] for a in active], [observed[a] for a in active],
                                   tasks=[table.tasks[rows[a]] for a in active],
                                   subtasks=[table.subtasks[rows[a]] for a in active])
            still = []
            for a, model in zip(active, picks, strict=True):
                if model is None:
                    continue
                j = models.index(model)
                assert model not in observed[a], "a model is never called twice for one query"
                observed[a][model] = {"cost": float(table.cost[rows[a], j] * price[start + a]),
                                      "response": table.responses[rows[a], j]}
                still.append(a)
            active = still
        for a in range(len(rows)):
            costs[start + a] = sum(o["cost"] for o in observed[a].values())
            if record is not None:
                record(costs[start + a])
                if after_record is not None:
                    after_record()
    return costs


class _Fixed:
    def __init__(self, router):
        self.router = router

    def decide(self, prompts, observed, **per_query):
        return self.router.decide(prompts, observed, budget=BUDGET, **per_query)


def test_paced_spend_tracks_the_budget_where_fixed_lambda_does_not(router, drifting_stream):
    table, order, price, half = drifting_stream
    fixed = replay(_Fixed(router), table, order, price, router.models_)
    # The budget to track is what the fitted λ spends on traffic like its calibration set (the first
    # half): the drift is then the only reason to move λ, whatever the estimator's generalisation.
    target = fixed[:half].mean()
    assert fixed[half:].mean() / target > 1.10, "the drift makes the fixed policy overspend"
    assert fixed.mean() / target - 1 > 0.05, "the fixed policy misses the budget over the stream"

    paced = PacedRouter(router, target, policy=router.policy(BUDGET), band=BAND)
    base = np.asarray(paced.base.lambdas)
    factors = []

    def check_clamps():
        state = paced.state()
        factors.append(state.factor)
        assert np.all(state.lambdas >= 0)
        assert np.all(state.lambdas <= base * BAND * (1 + 1e-12))
        assert np.all(state.lambdas >= base / BAND * (1 - 1e-12))

    spent = replay(paced, table, order, price, router.models_, record=paced.record, after_record=check_clamps)
    assert abs(spent.mean() / target - 1) <= 0.05, f"paced spend {spent.mean() / target:.3f} x budget"
    assert abs(spent[half:].mean() / target - 1) < abs(fixed[half:].mean() / target - 1) / 2
    assert max(factors) > 2.0, "λ rose to absorb the costlier traffic"
    state = paced.state()
    assert state.n_queries == len(order) and math.isclose(state.total_cost, spent.sum())


def test_controller_saturates_at_the_band_and_recovers_without_windup():
    controller = PaceController(1.0, band=4.0, half_life=10, gain=0.5, integral_gain=0.05)
    for _ in range(5000):
        controller.update(3.0)  # far over budget for a long time
    assert controller.factor == pytest.approx(4.0)
    assert controller.overspend < 50, "the integral stopped growing at the clamp"
    for _ in range(60):
        controller.update(1.0)
    assert controller.factor < 4.0, "leaves the clamp as soon as spend is back on budget"
    for _ in range(5000):
        controller.update(0.0)
    assert controller.factor == pytest.approx(0.25)
    assert math.isfinite(controller.log_factor)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_controller_refuses_impossible_costs(bad):
    with pytest.raises(ValueError, match="cost must be a finite number >= 0"):
        PaceController(1.0).update(bad)


@pytest.mark.parametrize("options, message", [
    ({"band": 1.0}, "band must be"), ({"half_life": 0}, "half_life must be"), ({"gain": -1}, "gain must be"),
])
def test_controller_refuses_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        PaceController(1.0, **options)


def test_budget_must_be_positive(router):
    with pytest.raises(ValueError, match="budget must be"):
        router.paced(0.0)


def test_threshold_policies_cannot_be_paced(router):
    from dataclasses import replace
    threshold = replace(router.policies[0], strategy="threshold", thresholds=np.zeros(len(router.models_) - 1))
    with pytest.raises(ValueError, match="threshold cascade has none"):
        PacedRouter(router, BUDGET, policy=threshold)


def test_concurrent_records_are_all_counted(router):
    paced = router.paced(BUDGET)
    costs = np.random.default_rng(1).uniform(0, 3 * BUDGET, size=(8, 250))

    def worker(row):
        for cost in row:
            paced.record(cost)
            _ = paced.policy  # a reader racing the writers

    threads = [threading.Thread(target=worker, args=(row,)) for row in costs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = paced.state()
    assert state.n_queries == costs.size
    assert state.total_cost == pytest.approx(costs.sum())
    assert 0.1 - 1e-12 <= state.factor <= 10.0 + 1e-12
