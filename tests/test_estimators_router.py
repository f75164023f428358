"""RouterEstimator on a small synthetic table: contract, round trips, bad input."""

from __future__ import annotations

from dataclasses import replace

import joblib
import numpy as np
import pytest
from test_estimators_tables import synthetic_table

from estimators.cost import CostEstimator
from estimators.estimator import Estimates, RouterEstimator
from estimators.quality import QualityEstimator, make_lightgbm_regressor, make_linear_regressor

FAST = QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=20))


@pytest.fixture(scope="module")
def table():
    return synthetic_table(n=300, k=3)


@pytest.fixture(scope="module")
def fitted(table):
    return RouterEstimator(quality=FAST, covariance=True).fit(table)


def _inputs(table, run):
    return dict(tasks=table.tasks, run=run, responses=table.responses, signals=table.signals,
                observed_cost=table.cost)


def test_estimates_shapes_ranges_and_models(fitted, table):
    est = fitted.predict_table(table)
    assert isinstance(est, Estimates)
    assert fitted.models_ == table.models
    for array in (est.quality, est.sigma, est.cost):
        assert array.shape == (300, 3) and array.dtype == np.float64 and np.isfinite(array).all()
    assert (est.quality >= 0).all() and (est.quality <= 1).all()
    assert (est.sigma > 0).all() and (est.cost >= 0).all()


def test_run_models_get_observed_cost_and_post_hoc_quality(fitted, table):
    run = np.zeros((300, 3), dtype=bool)
    run[:, :2] = True
    ante, post = fitted.predict_table(table), fitted.predict_table(table, run)
    np.testing.assert_array_equal(post.cost[run], table.cost[run])
    assert not np.allclose(ante.quality[run], post.quality[run])
    error_ante = np.mean((ante.quality[run] - table.quality[run]) ** 2)
    error_post = np.mean((post.quality[run] - table.quality[run]) ** 2)
    assert error_post < error_ante  # agreement and the logged signal are informative
    assert np.all(post.sigma[run] == 0.0)  # run_sigma=0 by default
    # Models not run get the "reveal" σ of their run-set size (here 2 models run).
    np.testing.assert_array_equal(post.sigma[:, 2], fitted.reveal_sigma_[2, 2])
    # With σ from the estimates' own errors, a model that ran is less uncertain, where its run tells something
    # beyond the task (here's signal only restates the task's skill, and out of fold neither it nor agreement
    # beats the per-task prior, so the table gets a signal that reads the outcome).
    rng = np.random.default_rng(5)
    outcome = 0.1 + 0.8 * table.quality + rng.normal(0, 0.1, table.quality.shape)
    told = replace(table, signals={"logprob": np.log(np.clip(outcome, 0.01, 1.0))})
    error = RouterEstimator(quality=FAST, run_sigma=None, uncertainty="error").fit(told)
    assert error.predict_table(told, run).sigma[run].mean() < error.predict_table(told).sigma[run].mean()


def test_predict_matches_predict_table(fitted, table):
    run = np.zeros((300, 3), dtype=bool)
    run[::2, 0] = True
    a = fitted.predict(table.prompts, **_inputs(table, run))
    b = fitted.predict_table(table, run)
    for field, x, y in zip(a._fields, a, b, strict=True):
        if x is None or y is None:
            assert x is None and y is None, field
        else:
            np.testing.assert_allclose(x, y)


def test_predict_table_rows_estimates_a_subset(fitted, table):
    rows = np.array([5, 0, 7])
    run = np.array([[True, False, False], [False, False, False], [True, True, False]])
    full = np.zeros((300, 3), dtype=bool)
    full[rows] = run
    sub, whole = fitted.predict_table(table, run, rows=rows), fitted.predict_table(table, full)
    np.testing.assert_allclose(sub.quality, whole.quality[rows])
    np.testing.assert_allclose(sub.cost, whole.cost[rows])


def test_run_given_as_model_names(fitted, table):
    by_name = fitted.predict_table(table, ["m0"])
    mask = np.zeros((300, 3), dtype=bool)
    mask[:, 0] = True
    np.testing.assert_allclose(by_name.quality, fitted.predict_table(table, mask).quality)


