"""Speed of the learned estimators (pytest-benchmark).

Run: ``python -m pytest bench/bench_estimators.py --benchmark-json=bench.json``
then ``python bench/report.py bench.json``. Needs ``../shared/data`` (skips
without it). Targets on 2 cores: featurize + predict all 11 models for 10,000
queries in at most 1.5 s; fit on the 11-model RouterBench subset in at most 60 s.
The same group times the slow reference (``tests/reference_estimator.py``:
scikit-learn's and LightGBM's own ``transform``/``predict``) on the same
queries, so each run yields the speed-up of the frozen path.
The 10,000 queries are RouterBench prompts drawn with replacement: its
few-shot prompts (1,500 characters on average) are the slowest to featurize
of the shared datasets.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference_estimator import reference_predict
from test_estimators_tables import load_table

from estimators.estimator import RouterEstimator

N_QUERIES = 10_000


@pytest.fixture(scope="module")
def routerbench(shared_data):
    return load_table(shared_data, "routerbench_subset")


@pytest.fixture(scope="module")
def fitted(routerbench):
    return RouterEstimator().fit(routerbench)


@pytest.fixture(scope="module")
def queries(routerbench):
    rows = np.random.default_rng(0).integers(0, routerbench.n_queries, N_QUERIES)
    return routerbench.subset(rows)


def test_featurize_and_predict_ex_ante(benchmark, fitted, queries):
    benchmark.group = "estimators: 10,000 queries x 11 models"
    benchmark.extra_info["queries"] = N_QUERIES
    result = benchmark.pedantic(
        lambda: fitted.predict(queries.prompts, tasks=queries.tasks, subtasks=queries.subtasks),
        rounds=3, warmup_rounds=1, iterations=1,
    )
    assert result.quality.shape == (N_QUERIES, 11)


def test_reference_featurize_and_predict_ex_ante(benchmark, fitted, queries):
    """The slow reference on the same queries: the libraries' own transform/predict."""
    import warnings
    benchmark.group = "estimators: 10,000 queries x 11 models"
    benchmark.extra_info["queries"] = N_QUERIES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scikit-learn's feature-name warnings
        result = benchmark.pedantic(
            lambda: reference_predict(fitted, queries.prompts, tasks=queries.tasks, subtasks=queries.subtasks),
            rounds=1, warmup_rounds=0, iterations=1,
        )
    fast = fitted.predict(queries.prompts, tasks=queries.tasks, subtasks=queries.subtasks)
    np.testing.assert_allclose(fast.quality, result.quality, rtol=1e-9, atol=1e-12)


def test_re_estimate_after_a_step(benchmark, fitted, queries):
    """The policy loop's step: features cached, new run sets (two models ran), all models re-estimated."""
    benchmark.group = "estimators: 10,000 queries x 11 models"
    benchmark.extra_info["queries"] = N_QUERIES
    run = np.zeros(queries.quality.shape, dtype=bool)
    run[:, :2] = True
    fitted.predict_table(queries)  # fills the feature cache
    result = benchmark.pedantic(lambda: fitted.predict_table(queries, run), rounds=3, warmup_rounds=1, iterations=1)
    assert result.quality.shape == (N_QUERIES, 11)


def test_fit_routerbench(benchmark, routerbench):
    benchmark.group = "estimators: fit on RouterBench (3,150 queries x 11 models)"
    benchmark.extra_info["queries"] = routerbench.n_queries
    estimator = benchmark.pedantic(lambda: RouterEstimator().fit(routerbench), rounds=1, iterations=1)
    assert estimator.models_ == routerbench.models
