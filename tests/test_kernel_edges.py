"""Kernel edge cases, the shared samples, and the errors bad input must raise."""

from __future__ import annotations

import naive
import numpy as np
import pytest

import kernel


def test_normal_samples_are_fixed_centred_and_read_only():
    z = kernel.normal_samples(64, 5)
    assert z.shape == (64, 5)
    np.testing.assert_array_equal(z, kernel.normal_samples(64, 5))
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-15)
    # Scrambled Sobol points through the normal quantile: close to unit variance.
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=0.1)
    with pytest.raises(ValueError, match="read-only"):
        z[0, 0] = 1.0


@pytest.mark.parametrize("bad", [0, 1, 3, 48])
def test_normal_samples_need_a_power_of_two(bad):
    with pytest.raises(ValueError, match="power of two"):
        kernel.normal_samples(bad, 3)


def test_single_model_always_runs_then_stops():
    quality, cost = np.array([[0.3]]), np.array([[5.0]])
    for strategy in ("routing", "cascade", "cascade_routing"):
        assert kernel.decide(quality, cost, lambdas=100.0, strategy=strategy).tolist() == [0]
        assert kernel.decide(quality, cost, run=[[True]], lambdas=0.0, strategy=strategy).tolist() == [-1]
    assert kernel.decide(quality, cost, strategy="threshold", thresholds=[]).tolist() == [0]


def test_zero_uncertainty_expected_max_is_the_max():
    quality = np.array([0.2, 0.9, 0.5])
    z = kernel.normal_samples(32, 3)
    assert kernel.expected_max(quality, np.zeros(3), [0, 2], z) == pytest.approx(0.5)
    assert kernel.expected_max(quality, np.zeros((3, 3)), [0, 1, 2], z) == pytest.approx(0.9)
    assert kernel.expected_max(quality, np.zeros(3), [], z) == -np.inf


def test_uncertainty_makes_a_second_opinion_worth_buying():
    # Two equal, uncertain models: E[max] of both exceeds either alone, so at a
    # small λ cascade routing plans both, and runs the cheaper one first.
    quality = np.array([[0.5, 0.5]])
    cost = np.array([[0.02, 0.01]])
    sigma = np.array([[0.3, 0.3]])
    next_model, plan_mask = kernel.plan(quality, cost, sigma=sigma, lambdas=0.1)
    assert plan_mask.tolist() == [0b11] and next_model.tolist() == [1]
    without = kernel.plan(quality, cost, lambdas=0.1)
    assert bin(int(without[1][0])).count("1") == 1


def test_max_depth_limits_the_number_of_models_run():
    rng = np.random.default_rng(1)
    quality = rng.random((200, 6))
    result = kernel.simulate(quality, np.full_like(quality, 0.3), np.full_like(quality, 0.01),
                             quality, np.zeros_like(quality), np.full_like(quality, 0.01),
                             quality, np.full_like(quality, 0.01), lambdas=0.0, max_depth=2)
    assert result.order.shape == (200, 2)
    assert result.n_run.max() == 2


def test_force_order_only_adds_later_models():
    rng = np.random.default_rng(2)
    quality, cost = rng.random((300, 5)), rng.random((300, 5))
    run = np.zeros((300, 5), bool)
    run[:, 2] = True
    chosen = kernel.decide(quality, cost, sigma=np.full((300, 5), 0.4), run=run, lambdas=0.01, force_order=True)
    assert ((chosen == -1) | (chosen > 2)).all()
    assert (chosen > 2).any()


def test_thirty_two_models_are_supported_and_match_the_reference():
    rng = np.random.default_rng(3)
    quality, cost = np.round(rng.random((3, 32)), 2), np.round(rng.random((3, 32)), 2)
    sigma = np.full((3, 32), 0.2)
    z = kernel.normal_samples(16, 32)
    chosen = kernel.decide(quality, cost, sigma=sigma, lambdas=0.3, max_depth=2, n_samples=16)
    expected = [naive.decide_one(quality[n], cost[n], sigma=sigma[n], lambdas=0.3, strategy="cascade_routing",
                                 max_depth=2, z=z) for n in range(3)]
    assert chosen.tolist() == expected


