"""The compiled kernel against its brute-force twin (tests/naive.py), on random inputs.

Values are drawn from coarse grids so that exact ties in quality, cost and
score occur often; uncertainties include exact zeros.
"""

from __future__ import annotations

import naive
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernel

GRID = [0.0, 0.1, 0.2, 0.25, 0.5, 0.75, 0.9, 1.0]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_SAMPLES = 16


@st.composite
def problems(draw, strategies=("routing", "cascade", "cascade_routing", "threshold"), use_cov=False, max_models=7):
    """A batch of queries, one policy, and per-query run sets that suit the strategy."""
    n_models = draw(st.integers(1, max_models))
    n_queries = draw(st.integers(1, 4))
    strategy = draw(st.sampled_from(strategies))
    cell = st.sampled_from(GRID)
    quality = np.array(draw(st.lists(cell, min_size=n_queries * n_models, max_size=n_queries * n_models)))
    cost = np.array(draw(st.lists(cell, min_size=n_queries * n_models, max_size=n_queries * n_models)))
    quality = quality.reshape(n_queries, n_models)
    cost = cost.reshape(n_queries, n_models)
    spread = {}
    if use_cov:
        factors = np.array(draw(st.lists(st.sampled_from([-0.3, 0.0, 0.1, 0.2, 0.4]),
                                         min_size=n_queries * n_models * n_models,
                                         max_size=n_queries * n_models * n_models)))
        factors = factors.reshape(n_queries, n_models, n_models)
        spread["cov"] = factors @ np.swapaxes(factors, 1, 2)
    elif draw(st.booleans()):
        sigma = draw(st.lists(st.sampled_from([0.0, 0.0, 0.1, 0.3, 0.5]),
                              min_size=n_queries * n_models, max_size=n_queries * n_models))
        spread["sigma"] = np.array(sigma).reshape(n_queries, n_models)
    run = np.zeros((n_queries, n_models), bool)
    for n in range(n_queries):
        if strategy in ("cascade", "threshold"):
            run[n, : draw(st.integers(0, n_models))] = True
        else:
            run[n] = draw(st.lists(st.booleans(), min_size=n_models, max_size=n_models))
    if draw(st.booleans()):
        lambdas = draw(st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0, 3.0]))
    else:
        lambdas = np.array(draw(st.lists(st.sampled_from([0.0, 0.1, 0.5, 2.0]), min_size=1, max_size=n_models + 1)))
    gamma = draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]))
    u = np.array([min(1.0, max(0.0, gamma + draw(st.sampled_from([-0.01, 0.0, 0.01]))))
                  for _ in range(n_queries)])
    policy = dict(
        lambdas=lambdas,
        strategy=strategy,
        thresholds=np.array(draw(st.lists(cell, min_size=n_models - 1, max_size=n_models - 1))),
        max_depth=draw(st.integers(1, n_models)),
        force_order=draw(st.booleans()),
        gamma=gamma,
    )
    return quality, cost, spread, run, u, policy


def naive_decisions(quality, cost, spread, run, u, policy):
    z = kernel.normal_samples(N_SAMPLES, quality.shape[1])
    return np.array([
        naive.decide_one(quality[n], cost[n], run=run[n], u=u[n], z=z,
                         **{k: v[n] for k, v in spread.items()}, **policy)
        for n in range(quality.shape[0])
    ])


def kernel_decisions(quality, cost, spread, run, u, policy, **options):
    return kernel.decide(quality, cost, run=run, u=u, n_samples=N_SAMPLES, **spread, **policy, **options)


@SETTINGS
@given(problems())
def test_decide_matches_brute_force(problem):
    np.testing.assert_array_equal(kernel_decisions(*problem), naive_decisions(*problem))


@SETTINGS
@given(problems(strategies=("routing", "cascade", "cascade_routing"), use_cov=True))
def test_decide_with_covariance_matches_brute_force(problem):
    np.testing.assert_array_equal(kernel_decisions(*problem), naive_decisions(*problem))


