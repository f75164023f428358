"""The single-query path (:class:`kernel.Decider`) decides as the batch path, bit for bit.

The batch path (:func:`kernel.plan`) is the reference: it is itself checked
against the brute-force twin in ``test_kernel_reference.py``. Every row of a
random batch is decided again on its own by a ``Decider`` holding the
batch's policy, with the row's own uniform, and must get the same next model
and plan; inputs the compiled call does not take must decide alike or raise
the batch path's error.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from test_kernel_reference import N_SAMPLES, SETTINGS, problems

import kernel


def _decider(n_models, policy):
    return kernel.Decider(n_models, n_samples=N_SAMPLES, **policy)


def _assert_rows_match(quality, cost, spread, run, u, policy):
    batch_next, batch_plan = kernel.plan(quality, cost, run=run, u=u, n_samples=N_SAMPLES, parallel=False,
                                         **spread, **policy)
    decider = _decider(quality.shape[1], policy)
    for n in range(quality.shape[0]):
        row = decider.plan(quality[n], cost[n], run=run[n], u=float(u[n]),
                           **{name: value[n] for name, value in spread.items()})
        assert row == (batch_next[n], batch_plan[n]), f"row {n}"
        assert type(row[0]) is int and type(row[1]) is int


@SETTINGS
@given(problems(max_models=11))
def test_single_call_equals_batch(problem):
    _assert_rows_match(*problem)


@SETTINGS
@given(problems(max_models=11))
def test_single_call_default_uniform_is_a_one_query_batch(problem):
    quality, cost, spread, run, _, policy = problem
    decider = _decider(quality.shape[1], policy)
    sigma = spread.get("sigma")
    for n in range(quality.shape[0]):
        one = kernel.plan(quality[n:n + 1], cost[n:n + 1], run=run[n:n + 1], n_samples=N_SAMPLES,
                          sigma=None if sigma is None else sigma[n:n + 1], **policy)
        assert decider.plan(quality[n], cost[n], run=run[n], sigma=None if sigma is None else sigma[n]) == \
            (one[0][0], one[1][0])


@SETTINGS
@given(problems(max_models=11))
def test_other_layouts_decide_alike(problem):
    """Lists, strided views, 0/1 integer run sets and integer uniforms take the conversion or batch path."""
    quality, cost, spread, run, u, policy = problem
    decider = _decider(quality.shape[1], policy)
    sigma = spread.get("sigma")
    for n in range(quality.shape[0]):
        expected = decider.plan(quality[n], cost[n], run=run[n], u=float(u[n]),
                                sigma=None if sigma is None else sigma[n])
        strided = np.repeat(quality[n], 2)[::2]
        assert decider.plan(strided, cost[n].tolist(), run=run[n].astype(int), u=float(u[n]),
                            sigma=None if sigma is None else sigma[n].astype(np.float32).astype(float)) == expected
        if float(u[n]) in (0.0, 1.0):
            assert decider.plan(quality[n], cost[n], run=run[n], u=int(u[n]),
                                sigma=None if sigma is None else sigma[n]) == expected


def _error(function):
    with pytest.raises((ValueError, TypeError)) as caught:
        function()
    return caught.type, str(caught.value)


@pytest.mark.parametrize("strategy", ["routing", "cascade", "cascade_routing", "threshold"])
def test_bad_inputs_raise_the_batch_error(strategy):
    k = 4
    options = dict(strategy=strategy, lambdas=0.5, thresholds=[0.5] * (k - 1))
    decider = kernel.Decider(k, **options)
    quality, cost, sigma = np.full(k, 0.5), np.full(k, 0.1), np.full(k, 0.1)
    cases = {
        "nan quality": dict(quality=np.array([0.5, np.nan, 0.5, 0.5])),
        "inf cost": dict(cost=np.array([0.1, np.inf, 0.1, 0.1])),
        "negative cost": dict(cost=np.array([0.1, -0.1, 0.1, 0.1])),
        "negative sigma": dict(sigma=np.array([0.1, 0.1, -1.0, 0.1])),
        "short cost": dict(cost=np.full(k - 1, 0.1)),
        "u above 1": dict(u=1.5),
        "u nan": dict(u=float("nan")),
        "run of 2": dict(run=np.array([2, 0, 0, 0])),
    }
    for name, change in cases.items():
        arguments = dict(quality=quality, cost=cost, sigma=sigma, run=None, u=None) | change
        single = _error(lambda a=arguments: decider.plan(a["quality"], a["cost"], sigma=a["sigma"], run=a["run"],
                                                         u=a["u"]))
        batch = _error(lambda a=arguments: kernel.plan(
            [a["quality"]], [a["cost"]], sigma=[a["sigma"]], run=None if a["run"] is None else [a["run"]],
            u=None if a["u"] is None else [a["u"]], **options))
        assert single == batch, name
    if strategy in ("cascade", "threshold"):
        gap = np.array([True, False, True, False])
        assert "prefix" in _error(lambda: decider.plan(quality, cost, run=gap))[1]
    with pytest.raises(ValueError, match="1-dimensional"):
        decider.plan(quality[None], cost)
    with pytest.raises(TypeError, match="u must be a number"):
        decider.plan(quality, cost, u="0.5")


def test_policy_is_checked_once_at_construction():
    with pytest.raises(ValueError, match="lambdas must be >= 0"):
        kernel.Decider(3, lambdas=-1.0)
    with pytest.raises(ValueError, match="n_models"):
        kernel.Decider(0, lambdas=1.0)
    with pytest.raises(ValueError, match="gamma"):
        kernel.Decider(3, lambdas=1.0, gamma=2.0)
    with pytest.raises(ValueError, match="thresholds has 1 values"):
        kernel.Decider(3, strategy="threshold", thresholds=[0.5])


def test_pickles_by_its_options():
    decider = kernel.Decider(3, lambdas=[0.5, 0.1], strategy="cascade_routing", gamma=0.3)
    copy = pickle.loads(pickle.dumps(decider))
    quality, cost, sigma = np.array([0.3, 0.6, 0.9]), np.array([0.1, 0.2, 0.4]), np.array([0.2, 0.2, 0.1])
    assert copy.plan(quality, cost, sigma=sigma, u=0.2) == decider.plan(quality, cost, sigma=sigma, u=0.2)


@pytest.mark.parametrize("strategy", ["routing", "threshold", "cascade", "cascade_routing"])
def test_shared_table_single_equals_batch(routerbench_subset, strategy):
    """The RouterBench subset's 11 models with the paper's low-noise estimates, every query, two steps."""
    from estimators.simulated import simulate_estimates
    from training.data import read_table

    table = read_table(routerbench_subset / "routerbench_subset.parquet")
    estimates = simulate_estimates(table.quality, table.cost, noise="low", seed=0)
    n, k = table.quality.shape
    policy = dict(strategy=strategy, max_depth=3, gamma=0.5,
                  lambdas=1.0 / np.median(table.cost), thresholds=np.quantile(estimates.ante_quality, 0.6, axis=0)[:-1])
    u = kernel.default_uniforms(n)
    first = np.zeros((n, k), bool)
    chosen = kernel.decide(estimates.ante_quality, estimates.ante_cost, sigma=estimates.ante_sigma, run=first, u=u,
                           **policy)
    second = first.copy()
    second[np.flatnonzero(chosen >= 0), chosen[chosen >= 0]] = True
    spread = {"sigma": np.where(second, estimates.post_sigma, estimates.ante_sigma)}
    quality = np.where(second, estimates.post_quality, estimates.ante_quality)
    cost = np.where(second, estimates.post_cost, estimates.ante_cost)
    _assert_rows_match(estimates.ante_quality, estimates.ante_cost, {"sigma": estimates.ante_sigma}, first, u, policy)
    _assert_rows_match(quality, cost, spread, second, u, policy)