def test_empty_batch_gives_empty_decisions():
    assert kernel.decide(np.zeros((0, 3)), np.zeros((0, 3)), lambdas=1.0).shape == (0,)


def test_default_u_is_deterministic_and_matches_gamma_share():
    quality = np.tile([[0.5, 0.7]], (1000, 1))
    cost = np.tile([[0.1, 0.3]], (1000, 1))  # tied at λ = 1
    first = kernel.decide(quality, cost, lambdas=1.0, strategy="routing", gamma=0.3)
    np.testing.assert_array_equal(first, kernel.decide(quality, cost, lambdas=1.0, strategy="routing", gamma=0.3))
    assert abs(first.mean() - 0.3) < 0.01


GOOD = dict(quality=np.full((2, 3), 0.5), cost=np.full((2, 3), 0.1))


@pytest.mark.parametrize("change, error, message", [
    (dict(cost=np.full((2, 4), 0.1)), ValueError, r"cost has shape \(2, 4\)"),
    (dict(quality=np.array([[0.5, np.nan, 0.1]] * 2)), ValueError, "quality contains 2 non-finite"),
    (dict(cost=np.array([[0.1, -0.2, 0.1]] * 2)), ValueError, "cost must be >= 0"),
    (dict(sigma=np.full((2, 3), -1.0)), ValueError, "sigma must be >= 0"),
    (dict(sigma=np.full((2, 3), 0.1), cov=np.zeros((2, 3, 3))), ValueError, "not both"),
    (dict(cov=np.tile(np.diag([1.0, -1.0, 1.0]), (2, 1, 1))), ValueError, "positive semi-definite"),
    (dict(cov=np.tile(np.triu(np.ones((3, 3))), (2, 1, 1))), ValueError, "symmetric"),
    (dict(lambdas=-0.5), ValueError, "lambdas must be >= 0"),
    (dict(lambdas=None), TypeError, "lambdas is required"),
    (dict(lambdas=[]), ValueError, "non-empty"),
    (dict(max_depth=0), ValueError, "max_depth must be >= 1"),
    (dict(max_depth=2.5), TypeError, "max_depth must be an integer"),
    (dict(strategy="greedy"), ValueError, "unknown strategy 'greedy'"),
    (dict(strategy="threshold"), TypeError, "needs thresholds"),
    (dict(strategy="threshold", thresholds=[0.5]), ValueError, "expected 2"),
    (dict(run=np.zeros((2, 2), bool)), ValueError, r"run has shape \(2, 2\)"),
    (dict(run=np.full((2, 3), 0.5)), TypeError, "run must be a boolean"),
    (dict(strategy="cascade", run=np.array([[False, True, False]] * 2)), ValueError, "must be a prefix"),
    (dict(gamma=1.5), ValueError, "gamma must be a number in"),
    (dict(u=[0.5]), ValueError, "one per query"),
    (dict(n_samples=100), ValueError, "power of two"),
    (dict(quality="abc"), TypeError, "quality must be numeric"),
    (dict(quality=np.zeros((2, 0)), cost=np.zeros((2, 0))), ValueError, "no model columns"),
    (dict(quality=np.zeros((1, 63)), cost=np.zeros((1, 63))), ValueError, "at most 62"),
])
def test_bad_input_is_refused_with_a_clear_message(change, error, message):
    arguments = {**GOOD, "lambdas": 0.1, **change}
    with pytest.raises(error, match=message):
        kernel.decide(arguments.pop("quality"), arguments.pop("cost"), **arguments)


def test_simulate_refuses_mismatched_tables():
    q = np.full((2, 3), 0.5)
    with pytest.raises(ValueError, match=r"true_cost has shape \(2, 2\)"):
        kernel.simulate(q, q, q, q, q, q, q, np.zeros((2, 2)), lambdas=0.1)
    with pytest.raises(ValueError, match="post_cost must be >= 0"):
        kernel.simulate(q, q, q, q, q, -q, q, q, lambdas=0.1)
