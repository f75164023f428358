"""Policy fitting: the budget is never exceeded, and infeasible budgets are reported."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.episodes import TableEpisodes
from training.policy import BudgetError, Policy, _Budgets, _fit_gamma, _Search, fit_policy

STRATEGIES = ("routing", "cascade", "cascade_routing", "threshold")


def random_episodes(seed: int, n_queries: int, n_models: int) -> TableEpisodes:
    """Noisy ex-ante estimates, exact post-hoc ones, costs rising with the model index."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n_queries, n_models)) < np.linspace(0.5, 0.9, n_models)).astype(float)
    cost = np.geomspace(1e-4, 5e-3, n_models) * rng.lognormal(0, 0.3, (n_queries, n_models))
    ante = np.clip(truth * 0.4 + 0.3 + rng.normal(0, 0.2, truth.shape), 0, 1)
    return TableEpisodes(ante, np.full_like(ante, 0.25), cost.mean(axis=0) + 0 * cost,
                         truth, np.zeros_like(truth), cost, truth, cost, parallel=False)


def single_model_costs(episodes: TableEpisodes) -> np.ndarray:
    return episodes.tables[7].mean(axis=0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 80), st.integers(1, 5), st.sampled_from(STRATEGIES),
       st.floats(0.2, 2.0), st.booleans())
def test_calibration_cost_never_exceeds_the_budget(seed, n_queries, n_models, strategy, scale, per_step):
    episodes = random_episodes(seed, n_queries, n_models)
    budget = float(scale * single_model_costs(episodes).mean())
    policy = fit_policy(episodes, budget, strategy=strategy, per_step=per_step, on_infeasible="clamp")
    replayed = policy.play(episodes)
    assert replayed.mean_cost == pytest.approx(policy.calibration_cost, rel=1e-12)
    assert replayed.mean_quality == pytest.approx(policy.calibration_quality, rel=1e-12)
    if policy.budget_status == "below_min":
        assert policy.calibration_cost > budget
        with pytest.raises(BudgetError, match="below the cheapest"):
            fit_policy(episodes, budget, strategy=strategy, per_step=per_step)
    else:
        assert policy.calibration_cost <= budget


def test_more_budget_buys_at_least_as_much_quality():
    episodes = random_episodes(0, 400, 4)
    costs = single_model_costs(episodes)
    qualities = [fit_policy(episodes, float(b)).calibration_quality
                 for b in np.linspace(costs[0], costs[-1], 6)]
    assert np.all(np.diff(qualities) >= -0.01)
    assert qualities[-1] > qualities[0] + 0.05


def test_budget_above_the_best_policy_is_reported_and_spends_less():
    episodes = random_episodes(1, 200, 3)
    policy = fit_policy(episodes, 1.0)
    assert policy.budget_status == "above_max"
    assert np.all(policy.lambdas == 0)
    assert policy.calibration_cost < 1.0


def test_budget_below_the_cheapest_policy_raises_with_the_reachable_cost():
    episodes = random_episodes(2, 200, 3)
    cheapest = single_model_costs(episodes)[0]
    with pytest.raises(BudgetError, match=r"cheapest cascade_routing policy, which costs"):
        fit_policy(episodes, cheapest / 10)


def test_per_step_search_is_never_worse_than_one_lambda():
    episodes = random_episodes(3, 300, 4)
    budget = float(single_model_costs(episodes)[1:3].mean())
    one = fit_policy(episodes, budget)
    per_step = fit_policy(episodes, budget, per_step=True)
    assert per_step.calibration_quality >= one.calibration_quality
    assert per_step.calibration_cost <= budget


def test_gamma_mixes_exact_ties_to_meet_the_budget():
    # Identical queries: q - λc ties exactly at λ = 1 between the two models.
    n = 100
    quality = np.tile([0.5, 0.7], (n, 1))
    cost = np.tile([0.1, 0.3], (n, 1))
    zeros = np.zeros_like(quality)
    episodes = TableEpisodes(quality, zeros, cost, quality, zeros, cost, quality, cost)
    template = Policy("routing", np.ones(1), None, 0.0, 1, False, 64, budget=0.2)
    search = _Search(episodes, template)
    cheap = search.measure()
    gamma, outcome = _fit_gamma(search, {"lambdas": np.ones(1)}, cheap, _Budgets(0.2))
    assert cheap.mean_cost == pytest.approx(0.1)
    assert 0.45 <= gamma <= 0.5
    assert 0.19 <= outcome.mean_cost <= 0.2