def test_covariance_is_symmetric_psd_with_sigma_on_the_diagonal(fitted, table):
    est = fitted.predict_table(table, ["m1"])
    assert est.cov.shape == (300, 3, 3)
    assert np.all(est.cov[:, 1, :] == 0)  # a run model has σ = 0
    np.testing.assert_allclose(np.diagonal(est.cov, axis1=1, axis2=2), est.sigma**2)
    np.testing.assert_allclose(est.cov, np.swapaxes(est.cov, 1, 2))
    assert np.linalg.eigvalsh(est.cov).min() > -1e-12
    assert RouterEstimator(quality=FAST).fit(table).predict_table(table).cov is None


def test_joblib_round_trip_gives_identical_predictions(fitted, table, tmp_path):
    run = np.zeros((300, 3), dtype=bool)
    run[:, 0] = True
    before = fitted.predict_table(table, run)
    joblib.dump(fitted, tmp_path / "router.joblib")
    loaded = joblib.load(tmp_path / "router.joblib")
    after = loaded.predict_table(table, run)
    for x, y in zip(before, after, strict=True):
        np.testing.assert_array_equal(x, y)


def test_linear_family_has_the_same_interface(table):
    linear = RouterEstimator(quality=QualityEstimator(regressor=make_linear_regressor())).fit(table)
    est = linear.predict_table(table, ["m0"])
    assert est.quality.shape == (300, 3) and (est.sigma[:, 1:] > 0).all()
    base = np.mean((table.quality - table.quality.mean(axis=0)) ** 2)
    assert np.mean((est.quality - table.quality) ** 2) < base


@pytest.mark.slow
def test_fit_on_rows_uses_only_those_queries(table):
    a = RouterEstimator(quality=FAST).fit(table, rows=np.arange(200))
    b = RouterEstimator(quality=FAST).fit(table.subset(np.arange(200)))
    np.testing.assert_allclose(a.predict_table(table).quality, b.predict_table(table).quality)


def test_table_without_prompts_uses_tasks_only():
    table = synthetic_table(n=200, k=2)

    bare = replace(table, prompts=None, responses=None, signals={})
    est = RouterEstimator(quality=FAST).fit(bare)
    assert est.columns_ == ["task"]
    assert est.predict(tasks=bare.tasks[:5]).quality.shape == (5, 2)


def test_price_based_cost_uses_tokens():
    table = synthetic_table(n=200, k=2)

    tokens = np.full((200, 2), 100.0)
    priced = replace(table, input_tokens=tokens, output_tokens=tokens * np.array([1.0, 2.0]))
    est = RouterEstimator(quality=FAST, cost=CostEstimator(prices={"m0": (1.0, 2.0)})).fit(priced)
    assert est.cost_.modes_ == ["tokens", "log_cost"]
    cost = est.predict(priced.prompts[:3], tasks=priced.tasks[:3], input_tokens=tokens[:3]).cost
    np.testing.assert_allclose(cost[:, 0], (100 * 1.0 + 100 * 2.0) / 1e6, rtol=1e-6)


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #


def test_predict_before_fit_is_refused(table):
    with pytest.raises(ValueError, match="not fitted"):
        RouterEstimator().predict_table(table)


def test_the_fitted_check_is_scikit_learns(fitted, table):
    """``check_is_fitted`` and ``NotFittedError`` (a ValueError), ``clone`` and ``get_params`` of a BaseEstimator."""
    from sklearn.base import BaseEstimator, clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    unfitted = RouterEstimator(covariance=True, random_state=3)
    assert isinstance(unfitted, BaseEstimator)
    with pytest.raises(NotFittedError):
        check_is_fitted(unfitted)
    with pytest.raises(NotFittedError, match="this RouterEstimator is not fitted yet; call fit"):
        unfitted.predict_table(table)
    check_is_fitted(fitted)  # no error once fitted
    copy = clone(fitted)
    assert copy.covariance and not copy.__sklearn_is_fitted__()
    assert set(copy.get_params()) == set(fitted.get_params())
    assert unfitted.get_params()["random_state"] == 3


