"""The learned estimators on the real shared datasets (skipped when absent).

Each dataset is split 70/30 by query with a fixed seed; the estimators are
fitted on the 70 % and every number is measured on the 30 %. The margins are
about half of what ``docs/estimators.md`` reports, so a real regression fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_estimators_tables import load_table, split_rows

from estimators.accuracy import auroc, brier, coverage
from estimators.estimator import RouterEstimator
from estimators.quality import QualityEstimator, make_linear_regressor

pytestmark = pytest.mark.slow


class Fitted:
    """A dataset split, an estimator fitted on its training part, and the test part."""

    def __init__(self, table, quality: QualityEstimator | None = None) -> None:
        train, test = split_rows(table)
        # run_sigma=None: the fitted error σ for run models too, so coverage covers every cell
        self.estimator = RouterEstimator(quality=quality, run_sigma=None, uncertainty="error").fit(table, train)
        self.test = table.subset(test)
        self.baseline = np.tile(table.quality[train].mean(axis=0), (len(test), 1))
        self.ante = self.estimator.predict_table(self.test)

    def random_run(self, size: int, seed: int = 1) -> np.ndarray:
        rng = np.random.default_rng(seed)
        n, k = self.test.quality.shape
        order = np.argsort(rng.random((n, k)), axis=1)
        return np.argsort(order, axis=1) < size


@pytest.fixture(scope="module")
def routerbench(shared_data):
    return Fitted(load_table(shared_data, "routerbench_subset"))


@pytest.fixture(scope="module")
def llmrouter(shared_data):
    return Fitted(load_table(shared_data, "llmrouter_9models"))


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    table = load_table(shared_data, "routellm_gpt4_mixtral")
    return Fitted(table.subset(table.tasks == "gsm8k"))


@pytest.mark.parametrize("name, margin, min_auroc", [("routerbench", 0.005, 0.60), ("llmrouter", 0.03, 0.75)])
def test_ex_ante_beats_the_per_model_mean(name, margin, min_auroc, request):
    fitted = request.getfixturevalue(name)
    quality = fitted.test.quality
    assert brier(quality, fitted.ante.quality) < brier(quality, fitted.baseline) - margin
    assert auroc(quality, fitted.ante.quality) > min_auroc


def test_linear_family_beats_the_per_model_mean_on_llmrouter(shared_data):
    fitted = Fitted(load_table(shared_data, "llmrouter_9models"), QualityEstimator(regressor=make_linear_regressor()))
    quality = fitted.test.quality
    assert brier(quality, fitted.ante.quality) < brier(quality, fitted.baseline) - 0.02


@pytest.mark.parametrize("kind", ["prefix", "random"])
def test_routerbench_post_hoc_beats_ex_ante_for_run_and_unrun_models(routerbench, kind):
    quality = routerbench.test.quality
    if kind == "prefix":  # a cascade's fourth step: the three cheapest models ran
        run = np.zeros(quality.shape, dtype=bool)
        run[:, :3] = True
    else:
        run = routerbench.random_run(3)
    post = routerbench.estimator.predict_table(routerbench.test, run)
    ante = routerbench.ante.quality
    assert brier(quality, post.quality, run) < brier(quality, ante, run) - 0.015
    # Models not run: the prior keyed on tasks and prompt clusters with shrinkage chosen out of fold, and the
    # pair-agreement columns, left a smaller gap on the prefix run set (ex-ante 0.18193 -> post-hoc 0.18139 at
    # this split, where the trees lose out of fold for most unrun models and the prior alone stands): a gain only.
    assert brier(quality, post.quality, ~run) < brier(quality, ante, ~run) - (0.002 if kind != "prefix" else 0.0)


def test_gsm8k_post_hoc_beats_ex_ante_for_run_and_unrun_models(gsm8k):
    quality, ante = gsm8k.test.quality, gsm8k.ante.quality
    run_error = {"ante": [], "post": []}
    unrun_error = {"ante": [], "post": []}
    for model in range(2):  # pooled over the two one-model run sets
        run = np.zeros(quality.shape, dtype=bool)
        run[:, model] = True
        post = gsm8k.estimator.predict_table(gsm8k.test, run).quality
        run_error["ante"].append(brier(quality, ante, run))
        run_error["post"].append(brier(quality, post, run))
        unrun_error["ante"].append(brier(quality, ante, ~run))
        unrun_error["post"].append(brier(quality, post, ~run))
    # Run models alone: 0.16850 -> 0.16811 since the regressors boost from the per-task mean and keep
    # 25 trees on GSM8K (0.1692 -> 0.1659 with 100 trees from the average): the one-answer gain nearly
    # vanished (the two-answer gain below did not), so only its sign is asserted; see docs/peers.md.
    # Models not run: 0.16850 -> 0.16696 before the prior was keyed on prompt clusters with shrinkage chosen
    # out of fold; that prior alone reaches 0.16471, better than the old post-hoc figure, and the trees lose to
    # it out of fold, so a model not yet run is the prior alone: post-hoc equals ex-ante (never worse).
    assert np.mean(run_error["post"]) < np.mean(run_error["ante"])
    assert np.mean(unrun_error["post"]) <= np.mean(unrun_error["ante"])
    assert np.mean(unrun_error["post"]) < 0.16696  # the previous post-hoc figure for models not run
    both = gsm8k.estimator.predict_table(gsm8k.test, np.ones(quality.shape, dtype=bool)).quality
    assert brier(quality, both) < brier(quality, ante) - 0.05  # agreement of the two answers


@pytest.mark.parametrize("name", ["routerbench", "llmrouter", "gsm8k"])
def test_sigma_coverage_on_held_out_queries(name, request):
    fitted = request.getfixturevalue(name)
    quality = fitted.test.quality
    k = quality.shape[1]
    for size in range(k):  # ex-ante and every partial run-set size
        est = fitted.estimator.predict_table(fitted.test, fitted.random_run(size)) if size else fitted.ante
        one = coverage(quality, est.quality, est.sigma, 1)
        two = coverage(quality, est.quality, est.sigma, 2)
        assert 0.6 <= one <= 0.8, f"|R| = {size}: ±1σ coverage {one:.3f}"
        assert 0.9 <= two <= 0.99, f"|R| = {size}: ±2σ coverage {two:.3f}"
