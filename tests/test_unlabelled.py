"""Unlabelled traffic: tables read without task columns, the prompt clusters standing in, and the prior's shrinkage.

* :class:`~estimators.clusters.PromptClusters` (frozen arrays) equals the
  fitted ``KMeans.predict`` on real prompts' features.
* ``--ignore-columns`` drops the columns in ``training.fit`` and
  ``training.evaluate`` (and :meth:`RoutingTable.without` in Python); a
  router fitted without task labels serves without ``tasks=``, and its
  estimates equal the slow reference's (KMeans's own ``predict``).
* The prior's m-estimate tends to the per-model mean with little data and
  to the per-cell means with a lot, and the shrinkage chosen out of fold
  follows (hypothesis).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_estimator import reference_predict
from sklearn.cluster import KMeans
from test_estimator_reference import _table, assert_same_estimates

from estimators.clusters import (
    PRIOR_WEIGHTS,
    CellPrior,
    PromptClusters,
    choose_prior,
    cluster_space,
)
from estimators.estimator import RouterEstimator
from estimators.featurize import make_prompt_featurizer, prompt_frame
from estimators.peers import TaskMeanRegressor
from estimators.quality import QualityEstimator, make_lightgbm_regressor
from training.data import read_table
from training.evaluate import main as evaluate_main
from training.fit import main as fit_main
from training.policy import Policy
from training.router import Router, load_router
from training.synthetic import make_benchmark

POLICY = Policy(strategy="cascade_routing", lambdas=np.array([50.0] * 3), thresholds=None, gamma=0.0, max_depth=3,
                force_order=False, n_samples=64, budget=1e-3)


# --------------------------------------------------------------------------- #
# frozen clusters
# --------------------------------------------------------------------------- #


def test_frozen_clusters_equal_kmeans_predict_on_real_prompts(shared_data):
    """Every RouterBench prompt's cluster, from the frozen centres, is KMeans's own."""
    table = read_table(shared_data / "routerbench_subset" / "routerbench_subset.parquet")
    frame = prompt_frame(table.prompts)
    featurizer = make_prompt_featurizer(frame.columns).fit(frame.iloc[::2])
    features = featurizer.transform(frame)
    columns, offset, scale = cluster_space(features[::2], featurizer.get_feature_names_out())
    assert columns.size == features.shape[1] and scale[-1] != 1.0  # the text block and the structural counts
    space = (features[:, columns] - offset) * scale
    for count in (4, 32):
        kmeans = KMeans(n_clusters=count, n_init=1, random_state=0).fit(space[::2])
        clusters = PromptClusters(kmeans, columns, offset, scale)
        labels = clusters.predict(features)
        np.testing.assert_array_equal(labels, kmeans.predict(space))
        assert len(np.unique(labels)) == count
        np.testing.assert_array_equal(clusters.one_hot(features[:3]), np.eye(count)[labels[:3]])


# --------------------------------------------------------------------------- #
# fitted and served without task labels
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def unlabelled():
    """A LightGBM estimator fitted on the reference table without its task and subtask columns."""
    table = _table().without(["task", "subtask"])
    estimator = RouterEstimator(quality=QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=30)))
    return estimator.fit(table), table


def test_without_drops_the_columns_and_refuses_unknown_ones():
    table = _table()
    assert table.without(["task"]).tasks is None and table.without(["task"]).subtasks is not None
    stripped = table.without(["task", "subtask", "prompt"])
    assert stripped.tasks is None and stripped.subtasks is None and stripped.prompts is None
    np.testing.assert_array_equal(stripped.quality, table.quality)
    with pytest.raises(ValueError, match="cannot ignore column.*'model'"):
        table.without(["model"])


def test_unlabelled_estimator_keys_its_prior_on_prompt_clusters(unlabelled):
    estimator, _ = unlabelled
    assert estimator.columns_ == ["prompt"]
    cells = estimator.quality_.cells_
    assert cells is not None and cells.columns.size == 0
    assert cells.clusters is not None, "the synthetic tasks' preambles should make clusters win out of fold"


def test_unlabelled_estimator_equals_the_reference(unlabelled):
    estimator, table = unlabelled
    rows = np.arange(0, 60, 7)
    run = np.random.default_rng(2).random((rows.size, table.n_models)) < 0.5
    inputs = {"prompts": [*table.prompts[rows[:-1]], "never seen 東京"], "run": run, "responses": table.responses[rows],
              "signals": {name: v[rows] for name, v in table.signals.items()}, "observed_cost": table.cost[rows]}
    assert_same_estimates(estimator.predict(**inputs), reference_predict(estimator, **inputs))


def test_router_fitted_without_tasks_serves_without_them(unlabelled):
    estimator, table = unlabelled
    router = Router(estimator, (POLICY,), estimator.models_)
    prompts = list(table.prompts[:5])
    decided = router.decide(prompts, [{}] * 5)
    assert len(decided) == 5 and all(d in estimator.models_ for d in decided)
    with_tasks = _table()  # a labelled estimator still asks for them, by name
    labelled = RouterEstimator(quality=QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=30)))
    labelled.fit(with_tasks.subset(np.arange(200)))
    with pytest.raises(ValueError, match="tasks, subtasks required"):
        Router(labelled, (POLICY,), labelled.models_).decide(prompts, [{}] * 5)


# --------------------------------------------------------------------------- #
# the command lines
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_fit_ignore_columns_serves_without_tasks(tmp_path):
    path = tmp_path / "bench.parquet"
    make_benchmark(400, seed=3).to_parquet(path)
    out, report = tmp_path / "r.joblib", tmp_path / "report"
    code = fit_main(["--data", str(path), "--ignore-columns", "task,subtask", "--estimator", "linear",
                     "--budget", "0.001", "--curve-points", "2", "--out", str(out), "--report", str(report),
                     "--quiet"])
    assert code == 0
    manifest = json.loads(out.with_suffix(".manifest.json").read_text())
    assert manifest["feature_schema"]["per_query"] == ["prompt"]
    router = load_router(out)
    assert router.estimator.columns_ == ["prompt"]
    assert len(router.decide(["What is 2 + 2?"], [{}])) == 1


def test_fit_and_evaluate_refuse_an_unknown_column(tmp_path, capsys):
    for main in (fit_main, evaluate_main):
        assert main(["--data", str(tmp_path / "x.csv"), "--ignore-columns", "task,model"]) == 2
        assert "--ignore-columns" in capsys.readouterr().err


def test_evaluate_ignore_columns_reaches_the_protocol(tmp_path, monkeypatch):
    path = tmp_path / "bench.parquet"
    make_benchmark(200, seed=4).to_parquet(path)
    seen = []

    def capture(table, **kwargs):
        seen.append(table)
        raise ValueError("stop here")

    monkeypatch.setattr("training.evaluate.evaluate_strategies", capture)
    for flags, tasks in (([], True), (["--ignore-columns", "task,subtask"], False)):
        assert evaluate_main(["--data", str(path), *flags, "--quiet"]) == 2
        assert (seen[-1].tasks is not None) == tasks and (seen[-1].subtasks is not None) == tasks
        assert seen[-1].prompts is not None


# --------------------------------------------------------------------------- #
# shrinkage
# --------------------------------------------------------------------------- #


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), weight=st.sampled_from(PRIOR_WEIGHTS), seed=st.integers(0, 2**16))
def test_shrunk_cell_mean_lies_between_the_model_mean_and_the_cell_mean(n, weight, seed):
    """The m-estimate is the cell mean pulled toward the model mean by ``m / (n + m)``: all of it with no
    rows, none of it in the limit of many."""
    rng = np.random.default_rng(seed)
    keys = np.repeat(np.eye(2), [n, 50], axis=0)
    quality = rng.random((n + 50, 3)) < np.array([0.2, 0.5, 0.9])
    prior = TaskMeanRegressor(prior_weight=weight).fit(keys, quality.astype(float),
                                                       feature_names=["category__a", "category__b"])
    cell_mean, overall = quality[:n].mean(axis=0), quality.mean(axis=0)
    expected = cell_mean + weight / (n + weight) * (overall - cell_mean)
    got = prior.predict_cells(np.array([[1.0, 0.0]]))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert np.all(np.abs(got - cell_mean) <= weight / (n + weight) + 1e-12)
    np.testing.assert_allclose(prior.predict_cells(np.array([[0.0, 0.0]]))[0], overall)  # unseen: model mean


def _folds(n: int) -> np.ndarray:
    return np.arange(n) % 2


def test_out_of_fold_shrinkage_tends_to_the_model_mean_with_few_rows_and_to_cells_with_many():
    """Labels that carry nothing, 40 queries in 8 cells: strong shrinkage (the median choice over ten draws
    gives the model mean at least 6 times a cell's rows); labels that carry everything, 4,000 queries: the
    cells' own means to within 0.01."""
    names = [f"category__{j}" for j in range(8)]
    weights = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        few = np.eye(8)[rng.integers(0, 8, 40)]
        weights.append(choose_prior(few, (rng.random((40, 2)) < 0.5).astype(float), names, _folds(40)).prior_weight)
        cell = rng.integers(0, 8, 4000)
        many = np.eye(8)[cell]
        signal = (rng.random((4000, 2)) < np.where(cell % 2 == 0, 0.05, 0.95)[:, None]).astype(float)
        chosen = choose_prior(many, signal, names, _folds(4000))
        assert chosen.clusters is None
        np.testing.assert_array_equal(chosen.columns, np.arange(8))
        means = np.array([signal[cell == c].mean(axis=0) for c in range(8)])
        np.testing.assert_allclose(chosen.fit(many, signal).predict_cells(np.eye(8)), means, atol=0.01)
    assert np.median(weights) >= 30.0, weights


def test_cell_prior_without_labels_or_clusters_is_the_model_mean():
    features = np.random.default_rng(0).random((30, 3))
    quality = np.random.default_rng(1).random((30, 2))
    prior = CellPrior(np.array([], dtype=np.int64), None, 10.0)
    np.testing.assert_allclose(prior.fit(features, quality).predict_cells(prior.keys(features[:4])),
                               np.tile(quality.mean(axis=0), (4, 1)))
