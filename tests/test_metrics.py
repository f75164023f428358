"""Tests for the evaluation protocol's maths (ALGORITHM.md §6).

Expected numbers are derived here, by hand or by a plain reference written
from the definition, never pasted from the implementation's output.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.metrics import (
    AucInterval,
    auc,
    auc_bounds,
    bootstrap_auc,
    budget_grid,
    linear_auc,
    single_model_points,
    upper_hull,
)


def reference_auc(costs, qualities, lo, hi, left_quality):
    """The AUC from its definition: anchor, running max, np.interp, trapezoid."""
    points = sorted(zip([lo, *costs], [left_quality, *qualities], strict=True), key=lambda p: (p[0], -p[1]))
    xs, ys, best = [], [], -np.inf
    for x, y in points:
        best = max(best, y)
        if xs and xs[-1] == x:
            continue  # the first of equal costs already carries the best quality
        xs.append(x)
        ys.append(best)
    grid = np.unique(np.clip([lo, hi, *xs], lo, hi))
    return 100 * np.trapezoid(np.interp(grid, xs, ys), grid) / (hi - lo)


# ---------------------------------------------------------------- single models


def test_single_model_points_are_column_means():
    quality = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    cost = np.array([[1.0, 4.0], [2.0, 5.0], [3.0, 9.0]])
    mean_cost, mean_quality = single_model_points(quality, cost)
    np.testing.assert_allclose(mean_cost, [2.0, 6.0])
    np.testing.assert_allclose(mean_quality, [2 / 3, 2 / 3])


@pytest.mark.parametrize(
    ("quality", "cost", "message"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "cost has shape"),
        (np.zeros(3), np.zeros(3), "quality must be 2-D"),
        (np.full((3, 2), np.nan), np.zeros((3, 2)), "quality must be finite"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "no rows"),
    ],
)
def test_single_model_points_rejects_bad_input(quality, cost, message):
    with pytest.raises(ValueError, match=message):
        single_model_points(quality, cost)


# ---------------------------------------------------------------- upper hull


def test_hull_excludes_points_below_it_and_dominated_points():
    # 0 and 2 and 4 form a concave frontier; 1 is strictly below the chord
    # 0-2; 3 costs more than 2 but is worse; 5 is the most expensive but no
    # better than 4.
    costs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    qualities = [0.5, 0.55, 0.8, 0.7, 0.9, 0.9]
    assert upper_hull(costs, qualities).tolist() == [0, 2, 4]


def test_hull_order_does_not_depend_on_input_order():
    costs = np.array([5.0, 1.0, 3.0])
    qualities = np.array([0.9, 0.5, 0.8])
    assert upper_hull(costs, qualities).tolist() == [1, 2, 0]


def test_collinear_points_add_no_vertex():
    # 0.1/0.2/0.3 are not exact in binary: collinearity needs a tolerance.
    costs = [0.1, 0.2, 0.3, 0.4]
    qualities = [0.2, 0.4, 0.6, 0.65]
    assert upper_hull(costs, qualities).tolist() == [0, 2, 3]


def test_equal_costs_keep_the_best_and_exact_duplicates_the_first():
    costs = [1.0, 1.0, 2.0, 2.0, 2.0]
    qualities = [0.4, 0.5, 0.7, 0.7, 0.6]
    assert upper_hull(costs, qualities).tolist() == [1, 2]


def test_single_model_and_all_equal_points():
    assert upper_hull([0.3], [0.7]).tolist() == [0]
    assert upper_hull([1.0, 1.0, 1.0], [0.5, 0.5, 0.5]).tolist() == [0]


def test_cheapest_model_is_on_the_hull_even_when_bad():
    assert upper_hull([1.0, 2.0], [0.9, 0.1]).tolist() == [0]
    assert upper_hull([2.0, 1.0], [0.9, 0.1]).tolist() == [1, 0]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 20).map(lambda v: v / 10), st.integers(0, 20).map(lambda v: v / 20)),
        min_size=1,
        max_size=12,
    )
)
def test_hull_is_the_concave_frontier(points):
    costs = np.array([p[0] for p in points])
    qualities = np.array([p[1] for p in points])
    hull = upper_hull(costs, qualities)
    hx, hy = costs[hull], qualities[hull]
    # Starts at the cheapest point, ends at the best one.
    assert hx[0] == costs.min() and hy[0] == qualities[costs == costs.min()].max()
    assert hy[-1] == qualities.max()
    # Strictly increasing and strictly concave.
    assert np.all(np.diff(hx) > 0) and np.all(np.diff(hy) > 0)
    slopes = np.diff(hy) / np.diff(hx)
    assert np.all(np.diff(slopes) < 0)
    # No point lies above it (flat to the right of the last vertex).
    assert np.all(qualities <= np.interp(costs, hx, hy) + 1e-12)


# ---------------------------------------------------------------- budget grid


def test_budget_grid_places_budgets_between_hull_neighbours():
    costs = [1.0, 2.0, 3.0, 4.0]
    qualities = [0.5, 0.7, 0.6, 0.9]  # hull: costs 1, 2, 4
    np.testing.assert_allclose(budget_grid(costs, qualities, per_segment=3), [1.0, 1.5, 2.0, 3.0, 4.0])
    grid = budget_grid(costs, qualities)
    assert grid.size == 9 * 2 + 1
    assert np.all(np.diff(grid) > 0)
    np.testing.assert_allclose(grid[:10], np.arange(10) / 9 + 1)
    assert grid[0] == 1.0 and grid[-1] == 4.0


def test_budget_grid_of_a_single_hull_model_is_its_cost():
    np.testing.assert_array_equal(budget_grid([2.0, 3.0], [0.8, 0.7]), [2.0])


@pytest.mark.parametrize("per_segment", [1, 0, 2.5, True])
def test_budget_grid_rejects_bad_per_segment(per_segment):
    with pytest.raises(ValueError, match="per_segment"):
        budget_grid([1.0, 2.0], [0.1, 0.2], per_segment=per_segment)


# ---------------------------------------------------------------- AUC


def test_auc_of_a_constant_curve_is_the_constant():
    assert auc([1.0, 2.0, 3.0], [0.7, 0.7, 0.7], 1.0, 3.0, left_quality=0.7) == pytest.approx(70.0)
    assert auc([2.0], [0.42], 0.0, 5.0, left_quality=0.42) == pytest.approx(42.0)


def test_auc_by_hand():
    # Anchor (1, .5), then (2, .7), (3, .8), flat to 4:
    # [1,2]: mean .6; [2,3]: mean .75; [3,4]: .8  ->  (0.6 + 0.75 + 0.8) / 3.
    assert auc([3.0, 2.0], [0.8, 0.7], 1.0, 4.0, left_quality=0.5) == pytest.approx(100 * 2.15 / 3)


def test_straight_line_between_hull_points_equals_linear_auc():
    costs = np.array([1.0, 2.0, 3.0])
    qualities = np.array([0.5, 0.6, 0.9])  # 1 is below the chord 0-2
    line_costs = np.linspace(1.0, 3.0, 7)
    line_qualities = 0.5 + 0.2 * (line_costs - 1.0)
    lo, hi, left = auc_bounds(costs, qualities)
    assert auc(line_costs, line_qualities, lo, hi, left_quality=left) == pytest.approx(linear_auc(costs, qualities))
    # Trapezoid of the chord by hand: mean of 0.5 and 0.9.
    assert linear_auc(costs, qualities) == pytest.approx(70.0)


def test_linear_auc_extends_flat_after_the_best_model():
    # Hull (1, .6) -> (2, .8); the most expensive model (4, .7) sets hi.
    # [1,2]: mean .7; [2,4]: .8  ->  (0.7 + 1.6) / 3.
    assert linear_auc([1.0, 2.0, 4.0], [0.6, 0.8, 0.7]) == pytest.approx(100 * 2.3 / 3)


def test_monotone_repair_uses_the_best_cheaper_policy():
    # The dip at cost 3 is worth nothing: with budget 3 one runs the cost-2 policy.
    dipped = auc([2.0, 3.0, 4.0], [0.8, 0.6, 0.9], 1.0, 5.0, left_quality=0.5)
    repaired = auc([2.0, 3.0, 4.0], [0.8, 0.8, 0.9], 1.0, 5.0, left_quality=0.5)
    assert dipped == pytest.approx(repaired)
    # [1,2]: .65; [2,3]: .8; [3,4]: .85; [4,5]: .9
    assert dipped == pytest.approx(100 * (0.65 + 0.8 + 0.85 + 0.9) / 4)


def test_points_outside_the_range_shape_the_curve_only_inside_it():
    # (0, .9) is cheaper than lo and better than the anchor: it lifts everything.
    assert auc([0.0, 2.0], [0.9, 0.5], 1.0, 3.0, left_quality=0.4) == pytest.approx(90.0)
    # (4, .9) is beyond hi: the segment from (2, .5) to it is cut at 3, where it is .7.
    # [1,2]: mean(.4, .5) = .45; [2,3]: mean(.5, .7) = .6
    assert auc([2.0, 4.0], [0.5, 0.9], 1.0, 3.0, left_quality=0.4) == pytest.approx(100 * (0.45 + 0.6) / 2)


def test_equal_costs_count_with_their_best_quality():
    tied = auc([2.0, 2.0, 3.0], [0.6, 0.8, 0.8], 1.0, 3.0, left_quality=0.4)
    assert tied == pytest.approx(auc([2.0, 3.0], [0.8, 0.8], 1.0, 3.0, left_quality=0.4))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-1, 6), st.floats(0, 1)), min_size=1, max_size=15),
    st.floats(0, 1),
)
def test_auc_matches_the_reference(points, left_quality):
    costs = [p[0] for p in points]
    qualities = [p[1] for p in points]
    got = auc(costs, qualities, 0.5, 4.5, left_quality=left_quality)
    assert got == pytest.approx(reference_auc(costs, qualities, 0.5, 4.5, left_quality), abs=1e-9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([1.0], [0.5], 2.0, 2.0), "lo < hi"),
        (([1.0], [0.5], 3.0, 2.0), "lo < hi"),
        (([1.0, 2.0], [0.5], 1.0, 2.0), "curve_costs has 2 points but curve_qualities has 1"),
        (([], [], 1.0, 2.0), "curve_costs is empty"),
        (([np.nan], [0.5], 1.0, 2.0), "curve_costs must be finite"),
        (([1.0], [0.5], 1.0, np.inf), "must be finite"),
    ],
)
def test_auc_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        auc(*args, left_quality=0.5)


def test_linear_auc_of_a_single_cost_is_undefined():
    with pytest.raises(ValueError, match="lo < hi"):
        linear_auc([1.0], [0.5])


# ---------------------------------------------------------------- bootstrap


def _strategy(n: int, budgets: int, rng: np.random.Generator, skill: float):
    """Per-query 0/1 quality and cost of a made-up strategy at increasing budgets."""
    spend = np.linspace(1.0, 3.0, budgets)[:, None]
    cost = spend * rng.uniform(0.5, 1.5, size=(budgets, n))
    quality = (rng.random((budgets, n)) < skill + 0.1 * spend).astype(float)
    return quality, cost


def _slow_bootstrap(quality, cost, lo, hi, left, n_boot, seed):
    """Resample with explicit indices, one resample at a time."""
    rows = np.random.default_rng(seed).integers(0, quality.shape[1], size=(n_boot, quality.shape[1]))
    return np.array([auc(cost[:, r].mean(axis=1), quality[:, r].mean(axis=1), lo, hi, left_quality=left) for r in rows])


def test_bootstrap_matches_explicit_resampling():
    rng = np.random.default_rng(0)
    quality, cost = _strategy(60, 5, rng, 0.4)
    result = bootstrap_auc({"s": quality}, {"s": cost}, 1.0, 3.0, 0.45, n_boot=40, seed=11)
    draws = _slow_bootstrap(quality, cost, 1.0, 3.0, 0.45, 40, 11)
    point = auc(cost.mean(axis=1), quality.mean(axis=1), 1.0, 3.0, left_quality=0.45)
    expected = AucInterval(point, *np.percentile(draws, [2.5, 97.5]))
    assert result["strategies"]["s"] == pytest.approx(expected)


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n():
    widths = []
    for n in (200, 5000):
        rng = np.random.default_rng(n)
        quality, cost = _strategy(n, 8, rng, 0.4)
        interval = bootstrap_auc({"s": quality}, {"s": cost}, 1.0, 3.0, 0.45, n_boot=300)["strategies"]["s"]
        assert interval.low <= interval.estimate <= interval.high
        widths.append(interval.high - interval.low)
    # The width shrinks like 1/sqrt(n): a factor of 5 here.
    assert widths[1] < widths[0] / 2.5


def test_identical_strategies_have_a_zero_width_difference():
    rng = np.random.default_rng(1)
    quality, cost = _strategy(300, 6, rng, 0.5)
    result = bootstrap_auc({"a": quality, "b": quality.copy()}, {"a": cost, "b": cost.copy()}, 1.0, 3.0, 0.5)
    assert result["differences"][("a", "b")] == AucInterval(0.0, 0.0, 0.0)
    assert result["strategies"]["a"] == result["strategies"]["b"]


def test_paired_difference_is_tighter_than_the_marginal_intervals():
    rng = np.random.default_rng(2)
    quality, cost = _strategy(1000, 6, rng, 0.4)
    better = np.maximum(quality, (rng.random(quality.shape) < 0.05))  # a few more right answers
    result = bootstrap_auc({"base": quality, "better": better}, {"base": cost, "better": cost}, 1.0, 3.0, 0.45)
    base, improved = result["strategies"]["base"], result["strategies"]["better"]
    assert ("better", "base") not in result["differences"]  # pairs follow the given order
    difference = result["differences"][("base", "better")]
    assert difference.estimate == pytest.approx(base.estimate - improved.estimate)
    assert difference.high < 0  # the improvement is significant when paired ...
    assert improved.low < base.high  # ... although the marginal intervals overlap
    assert difference.high - difference.low < (base.high - base.low) / 2


def test_bootstrap_is_seeded_and_strategies_may_have_different_budget_counts():
    rng = np.random.default_rng(3)
    q1, c1 = _strategy(100, 4, rng, 0.4)
    q2, c2 = _strategy(100, 9, rng, 0.5)
    first = bootstrap_auc({"x": q1, "y": q2}, {"x": c1, "y": c2}, 1.0, 3.0, 0.45, n_boot=50, seed=5)
    again = bootstrap_auc({"x": q1, "y": q2}, {"x": c1, "y": c2}, 1.0, 3.0, 0.45, n_boot=50, seed=5)
    other = bootstrap_auc({"x": q1, "y": q2}, {"x": c1, "y": c2}, 1.0, 3.0, 0.45, n_boot=50, seed=6)
    assert first == again and first != other
    assert set(first["differences"]) == {("x", "y")}


def test_bootstrap_compares_every_pair_of_strategies():
    """Speed (5 strategies x 3,000 queries x 500 resamples) is measured in bench/bench_metrics.py."""
    rng = np.random.default_rng(4)
    strategies = {f"s{i}": _strategy(300, 30, rng, 0.3 + 0.05 * i) for i in range(5)}
    quality = {name: q for name, (q, _) in strategies.items()}
    cost = {name: c for name, (_, c) in strategies.items()}
    result = bootstrap_auc(quality, cost, 1.0, 3.0, 0.4, n_boot=50)
    assert set(result["differences"]) == {(f"s{i}", f"s{j}") for i in range(5) for j in range(i + 1, 5)}


@pytest.mark.parametrize(
    ("quality", "cost", "kwargs", "message"),
    [
        ({}, {}, {}, "per_query_quality is empty"),
        ({"a": np.zeros((2, 3))}, {"b": np.zeros((2, 3))}, {}, "must name the same strategies"),
        ({"a": np.zeros((2, 3))}, {"a": np.zeros((2, 4))}, {}, "per_query_cost['a'] has shape (2, 4)"),
        (
            {"a": np.zeros((2, 3)), "b": np.zeros((2, 4))},
            {"a": np.zeros((2, 3)), "b": np.zeros((2, 4))},
            {},
            "the same 3 test queries",
        ),
        ({"a": np.zeros(3)}, {"a": np.zeros(3)}, {}, "per_query_quality['a'] must be 2-D"),
        ({"a": np.zeros((2, 3))}, {"a": np.zeros((2, 3))}, {"n_boot": 0}, "n_boot must be a positive integer"),
        ({"a": np.zeros((2, 3))}, {"a": np.zeros((2, 3))}, {"confidence": 1.0}, "confidence must be in (0, 1)"),
    ],
)
def test_bootstrap_rejects_bad_input(quality, cost, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        bootstrap_auc(quality, cost, 1.0, 3.0, 0.5, **kwargs)