def test_policy_is_plain_data_and_pickles():
    episodes = random_episodes(4, 100, 3)
    policy = fit_policy(episodes, float(single_model_costs(episodes).mean()))
    clone = pickle.loads(pickle.dumps(policy))
    np.testing.assert_array_equal(clone.lambdas, policy.lambdas)
    assert clone.play(episodes).mean_cost == policy.calibration_cost


@pytest.mark.parametrize("bad, message", [
    (dict(budget=-1.0), "budget must be a finite number >= 0"),
    (dict(budget=float("nan")), "budget must be a finite number >= 0"),
    (dict(strategy="greedy"), "unknown strategy"),
    (dict(on_infeasible="ignore"), "on_infeasible must be"),
    (dict(max_depth=0), "max_depth must be >= 1"),
])
def test_bad_fitting_arguments_are_refused(bad, message):
    arguments = {"budget": 1e-3, **bad}
    with pytest.raises(ValueError, match=message):
        fit_policy(random_episodes(5, 20, 2), arguments.pop("budget"), **arguments)


def test_empty_calibration_set_is_refused():
    empty = np.zeros((0, 2))
    with pytest.raises(ValueError, match="no queries"):
        TableEpisodes(empty, empty, empty, empty, empty, empty, empty, empty)


def test_a_fixed_model_policy_calls_its_model_once_and_only_on_an_empty_run_set():
    from estimators.estimator import Estimates
    from training.policy import single_model_policy

    policy = single_model_policy(2, 0.01)
    run = np.array([[False, False, False], [False, True, False], [False, False, True]])
    quality = np.full(run.shape, 0.5)
    next_model, masks = policy.plan(Estimates(quality, None, quality), run, None, parallel=False)
    assert next_model.tolist() == [2, -1, -1]
    assert masks.tolist() == [0b100, 0b010, 0b100]
    assert policy.decide(quality, quality, run=run).tolist() == [2, -1, -1]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 3.0), st.sampled_from([0.5, 1.0, 2.0]))
def test_sigma_transform_keeps_correlations_and_transforms_the_diagonal_like_sigma(seed, scale, power):
    from training.decision import uncertainty_keywords
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.0, 0.6, (4, 3))
    sigma[0, 0] = 0.0  # a model already run
    correlation = np.array([[1.0, 0.4, -0.2], [0.4, 1.0, 0.1], [-0.2, 0.1, 1.0]])
    cov = sigma[:, :, None] * sigma[:, None, :] * correlation
    transformed = uncertainty_keywords(sigma, None, (scale, power))["sigma"]
    np.testing.assert_allclose(transformed, scale * sigma ** power)
    expected_cov = transformed[:, :, None] * transformed[:, None, :] * correlation
    np.testing.assert_allclose(uncertainty_keywords(None, cov, (scale, power))["cov"], expected_cov, atol=1e-15)


@pytest.mark.parametrize("transform", [(-1.0, 1.0), (1.0, 0.0), (float("nan"), 1.0), (1.0, float("inf"))])
def test_bad_sigma_transforms_are_refused(transform):
    from training.decision import uncertainty_keywords
    with pytest.raises(ValueError, match="σ transform"):
        uncertainty_keywords(np.ones((2, 2)), None, transform)


def test_fitting_among_sigma_transforms_keeps_the_best_on_calibration():
    from training.policy import SIGMA_TRANSFORMS
    episodes = random_episodes(3, 200, 4)
    budget = float(single_model_costs(episodes).mean())
    each = [fit_policy(episodes, budget, sigma_transform=t) for t in SIGMA_TRANSFORMS]
    best = fit_policy(episodes, budget, sigma_transforms=SIGMA_TRANSFORMS)
    assert best.calibration_quality == max(p.calibration_quality for p in each)
    first_best = next(p for p in each if p.calibration_quality == best.calibration_quality)
    assert best.sigma_transform == first_best.sigma_transform  # ties keep the earlier transform
    assert best.play(episodes).mean_quality == pytest.approx(best.calibration_quality, rel=1e-12)
