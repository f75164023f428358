"""One ``Router.decide`` of a router fitted without task labels (prompt clusters) beside one fitted with them.

Run: ``python -m pytest bench/bench_unlabelled.py -s`` (about a minute: two
learned fits of a 600-query synthetic table). The unlabelled router assigns
each prompt to its k-means cluster (one product with the centres, once per
call, with the prompt features) where the labelled one looks its task up;
both then boost from the per-cell prior. Target (issue 27): one
``decide`` of one query, nothing run yet, ≤ 0.5 ms p50. Timings depend on
the machine and its other load, so both routers are timed in the same run,
interleaved, and only printed (``extra_info``), never asserted.
"""

from __future__ import annotations

import time

import numpy as np

from estimators.estimator import make_router_estimator
from training.data import read_table
from training.policy import Policy
from training.router import Router
from training.synthetic import make_benchmark

POLICY = Policy(strategy="cascade_routing", lambdas=np.array([50.0] * 3), thresholds=None, gamma=0.0, max_depth=3,
                force_order=False, n_samples=64, budget=1e-3)
CALLS = 2000


def _router(table):
    estimator = make_router_estimator("learned").fit(table)
    return Router(estimator, (POLICY,), estimator.models_)


def test_decide_with_and_without_task_labels(benchmark):
    table = read_table(make_benchmark(600, seed=5))
    labelled, unlabelled = _router(table), _router(table.without(["task", "subtask"]))
    assert unlabelled.estimator.quality_.cells_.clusters is not None
    prompts, tasks, subtasks = list(table.prompts[:200]), table.tasks, table.subtasks
    times = {"labelled": [], "unlabelled": []}
    for call in range(CALLS):
        i = call % len(prompts)
        started = time.perf_counter()
        labelled.decide([prompts[i]], [{}], tasks=[tasks[i]], subtasks=[subtasks[i]])
        middle = time.perf_counter()
        unlabelled.decide([prompts[i]], [{}])
        times["labelled"].append(middle - started)
        times["unlabelled"].append(time.perf_counter() - middle)
    for name, values in times.items():
        values = np.array(values[100:]) * 1e3  # after warm-up
        benchmark.extra_info[f"{name}_p50_ms"] = float(np.median(values))
        benchmark.extra_info[f"{name}_p99_ms"] = float(np.percentile(values, 99))
        print(f"{name}: decide p50 {np.median(values):.3f} ms, p99 {np.percentile(values, 99):.3f} ms")
    benchmark.pedantic(lambda: unlabelled.decide([prompts[0]], [{}]), rounds=50, iterations=1)
