"""Partial logs (ALGORITHM.md §7): tables with absent (query, model) outcomes, end to end.

Estimators must learn only from what was logged, policies must be
calibrated on fully logged queries or with the direct method exactly as the
threshold says, and no test figure may rest on a predicted outcome.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from estimators.estimator import MIN_LOGGED_QUERIES, make_router_estimator
from estimators.table import RoutingTable
from training.data import read_table
from training.episodes import EstimatorEpisodes, calibration_episodes
from training.fit import main
from training.protocol import evaluate_strategies
from training.router import load_router
from training.splits import MIN_SPLIT_QUERIES, SPLIT_LABELS, prompt_groups, split, split_from_labels
from training.synthetic import make_benchmark

FRACTIONS = (0.5, 0.25, 0.25)


def hide_outside_test(frame: pd.DataFrame, share: float, seed: int = 0) -> pd.DataFrame:
    """Drop ``share`` of the rows of the non-test queries (the full table's split), keeping a row per query."""
    table = read_table(frame)
    test_ids = set(table.query_ids[split(table.n_queries, FRACTIONS, 0, groups=prompt_groups(table.prompts))[2]])
    rng = np.random.default_rng(seed)
    hidden = ~frame["query_id"].isin(test_ids).to_numpy() & (rng.random(len(frame)) < share)
    first_row = ~frame["query_id"].duplicated().to_numpy()
    return frame[~hidden | first_row]


@pytest.fixture(scope="module")
def logs() -> pd.DataFrame:
    return make_benchmark(600, seed=2)


@pytest.fixture(scope="module")
def partial_fit(logs, tmp_path_factory):
    """``fit`` on a partial table (40 % of the non-test rows hidden): its report and artifact path."""
    folder = tmp_path_factory.mktemp("partial")
    data = folder / "partial.csv"
    hide_outside_test(logs, 0.4).to_csv(data, index=False)
    out = folder / "router.joblib"
    code = main(["--data", str(data), "--out", str(out), "--report", str(folder), "--quiet",
                 "--estimator", "linear", "--budget", "0.002", "0.006"])
    assert code == 0
    return json.loads((folder / "report.json").read_text()), out, data


def test_partial_table_round_trips_fit_artifact_decide(partial_fit, logs):
    report, out, data = partial_fit
    table = read_table(data)
    assert table.is_partial
    assert any(row["share"] < 1.0 for row in report["coverage"]["train"])
    assert report["calibration"]["method"] == "direct" and report["calibration"]["imputed_cells"] > 0
    router = load_router(out)
    assert router.models_ == tuple(report["models"])
    queries = logs.drop_duplicates("query_id")[:20]
    prompts, per_query = list(queries["prompt"]), {"tasks": list(queries["task"]), "subtasks": list(queries["subtask"])}
    first = router.decide(prompts, budget=0.006, **per_query)
    assert all(model is None or model in router.models_ for model in first)
    called = [(n, model) for n, model in enumerate(first) if model is not None]
    assert called, "the fitted router stops every query before calling any model"
    observed = [{} for _ in prompts]
    for n, model in called:
        observed[n] = {model: {"cost": 0.001, "response": "The answer is 4."}}
    second = router.decide(prompts, observed, budget=0.006, **per_query)
    assert all(model is None or (model in router.models_ and model not in observed[n])
               for n, model in enumerate(second))


def test_fit_test_figures_are_real_outcomes_of_the_test_queries(partial_fit, logs):
    """Replaying the saved policies on the *fully logged* table's test queries gives the report's test figures."""
    report, out, data = partial_fit
    full, partial = read_table(logs), read_table(data)
    test = split(partial.n_queries, FRACTIONS, 0, partial.fully_logged, groups=prompt_groups(partial.prompts))[2]
    assert report["n_test"] == test.size and partial.fully_logged[test].all()
    assert list(partial.query_ids) == list(full.query_ids)
    router = load_router(out)
    ordered = full.reorder_models([full.models.index(m) for m in router.models_])
    episodes = EstimatorEpisodes(router.estimator, ordered.subset(test), direct_method=False)
    for row, policy in zip(report["budgets"], router.policies, strict=True):
        outcome = policy.play(episodes)
        assert outcome.mean_quality == pytest.approx(row["test_quality"], abs=1e-12)
        assert outcome.mean_cost == pytest.approx(row["test_cost"], rel=1e-12)


@pytest.mark.slow
def test_test_episodes_refuse_a_query_without_every_outcome(logs):
    table = read_table(logs.iloc[1:])
    estimator = make_router_estimator("linear").fit(table, np.arange(300))
    with pytest.raises(ValueError, match="1 of these 600 queries are not logged for every model"):
        EstimatorEpisodes(estimator, table, direct_method=False)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(80, 400), seed=st.integers(0, 50), logged_share=st.floats(0.3, 1.0),
       hidden_seed=st.integers(0, 1000))
