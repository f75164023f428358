"""Speed of the built-in synthetic benchmark (``training.synthetic.make_benchmark``).

Run: ``python -m pytest bench/bench_synthetic.py --benchmark-json=synthetic.json``.
Target: 4,000 queries (every model's row, prompts, responses and signals) in
at most 5 s. The in-context examples are cached per process: the warm-up
round fills the cache, so the timed rounds measure generation alone.
"""

from __future__ import annotations

from training.synthetic import SYNTHETIC_MODELS, make_benchmark

N_QUERIES = 4_000


def test_make_benchmark(benchmark):
    benchmark.group = "synthetic benchmark"
    frame = benchmark.pedantic(make_benchmark, args=(N_QUERIES,), kwargs={"seed": 1}, rounds=3, warmup_rounds=1,
                               iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update({"queries": N_QUERIES, "rows": len(frame), "models": len(SYNTHETIC_MODELS),
                                 "median_s": round(median, 3)})
    print(f"\nmake_benchmark({N_QUERIES:,}): median {median:.2f} s ({len(frame):,} rows)")
    assert frame["query_id"].nunique() == N_QUERIES
    assert median <= 5.0