def test_fit_requires_a_routing_table():
    with pytest.raises(TypeError, match="RoutingTable"):
        RouterEstimator().fit(np.zeros((3, 2)))


def test_unknown_model_names_are_rejected(fitted, table):
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['gpt-9'\]"):
        fitted.predict_table(table, ["m0", "gpt-9"])
    with pytest.raises(ValueError, match="prices names unknown model"):
        RouterEstimator(quality=FAST, cost=CostEstimator(prices={"gpt-9": (1.0, 1.0)})).fit(table)
    with pytest.raises(ValueError, match="differ from the fitted models"):
        fitted.predict_table(table.select_models(["m0", "m1"]))


def test_missing_prompts_are_rejected(fitted, table):
    with pytest.raises(ValueError, match="prompts required"):
        fitted.predict(tasks=table.tasks)
    with pytest.raises(TypeError, match="single string"):
        fitted.predict("just one prompt", tasks=["math"])


@pytest.mark.parametrize(
    "run, error, match",
    [
        (np.zeros((300, 2), dtype=bool), ValueError, "shape"),
        (np.zeros((300, 3)), TypeError, "dtype float64"),
        (np.full((300, 3), 2), ValueError, "only 0 and 1"),
    ],
)
def test_bad_run_matrix_is_rejected(fitted, table, run, error, match):
    with pytest.raises(error, match=match):
        fitted.predict_table(table, run)


def test_nan_signal_of_a_run_model_is_rejected(fitted, table):
    run = np.zeros((300, 3), dtype=bool)
    run[:, 0] = True
    signals = {"logprob": table.signals["logprob"].copy()}
    signals["logprob"][:, 1:] = np.nan  # allowed: models 1 and 2 did not run
    fitted.predict(table.prompts, **{**_inputs(table, run), "signals": signals})
    signals["logprob"][4, 0] = np.nan
    with pytest.raises(ValueError, match=r"signal 'logprob' is NaN .* \(row 4, column 0\)"):
        fitted.predict(table.prompts, **{**_inputs(table, run), "signals": signals})


def test_signal_names_must_match(fitted, table):
    run = np.zeros((300, 3), dtype=bool)
    run[:, 0] = True
    with pytest.raises(ValueError, match="unknown name"):
        fitted.predict(table.prompts, **{**_inputs(table, run), "signals": {"verifier": table.cost}})
    with pytest.raises(ValueError, match="missing"):
        fitted.predict(table.prompts, **{**_inputs(table, run), "signals": {}})


def test_observed_cost_required_for_run_models(fitted, table):
    run = np.zeros((300, 3), dtype=bool)
    run[:, 0] = True
    with pytest.raises(ValueError, match="observed_cost is required"):
        fitted.predict(table.prompts, **{**_inputs(table, run), "observed_cost": None})
    bad = table.cost.copy()
    bad[3, 0] = -1.0
    with pytest.raises(ValueError, match="row 3, column 0 has -1.0"):
        fitted.predict(table.prompts, **{**_inputs(table, run), "observed_cost": bad})


def test_training_table_with_nan_quality_is_rejected(table):

    quality = table.quality.copy()
    quality[0, 0] = np.nan
    with pytest.raises(ValueError, match="lack a finite quality or cost"):
        RouterEstimator(quality=FAST).fit(replace(table, quality=quality))


def test_price_based_cost_needs_input_tokens_or_prompts():

    table = synthetic_table(n=200, k=2)
    tokens = np.full((200, 2), 100.0)
    priced = replace(table, prompts=None, responses=None, signals={}, input_tokens=tokens, output_tokens=tokens)
    est = RouterEstimator(quality=FAST, cost=CostEstimator(prices={"m0": (1.0, 2.0)})).fit(priced)
    with pytest.raises(ValueError, match="input_tokens has NaN for model 'm0'"):
        est.predict(tasks=priced.tasks[:3])
    assert est.predict(tasks=priced.tasks[:3], input_tokens=tokens[:3]).cost.shape == (3, 2)


