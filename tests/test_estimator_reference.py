"""``RouterEstimator.predict`` (frozen arrays, compiled kernels) equals its slow twin.

The twin, :func:`reference_estimator.reference_predict`, computes the same
estimates from their definitions with the fitted scikit-learn and LightGBM
objects' own ``transform``/``predict``. Estimates must agree to
``RTOL = 1e-9`` relative, with an absolute floor ``ATOL = 1e-12``: the fast
path sums the same terms in another order (fused TF-IDF/SVD projection,
folded ridge maps), which moves results by a few ulps, and the floor keeps
values that are exactly 0 in one path (a clipped quality, a zero cost) from
demanding a relative match against ~1e-17 in the other. Anything larger is
a different computation, not rounding.

Each estimator configuration is fitted once per session on a small
synthetic table (``_fitted``). Eight fits cover every pair of settings of
the five options (quality family, ``uncertainty``, ``run_sigma``,
``covariance``, priced or learned cost); see ``CONFIGS`` and
:func:`test_configurations_cover_every_pair_of_options`. Two more fit one
pooled LightGBM regressor for every model (``QualityEstimator(pooled=True)``).

Hypothesis runs ``max_examples=40`` per property and configuration by
default; ``HYPOTHESIS_PROFILE=thorough`` runs 1000.
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightgbm import LGBMRegressor
from reference_estimator import reference_predict
from sklearn.pipeline import Pipeline

from estimators.cost import CostEstimator
from estimators.estimator import Estimates, RouterEstimator
from estimators.quality import QualityEstimator, make_lightgbm_regressor, make_linear_regressor
from estimators.sigma import SigmaRegressor
from estimators.table import RoutingTable
from training.data import read_table
from training.policy import Policy
from training.router import Router
from training.synthetic import make_benchmark, synthetic_prices

RTOL = 1e-9
ATOL = 1e-12

settings.register_profile(
    "estimator-reference", max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("estimator-reference-thorough", settings.get_profile("estimator-reference"),
                          max_examples=1000)
#: Applied to the properties of this file only (loading a profile would change every test module's default).
PROFILE = settings.get_profile("estimator-reference-thorough" if os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
                               else "estimator-reference")

N_QUERIES = 360
MODELS = ("synthetic-tiny-7b", "synthetic-moe-47b", "synthetic-turbo", "synthetic-frontier")
#: Prices for all models but the last, so a priced estimator has token-mode and log-cost models.
PRICES = {name: price for name, price in synthetic_prices().items() if name in MODELS[:-1]}


# --------------------------------------------------------------------------- #
# configurations, fitted once
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Config:
    """One estimator configuration of the covering set.

    ``sparse_strata`` raises the σ model's ``min_stratum`` so that some
    run-set sizes have their own scale and power and the others fall back to
    the global ones.
    """

    family: str  # "lightgbm" or "ridge"
    uncertainty: str  # "reveal" or "error"
    run_sigma: float | None
    covariance: bool
    priced: bool
    sparse_strata: bool = False
    pooled: bool = False

    @property
    def id(self) -> str:
        return "-".join([self.family, self.uncertainty, f"run_sigma={self.run_sigma}",
                         "cov" if self.covariance else "nocov", "priced" if self.priced else "learned-cost"]
                        + (["sparse-strata"] if self.sparse_strata else []) + (["pooled"] if self.pooled else []))

    def build(self) -> RouterEstimator:
        regressor = make_lightgbm_regressor(n_estimators=30) if self.family == "lightgbm" else make_linear_regressor()
        sigma = SigmaRegressor(stratify=2, min_stratum=3000 if self.sparse_strata else 200)
        return RouterEstimator(
            quality=QualityEstimator(regressor=regressor, sigma=sigma, pooled=self.pooled),
            cost=CostEstimator(prices=PRICES if self.priced else None),
            covariance=self.covariance, run_sigma=self.run_sigma, uncertainty=self.uncertainty,
        )


#: Every pair of settings of (family, uncertainty, run_sigma, covariance, cost) appears in some row.
CONFIGS = (
    Config("lightgbm", "reveal", 0.0, False, False),
    Config("lightgbm", "reveal", None, True, True),
    Config("lightgbm", "error", 0.0, True, False),
    Config("lightgbm", "error", None, False, True, sparse_strata=True),
    Config("ridge", "reveal", 0.0, True, True),
    Config("ridge", "reveal", None, False, False),
    Config("ridge", "error", 0.0, False, True),
    Config("ridge", "error", None, True, False),
    # one regressor for every model (what partial logs get by default), with and without post-hoc σ models
    Config("lightgbm", "reveal", 0.0, True, False, pooled=True),
    Config("lightgbm", "error", None, False, True, pooled=True),
)


@functools.cache
def _table() -> RoutingTable:
    """A small synthetic table with a logged numeric signal (a log-probability, higher when right)."""
    frame = make_benchmark(N_QUERIES, seed=11)
    rng = np.random.default_rng(11)
    frame["logprob"] = -rng.exponential(np.where(frame["quality"] > 0.5, 0.3, 1.5))
    return read_table(frame, models=list(MODELS), signal_columns=["logprob"])


@functools.cache
def _fitted(config: Config) -> RouterEstimator:
    return config.build().fit(_table())


#: The fast tier keeps two rows that differ in every setting but the cost model (LightGBM reveal σ and ridge
#: error σ); every other row is a fit of several seconds, ``slow``.
_TIERED = [config if config in (CONFIGS[0], CONFIGS[7]) else pytest.param(config, marks=pytest.mark.slow)
           for config in CONFIGS]


@pytest.fixture(scope="module", params=_TIERED, ids=lambda c: c.id)
def estimator(request) -> RouterEstimator:
    return _fitted(request.param)


def assert_same_estimates(actual: Estimates, expected: Estimates) -> None:
    """Every field equal to ``RTOL`` relative (``ATOL`` absolute floor); ``cov`` ``None`` in both or neither."""
    for name in Estimates._fields:
        got, want = getattr(actual, name), getattr(expected, name)
        if want is None or got is None:
            assert got is None and want is None, f"{name}: one is None, the other is not"
            continue
        assert np.shape(got) == np.shape(want), f"{name}: shape {np.shape(got)} != {np.shape(want)}"
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


def _compare(estimator: RouterEstimator, inputs: dict) -> None:
    assert_same_estimates(estimator.predict(**inputs), reference_predict(estimator, **inputs))


# --------------------------------------------------------------------------- #
# inputs
# --------------------------------------------------------------------------- #

_RESPONSES = ("B", "#### 42", "The answer is C.", "(A) west", "so 9 * 2 = 18.\n#### 18", "\\boxed{7}",
              "def f(x):\n    return x", "", "i do", "42.0", "B)", "Réponse : 東京")
_UNICODE_PROMPTS = ("naïve café — 東京 12 apples?", "Ünïcödé prompt 🙂🚀 What is 7 × 8?", "Straße, façade, 你好世界",
                    "Question: Какой газ поглощают растения?\nA) кислород\nB) углекислый газ\nAnswer:")
_LONG = 5000  # longer than word_chars (600) and char_chars (100): only the tails are read

#: Any ASCII text (control characters and NUL included); any Unicode text but lone surrogates.
_ascii = st.text(st.characters(codec="ascii"), max_size=300)
_unicode = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)


def _repeat(text: str) -> str:
    return text * (_LONG // max(len(text), 1) + 1)


def prompt_strategy(table: RoutingTable) -> st.SearchStrategy[str]:
    """ASCII, non-ASCII (accents, CJK, emoji), empty, very long, and real training prompts."""
    body = st.one_of(_ascii.filter(bool), st.sampled_from(list(table.prompts)))
    long = st.builds(lambda head, text, tail: head + _repeat(text) + tail,
                     st.sampled_from(["", "é ", "東京 "]), body, st.sampled_from(["", " 🙂", " ?"]))
    return st.one_of(st.just(""), _ascii, _unicode, st.sampled_from(_UNICODE_PROMPTS),
                     st.sampled_from(list(table.prompts)), long)


def _categories(values: np.ndarray) -> list[str]:
    """Known categories (frequent and infrequent) plus an unseen and an empty one."""
    return sorted(set(values.tolist())) + ["never seen", ""]


@st.composite
def query_inputs(draw, table: RoutingTable) -> dict:
    """Keyword arguments of ``predict`` for a few random queries and run sets."""
    n, k = draw(st.integers(1, 5)), len(table.models)
    cell = functools.partial(st.lists, min_size=k, max_size=k)
    prompts = draw(st.lists(prompt_strategy(table), min_size=n, max_size=n))
    if draw(st.booleans()):  # one run set for every query, given by name
        names = draw(st.lists(st.sampled_from(table.models), unique=True, max_size=k))
        run = np.isin(np.array(table.models), names)[None, :].repeat(n, axis=0)
        run_argument = list(names)
    else:
        run = np.array(draw(st.lists(cell(st.booleans()), min_size=n, max_size=n)), dtype=bool).reshape(n, k)
        run_argument = run
    finite_or_nan = st.one_of(st.just(np.nan), st.floats(-30.0, 0.0))
    logprob = np.array([[draw(st.floats(-30.0, 0.0) if ran else finite_or_nan) for ran in row] for row in run])
    cost = np.array([[draw(st.floats(0.0, 0.1) if ran else st.one_of(st.just(np.nan), st.floats(0.0, 0.1)))
                      for ran in row] for row in run])
    tokens = draw(st.one_of(st.none(), st.lists(cell(st.one_of(st.just(np.nan), st.integers(0, 20_000))),
                                                min_size=n, max_size=n)))
    return dict(
        prompts=prompts,
        tasks=draw(st.lists(st.sampled_from(_categories(table.tasks)), min_size=n, max_size=n)),
        subtasks=draw(st.lists(st.sampled_from(_categories(table.subtasks)), min_size=n, max_size=n)),
        run=run_argument,
        responses=np.array(draw(st.lists(cell(st.one_of(st.sampled_from(_RESPONSES), st.text(max_size=80))),
                                         min_size=n, max_size=n)), dtype=object).reshape(n, k),
        signals={"logprob": logprob.reshape(n, k)},
        observed_cost=cost.reshape(n, k),
        input_tokens=None if tokens is None else np.array(tokens, dtype=np.float64).reshape(n, k),
    )


def _logged(table: RoutingTable, rows: np.ndarray, run: np.ndarray) -> dict:
    """``predict`` inputs for table queries ``rows``, the run models' logged answers, signals and costs."""
    return dict(prompts=list(table.prompts[rows]), tasks=table.tasks[rows], subtasks=table.subtasks[rows], run=run,
                responses=table.responses[rows], signals={name: v[rows] for name, v in table.signals.items()},
                observed_cost=table.cost[rows],
                observed_latency=None if table.latency is None else table.latency[rows])


