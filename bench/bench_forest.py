"""Speed of :class:`estimators._forest.Forest`: QuickScorer against the node-by-node walk.

Run: ``python -m pytest bench/bench_forest.py -p no:cacheprovider -s`` (``-s``
prints the speed-up table at the end; ``--benchmark-json=bench.json`` then
``python bench/report.py bench.json`` for the usual table). The forest is a
cost estimator's: 11 ``LGBMRegressor`` of 50 trees with 15 leaves each, on
76 features, scoring 6000 rows. Each group holds QuickScorer
(``Forest.predict``) and the walk it replaced (``Forest.walk``) on the same
rows, serial or row-parallel; JIT compile time is excluded by a warm-up call.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

lightgbm = pytest.importorskip("lightgbm")

from estimators._forest import Forest  # noqa: E402

N_MODELS = 11
N_FEATURES = 76
N_ROWS = 6000
N_TRAIN = 4000

#: Median seconds per call, by (method, parallel), for the summary printed at the end.
_MEDIANS: dict[tuple[str, bool], float] = {}


def features(n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows shaped like the router's features: hashed word counts (mostly zero), structure
    counts with heavy tails, log token counts, dense text components, a task one-hot."""
    counts = rng.poisson(rng.gamma(0.3, 1.0, 24), (n, 24)).astype(float)
    structure = rng.negative_binomial(1, rng.uniform(0.2, 0.9, 10), (n, 10)).astype(float)
    tokens = rng.normal(5.0, 1.2, (n, 2))
    dense = rng.normal(0.0, 1.0, (n, 26)) * rng.uniform(0.05, 1.0, 26)
    dense[:, :6] = np.maximum(dense[:, :6], 0.0)  # TF-IDF-like: exact zeros
    task = np.eye(14)[rng.integers(0, 14, n)]
    return np.hstack([counts, structure, tokens, dense, task])


def targets(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Log cost per model: a price level, a token slope, task and structure effects, noise."""
    level = np.linspace(-9.5, -5.3, N_MODELS)
    slope = rng.uniform(0.6, 1.1, N_MODELS)
    task_effect = rng.normal(0.0, 0.4, (14, N_MODELS))
    structure = np.log1p(X[:, 24:34]) @ rng.normal(0.0, 0.15, (10, N_MODELS))
    dense = np.tanh(X[:, 36:62]) @ rng.normal(0.0, 0.1, (26, N_MODELS))
    y = level + slope * (X[:, 34:35] - 5.0) + X[:, 62:] @ task_effect + structure + dense
    return y + rng.normal(0.0, 0.3, y.shape)


def depths(forest: Forest) -> tuple[int, int]:
    """Smallest and largest tree depth."""
    a = forest.arrays

    def depth(node: int) -> int:
        return 0 if node < 0 else 1 + max(depth(int(a["left"][node])), depth(int(a["right"][node])))

    found = [depth(int(root)) for root in a["roots"]]
    return min(found), max(found)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    X = features(N_TRAIN, rng)
    y = targets(X, rng)
    regressors = [lightgbm.LGBMRegressor(n_estimators=50, num_leaves=15, verbose=-1, random_state=k).fit(X, y[:, k])
                  for k in range(N_MODELS)]
    forest = Forest.from_regressors(regressors)
    assert forest is not None and forest.quickscorer
    rows = features(N_ROWS, np.random.default_rng(1))
    assert np.array_equal(forest.predict(rows), forest.walk(rows))
    yield forest, rows
    if _MEDIANS:
        low, high = depths(forest)
        print(f"\n{forest.arrays['roots'].size} trees, {forest.arrays['feature'].size} nodes, depth {low}-{high}, "
              f"{N_ROWS} rows, {numba.get_num_threads()} threads")
        for parallel in (False, True):
            walk, quick = _MEDIANS.get(("walk", parallel)), _MEDIANS.get(("quickscorer", parallel))
            if walk and quick:
                print(f"{'parallel' if parallel else 'serial  '}: walk {walk / N_ROWS * 1e6:7.2f} µs/row, "
                      f"QuickScorer {quick / N_ROWS * 1e6:7.2f} µs/row, {walk / quick:.2f}x")


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("method", ["quickscorer", "walk"])
def test_forest(benchmark, case, method, parallel):
    forest, rows = case
    benchmark.group = f"forest 11x50 trees x 15 leaves, {N_ROWS} rows, {'parallel' if parallel else 'serial'}"
    evaluate = forest.predict if method == "quickscorer" else forest.walk
    evaluate(rows, parallel)  # JIT warm-up, outside the timing
    benchmark.extra_info["queries"] = N_ROWS
    benchmark.extra_info["threads"] = numba.get_num_threads()
    benchmark.pedantic(evaluate, args=(rows, parallel), rounds=15, warmup_rounds=1, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["us_per_row"] = median / N_ROWS * 1e6
    benchmark.extra_info["rows_per_s"] = N_ROWS / median
    _MEDIANS[method, parallel] = median
