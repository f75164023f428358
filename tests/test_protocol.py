"""Tests for the evaluation protocol (training/protocol.py, ALGORITHM.md §6).

Fast tests run on small hand-built tables; one test runs the paper's
3-model, low-noise RouterBench setting on the shared subset and checks the
ordering the theory promises against the bootstrap intervals.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from estimators.table import RoutingTable
from training import metrics
from training.protocol import REPORTED_NAMES, EvaluationReport, evaluate_strategies

THREE_MODELS = ("mistralai/mixtral-8x7b-chat", "gpt-3.5-turbo-1106", "gpt-4-1106-preview")
STATUSES = {"met", "above_max", "below_min"}
TIMING_KEYS = ("seconds", "fit_seconds")


def synthetic_table(n_queries: int = 300, seed: int = 0, *, shuffle_columns: bool = False) -> RoutingTable:
    """Three models whose success depends on a shared per-query difficulty, costs 1 : 4 : 20."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n_queries)
    skill = np.array([0.35, 0.6, 0.85])
    quality = (rng.random((n_queries, 3)) < np.clip(skill + 0.5 - difficulty[:, None], 0, 1)).astype(float)
    cost = np.array([1e-4, 4e-4, 2e-3]) * rng.uniform(0.8, 1.2, (n_queries, 3))
    models = ("small", "medium", "large")
    if shuffle_columns:
        order = [2, 0, 1]
        quality, cost, models = quality[:, order], cost[:, order], tuple(models[i] for i in order)
    return RoutingTable(models, np.arange(n_queries).astype(str).astype(object), quality, cost)


def without_timings(report: EvaluationReport) -> dict:
    result = report.to_dict()
    for key in TIMING_KEYS:
        result.pop(key)
    return result


@pytest.fixture(scope="module")
def synthetic_report() -> EvaluationReport:
    return evaluate_strategies(synthetic_table(), calibration_fraction=0.5, n_boot=100, progress=False)


# ------------------------------------------------------------- report structure


def test_report_has_every_documented_key(synthetic_report):
    report = synthetic_report.to_dict()
    for key in ("auc", "auc_ci", "curves", "single_models", "models", "n_calibration", "n_test",
                "noise", "seed", "seconds"):
        assert key in report
    strategies = {"routing", "threshold_cascade", "cascade", "cascade_routing"}
    assert set(report["auc"]) == strategies | {"linear"}
    assert set(report["auc_ci"]) == strategies | {"linear", "differences"}
    assert set(report["curves"]) == strategies
    assert "cascade_routing-routing" in report["auc_ci"]["differences"]
    assert "routing-linear" in report["auc_ci"]["differences"]
    assert len(report["auc_ci"]["differences"]) == 10  # every pair of 5
    assert report["n_calibration"] + report["n_test"] == 300
    assert report["n_calibration"] == 150


def test_curves_hold_one_point_per_budget(synthetic_report):
    singles = synthetic_report.single_models
    budgets = metrics.budget_grid([s["cost"] for s in singles], [s["quality"] for s in singles])
    for points in synthetic_report.curves.values():
        np.testing.assert_allclose([p["budget"] for p in points], budgets)
        for point in points:
            assert set(point) == {"budget", "cost", "quality", "calibration_cost", "calibration_quality", "status",
                          "sigma_transform"}
            assert point["status"] in STATUSES


def test_aucs_agree_with_the_metrics_module(synthetic_report):
    singles = synthetic_report.single_models
    costs, qualities = [s["cost"] for s in singles], [s["quality"] for s in singles]
    lo, hi, left = metrics.auc_bounds(costs, qualities)
    assert synthetic_report.auc["linear"] == pytest.approx(metrics.linear_auc(costs, qualities))
    for name, points in synthetic_report.curves.items():
        expected = metrics.auc([p["cost"] for p in points], [p["quality"] for p in points], lo, hi,
                               left_quality=left)
        assert synthetic_report.auc[name] == pytest.approx(expected)
        low, high = synthetic_report.auc_ci[name]
        assert low <= high


