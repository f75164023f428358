"""The peer routers (``estimators.peers``): through the common interface, and each peer's own promise."""

from __future__ import annotations

from dataclasses import replace

import joblib
import numpy as np
import pytest
from test_estimators_tables import load_table, split_rows, synthetic_table

from estimators.estimator import ESTIMATOR_KINDS, RouterEstimator, make_router_estimator
from estimators.peers import (
    PEER_REGRESSORS,
    KNNQualityRegressor,
    MatrixFactorizationRegressor,
    MLPQualityRegressor,
    TaskMeanRegressor,
)

PEERS = list(PEER_REGRESSORS)
N, K = 160, 3


@pytest.fixture(scope="module")
def table():
    return synthetic_table(n=N, k=K)


@pytest.fixture(scope="module")
def fitted(table):
    return {kind: make_router_estimator(kind).fit(table) for kind in PEERS}


def test_peers_are_estimator_kinds():
    assert set(PEERS) == {"knn", "task-mean", "mlp", "mf"} and set(PEERS) <= set(ESTIMATOR_KINDS)


@pytest.mark.parametrize("kind", PEERS)
def test_peer_predicts_through_the_common_interface(fitted, table, kind):
    estimator = fitted[kind]
    run = np.zeros((N, K), dtype=bool)
    run[::2, 0] = True
    run[1::3, 1:] = True
    for step_run in (np.zeros((N, K), dtype=bool), run):
        by_table = estimator.predict_table(table, step_run)
        direct = estimator.predict(table.prompts, tasks=table.tasks, run=step_run, responses=table.responses,
                                   signals=table.signals, observed_cost=table.cost)
        for a, b in zip(by_table[:3], direct[:3], strict=True):  # quality, sigma, cost (no covariance asked for)
            np.testing.assert_allclose(a, b)
        assert by_table.quality.shape == by_table.sigma.shape == by_table.cost.shape == (N, K)
        assert ((by_table.quality >= 0) & (by_table.quality <= 1)).all()
        assert np.isfinite(by_table.sigma).all() and (by_table.sigma >= 0).all()
        assert (by_table.sigma[step_run] == 0).all()
    assert len(estimator.quality_.regressors_) == 1  # multi-output: one fit serves every model
    assert not estimator.quality_.pooled_


@pytest.mark.parametrize("kind", PEERS)
def test_peer_error_sigma_is_positive_for_models_not_run(table, kind):
    quality = make_router_estimator(kind).quality
    estimator = RouterEstimator(quality=quality, uncertainty="error").fit(table)
    run = np.zeros((N, K), dtype=bool)
    run[:, 0] = True
    sigma = estimator.predict_table(table, run).sigma
    assert (sigma[~run] > 0).all()


def test_task_mean_ignores_what_ran(fitted, table):
    """Ex-ante only: running a model changes nothing, so the reveal σ it would buy is 0."""
    estimator = fitted["task-mean"]
    run = np.ones((N, K), dtype=bool)
    np.testing.assert_array_equal(estimator.predict_table(table).quality, estimator.predict_table(table, run).quality)
    assert (estimator.reveal_sigma_ == 0).all()