def test_split_tests_only_fully_logged_queries(n, seed, logged_share, hidden_seed):
    rng = np.random.default_rng(hidden_seed)
    fully = rng.random(n) < logged_share
    try:
        train, calibration, test = split(n, FRACTIONS, seed, fully)
    except ValueError as error:
        n_fully = int(fully.sum())
        assert n_fully - round(0.75 * n_fully) < MIN_SPLIT_QUERIES or "too few" in str(error), error
        return
    assert fully[test].all()
    assert np.array_equal(np.sort(np.concatenate([train, calibration, test])), np.arange(n))
    # stratified: the fully logged queries are split by the fractions, the others only into train and calibration
    n_fully = int(fully.sum())
    assert test.size == n_fully - round(0.75 * n_fully)
    assert fully[train].sum() == round(0.5 * n_fully)
    assert (~fully[train]).sum() == round(0.5 / 0.75 * (~fully).sum())
    # the plain seeded split on a fully logged table (the reference: slices of one permutation)
    order = np.random.default_rng(seed).permutation(n)
    ends = np.round(np.cumsum(FRACTIONS)[:-1] * n).astype(int)
    reference = [np.sort(part) for part in np.split(order, ends)]
    for part, expected in zip(split(n, FRACTIONS, seed), reference, strict=True):
        np.testing.assert_array_equal(part, expected)


def test_split_refuses_too_few_fully_logged_queries():
    fully = np.zeros(400, dtype=bool)
    fully[:77] = True  # 77 - round(0.75 * 77) = 19 test queries
    with pytest.raises(ValueError, match="only 77 of the 400 queries are logged for every model, which gives the "
                                         f"test split 19 queries; it needs at least {MIN_SPLIT_QUERIES}"):
        split(400, FRACTIONS, 0, fully)
    fully[77] = True
    assert split(400, FRACTIONS, 0, fully)[2].size == 20


def test_split_column_sets_the_parts_and_refuses_a_partial_test_query(logs, tmp_path):
    table = read_table(hide_outside_test(logs, 0.4))
    parts = split(table.n_queries, FRACTIONS, 1, table.fully_logged)
    labels = np.empty(table.n_queries, dtype=object)
    for name, part in zip(SPLIT_LABELS, parts, strict=True):
        labels[part] = name
    for got, expected in zip(split_from_labels(labels, table.fully_logged), parts, strict=True):
        np.testing.assert_array_equal(got, expected)
    labels[np.flatnonzero(~table.fully_logged)[:3]] = "test"
    with pytest.raises(ValueError, match="3 test queries of the split column are not logged for every model"):
        split_from_labels(labels, table.fully_logged)
    labels[0] = "holdout"
    with pytest.raises(ValueError, match=r"must be one of \['train', 'calibration', 'test'\].*'holdout'"):
        split_from_labels(labels, table.fully_logged)


