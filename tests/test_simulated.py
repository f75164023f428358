"""Tests for the simulated estimators of ALGORITHM.md §6."""

from __future__ import annotations

import re
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from estimators.simulated import NOISE_LEVELS, SimulatedEstimates, simulate_estimates

FIELDS = ("ante_quality", "ante_sigma", "ante_cost", "post_quality", "post_sigma", "post_cost")


def _table(n: int = 2000, k: int = 3, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """0/1 qualities with per-model accuracy, and per-query costs that vary around per-model prices."""
    rng = np.random.default_rng(seed)
    accuracy = np.linspace(0.5, 0.85, k)
    quality = (rng.random((n, k)) < accuracy).astype(float)
    price = np.geomspace(1e-4, 5e-3, k)
    cost = price * rng.lognormal(0.0, 0.5, size=(n, k))
    return quality, cost


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def table() -> tuple[np.ndarray, np.ndarray]:
    return _table()


@pytest.mark.parametrize("noise", ["low", "medium", "high"])
def test_shapes_dtypes_and_determinism(table, noise):
    quality, cost = table
    first = simulate_estimates(quality, cost, noise=noise, seed=3)
    again = simulate_estimates(quality, cost, noise=noise, seed=3)
    other = simulate_estimates(quality, cost, noise=noise, seed=4)
    assert isinstance(first, SimulatedEstimates)
    for name in FIELDS:
        value = getattr(first, name)
        assert value.shape == quality.shape and value.dtype == np.float64, name
        np.testing.assert_array_equal(value, getattr(again, name))
    assert not np.array_equal(first.ante_quality, other.ante_quality)


def test_estimates_are_frozen(table):
    est = simulate_estimates(*table)
    with pytest.raises(AttributeError):
        est.ante_quality = est.post_quality


@pytest.mark.parametrize("noise", ["low", "medium", "high"])
def test_quality_is_least_squares_recalibration_on_fit_rows(table, noise):
    quality, cost = table
    rows = np.arange(0, len(quality), 3)
    est = simulate_estimates(quality, cost, noise=noise, fit_rows=rows, seed=1)
    for estimate in (est.ante_quality, est.post_quality):
        for k in range(quality.shape[1]):
            fitted, truth = estimate[rows, k], quality[rows, k]
            residual = truth - fitted
            # Normal equations of a least-squares line: residuals sum to 0
            # (calibrated mean) and are orthogonal to the fitted values.
            assert statistics.fmean(fitted) == pytest.approx(statistics.fmean(truth), abs=1e-12)
            assert float(residual @ fitted) == pytest.approx(0.0, abs=1e-9)


def test_noise_levels_order_the_correlation_with_truth(table):
    quality, cost = table
    ante, post = {}, {}
    for noise in ("low", "medium", "high"):
        est = simulate_estimates(quality, cost, noise=noise, seed=0)
        ante[noise] = [_corr(est.ante_quality[:, k], quality[:, k]) for k in range(quality.shape[1])]
        post[noise] = [_corr(est.post_quality[:, k], quality[:, k]) for k in range(quality.shape[1])]
    for k in range(quality.shape[1]):
        assert ante["low"][k] > ante["medium"][k] > ante["high"][k] > 0
        for noise in ante:
            assert post[noise][k] > ante[noise][k]


def test_ante_sigma_is_std_of_ante_minus_post_on_fit_rows(table):
    quality, cost = table
    rows = np.arange(100, 900)
    est = simulate_estimates(quality, cost, noise="medium", fit_rows=rows, seed=2)
    for k in range(quality.shape[1]):
        differences = [est.ante_quality[i, k] - est.post_quality[i, k] for i in rows]
        expected = statistics.pstdev(differences)
        np.testing.assert_allclose(est.ante_sigma[:, k], expected, rtol=1e-12)
    # A standard deviation, not a variance: of the order of the noise, not its square.
    assert np.all(est.ante_sigma > 0.1) and np.all(est.ante_sigma < 1.0)


def test_post_sigma_is_zero_and_post_cost_is_true_cost(table):
    quality, cost = table
    for noise in NOISE_LEVELS:
        est = simulate_estimates(quality, cost, noise=noise)
        np.testing.assert_array_equal(est.post_sigma, 0.0)
        np.testing.assert_array_equal(est.post_cost, cost)


def test_cost_estimates(table):
    quality, cost = table
    rows = np.arange(500)
    low = simulate_estimates(quality, cost, noise="low", fit_rows=rows)
    medium = simulate_estimates(quality, cost, noise="medium", fit_rows=rows)
    high = simulate_estimates(quality, cost, noise="high", fit_rows=rows)
    np.testing.assert_allclose(high.ante_cost, np.broadcast_to(cost[:500].mean(axis=0), cost.shape))
    for k in range(cost.shape[1]):
        assert _corr(low.ante_cost[:, k], cost[:, k]) >= _corr(medium.ante_cost[:, k], cost[:, k])
    # The most expensive model's costs vary far more than the noise: well estimated at low noise.
    assert _corr(low.ante_cost[:, -1], cost[:, -1]) > 0.9
    for est in (low, medium, high):
        assert np.all(est.ante_cost >= 0)


def test_cost_estimates_are_clipped_at_zero():
    # Most queries are free and a few cost 0.01: the recalibrated line is close
    # to identity, so about half of the free queries get a negative raw estimate.
    cost = np.zeros((400, 2))
    cost[::20] = 0.01
    quality = np.random.default_rng(0).random((400, 2))
    ante_cost = simulate_estimates(quality, cost, noise="low").ante_cost
    assert ante_cost.min() == 0.0
    assert np.count_nonzero(ante_cost[cost == 0] == 0.0) > 100


def test_fit_rows_mask_equals_indices_and_other_rows_do_not_leak(table):
    quality, cost = table
    mask = np.zeros(len(quality), dtype=bool)
    mask[::4] = True
    by_mask = simulate_estimates(quality, cost, fit_rows=mask)
    by_index = simulate_estimates(quality, cost, fit_rows=np.flatnonzero(mask))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(by_mask, name), getattr(by_index, name))
    changed = quality.copy()
    changed[~mask] = 1.0 - changed[~mask]
    leaked = simulate_estimates(changed, cost, fit_rows=mask)
    np.testing.assert_array_equal(leaked.ante_quality[mask], by_mask.ante_quality[mask])
    np.testing.assert_array_equal(leaked.ante_sigma, by_mask.ante_sigma)


