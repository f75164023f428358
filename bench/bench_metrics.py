"""Speed of the paired bootstrap of the evaluation protocol (``training.metrics.bootstrap_auc``).

Run: ``python -m pytest bench/bench_metrics.py --benchmark-json=metrics.json``.
Target: 5 strategies x 30 budgets x 3,000 test queries, 500 resamples (every
strategy's AUC interval and the 10 paired differences) in at most 2 s. The
warm-up round excludes first-call costs.
"""

from __future__ import annotations

import numpy as np

from training.metrics import bootstrap_auc

N_QUERIES = 3_000
N_BUDGETS = 30
N_STRATEGIES = 5
N_BOOT = 500


def _strategy(rng: np.random.Generator, skill: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-query 0/1 quality and cost of a made-up strategy at increasing budgets."""
    spend = np.linspace(1.0, 3.0, N_BUDGETS)[:, None]
    cost = spend * rng.uniform(0.5, 1.5, size=(N_BUDGETS, N_QUERIES))
    quality = (rng.random((N_BUDGETS, N_QUERIES)) < skill + 0.1 * spend).astype(float)
    return quality, cost


def test_bootstrap_auc(benchmark):
    rng = np.random.default_rng(4)
    strategies = {f"s{i}": _strategy(rng, 0.3 + 0.05 * i) for i in range(N_STRATEGIES)}
    quality = {name: q for name, (q, _) in strategies.items()}
    cost = {name: c for name, (_, c) in strategies.items()}
    benchmark.group = "evaluation protocol: paired bootstrap"
    result = benchmark.pedantic(bootstrap_auc, args=(quality, cost, 1.0, 3.0, 0.4), kwargs={"n_boot": N_BOOT},
                                rounds=5, warmup_rounds=1, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update({"queries": N_QUERIES, "strategies": N_STRATEGIES, "budgets": N_BUDGETS,
                                 "resamples": N_BOOT, "median_s": round(median, 3)})
    print(f"\nbootstrap_auc, {N_STRATEGIES} strategies x {N_QUERIES:,} queries x {N_BOOT} resamples: "
          f"median {median:.2f} s")
    assert len(result["differences"]) == N_STRATEGIES * (N_STRATEGIES - 1) // 2
    assert median <= 2.0
