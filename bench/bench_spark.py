"""Spark local mode against the single-machine scorer, on the same logged traffic in one run.

The RouterBench subset (``../shared/data``; skipped without it, or without
pyspark or Java) tiled to ``SPARK_BENCH_QUERIES`` queries (default 100,000)
x 11 models with new ids, written as pandas writes Parquet
(:func:`bench_serving.make_pandas_shaped_traffic`). Both runs are
``python -m training.score`` children timed from process start to exit
(start, artifact load and, for Spark, the JVM included):

* ``local``: ``--workers 2``;
* ``spark``: ``--engine spark --master local[2]``;
* ``spark-grouped``: the same with ``--grouped`` (the file has each query's
  rows together): no shuffle, only the queries at splits' edges regrouped.
  Its output is compared with the local run's, row for row.

``extra_info`` holds queries/s, wall and CPU seconds and the peak summed RSS
of each process tree (the JVM and its Python workers included for Spark),
and for Spark the overhead per query against the local run.

Run: ``python -m pytest bench/bench_spark.py -s``.

Measured 2026-12-02 (2 cores), 100,000 queries: local 8.5 s (11,700
queries/s, 1.6 GiB); Spark ``local[2]`` 36.7 s (2,700 queries/s, 2.3 GiB),
~280 µs per query more. With Spark's default 200 shuffle partitions it was
64 s; before the scored result was persisted, the two outputs scored
everything twice (93 s). Spark pays for the JVM, for shuffling every
query's rows (prompt and response on each) to one partition, and for the
Arrow hand-offs; on a cluster that cost buys executors.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from bench_serving import _fit, _run_measured, make_pandas_shaped_traffic

pytest.importorskip("pyspark", reason="pyspark is not installed")
if shutil.which("java") is None:
    pytest.skip("Java is not installed", allow_module_level=True)

N_QUERIES = int(os.environ.get("SPARK_BENCH_QUERIES", "100000"))
MEASURED: dict[str, dict] = {}


@pytest.fixture(scope="module")
def setup(routerbench_subset: Path, tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("spark_bench")
    source = routerbench_subset / "routerbench_subset.parquet"
    return _fit(folder, source), make_pandas_shaped_traffic(source, folder / "traffic.parquet", N_QUERIES), folder


@pytest.mark.parametrize("engine", ["local", "spark", "spark-grouped"])
def test_scoring_throughput(benchmark, setup, engine):
    artifact, traffic, folder = setup
    output = folder / f"decisions_{engine}{'.parquet' if engine == 'local' else ''}"
    command = [sys.executable, "-m", "training.score", "--artifact", str(artifact), "--input", str(traffic),
               "--output", str(output), "--quiet"]
    command += ["--workers", "2"] if engine == "local" else ["--engine", "spark", "--master", "local[2]"]
    command += ["--grouped"] if engine == "spark-grouped" else []
    measured = benchmark.pedantic(_run_measured, args=(command,), rounds=1, iterations=1)
    MEASURED[engine] = measured
    info = {"engine": engine, "queries": N_QUERIES, "wall_seconds": measured["wall"],
            "queries_per_second": N_QUERIES / measured["wall"], "cpu_seconds": measured["cpu_seconds"],
            "peak_rss_mib_all_processes": measured["peak_sum_mib"]}
    if engine != "local" and "local" in MEASURED:
        info["overhead_us_per_query"] = (measured["wall"] - MEASURED["local"]["wall"]) / N_QUERIES * 1e6
        info["share_of_local_throughput"] = MEASURED["local"]["wall"] / measured["wall"]
        info["same_rows_as_local"] = _same_rows(output, folder / "decisions_local.parquet")
    benchmark.extra_info.update(info)
    print(f"\n{engine}: {N_QUERIES:,} queries in {measured['wall']:.1f} s "
          f"({info['queries_per_second']:,.0f} queries/s), "
          f"{measured['cpu_seconds']:.0f} CPU-s, peak RSS {measured['peak_sum_mib']:.0f} MiB"
          + (f", {info['overhead_us_per_query']:.0f} µs per query more than local" if "overhead_us_per_query" in info
             else ""))
    if engine != "local":
        shutil.rmtree(output, ignore_errors=True)
        assert info.get("same_rows_as_local", True)


def _same_rows(spark_output: Path, local_output: Path) -> bool:
    """Whether a Spark output dataset holds the rows of the local run's file (in any order)."""
    import pandas as pd

    frames = []
    for path in (spark_output, local_output):
        frame = pd.read_parquet(path)
        for column in ("models_run", "plan"):
            if column in frame.columns:
                frame[column] = [None if v is None else tuple(v) for v in frame[column]]
        frames.append(frame.sort_values(["query_id", "row"], kind="stable").reset_index(drop=True))
    try:
        pd.testing.assert_frame_equal(*frames, check_dtype=False)
    except AssertionError:
        return False
    return True