# --------------------------------------------------------------------------- #
# the properties
# --------------------------------------------------------------------------- #


@PROFILE
@given(data=st.data())
def test_predict_equals_reference(estimator, data):
    """Random queries (any text, known, rare and unseen categories), run sets, responses, signals, costs, tokens."""
    _compare(estimator, data.draw(query_inputs(_table())))


def test_logged_training_queries_with_random_run_sets(estimator):
    """Real prompts at the fitted thresholds: featurization rounding must not flip a tree split."""
    table = _table()
    rows = np.arange(0, N_QUERIES, 9)
    run = np.random.default_rng(3).random((rows.size, len(MODELS))) < 0.5
    inputs = _logged(table, rows, run)
    _compare(estimator, inputs)
    _compare(estimator, {**inputs, "input_tokens": table.input_tokens[rows]})


def test_single_query_with_an_empty_prompt(estimator):
    """N = 1 and an empty prompt, before and after every model ran."""
    table = _table()
    single = dict(prompts=[""], tasks=table.tasks[:1], subtasks=table.subtasks[:1])
    _compare(estimator, single)
    _compare(estimator, {**_logged(table, np.arange(1), np.ones((1, len(MODELS)), bool)), **single})


def test_no_model_run_needs_no_post_hoc_inputs(estimator):
    """Ex-ante: no run set, responses, signals or costs passed."""
    table = _table()
    rows = np.arange(5)
    _compare(estimator, dict(prompts=["", _UNICODE_PROMPTS[0], _repeat("What is 2 + 2? "), *table.prompts[3:5]],
                             tasks=table.tasks[rows], subtasks=table.subtasks[rows]))