@pytest.mark.parametrize("kind", PEERS)
def test_joblib_round_trip_predicts_the_same(fitted, table, kind, tmp_path):
    path = tmp_path / f"{kind}.joblib"
    joblib.dump(fitted[kind], path)
    loaded = joblib.load(path)
    run = np.zeros((N, K), dtype=bool)
    run[:, 1] = True
    for a, b in zip(fitted[kind].predict_table(table, run)[:3], loaded.predict_table(table, run)[:3], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", PEERS)
def test_peer_estimator_refuses_bad_input(fitted, table, kind):
    with pytest.raises(TypeError, match="RoutingTable"):
        make_router_estimator(kind).fit({"quality": table.quality})
    estimator = fitted[kind]
    with pytest.raises(ValueError, match="nope"):
        estimator.predict(table.prompts, tasks=table.tasks, run=["nope"])
    run = np.zeros((N, K), dtype=bool)
    run[:, 0] = True
    signals = {"logprob": np.full((N, K), np.nan)}
    with pytest.raises(ValueError, match="logprob"):
        estimator.predict(table.prompts, tasks=table.tasks, run=run, responses=table.responses, signals=signals,
                          observed_cost=table.cost)


@pytest.mark.parametrize("regressor", [cls() for cls in PEER_REGRESSORS.values()], ids=PEERS)
def test_peer_regressors_refuse_bad_x(regressor):
    rng = np.random.default_rng(0)
    X, y = rng.random((60, 4)), rng.random((60, 2))
    X[::5, 1] = np.nan  # NaN is a missing post-hoc cell: accepted
    regressor.fit(X, y)
    assert regressor.predict(X).shape == (60, 2) and regressor.n_features_in_ == 4
    with pytest.raises(ValueError, match="features"):
        regressor.predict(X[:, :3])
    with pytest.raises(ValueError, match="infinity"):
        regressor.predict(np.where(np.arange(4) == 0, np.inf, X))
    with pytest.raises(ValueError, match="0 sample"):
        regressor.fit(X[:0], y[:0])
    with pytest.raises(ValueError):
        regressor.fit(np.full((60, 4), "a", dtype=object), y)
    with pytest.raises(ValueError):
        regressor.fit(X, y[:30])


def _repeated_queries(n_queries: int = 150, repeats: int = 8, seed: int = 0):
    """Each query repeated under ``repeats`` run sets (tiny feature jitter), one noisy label per query."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_queries, 2))
    label = (rng.random(n_queries) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(float)
    rows = np.repeat(np.arange(n_queries), repeats)
    X = x[rows] + rng.normal(0, 1e-3, (rows.size, 2))
    return X, label[rows], rows


def test_knn_grouped_cv_avoids_the_leak_of_repeated_queries():
    X, y, groups = _repeated_queries()
    grid = (5, 10, 20, 50, 100, 200)
    grouped = KNNQualityRegressor(k_grid=grid).fit(X, y, groups=groups)
    ungrouped = KNNQualityRegressor(k_grid=grid).fit(X, y)
    # Without groups a query's own copies are its nearest neighbours in every fold, so the smallest k
    # "predicts" held-out rows best; grouped folds hold each query out whole and need more neighbours.
    assert ungrouped.n_neighbors_ == 5
    assert grouped.n_neighbors_ in grid and grouped.n_neighbors_ > 5
    assert set(grouped.cv_scores_) <= set(grid)


def test_knn_gets_the_query_of_each_row_from_the_quality_estimator(fitted):
    knn = fitted["knn"].quality_.regressors_[0]
    assert knn.n_neighbors_ > 5  # with leaking folds the smallest k would win (test above)


def _shrunk_task_means(quality: np.ndarray, tasks: np.ndarray, prior: float, repeats: int) -> np.ndarray:
    """Per-query expectation of ``TaskMeanRegressor``: m-estimate over rows, ``repeats`` rows per query."""
    overall = quality.mean(axis=0)
    out = np.empty_like(quality)
    for task in np.unique(tasks):
        rows = tasks == task
        out[rows] = (repeats * quality[rows].sum(axis=0) + prior * overall) / (repeats * rows.sum() + prior)
    return out


def test_task_mean_equals_the_shrunk_per_task_means(fitted, table):
    estimator = fitted["task-mean"]
    repeats = 2 ** K  # every subset of the K <= 4 models is a run set
    assert estimator.quality_.oof_["run"].shape[0] == N * repeats
    expected = _shrunk_task_means(table.quality, table.tasks, prior=10.0, repeats=repeats)
    np.testing.assert_allclose(estimator.predict_table(table).quality, expected)
    unknown = estimator.predict(table.prompts[:2], tasks=["never seen", "never seen"]).quality
    np.testing.assert_allclose(unknown, np.tile(table.quality.mean(axis=0), (2, 1)))


def test_task_mean_without_tasks_is_the_overall_mean(table):
    untasked = replace(table, tasks=None)
    estimator = make_router_estimator("task-mean").fit(untasked)
    np.testing.assert_allclose(estimator.predict_table(untasked).quality,
                               np.tile(table.quality.mean(axis=0), (N, 1)))


def test_task_mean_weights_replace_counts():
    X = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = np.array([1.0, 0.0, 1.0])
    names = ["category__task_a", "category__task_b"]
    weighted = TaskMeanRegressor(prior_weight=0.0).fit(X, y, feature_names=names, sample_weight=[3.0, 1.0, 1.0])
    np.testing.assert_allclose(weighted.predict(X), [0.75, 0.75, 1.0])
    with pytest.raises(ValueError, match="feature_names"):
        TaskMeanRegressor().fit(X, y, feature_names=names[:1])


def test_task_mean_per_cell_weights_take_each_models_logged_rows():
    """Partial logs: each model's cell means are its weighted means over its own logged rows (a slow reference)."""
    rng = np.random.default_rng(3)
    n, k, prior = 60, 3, 4.0
    tasks = rng.integers(0, 3, n)
    X = np.eye(3)[tasks]
    y = (rng.random((n, k)) < 0.3 + 0.2 * np.arange(k)).astype(float)
    weight = np.where(rng.random((n, k)) < 0.5, rng.uniform(1.0, 5.0, (n, k)), 0.0)
    names = ["category__a", "category__b", "category__c"]
    fitted = TaskMeanRegressor(prior_weight=prior).fit(X, np.where(weight > 0, y, 0.5), feature_names=names,
                                                       sample_weight=weight)
    expected = np.empty((n, k))
    for j in range(k):
        logged = weight[:, j] > 0
        overall = sum(weight[i, j] * y[i, j] for i in range(n) if logged[i]) / weight[logged, j].sum()
        for i in range(n):
            same = [r for r in range(n) if logged[r] and tasks[r] == tasks[i]]
            expected[i, j] = ((sum(weight[r, j] * y[r, j] for r in same) + prior * overall)
                              / (sum(weight[r, j] for r in same) + prior))
    np.testing.assert_allclose(fitted.predict(X), expected, rtol=1e-12)
    rows = rng.uniform(1.0, 2.0, n)  # one weight per row: the same as the row weights
    np.testing.assert_allclose(TaskMeanRegressor().fit(X, y, feature_names=names,
                                                       sample_weight=np.tile(rows[:, None], (1, k))).predict(X),
                               TaskMeanRegressor().fit(X, y, feature_names=names, sample_weight=rows).predict(X),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="positive total weight"):
        TaskMeanRegressor().fit(X, y, feature_names=names, sample_weight=np.where(np.arange(k) == 1, 0.0, weight))
    with pytest.raises(ValueError, match="shaped like y"):
        TaskMeanRegressor().fit(X, y, feature_names=names, sample_weight=weight[:, :2])


def _low_rank(n: int = 1200, k: int = 6, rank: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 12))
    logits = X @ rng.normal(size=(12, rank)) @ rng.normal(size=(rank, k)) + rng.normal(0, 0.3, k)
    return X, (rng.random((n, k)) < 1 / (1 + np.exp(-logits))).astype(float)


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def test_mf_beats_the_per_model_mean_on_a_low_rank_problem():
    X, Y = _low_rank()
    train, test = slice(0, 800), slice(800, None)
    mf = MatrixFactorizationRegressor().fit(X[train], Y[train])
    baseline = _brier(np.tile(Y[train].mean(axis=0), (400, 1)), Y[test])
    assert _brier(mf.predict(X[test]), Y[test]) < baseline - 0.02
    # Half the labels missing (NaN): every model still learns from the projection all of them share.
    hidden = np.random.default_rng(1).random(Y[train].shape) < 0.5
    partial = MatrixFactorizationRegressor().fit(X[train], np.where(hidden, np.nan, Y[train]))
    assert _brier(partial.predict(X[test]), Y[test]) < baseline - 0.02


