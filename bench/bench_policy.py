"""Speed of policy fitting: one budget, cascade routing, 11 models, 1,000 calibration queries.

Run: ``python -m pytest bench/bench_policy.py --benchmark-json=policy.json``.
The evaluation protocol fits every strategy at ~10 budgets per hull segment,
so the time to fit one budget sets its wall time. Targets: one λ for all
steps ≤ 1 s, per-step λ ≤ 10 s. JIT compilation is excluded: a fit on a few
queries compiles the same kernels before timing starts.

The queries are 1,000 of the RouterBench subset in ``../shared/data`` with
the paper's low-noise simulated estimates, or, when that data is absent, a
generated table with RouterBench-like mean costs and accuracies.
"""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest

from estimators.simulated import simulate_estimates
from training import metrics
from training.episodes import TableEpisodes
from training.policy import fit_policy

ROUTERBENCH = (Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench_subset"
               / "routerbench_subset.parquet")
N_QUERIES = 1_000
N_MODELS = 11
MAX_DEPTH = 5
#: Mean cost (USD) and accuracy of the 11 RouterBench models, cheapest first
#: (../shared/data/routerbench_subset/models.csv), for the generated fallback.
MEAN_COSTS = np.array([8.1e-5, 1.2e-4, 2.5e-4, 3.1e-4, 3.3e-4, 3.7e-4, 3.8e-4, 4.2e-4, 3.6e-3, 3.8e-3, 5.0e-3])
ACCURACIES = np.array([0.58, 0.57, 0.74, 0.61, 0.77, 0.67, 0.62, 0.73, 0.73, 0.55, 0.88])


def calibration_table() -> tuple[np.ndarray, np.ndarray, str]:
    """True quality and cost of 1,000 queries × 11 models, and where they come from."""
    rng = np.random.default_rng(0)
    if ROUTERBENCH.is_file():
        from training.data import read_table

        table = read_table(ROUTERBENCH)
        rows = np.sort(rng.choice(table.n_queries, N_QUERIES, replace=False))
        return table.quality[rows], table.cost[rows], "routerbench_subset"
    difficulty = rng.normal(0.0, 1.0, (N_QUERIES, 1))
    logit = np.log(ACCURACIES / (1 - ACCURACIES)) - 1.5 * difficulty + rng.normal(0, 0.5, (N_QUERIES, N_MODELS))
    quality = (rng.random((N_QUERIES, N_MODELS)) < 1 / (1 + np.exp(-logit))).astype(float)
    cost = MEAN_COSTS * rng.lognormal(0.0, 0.3, (N_QUERIES, N_MODELS))
    return quality, cost, "generated"


@pytest.fixture(scope="module")
def setting():
    """Calibration episodes, two budgets, and a tiny episode set for JIT warm-up.

    The protocol's budgets crowd where the hull's cheap models are (the
    median budget of the grid); plans hold more models, and each evaluation
    costs more, half-way across the cost range, so both are timed.
    """
    quality, cost, source = calibration_table()
    estimates = simulate_estimates(quality, cost, noise="low", seed=0)
    episodes = {parallel: TableEpisodes.from_estimates(estimates, quality, cost, parallel=parallel)
                for parallel in (True, False)}
    warm_up = {parallel: TableEpisodes.from_estimates(estimates, quality, cost, np.arange(20), parallel=parallel)
               for parallel in (True, False)}
    single_cost, single_quality = metrics.single_model_points(quality, cost)
    budgets = {"grid median": float(np.median(metrics.budget_grid(single_cost, single_quality))),
               "mid cost range": float((single_cost.min() + single_cost.max()) / 2)}
    return episodes, warm_up, budgets, source


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
@pytest.mark.parametrize("where", ["grid median", "mid cost range"])
@pytest.mark.parametrize(("per_step", "rounds"), [(False, 5), (True, 2)], ids=["one-lambda", "per-step"])
def test_fit_one_budget_cascade_routing(benchmark, setting, per_step, rounds, where, parallel):
    """The serial kernel is timed too: on a shared machine a busy core stalls the parallel one."""
    all_episodes, all_warm_up, budgets, source = setting
    episodes, warm_up, budget = all_episodes[parallel], all_warm_up[parallel], budgets[where]
    benchmark.group = (f"fit_policy cascade_routing K={N_MODELS}, {N_QUERIES} queries, budget at {where}, "
                       f"{'per-step' if per_step else 'one'} λ")

    def fit():
        return fit_policy(episodes, budget, strategy="cascade_routing", per_step=per_step,
                          max_depth=MAX_DEPTH, on_infeasible="clamp")

    fit_policy(warm_up, budget, strategy="cascade_routing", per_step=per_step, max_depth=MAX_DEPTH,
               on_infeasible="clamp")  # JIT compile, outside the timing
    policy = benchmark.pedantic(fit, rounds=rounds, warmup_rounds=0, iterations=1)
    benchmark.extra_info.update(queries=N_QUERIES, data=source, budget=budget, threads=numba.get_num_threads(),
                                evaluations=policy.search_evaluations, status=policy.budget_status,
                                budget_at=where, parallel=parallel)
    assert policy.budget_status == "met" and policy.calibration_cost <= budget
