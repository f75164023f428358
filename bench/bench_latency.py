"""Speed of two-budget policy fitting (ALGORITHM.md §7): cost and mean latency, 11 models, 1,000 calibration queries.

Run: ``python -m pytest bench/bench_latency.py --benchmark-json=latency.json``.
Target: fitting a two-budget policy on 1,000 calibration queries with
K = 11 takes at most 10 s on 2 cores. The cost-only fit of the same budget
is timed in the same run, so the price of the second budget reads off the
two rows.

The queries are the RouterBench subset in ``../shared/data`` (skipped when
absent), with latency derived as ``docs/latency.py`` does: output tokens
``ceil(len(response)/4)``, ``ttft_s + tokens / tokens_per_s`` at
:data:`training.synthetic.ASSUMED_THROUGHPUT`. Two kinds of episodes:

* ``learned``: the default estimator fitted on 1,500 other queries; the
  episodes re-estimate after every model run, as ``training.fit`` does;
* ``simulated``: the paper's low-noise estimates (the protocol's episodes),
  latency known as each model's mean ex-ante and exactly once run.

Cascade routing at ``max_depth`` 3 (what ``training.fit`` saves), budget at
the middle of the single models' log cost range, latency budget half-way
between the fastest single model and the cost-only policy's latency, so
that both bind. JIT compilation and the estimate cache of the learned
episodes are warmed before timing (a first fit at another budget), as they
are after the first budget of a ``training.fit`` run.
"""

from __future__ import annotations

from dataclasses import replace

import numba
import numpy as np
import pytest

from estimators.estimator import make_router_estimator
from estimators.simulated import simulate_estimates
from training.data import derive_latency
from training.episodes import EstimatorEpisodes, TableEpisodes
from training.policy import SIGMA_TRANSFORMS, fit_policy
from training.synthetic import ASSUMED_THROUGHPUT

N_CALIBRATION = 1_000
N_TRAIN = 1_500
MAX_DEPTH = 3


@pytest.fixture(scope="module")
def setting(routerbench_subset):
    from training.data import read_table

    table = read_table(routerbench_subset / "routerbench_subset.parquet")
    tokens = np.ceil(np.vectorize(len, otypes=[float])(table.responses) / 4.0)
    table = replace(table, output_tokens=np.maximum(tokens, 1.0))
    table = replace(table, latency=derive_latency(table, ASSUMED_THROUGHPUT))
    order = np.random.default_rng(0).permutation(table.n_queries)
    train, calibration = order[:N_TRAIN], order[N_TRAIN:N_TRAIN + N_CALIBRATION]
    estimator = make_router_estimator("learned").fit(table, train)
    part = table.subset(calibration)
    estimates = simulate_estimates(part.quality, part.cost, noise="low", seed=0)
    seconds = (np.tile(part.latency.mean(axis=0), (part.n_queries, 1)), part.latency, part.latency)
    episodes = {"learned": EstimatorEpisodes(estimator, part),
                "simulated": TableEpisodes.from_estimates(estimates, part.quality, part.cost, latency=seconds)}
    costs = part.cost.mean(axis=0)
    budget = float(np.exp(np.log(costs).mean()))
    return episodes, budget, float(part.latency.mean(axis=0).min())


@pytest.mark.parametrize("kind", ["learned", "simulated"])
@pytest.mark.parametrize("transforms", ["one σ", "σ chosen"], ids=["one-sigma", "sigma-chosen"])
@pytest.mark.parametrize("budgets", ["cost only", "cost and latency"], ids=["cost-only", "two-budgets"])
def test_fit_two_budget_policy(benchmark, setting, kind, transforms, budgets):
    all_episodes, budget, fastest = setting
    episodes = all_episodes[kind]
    sigma = SIGMA_TRANSFORMS if transforms == "σ chosen" else None
    free = fit_policy(episodes, budget, strategy="cascade_routing", max_depth=MAX_DEPTH, sigma_transforms=sigma)
    latency_budget = None if budgets == "cost only" else fastest + 0.5 * (free.calibration_latency - fastest)
    fit_policy(episodes, 2 * budget, strategy="cascade_routing", max_depth=MAX_DEPTH, sigma_transforms=sigma,
               latency_budget=None if latency_budget is None else 1.5 * latency_budget)  # warm: JIT, cache
    benchmark.group = f"fit_policy cascade_routing K=11, {N_CALIBRATION} calibration queries, {kind}, {transforms}"

    def fit():
        return fit_policy(episodes, budget, strategy="cascade_routing", max_depth=MAX_DEPTH,
                          sigma_transforms=sigma, latency_budget=latency_budget)

    policy = benchmark.pedantic(fit, rounds=2, warmup_rounds=0, iterations=1)
    benchmark.extra_info.update(queries=N_CALIBRATION, budget=budget, latency_budget=latency_budget,
                                threads=numba.get_num_threads(), evaluations=policy.search_evaluations,
                                mu=policy.mu, status=policy.budget_status,
                                calibration_latency=policy.calibration_latency)
    assert policy.calibration_cost <= budget
    if latency_budget is not None:
        assert policy.calibration_latency <= latency_budget and policy.mu > 0