def test_constant_truth_column_gives_constant_estimate():
    quality = np.column_stack([np.ones(50), np.arange(50) % 2])
    cost = np.full((50, 2), 0.001)
    est = simulate_estimates(quality, cost, noise="high")
    np.testing.assert_allclose(est.ante_quality[:, 0], 1.0)
    np.testing.assert_allclose(est.ante_cost, 0.001)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quality": np.zeros(5)}, "quality must be a non-empty 2-D"),
        ({"quality": np.zeros((0, 2))}, "quality must be a non-empty 2-D"),
        ({"cost": np.zeros((5, 3))}, "cost has shape"),
        ({"quality": np.where(np.eye(5, 2) > 0, np.nan, 0.0)}, "quality must be finite"),
        ({"cost": np.full((5, 2), np.inf)}, "cost must be finite"),
        ({"cost": -np.ones((5, 2))}, "cost must be >= 0; column 0 has -1.0 at row 0"),
        ({"noise": "extreme"}, "noise must be one of"),
        ({"fit_rows": [0]}, "fit_rows must select at least 2"),
        ({"fit_rows": [1, 1]}, "fit_rows must select at least 2"),
        ({"fit_rows": [0, 9]}, "fit_rows has indices outside"),
        ({"fit_rows": np.ones(4, dtype=bool)}, "boolean mask must have shape"),
        ({"fit_rows": [0.5, 1.5]}, "fit_rows must be 1-D integer"),
    ],
)
def test_invalid_inputs_name_the_argument(kwargs, message):
    arguments = {"quality": np.zeros((5, 2)), "cost": np.zeros((5, 2))}
    arguments.update(kwargs)
    quality, cost = arguments.pop("quality"), arguments.pop("cost")
    with pytest.raises(ValueError, match=re.escape(message)):
        simulate_estimates(quality, cost, **arguments)


@settings(max_examples=30, deadline=None)
@given(
    quality=arrays(np.float64, (12, 3), elements=st.floats(0, 1)),
    cost=arrays(np.float64, (12, 3), elements=st.floats(0, 0.01)),
    noise=st.sampled_from(sorted(NOISE_LEVELS)),
    seed=st.integers(0, 2**16),
)
def test_invariants_hold_for_any_table(quality, cost, noise, seed):
    est = simulate_estimates(quality, cost, noise=noise, seed=seed)
    np.testing.assert_allclose(est.ante_quality.mean(axis=0), quality.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(est.post_quality.mean(axis=0), quality.mean(axis=0), atol=1e-9)
    assert np.all(est.ante_cost >= 0) and np.all(est.ante_sigma >= 0)
    assert np.all(np.ptp(est.ante_sigma, axis=0) == 0)