def test_difference_estimates_are_differences_of_aucs(synthetic_report):
    for key, (estimate, low, high) in synthetic_report.differences.items():
        a, b = key.split("-")
        assert estimate == pytest.approx(synthetic_report.auc[a] - synthetic_report.auc[b])
        assert low <= high


def test_json_round_trip(synthetic_report, tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(synthetic_report.to_dict()))
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(json.dumps(synthetic_report.to_dict()))
    assert loaded["auc_ci"]["differences"]["cascade_routing-routing"] == list(
        synthetic_report.differences["cascade_routing-routing"][1:])


def test_same_seed_same_report(synthetic_report):
    again = evaluate_strategies(synthetic_table(), calibration_fraction=0.5, n_boot=100, progress=False)
    assert without_timings(again) == without_timings(synthetic_report)


def test_another_seed_changes_the_split():
    first = evaluate_strategies(synthetic_table(), calibration_fraction=0.5, n_boot=20, seed=0,
                                strategies=("routing",), progress=False)
    second = evaluate_strategies(synthetic_table(), calibration_fraction=0.5, n_boot=20, seed=1,
                                 strategies=("routing",), progress=False)
    assert first.single_models != second.single_models


def test_models_follow_calibration_cost_order():
    report = evaluate_strategies(synthetic_table(shuffle_columns=True), calibration_fraction=0.5,
                                 n_boot=20, strategies=("cascade",), progress=False)
    assert report.models == ("small", "medium", "large")
    assert [s["model"] for s in report.single_models] == list(report.models)


def test_an_integer_depth_limits_cascade_routing_only():
    """ALGORITHM.md §6: the threshold and optimal cascades may run every model."""
    report = evaluate_strategies(synthetic_table(), calibration_fraction=0.5, n_boot=20, progress=False,
                                 strategies=("threshold", "cascade", "cascade_routing"), max_depth=2)
    assert report.max_depth == {"cascade_routing": 2, "cascade": 3, "threshold_cascade": 3}


def test_strategy_subset_and_per_strategy_depth():
    report = evaluate_strategies(synthetic_table(), calibration_fraction=0.5, n_boot=20, progress=False,
                                 strategies=("threshold", "cascade_routing"),
                                 max_depth={"cascade_routing": 2})
    assert report.strategies == ["cascade_routing", "threshold_cascade"]
    assert report.max_depth == {"cascade_routing": 2, "threshold_cascade": 3}
    assert set(report.differences) == {"cascade_routing-threshold_cascade", "cascade_routing-linear",
                                       "threshold_cascade-linear"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"noise": "extreme"}, "noise must be one of"),
    ({"calibration_fraction": 1.0}, "calibration_fraction must be"),
    ({"calibration_fraction": 0.001}, "each side needs at least 2"),
    ({"strategies": ("routing", "oracle")}, "unknown strategy"),
    ({"strategies": ()}, "at least one"),
    ({"strategies": ("routing", "routing")}, "each strategy once"),
    ({"max_depth": 0}, "max_depth must be"),
    ({"max_depth": {"cascade_routng": 2}}, "unknown strategies"),
    ({"n_boot": 0}, "n_boot must be"),
    ({"seed": -1}, "seed must be"),
])
def test_bad_settings_are_rejected_before_any_work(changes, message):
    settings = {"calibration_fraction": 0.5, "progress": False, **changes}
    with pytest.raises(ValueError, match=message):
        evaluate_strategies(synthetic_table(40), **settings)


def test_reported_names_cover_the_kernel_strategies():
    import kernel

    assert set(REPORTED_NAMES) == set(kernel.STRATEGIES)


# ------------------------------------------------------------ real RouterBench


@pytest.fixture(scope="module")
def routerbench_report(routerbench_subset) -> EvaluationReport:
    from training.data import read_table

    table = read_table(routerbench_subset / "routerbench_subset.parquet").select_models(THREE_MODELS)
    return evaluate_strategies(table, noise="low", calibration_fraction=0.3, n_boot=200, progress=False)