def _partial_calibration(logs: pd.DataFrame, n_fully: int) -> tuple[RoutingTable, object]:
    """A linear estimator fitted on 300 queries and 200 calibration queries.

    Exactly ``n_fully`` of them are fully logged.
    """
    table = read_table(logs)
    estimator = make_router_estimator("linear").fit(table, np.arange(300))
    calibration = table.subset(np.arange(300, 500))
    logged = calibration.logged.copy()
    logged[n_fully:, np.arange(n_fully, 200) % table.n_models] = False
    logged[n_fully:, 0] = True  # a query may miss any model but is logged for one at least
    hidden = ~logged
    calibration = replace(calibration, logged=logged, quality=np.where(hidden, np.nan, calibration.quality),
                          cost=np.where(hidden, np.nan, calibration.cost))
    assert calibration.fully_logged.sum() == n_fully
    return calibration, estimator


@pytest.mark.slow
@pytest.mark.parametrize("n_fully", [0, 37, 120])
def test_direct_method_exactly_when_fully_logged_queries_are_below_the_threshold(logs, n_fully):
    calibration, estimator = _partial_calibration(logs, n_fully)
    hidden = int((~calibration.logged).sum())
    for threshold in (n_fully, n_fully + 1):
        episodes, used = calibration_episodes(estimator, calibration, min_fully_logged=max(threshold, 1))
        direct = n_fully < max(threshold, 1)
        assert used["method"] == ("direct" if direct else "fully_logged")
        assert used["n_fully_logged"] == n_fully
        assert episodes.n_queries == used["n_used"] == (200 if direct else n_fully)
        assert used["imputed_cells"] == episodes.imputed_cells == (hidden if direct else 0)


def test_direct_method_outcomes_are_the_estimators_given_what_was_logged(logs):
    calibration, estimator = _partial_calibration(logs, 37)
    episodes, used = calibration_episodes(estimator, calibration, min_fully_logged=200)
    logged = calibration.logged
    predicted = estimator.predict_table(calibration, run=logged)
    np.testing.assert_array_equal(episodes.quality[logged], calibration.quality[logged])
    np.testing.assert_array_equal(episodes.quality[~logged], predicted.quality[~logged])
    np.testing.assert_array_equal(episodes.cost[~logged], predicted.cost[~logged])
    assert np.isfinite(episodes.quality).all() and np.isfinite(episodes.cost).all()


def test_fit_flag_switches_to_the_direct_method_at_the_threshold(partial_fit):
    report, _, data = partial_fit
    n_fully = report["calibration"]["n_fully_logged"]
    assert 0 < n_fully < report["n_calibration"]
    folder = data.parent
    for threshold, method in ((n_fully, "fully_logged"), (n_fully + 1, "direct")):
        code = main(["--data", str(data), "--out", str(folder / f"r{threshold}.joblib"),
                     "--report", str(folder / f"rep{threshold}"), "--quiet", "--estimator", "linear",
                     "--budget", "0.002", "--min-fully-logged", str(threshold)])
        assert code == 0
        used = json.loads((folder / f"rep{threshold}" / "report.json").read_text())["calibration"]
        assert used["method"] == method and used["n_fully_logged"] == n_fully


@pytest.mark.slow
def test_evaluate_scores_fully_logged_test_queries_only(logs):
    table = read_table(hide_outside_test(logs, 0.4, seed=3))
    report = evaluate_strategies(table, estimator="linear", calibration_fraction=0.25, train_fraction=0.5,
                                 n_boot=20, strategies=("routing", "cascade_routing"), max_depth=2,
                                 progress=False)
    test = split(table.n_queries, (0.5, 0.25, 0.25), 0, table.fully_logged)[2]
    assert report.n_test == test.size and table.fully_logged[test].all()
    assert report.calibration["method"] == "direct"
    single = {row["model"]: row["quality"] for row in report.single_models}
    for j, model in enumerate(table.models):
        assert single[model] == pytest.approx(table.quality[test, j].mean(), abs=1e-12)
    with pytest.raises(ValueError, match="not logged; use a learned estimator"):
        evaluate_strategies(table, estimator="simulated", progress=False)