@SETTINGS
@given(problems())
def test_serial_equals_parallel(problem):
    np.testing.assert_array_equal(kernel_decisions(*problem, parallel=False),
                                  kernel_decisions(*problem, parallel=True))


@SETTINGS
@given(problems(strategies=("cascade_routing",)))
def test_pruning_never_changes_a_decision(problem):
    quality, cost, spread, run, u, policy = problem
    pruned = kernel.plan(quality, cost, run=run, u=u, n_samples=N_SAMPLES, prune=True, **spread, **policy)
    full = kernel.plan(quality, cost, run=run, u=u, n_samples=N_SAMPLES, prune=False, **spread, **policy)
    np.testing.assert_array_equal(pruned[0], full[0])
    np.testing.assert_array_equal(pruned[1], full[1])


@SETTINGS
@given(problems(strategies=("routing", "cascade", "cascade_routing")))
def test_plan_contains_run_set_and_next_model(problem):
    quality, cost, spread, run, u, policy = problem
    next_model, plan_mask = kernel.plan(quality, cost, run=run, u=u, n_samples=N_SAMPLES, **spread, **policy)
    members = (plan_mask[:, None] >> np.arange(quality.shape[1])) & 1 == 1
    stopped = next_model == kernel.STOP
    np.testing.assert_array_equal(members[stopped], run[stopped])
    going = np.flatnonzero(~stopped)
    assert members[going, next_model[going]].all()
    assert not run[going, next_model[going]].any()


def _routing_rule(quality, cost, lam):
    """``argmax q - λc``, ties (within the contract's tolerance) to the cheapest, then lowest index."""
    scores = quality - lam * cost
    best = scores.max(axis=1, keepdims=True)
    tied = scores >= best - 1e-9 * np.maximum(1.0, np.abs(best))
    return np.array([min(np.flatnonzero(row), key=lambda i: (c[i], i)) for row, c in zip(tied, cost, strict=True)])


@SETTINGS
@given(problems(strategies=("routing",)))
def test_routing_is_argmax_of_quality_minus_lambda_cost(problem):
    quality, cost, spread, _, _, _ = problem
    for lam in (0.0, 0.1, 0.7, 5.0):
        chosen = kernel.decide(quality, cost, lambdas=lam, strategy="routing", n_samples=N_SAMPLES, **spread)
        np.testing.assert_array_equal(chosen, _routing_rule(quality, cost, lam))


@SETTINGS
@given(problems(strategies=("routing",)))
def test_routing_cost_is_non_increasing_in_lambda(problem):
    quality, cost, spread, _, _, _ = problem
    spent = []
    for lam in np.geomspace(1e-3, 1e3, 25):
        chosen = kernel.decide(quality, cost, lambdas=lam, strategy="routing", n_samples=N_SAMPLES, **spread)
        spent.append(cost[np.arange(len(chosen)), chosen].sum())
    assert np.all(np.diff(spent) <= 1e-12)


def test_routing_expensive_tie_takes_the_dearer_model():
    quality = np.array([[0.5, 0.7]])
    cost = np.array([[0.1, 0.3]])
    # q - λc is 0.4 for both models at λ = 1: a tie.
    cheap = kernel.decide(quality, cost, lambdas=1.0, strategy="routing", gamma=0.5, u=[0.9])
    dear = kernel.decide(quality, cost, lambdas=1.0, strategy="routing", gamma=0.5, u=[0.1])
    assert cheap.tolist() == [0] and dear.tolist() == [1]