def test_every_model_run(estimator):
    """The last run-set size: ``|R| = K`` for every query."""
    table = _table()
    rows = np.arange(10, 16)
    inputs = _logged(table, rows, np.ones((rows.size, len(MODELS)), bool))
    inputs["prompts"][:2] = [_UNICODE_PROMPTS[1], ""]
    _compare(estimator, inputs)


@pytest.mark.slow  # fits every configuration
def test_configurations_cover_every_pair_of_options():
    """The covering set: every pair of values of every pair of options is fitted somewhere,
    and each fitted estimator is what its configuration says (so no option silently drops out)."""
    options = ("family", "uncertainty", "run_sigma", "covariance", "priced")
    for a, b in itertools.combinations(options, 2):
        seen = {(getattr(c, a), getattr(c, b)) for c in CONFIGS}
        values = [{getattr(c, name) for c in CONFIGS} for name in (a, b)]
        assert seen == set(itertools.product(*values)), (a, b)
    for config in CONFIGS:
        fitted = _fitted(config)
        expected = LGBMRegressor if config.family == "lightgbm" else Pipeline
        assert all(isinstance(r, expected) for r in fitted.quality_.regressors_)
        assert fitted.quality_.pooled_ == config.pooled
        assert len(fitted.quality_.regressors_) == (1 if config.pooled or config.family == "ridge" else len(MODELS))
        assert (fitted.reveal_sigma_ is not None) == (config.uncertainty == "reveal")
        assert (fitted.correlation_ is not None) == config.covariance
        assert set(fitted.cost_.modes_) == ({"tokens", "log_cost"} if config.priced else {"log_cost"})
        sigma = fitted.quality_.sigma_
        assert isinstance(sigma.estimator_, LGBMRegressor) and sigma.strata_
        assert (len(sigma.strata_) < len(MODELS) + 1) == config.sparse_strata