def _garbage(table: RoutingTable, seed: int) -> RoutingTable:
    """``table`` with random values written into every cell that is not logged."""
    rng = np.random.default_rng(seed)
    hidden = ~table.logged
    words = np.array([f"The answer is {x}." for x in rng.integers(0, 9, size=table.logged.size)], dtype=object)
    return replace(table, quality=np.where(hidden, rng.random(hidden.shape), table.quality),
                   cost=np.where(hidden, rng.random(hidden.shape), table.cost),
                   responses=np.where(hidden, words.reshape(hidden.shape), table.responses),
                   output_tokens=np.where(hidden, rng.integers(1, 500, hidden.shape), table.output_tokens))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "learned"])
def test_estimators_read_nothing_where_not_logged(logs, kind):
    """Whatever sits in the cells not logged, the fitted estimator predicts the same numbers."""
    table = read_table(hide_outside_test(logs, 0.5, seed=4)).subset(np.arange(400))
    first, second = (make_router_estimator(kind).fit(_garbage(table, seed)) for seed in (1, 2))
    assert first.quality_.pooled_ == (kind == "learned")  # partial logs: one LightGBM for all models
    probe = read_table(logs).subset(np.arange(400, 600))
    run = np.random.default_rng(5).random(probe.logged.shape) < 0.3
    for found, again in zip(first.predict_table(probe, run), second.predict_table(probe, run), strict=True):
        np.testing.assert_array_equal(found, again)
    np.testing.assert_array_equal(first.reveal_sigma_, second.reveal_sigma_)


@pytest.mark.slow
def test_estimator_refuses_a_model_logged_on_too_few_training_queries(logs):
    table = read_table(logs).subset(np.arange(300))
    logged = table.logged.copy()
    logged[MIN_LOGGED_QUERIES - 1:, -1] = False
    thin = replace(table, logged=logged, quality=np.where(logged, table.quality, np.nan),
                   cost=np.where(logged, table.cost, np.nan))
    model = table.models[-1]
    with pytest.raises(ValueError, match=rf"'{model}' \({MIN_LOGGED_QUERIES - 1}\) are logged on fewer than "
                                         rf"{MIN_LOGGED_QUERIES} of the 300 training queries"):
        make_router_estimator("linear").fit(thin)
    logged[MIN_LOGGED_QUERIES - 1, -1] = True
    enough = replace(thin, logged=logged, quality=np.where(logged, table.quality, np.nan),
                     cost=np.where(logged, table.cost, np.nan))
    make_router_estimator("linear").fit(enough)
    make_router_estimator("linear").fit(table.subset(np.arange(MIN_LOGGED_QUERIES - 10)))  # fully logged: any size


@pytest.mark.parametrize("spoil, message", [
    (lambda f: f.assign(quality=f["quality"].where(f.index != 7, np.nan)), "quality must be a number"),
    (lambda f: pd.concat([f, f.iloc[[3]]]), "occur more than once"),
    (lambda f: f.assign(cost_usd=f["cost_usd"].where(f.index != 5, -1.0)), "cost_usd must be"),
])
def test_partial_tables_reject_malformed_rows_as_before(logs, spoil, message):
    partial = hide_outside_test(logs, 0.4).reset_index(drop=True)
    with pytest.raises(ValueError, match=message):
        read_table(spoil(partial))