def test_mf_learns_from_partial_logs_in_one_fit(table):
    logged = np.random.default_rng(3).random((N, K)) < 0.7
    logged[:, 0] = True
    partial = replace(table, logged=logged, quality=np.where(logged, table.quality, np.nan),
                      cost=np.where(logged, table.cost, np.nan))
    estimator = make_router_estimator("mf").fit(partial)
    assert len(estimator.quality_.regressors_) == 1 and not estimator.quality_.pooled_
    quality = estimator.predict_table(table).quality
    assert quality.shape == (N, K) and np.isfinite(quality).all()


def test_mlp_runs_a_fixed_number_of_epochs():
    X, Y = _low_rank(n=200)
    assert MLPQualityRegressor(max_iter=7).fit(X, Y).n_iter_ == 7


@pytest.mark.slow
def test_peers_on_routerbench_beat_the_per_model_mean(shared_data):
    table = load_table(shared_data, "routerbench_subset")
    table = table.select_models(list(table.models[:3]))
    train, test = split_rows(table, test_size=0.5)
    held_out = table.subset(test)
    baseline = _brier(np.tile(table.subset(train).quality.mean(axis=0), (len(test), 1)), held_out.quality)
    for kind in ("task-mean", "mf"):
        estimator = make_router_estimator(kind).fit(table, train)
        assert _brier(estimator.predict_table(held_out).quality, held_out.quality) < baseline, kind