# --------------------------------------------------------------------------- #
# serving
# --------------------------------------------------------------------------- #

POLICY = Policy(strategy="cascade_routing", lambdas=np.array([50.0] * 3), thresholds=None, gamma=0.0, max_depth=3,
                force_order=False, n_samples=64, budget=1e-3)


def _observed(models, run: np.ndarray, responses: np.ndarray, logprob: np.ndarray, cost: np.ndarray) -> list[dict]:
    """What ``Router`` takes: per query, the run models' response, cost and signal."""
    return [{models[j]: {"response": responses[i, j], "cost": float(cost[i, j]), "logprob": float(logprob[i, j])}
             for j in np.flatnonzero(row)} for i, row in enumerate(run)]


@pytest.mark.parametrize("config", [pytest.param(CONFIGS[1], marks=pytest.mark.slow), CONFIGS[0]], ids=lambda c: c.id)
def test_router_estimates_equal_predict_and_reference(config):
    """What a router serves equals ``predict`` on the same inputs as arrays, and the reference.

    ``CONFIGS[1]`` is LightGBM with ``run_sigma=None`` (run models keep the σ model's value, which a
    serving twin once replaced by the reveal σ); ``CONFIGS[0]`` (``run_sigma=0``) is the control.
    """
    estimator, table = _fitted(config), _table()
    router = Router(estimator, (POLICY,), estimator.models_)
    rows = np.arange(20, 28)
    prompts = [*table.prompts[rows[:-2]], "", _UNICODE_PROMPTS[0]]
    per_query = dict(tasks=table.tasks[rows], subtasks=table.subtasks[rows])
    k = len(MODELS)
    random_run = np.random.default_rng(5).random((rows.size, k)) < 0.5
    run_sets = [np.zeros(k, bool), np.arange(k) < 1, np.arange(k) < 2, np.ones(k, bool), random_run]
    responses, logprob, cost = table.responses[rows], table.signals["logprob"][rows], table.cost[rows]
    for run in run_sets:
        run = np.broadcast_to(run, (rows.size, k))
        served, served_run = router.estimates(prompts, _observed(estimator.models_, run, responses, logprob, cost),
                                              **per_query)
        np.testing.assert_array_equal(served_run, run)
        inputs = dict(prompts=prompts, **per_query, run=run, responses=np.where(run, responses, ""),
                      signals={"logprob": np.where(run, logprob, np.nan)}, observed_cost=np.where(run, cost, 0.0))
        expected = estimator.predict(**inputs)
        assert_same_estimates(served, expected)
        assert_same_estimates(expected, reference_predict(estimator, **inputs))