def _cascade_with_exploration(table: RoutingTable, explore_share: float, seed: int = 0
                              ) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Cheapest-first cascade logs (until quality 1) plus every model on a random share; per-cell propensities."""
    solved = table.quality == 1
    reached = np.arange(table.n_models) <= np.where(solved.any(axis=1), solved.argmax(axis=1), table.n_models)[:, None]
    explored = np.random.default_rng(seed).random(table.n_queries) < explore_share
    logged = reached | explored[:, None]
    return logged, np.where(reached, 1.0, explore_share)


@pytest.mark.slow
def test_inverse_propensity_weights_undo_the_cascade_logs_bias(logs):
    """Cascade logs show the dear model only on hard queries; weighting the explored rows brings its estimate back."""
    table = read_table(logs)
    logged, propensity = _cascade_with_exploration(table, 0.2)
    partial = replace(table, logged=logged, quality=np.where(logged, table.quality, np.nan),
                      cost=np.where(logged, table.cost, np.nan), propensity=np.where(logged, propensity, np.nan))
    dear = table.n_models - 1
    truth = table.quality[:, dear].mean()
    errors = {}
    for name, weighted in (("unweighted", replace(partial, propensity=None)), ("weighted", partial)):
        estimator = make_router_estimator("learned").fit(weighted)
        errors[name] = abs(estimator.predict_table(table).quality[:, dear].mean() - truth)
    assert errors["weighted"] < 0.5 * errors["unweighted"], errors


@pytest.mark.slow
def test_pooled_estimator_learns_each_models_quality_from_its_explored_rows(logs):
    """Logs of one model plus a little uniform exploration (issue 34's shape): every model's estimates must average
    near its own inverse-propensity-weighted mean, not near the pooled mean of all models' labels."""
    table = read_table(logs)
    rng = np.random.default_rng(4)
    explored = rng.random(table.logged.shape) < 0.1
    logged = explored | (np.arange(table.n_models) == 2)  # the "policy" always calls model 2
    propensity = np.where(np.arange(table.n_models) == 2, 1.0, 0.1)
    for j in np.flatnonzero(logged.sum(axis=0) < MIN_LOGGED_QUERIES):  # the fit's floor, at random queries
        logged[rng.choice(table.n_queries, MIN_LOGGED_QUERIES, replace=False), j] = True
    partial = replace(table, logged=logged, quality=np.where(logged, table.quality, np.nan),
                      cost=np.where(logged, table.cost, np.nan),
                      propensity=np.where(logged, np.broadcast_to(propensity, logged.shape), np.nan))
    estimator = make_router_estimator("learned").fit(partial)
    assert estimator.quality_.pooled_ and estimator.quality_.prior_ is not None
    weights = np.where(logged, 1 / partial.propensity, 0.0)
    own = (weights * np.nan_to_num(partial.quality)).sum(axis=0) / weights.sum(axis=0)
    pooled = np.nansum(partial.quality) / logged.sum()
    np.testing.assert_allclose(estimator.quality_.prior_.overall_, own, rtol=1e-12)
    found = estimator.predict_table(table).quality.mean(axis=0)
    assert (np.abs(found - own) < 0.5 * np.abs(pooled - own)).all(), (found, own, pooled)


@pytest.mark.slow
def test_propensity_column_is_read_and_checked(logs):
    frame = logs.assign(propensity=np.where(np.arange(len(logs)) % 3 == 0, "", "0.25"))
    table = read_table(frame)
    assert set(np.unique(table.propensity)) == {0.25, 1.0}
    for bad in ("0", "1.5", "-0.1", "often"):
        spoiled = frame.assign(propensity=frame["propensity"].where(frame.index != 4, bad))
        with pytest.raises(ValueError, match=r"propensity must be a probability in \(0, 1\].*row 4"):
            read_table(spoiled)
    uniform = make_router_estimator("linear").fit(replace(table, propensity=np.ones(table.logged.shape)))
    plain = make_router_estimator("linear").fit(replace(table, propensity=None))
    for found, again in zip(uniform.predict_table(table)[:3], plain.predict_table(table)[:3], strict=True):
        np.testing.assert_allclose(found, again, rtol=1e-9, atol=1e-12)