@pytest.mark.slow
def test_routerbench_three_models_low_noise_ordering(routerbench_report):
    """Cascade routing contains routing and the optimal cascade (ALGORITHM.md §4): its AUC is not
    significantly below theirs. The data also shows, with wide margins, that it beats routing and that
    every strategy beats the single models' hull (lower bounds ≈ +2.2 and ≈ +7.3 at seed 0)."""
    differences = routerbench_report.differences
    for other in ("routing", "cascade", "threshold_cascade"):
        assert differences[f"cascade_routing-{other}"][2] >= 0, other
    assert differences["cascade_routing-routing"][1] > 0
    for name in routerbench_report.strategies:
        assert differences[f"{name}-linear"][1] > 0, name
    assert routerbench_report.n_calibration == 945


@pytest.mark.slow
def test_routerbench_policies_respect_their_budgets_on_calibration(routerbench_report):
    for name, points in routerbench_report.curves.items():
        for point in points:
            assert point["status"] in STATUSES
            if point["status"] != "below_min":
                assert point["calibration_cost"] <= point["budget"] * (1 + 1e-12), (name, point)


@pytest.mark.slow
def test_learned_estimators_run_the_protocol_end_to_end():
    """--estimator linear: train / calibration / test split, σ scale chosen per budget."""
    from training.synthetic import default_table

    table = default_table(400, seed=3)
    report = evaluate_strategies(table, estimator="linear", calibration_fraction=0.25, train_fraction=0.5,
                                 n_boot=50, strategies=("routing", "cascade_routing"), max_depth=2,
                                 progress=False)
    assert report.n_calibration == 100 and report.n_test == 100
    assert report.noise == "linear"
    for point in report.curves["cascade_routing"]:
        assert point["status"] != "met" or point["calibration_cost"] <= point["budget"]
    assert set(report.auc) == {"linear", "routing", "cascade_routing"}
    scores = report.estimate_scores  # the synthetic answers agree when right: running models must inform
    assert scores["post_hoc"]["run_set_size"] == 3
    assert 0 < scores["post_hoc"]["brier"] < scores["ex_ante"]["brier"] < 0.25
    assert 0.5 < scores["ex_ante"]["auroc"] < scores["post_hoc"]["auroc"] <= 1
    with pytest.raises(ValueError, match="train_fraction"):
        evaluate_strategies(table, estimator="linear", calibration_fraction=0.5, train_fraction=0.6,
                            progress=False)


@pytest.mark.slow
def test_prompts_logged_under_several_ids_are_counted_in_a_warning():
    """Retries: every prompt logged twice under two query ids. The protocol keeps its split by id (published
    figures stay reproducible) and says how many prompts straddle its parts."""
    import warnings

    from training.data import read_table
    from training.protocol import SharedPromptWarning
    from training.synthetic import make_benchmark

    frame = make_benchmark(150, seed=4)
    frame = frame[frame["query_id"].isin(frame.drop_duplicates("prompt")["query_id"])]  # one query per prompt
    retried = frame.assign(query_id=frame["query_id"].astype(str) + "-retry")
    kwargs = dict(estimator="linear", calibration_fraction=0.25, train_fraction=0.5, n_boot=10,
                  strategies=("routing",), progress=False)
    with pytest.warns(SharedPromptWarning) as caught:
        evaluate_strategies(read_table(pd.concat([frame, retried], ignore_index=True)), **kwargs)
    counted = int(str(caught[0].message).split()[0])
    # Two ids drawn into parts of shares 1/2, 1/4, 1/4 share one with probability 3/8: 5/8 of the prompts straddle.
    n_prompts = frame["prompt"].nunique()
    assert 0.4 * n_prompts <= counted <= 0.85 * n_prompts, (counted, n_prompts)
    with warnings.catch_warnings():  # one query per prompt: nothing to say
        warnings.simplefilter("error", SharedPromptWarning)
        evaluate_strategies(read_table(frame), **kwargs)