@settings(max_examples=60, deadline=None)
@given(problems(strategies=("routing", "cascade", "cascade_routing", "threshold")))
def test_simulate_equals_stepping_by_hand(problem):
    quality, cost, spread, _, u, policy = problem
    rng = np.random.default_rng(0)
    ante_sigma = spread.get("sigma", np.zeros_like(quality))
    post_quality = np.round(np.clip(quality + rng.normal(0, 0.2, quality.shape), 0, 1), 1)
    post_cost = np.round(cost * rng.uniform(0.5, 1.5, cost.shape), 2)
    true_quality = (rng.random(quality.shape) < 0.6).astype(float)
    result = kernel.simulate(quality, ante_sigma, cost, post_quality, np.zeros_like(quality), post_cost,
                             true_quality, post_cost, u=u, n_samples=N_SAMPLES, **policy)
    z = kernel.normal_samples(N_SAMPLES, quality.shape[1])
    for n in range(quality.shape[0]):
        order, spent, answer_quality, answer = naive.simulate_one(
            (quality[n], ante_sigma[n], cost[n]),
            (post_quality[n], np.zeros(quality.shape[1]), post_cost[n]),
            (true_quality[n], post_cost[n]),
            policy={**policy, "u": u[n]}, z=z)
        assert result.order[n][result.order[n] >= 0].tolist() == order
        assert result.cost[n] == pytest.approx(spent)
        assert result.quality[n] == answer_quality
        assert result.answer[n] == answer
        # And stepping the public decide() by hand gives the same episode.
        run = np.zeros(quality.shape[1], bool)
        q, s, c = quality[n].copy(), ante_sigma[n].copy(), cost[n].copy()
        steps = []
        while (nxt := kernel.decide(q[None], c[None], sigma=s[None], run=run[None], u=u[n:n + 1],
                                    n_samples=N_SAMPLES, parallel=False, **policy)[0]) != kernel.STOP:
            steps.append(int(nxt))
            run[nxt] = True
            q[nxt], s[nxt], c[nxt] = post_quality[n, nxt], 0.0, post_cost[n, nxt]
        assert steps == order
        assert kernel.select_answer(q[None], run[None])[0] == answer


@SETTINGS
@given(problems(strategies=("cascade_routing",)))
def test_select_answer_matches_reference(problem):
    quality, _, _, run, _, _ = problem
    expected = [naive.select_one(quality[n], run[n]) for n in range(quality.shape[0])]
    assert kernel.select_answer(quality, run).tolist() == expected


@SETTINGS
@given(problems(strategies=("cascade_routing",)), st.booleans())
def test_expected_max_matches_reference(problem, use_cov):
    quality, _, spread, run, _, _ = problem
    n_models = quality.shape[1]
    z = kernel.normal_samples(N_SAMPLES, n_models)
    sigma = spread.get("sigma", np.full_like(quality, 0.2))
    cov = np.einsum("ni,ij,nj->nij", sigma, np.eye(n_models), sigma) + 0.01
    for n in range(quality.shape[0]):
        members = np.flatnonzero(run[n])
        if use_cov:
            expected = naive.q_of(naive.draws(quality[n], cov=cov[n], z=z), members) if members.size else -np.inf
            value = kernel.expected_max(quality[n], cov[n], run[n], z)
        else:
            expected = naive.q_of(naive.draws(quality[n], sigma[n], z=z), members) if members.size else -np.inf
            value = kernel.expected_max(quality[n], sigma[n], members, z)
        assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(8, 12), st.sampled_from([0.0, 1.0, 10.0, 60.0, 300.0]),
       st.integers(2, 6), st.booleans())
def test_branch_and_bound_equals_full_search_on_larger_pools(seed, n_models, lam, max_depth, some_run):
    """Continuous RouterBench-like estimates, where both cuts of the search fire often."""
    rng = np.random.default_rng(seed)
    n_queries = 50
    quality = rng.beta(4, 2, (n_queries, n_models))
    cost = np.geomspace(8e-5, 5e-3, n_models) * rng.lognormal(0, 0.3, (n_queries, n_models))
    sigma = rng.uniform(0.0, 0.3, (n_queries, n_models))
    run = (rng.random((n_queries, n_models)) < 0.15) if some_run else None
    options = dict(sigma=sigma, run=run, lambdas=lam, max_depth=max_depth, parallel=False)
    pruned = kernel.plan(quality, cost, prune=True, **options)
    full = kernel.plan(quality, cost, prune=False, **options)
    np.testing.assert_array_equal(pruned[1], full[1])
    np.testing.assert_array_equal(pruned[0], full[0])