def test_predict_table_rows_out_of_range_is_rejected(fitted, table):
    with pytest.raises(ValueError, match="rows must be 1-D indices"):
        fitted.predict_table(table, rows=np.array([0, 300]))


@pytest.mark.slow
def test_reveal_sigma_is_how_far_an_estimate_moves_once_the_model_runs(table):
    """Recompute one entry of the fitted table by hand: RMS of q(x|R+{i}) - q(x|R)."""
    est = RouterEstimator(quality=FAST).fit(table)
    sigma = est.reveal_sigma_
    assert sigma.shape == (4, 3) and np.all(sigma[-1] == 0) and np.all(sigma >= 0)
    # For a run set of size 1 the σ of model 2 reflects agreement with the run model:
    # it must be of the order of the actual moves on the training table.
    run = np.zeros((300, 3), dtype=bool)
    run[:, 0] = True
    before = est.predict_table(table, run).quality[:, 2]
    run[:, 2] = True
    after = est.predict_table(table, run).quality[:, 2]
    moved = np.sqrt(np.mean((after - before) ** 2))
    assert 0.5 * moved <= sigma[1, 2] <= 2.0 * moved
    with pytest.raises(ValueError, match="uncertainty must be"):
        RouterEstimator(quality=FAST, uncertainty="guess").fit(table)


@pytest.mark.slow
def test_lightgbm_boosts_from_the_per_task_prior_and_keeps_its_out_of_fold_tree_count(table):
    """``boost_from="task"`` (the default): estimates start from each model's shrunk per-cell (here per-task) mean."""
    from estimators.peers import TaskMeanRegressor
    from estimators.quality import TREE_COUNTS

    quality = QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=60))
    fitted = RouterEstimator(quality=quality).fit(table)
    boosted = fitted.quality_
    assert isinstance(boosted.prior_, TaskMeanRegressor)
    assert set(boosted.n_trees_) <= {*TREE_COUNTS, 60}
    assert [r.n_estimators for r in boosted.regressors_] == list(boosted.n_trees_)
    features = fitted.prepare(**{f"{column}s": getattr(table, f"{column}s") for column in fitted.columns_}).features
    prior = np.clip(boosted.prior_.predict(boosted.cells_.keys(features)), 1e-4, 1 - 1e-4)
    raw = np.column_stack([r.predict(np.hstack([features, _empty_block(fitted, table)]), raw_score=True)
                           for r in boosted.regressors_])
    # This table's quality depends on the task alone, so out of fold no model's trees beat the prior before any
    # model ran: the ex-ante estimates are the prior's, and a model's trees come in once it ran.
    assert boosted.unrun_trees_.shape == (table.n_models + 1, table.n_models) and not boosted.unrun_trees_[0].any()
    np.testing.assert_allclose(fitted.predict_table(table).quality, prior, rtol=1e-9, atol=1e-12)
    run = np.zeros((table.n_queries, table.n_models), dtype=bool)
    run[:, 0] = True
    expected = 1 / (1 + np.exp(-(raw + np.log(prior / (1 - prior)))))
    assert not np.allclose(fitted.predict_table(table, run).quality[:, 0], prior[:, 0])
    boosted.unrun_trees_ = np.ones_like(boosted.unrun_trees_)  # as if the trees had won everywhere: prior + trees
    np.testing.assert_allclose(fitted.predict_table(table).quality, np.clip(expected, 0, 1), rtol=1e-9, atol=1e-12)
    plain = RouterEstimator(quality=QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=60),
                                                     boost_from=None)).fit(table)
    assert plain.quality_.prior_ is None and plain.quality_.n_trees_ is None
    assert [r.n_estimators for r in plain.quality_.regressors_] == [60] * table.n_models
    with pytest.raises(ValueError, match="boost_from must be"):
        RouterEstimator(quality=QualityEstimator(boost_from="global")).fit(table)


