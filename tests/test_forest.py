"""Forest: QuickScorer equals the node-by-node walk bit for bit, and LightGBM's own predict.

The walk (``Forest.walk``) is the reference: it follows LightGBM's rules node
by node. Forests come from real ``LGBMRegressor`` fits on random data with
NaN, exact zeros, ``-0.0`` and ``±inf``, under the settings that give each
missing type (``None``, ``Zero``, ``NaN``); the rows they are evaluated on
add every threshold, its neighbours and LightGBM's "zero" boundaries.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

lightgbm = pytest.importorskip("lightgbm")

from estimators._forest import (  # noqa: E402
    MAX_QUICKSCORER_LEAVES,
    Forest,
    Tabulated,
    _lowest_bit,
    _lowest_bit_de_bruijn,
    _quickscore,
)

ZERO = 1e-35
FLOAT_ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold, 1e-35f widened to double
SPECIAL = np.array([np.nan, 0.0, -0.0, np.inf, -np.inf, ZERO, -ZERO, np.nextafter(ZERO, 1.0), -np.nextafter(ZERO, 1.0),
                    FLOAT_ZERO, -FLOAT_ZERO, np.nextafter(FLOAT_ZERO, 1.0), -np.nextafter(FLOAT_ZERO, 1.0),
                    1e-36, -1e-36, 1e300, -1e300, np.finfo(float).max, -np.finfo(float).max])


def fit(X, y, seed=0, **params) -> lightgbm.LGBMRegressor:
    params = {"n_estimators": 3, "num_leaves": 8, "min_child_samples": 2, "min_child_weight": 0.0,
              "verbose": -1, "random_state": seed, **params}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lightgbm.LGBMRegressor(**params).fit(X, y)


def random_data(rng: np.random.Generator, n_rows: int, n_features: int, nan: float, zero: float):
    """Features with NaN, exact ±0.0, a few ±inf and repeated values; a target that depends on all of it."""
    X = rng.normal(0.0, rng.uniform(0.1, 10.0, n_features), (n_rows, n_features))
    X[:, ::2] = np.round(X[:, ::2])  # ties: many rows share a value
    X[rng.random(X.shape) < zero] = 0.0
    X[rng.random(X.shape) < zero / 4] = -0.0
    X[rng.random(X.shape) < 0.02] = np.inf
    X[rng.random(X.shape) < 0.02] = -np.inf
    X[rng.random(X.shape) < nan] = np.nan
    finite = np.clip(np.nan_to_num(X, nan=0.0), -20.0, 20.0)
    y = finite @ rng.normal(0.0, 1.0, n_features) + 2.0 * np.isnan(X).sum(1) - 1.5 * (X == 0.0).sum(1)
    return X, y + rng.normal(0.0, 0.5, n_rows)


def probes(forest: Forest, X: np.ndarray, rng: np.random.Generator, n: int = 300) -> np.ndarray:
    """``X`` plus rows mixing special values, thresholds and their float neighbours."""
    a = forest.arrays
    values = [SPECIAL, rng.normal(0.0, 3.0, 20)]
    if a["threshold"].size:
        t = a["threshold"]
        values += [t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf), -t]
    pool = np.concatenate(values)
    rows = rng.choice(pool, (n, X.shape[1]))
    own = rng.random((n, X.shape[1])) < 0.3  # keep some rows near the data, too
    rows[own] = X[rng.integers(0, len(X), n)][own]
    return np.vstack([X, rows])


def bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values).view(np.uint64)


def assert_exact(forest: Forest, rows: np.ndarray, regressors=None) -> None:
    """QuickScorer, serial and parallel, equals the walk bitwise (and each regressor's predict)."""
    expected = forest.walk(rows)
    assert np.array_equal(bits(forest.walk(rows, parallel=True)), bits(expected))
    for parallel in (False, True):
        got = forest.predict(rows, parallel=parallel)
        assert got.shape == (len(rows), forest.n_outputs)
        assert np.array_equal(bits(got), bits(expected))
    for column, regressor in enumerate(regressors or []):
        if regressor is not None:
            assert_like_lightgbm(expected[:, column], rows, regressor)


def assert_like_lightgbm(predicted: np.ndarray, rows: np.ndarray, regressor) -> None:
    """``predicted`` equals ``regressor.predict(rows)`` on the rows where Forest and LightGBM agree by design.

    ``dump_model`` writes thresholds beyond ±1e300 (``±inf`` or ``±DBL_MAX``
    after ``±inf`` in the training data) as ±1e300, so where the dump has
    such a threshold, values beyond ±1e300 may go another way in LightGBM.
    And ``Forest`` takes 1e-35 for LightGBM's "zero" edge (``kZeroThreshold``),
    which is float32(1e-35), 1.8e-43 wider: values in between differ.
    """
    clamped = np.any(np.abs(Forest.from_regressors([regressor]).arrays["threshold"]) == 1e300)
    edge = (np.abs(rows) > ZERO) & (np.abs(rows) <= FLOAT_ZERO)
    comparable = ~(((np.abs(rows) >= 1e300) & clamped) | edge).any(1)
    np.testing.assert_allclose(predicted[comparable], regressor.predict(rows[comparable]), rtol=1e-12, atol=1e-12)


def leaf_counts(forest: Forest) -> np.ndarray:
    a = forest.arrays

    def count(node: int) -> int:
        return 1 if node < 0 else count(int(a["left"][node])) + count(int(a["right"][node]))

    return np.array([count(int(root)) for root in a["roots"]])


# --------------------------------------------------------------------------- #
# layout
# --------------------------------------------------------------------------- #


def test_lowest_bit_is_exact_for_every_bit_and_random_words():
    rng = np.random.default_rng(0)
    words = [1 << b for b in range(64)] + [int(w) | 1 << 63 for w in rng.integers(1, 2**62, 200)]
    words += [int(w) for w in rng.integers(1, 2**62, 200)] + [2**64 - 1, 2**64 - 2**63]
    for word in words:
        expected = (word & -word).bit_length() - 1
        assert _lowest_bit(np.uint64(word)) == expected
        assert _lowest_bit_de_bruijn(np.uint64(word)) == expected


def test_leaves_are_numbered_left_to_right_and_masks_clear_the_left_subtree():
    rng = np.random.default_rng(1)
    X, y = random_data(rng, 400, 4, nan=0.1, zero=0.2)
    forest = Forest.from_regressors([fit(X, y, n_estimators=4, num_leaves=20), fit(X, -y, n_estimators=2)])
    a = forest.arrays
    assert forest.quickscorer
    leaf_start = a["qs_leaf_start"]
    np.testing.assert_array_equal(np.diff(np.append(leaf_start, a["leaf_value"].size)), leaf_counts(forest))

    def in_order(node: int) -> list[int]:
        return [-node - 1] if node < 0 else in_order(int(a["left"][node])) + in_order(int(a["right"][node]))

    for t, root in enumerate(a["roots"]):
        leaves = in_order(int(root))  # an in-order walk meets the leaves left to right
        assert leaves == list(range(leaf_start[t], leaf_start[t] + len(leaves)))
    # every node's mask, found back by (tree, threshold, feature, missing type)
    n = a["feature"].size
    assert a["qs_threshold"].size == n and a["qs_mask"].dtype == np.uint64 and a["qs_tree"].dtype == np.int32
    for node in range(n):
        t = int(np.searchsorted(leaf_start, min(in_order(node)), side="right")) - 1
        left = in_order(int(a["left"][node]))
        expected = (2**64 - 1) ^ sum(1 << (leaf - int(leaf_start[t])) for leaf in left)
        group = np.flatnonzero((a["qs_group_feature"] == a["feature"][node])
                               & (a["qs_group_kind"] == a["missing"][node]))
        assert group.size == 1
        lo, hi = a["qs_group_start"][group[0]], a["qs_group_start"][group[0] + 1]
        match = [k for k in range(lo, hi) if a["qs_tree"][k] == t and a["qs_threshold"][k] == a["threshold"][node]
                 and int(a["qs_mask"][k]) == expected]
        assert match
        if not a["default_left"][node]:
            dlo, dhi = a["qs_default_start"][group[0]], a["qs_default_start"][group[0] + 1]
            assert any(a["qs_default_tree"][k] == t and int(a["qs_default_mask"][k]) == expected
                       for k in range(dlo, dhi))
    # thresholds ascend within each group
    for g in range(a["qs_group_feature"].size):
        assert np.all(np.diff(a["qs_threshold"][a["qs_group_start"][g]:a["qs_group_start"][g + 1]]) >= 0)


# --------------------------------------------------------------------------- #
# QuickScorer == walk == LightGBM
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_all_three_missing_types_and_both_default_sides_occur_and_match():
    rng = np.random.default_rng(2)
    X, y = random_data(rng, 600, 5, nan=0.15, zero=0.25)
    X[:, 4] = np.where(np.isnan(X[:, 4]), 1.0, X[:, 4])  # a feature without NaN: missing type None
    regressors = [fit(X, y, n_estimators=6, num_leaves=24),  # NaN where the feature has NaN, else None
                  fit(X, y, 1, n_estimators=6, num_leaves=24, zero_as_missing=True),  # Zero
                  fit(X, y, 2, n_estimators=6, num_leaves=24, use_missing=False)]  # None
    forest = Forest.from_regressors(regressors)
    a = forest.arrays
    kinds = {(int(kind), bool(left)) for kind, left in zip(a["missing"], a["default_left"], strict=True)}
    assert {0, 1, 2} <= {kind for kind, _ in kinds}
    assert {(1, False), (1, True), (2, False), (2, True)} <= kinds
    assert forest.quickscorer
    pairs = set(zip(a["qs_group_feature"], a["qs_group_kind"], strict=True))
    assert len(pairs) == a["qs_group_feature"].size
    assert_exact(forest, probes(forest, X, rng, n=2000), regressors)


@st.composite
def forests(draw):
    """A Forest of 1-3 regressors fitted on random data, the regressors, and rows to score."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_features = draw(st.integers(1, 6))
    X, y = random_data(rng, draw(st.integers(10, 300)), n_features,
                       nan=draw(st.sampled_from([0.0, 0.05, 0.3])), zero=draw(st.sampled_from([0.0, 0.1, 0.5])))
    regressors = []
    for k in range(draw(st.integers(1, 3))):
        objective = draw(st.sampled_from(["regression", "cross_entropy"]))
        target = 1.0 / (1.0 + np.exp(-np.clip(y, -30, 30) / 3.0)) if objective == "cross_entropy" else y
        regressors.append(fit(X, target, seed + k, objective=objective,
                              n_estimators=draw(st.integers(1, 4)), num_leaves=draw(st.integers(2, 40)),
                              min_child_samples=draw(st.integers(1, 20)),
                              use_missing=draw(st.booleans()), zero_as_missing=draw(st.booleans())))
    forest = Forest.from_regressors(regressors)
    return forest, regressors, probes(forest, X, rng)


@pytest.mark.slow
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forests())
def test_quickscorer_equals_the_walk_bitwise_and_lightgbm(case):
    forest, regressors, rows = case
    assert forest is not None and forest.quickscorer
    assert forest.n_outputs == len(regressors)
    assert_exact(forest, rows, regressors)


def test_owners_map_trees_to_their_regressor_columns():
    rng = np.random.default_rng(3)
    X, y = random_data(rng, 300, 3, nan=0.1, zero=0.1)
    regressors = [fit(X, y * (k + 1), k, n_estimators=k + 1, num_leaves=4 + 3 * k) for k in range(4)]
    regressors.append(fit(X, 1.0 / (1.0 + np.exp(-y)), 9, objective="cross_entropy"))
    forest = Forest.from_regressors(regressors)
    np.testing.assert_array_equal(forest.arrays["owner"], np.repeat(np.arange(5), [1, 2, 3, 4, 3]))
    assert_exact(forest, probes(forest, X, rng), regressors)
    # each column alone gives the same numbers as in the shared forest
    rows = probes(forest, X, rng)
    together = forest.predict(rows)
    for k, regressor in enumerate(regressors):
        assert np.array_equal(bits(Forest.from_regressors([regressor]).predict(rows)[:, 0]), bits(together[:, k]))


def test_single_leaf_trees():
    rng = np.random.default_rng(4)
    X, y = random_data(rng, 50, 3, nan=0.1, zero=0.1)
    constant = fit(X, np.full(50, 2.5), n_estimators=3)
    alone = Forest.from_regressors([constant])
    assert alone.quickscorer and alone.arrays["feature"].size == 0 and np.all(leaf_counts(alone) == 1)
    assert_exact(alone, probes(alone, X, rng), [constant])
    few_rows = fit(X[:6], y[:6], n_estimators=2, min_child_samples=5)  # too few rows to split
    mixed = Forest.from_regressors([constant, fit(X, y, n_estimators=3), few_rows])
    assert mixed.quickscorer and 1 in leaf_counts(mixed) and leaf_counts(mixed).max() > 1
    assert_exact(mixed, probes(mixed, X, rng), [constant, None, few_rows])


def test_64_leaves_use_quickscorer_and_more_fall_back_to_the_walk():
    rng = np.random.default_rng(5)
    X, y = random_data(rng, 3000, 6, nan=0.1, zero=0.1)
    full = fit(X, y, n_estimators=2, num_leaves=MAX_QUICKSCORER_LEAVES, min_child_samples=1)
    forest = Forest.from_regressors([full])
    assert leaf_counts(forest).max() == 64 and forest.quickscorer
    assert_exact(forest, probes(forest, X, rng), [full])
    big = fit(X, y, n_estimators=2, num_leaves=100, min_child_samples=1)
    forest = Forest.from_regressors([full, big])
    assert leaf_counts(forest).max() > 64 and not forest.quickscorer
    rows = probes(forest, X, rng)
    assert np.array_equal(bits(forest.predict(rows)), bits(forest.walk(rows)))
    assert np.array_equal(bits(forest.predict(rows, parallel=True)), bits(forest.walk(rows)))
    assert_like_lightgbm(forest.predict(rows)[:, 1], rows, big)


def test_empty_and_one_row_inputs_and_bad_shapes():
    rng = np.random.default_rng(6)
    X, y = random_data(rng, 200, 3, nan=0.1, zero=0.1)
    forest = Forest.from_regressors([fit(X, y), fit(X, -y)])
    assert forest.predict(X[:0]).shape == (0, 2) and forest.predict(X[:0], parallel=True).shape == (0, 2)
    for r in range(20):
        assert np.array_equal(bits(forest.predict(X[r:r + 1])), bits(forest.walk(X[r:r + 1])))
    with pytest.raises(ValueError, match="X must have shape"):
        forest.predict(X[:, :2])
    assert _quickscore.signatures


def test_pickled_forest_predicts_the_same():
    rng = np.random.default_rng(7)
    X, y = random_data(rng, 200, 3, nan=0.1, zero=0.1)
    forest = Forest.from_regressors([fit(X, y)])
    again = pickle.loads(pickle.dumps(forest))
    assert again.quickscorer and np.array_equal(bits(again.predict(X)), bits(forest.predict(X)))


@pytest.mark.parametrize("zero_as_missing", [False, True])
def test_tabulated_forest_equals_the_forest(zero_as_missing):
    rng = np.random.default_rng(8)
    n = 3000
    X = np.column_stack([rng.uniform(-1, 1, n), rng.integers(0, 2, n), rng.integers(0, 4, n), rng.integers(0, 3, n)])
    X[rng.random(n) < 0.1, 0] = 0.0
    y = X[:, 0] * (1 + X[:, 1]) + 0.1 * X[:, 2] - 0.2 * X[:, 3] + 2.0 * (X[:, 0] == 0) + rng.normal(0, 0.1, n)
    forest = Forest.from_regressors([fit(X, y, n_estimators=8, num_leaves=12, min_child_samples=5,
                                         zero_as_missing=zero_as_missing)])
    thresholds = forest.arrays["threshold"][forest.arrays["feature"] == 0]
    assert zero_as_missing or np.any(np.abs(thresholds) == FLOAT_ZERO)  # LightGBM's splits around zero
    grid = np.array([[0.0, a, b, c] for a in range(2) for b in range(4) for c in range(3)])
    table = Tabulated.from_forest(forest, 0, grid)
    edges = np.concatenate([thresholds, np.nextafter(thresholds, np.inf), np.nextafter(thresholds, -np.inf), SPECIAL])
    x = np.concatenate([rng.uniform(-1.2, 1.2, 500), rng.uniform(-1e-30, 1e-30, 100), edges[~np.isnan(edges)]])
    groups = rng.integers(0, len(grid), x.size)
    rows = grid[groups].copy()
    rows[:, 0] = x
    assert np.array_equal(bits(table.predict(groups, x)), bits(forest.walk(rows)[:, 0]))


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.booleans())
def test_a_starting_offset_is_added_before_the_logistic_as_lightgbm_init_score(seed, walk):
    """Regressors boosted from a prior (``init_score``): LightGBM's raw score plus the offset, then the logistic."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 4))
    y = (rng.random(200) < 1 / (1 + np.exp(-X[:, 0]))).astype(float)
    init = rng.normal(size=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        regressors = [lightgbm.LGBMRegressor(objective="cross_entropy", n_estimators=5, num_leaves=4, verbose=-1,
                                             random_state=seed).fit(X, y, init_score=init) for _ in range(2)]
    forest = Forest.from_regressors(regressors)
    offset = rng.normal(size=(50, 2))
    got = (forest.walk if walk else forest.predict)(X[:50], offset=offset)
    raw = np.column_stack([r.predict(X[:50], raw_score=True) for r in regressors]) + offset
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-raw)), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(forest.predict(X[:50]), forest.predict(X[:50], offset=np.zeros((50, 2))))
    with pytest.raises(ValueError, match="offset must have shape"):
        forest.predict(X[:50], offset=offset[:10])