@pytest.mark.slow
def test_unrun_trees_are_kept_ex_ante_where_the_prompt_tells_more_than_its_task(table):
    """Within each task, a word of the prompt decides quality: out of fold the trees beat the prior ex-ante."""
    rng = np.random.default_rng(1)
    hard = rng.random(table.n_queries) < 0.5
    prompts = np.array([f"{prompt} {'hard tricky puzzle' if h else 'easy simple sum'}"
                        for prompt, h in zip(table.prompts, hard, strict=True)], dtype=object)
    quality = (rng.random(table.quality.shape) < np.where(hard, 0.1, 0.9)[:, None]).astype(np.float64)
    worded = replace(table, prompts=prompts, quality=quality)
    # Keyed on the task labels alone (no prompt clusters), the prior cannot see the word: the trees must.
    labels_only = QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=60), prior_clusters=())
    fitted = RouterEstimator(quality=labels_only).fit(worded)
    assert fitted.quality_.cells_.clusters is None and fitted.quality_.unrun_trees_[0].all()
    estimates = fitted.predict_table(worded).quality
    assert estimates[hard].mean() < 0.3 < 0.7 < estimates[~hard].mean()  # the prior alone would give ~0.5 to both
    # By default the prompt clusters may see it first: either way the estimates separate the two.
    default = RouterEstimator(quality=QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=60))).fit(worded)
    estimates = default.predict_table(worded).quality
    assert estimates[hard].mean() < 0.3 < 0.7 < estimates[~hard].mean()


@pytest.mark.parametrize("boost_from", ["task", None])
def test_fitted_quality_is_what_the_frozen_estimator_predicts(table, boost_from):
    """The reveal σ is measured with ``fitted_quality``: it must see the prior's offset as serving does."""
    from estimators.posthoc import read_responses
    from estimators.quality import PosthocData

    fitted = RouterEstimator(quality=QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=30),
                                                      boost_from=boost_from)).fit(table)
    features = fitted.prepare(**{f"{column}s": getattr(table, f"{column}s") for column in fitted.columns_}).features
    posthoc = PosthocData({name: table.signals[name] for name in fitted.signal_names_},
                          read_responses(table.responses) if fitted.uses_responses_ else None)
    run = np.random.default_rng(3).random((table.n_queries, table.n_models)) < 0.4
    np.testing.assert_allclose(fitted.quality_.fitted_quality(features, run, posthoc),
                               fitted.quality_.predict_quality(features, run, posthoc), rtol=1e-9, atol=1e-12)


def _empty_block(fitted, table):
    from estimators.posthoc import posthoc_features, read_responses
    run = np.zeros((table.n_queries, table.n_models), bool)
    info = read_responses(table.responses) if fitted.uses_responses_ else None
    signals = {name: np.full(run.shape, np.nan) for name in fitted.signal_names_}
    return posthoc_features(run, signals, info)


def test_a_fitted_quality_estimator_saved_before_its_prior_fields_existed_loads_with_them_none(fitted, table):
    """Format-3 artifacts older than ``unrun_trees_`` unpickle as trees everywhere, which is what they computed."""
    import copy

    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    quality = fitted.quality_
    older = {name: value for name, value in quality.__getstate__().items() if name != "unrun_trees_"}
    restored = QualityEstimator.__new__(QualityEstimator)
    restored.__setstate__(older)
    assert restored.unrun_trees_ is None and restored.prior_ is quality.prior_ is not None
    everywhere = copy.copy(quality)
    everywhere.unrun_trees_ = np.ones_like(quality.unrun_trees_)
    run = np.zeros((table.n_queries, table.n_models), dtype=bool)
    run[:, 0] = True
    for stage in (None, run):
        old, new = copy.copy(fitted), copy.copy(fitted)
        old.quality_, new.quality_ = restored, everywhere
        np.testing.assert_array_equal(old.predict_table(table, stage).quality, new.predict_table(table, stage).quality)
    unfitted = QualityEstimator.__new__(QualityEstimator)
    unfitted.__setstate__(QualityEstimator().__getstate__())
    with pytest.raises(NotFittedError):  # an unfitted estimator gains no fitted fields on loading
        check_is_fitted(unfitted)
