"""Serving speed: one-query ``decide`` latency and batch scoring with full replay.

Run: ``python -m pytest bench/bench_serving.py --benchmark-json=serving.json``
(``-s`` shows the summaries). Targets on 2 cores:

* single-query ``Router.decide`` after ``load_router`` (featurization,
  estimators and kernel included): p50 <= 1 ms, p99 <= 5 ms over 2,000
  calls; the percentiles are measured here per call and put in
  ``extra_info`` (pytest-benchmark's own rounds report the same calls);
* the first ``decide`` of a freshly loaded router: <= 0.25 s (``load_router``
  warms every kernel up, so it costs about what the next call does;
  compiling would take seconds);
* batch scoring with full cascade replay, 11 models: >= 20,000 queries/s end
  to end (Parquet in, Parquet out) with peak RSS <= 2 GiB. The generated
  traffic resamples the queries of the 11-model RouterBench subset
  (``../shared/data``; the synthetic benchmark's 8 models without it) with
  new query ids. ``SERVING_BENCH_QUERIES`` sets the number of queries
  (default 100,000; 1,000,000 for the full-size run). ``extra_info`` holds
  queries/s, peak RSS of the scoring process and the time split between
  featurization, estimators and kernel.

* the issue-11 traffic (``test_pandas_shaped_traffic_end_to_end``): the
  RouterBench table tiled to ``SERVING_BENCH_PANDAS_QUERIES`` queries
  (default 1,000,000) x 11 models, prompts and responses as plain strings on
  every row, written with pandas' layout (:func:`make_pandas_shaped_traffic`);
  ``python -m training.score --workers 2`` timed from process start to exit
  (start and artifact load included) against >= 20,000 queries/s, and the
  RSS of the whole process tree sampled every 20 ms against <= 2 GiB
  together. Measured 2026-12-01: 24,400 queries/s, 1.62 GiB, 76 CPU-s with
  ``artifact`` (which routes at this budget: ``fit`` keeps the best of the
  fitted policy, single models and routing); 20,000-20,900 queries/s,
  1.64 GiB, 89-92 CPU-s with a cascade-routing artifact (1.35 models per
  query).

Scoring runs in a child process (``python -m training.score``), so its peak
RSS is its own and JIT compilation happens before the clock starts (the
router warms up in ``load_router``; the time to load is reported apart).

Measured on the 2-core development machine (2026-12-01, AMD EPYC, linear
estimator, 11 RouterBench models, ``max_depth`` 3, 1,000,000 queries,
machine otherwise idle): decide p50 0.26 ms, p99 0.56 ms; scoring 22,500-
23,600 queries/s with ``--workers 2`` and 17,200-19,800 in one process
(50-56 s: featurization 18-20 s, estimators 9-10 s, kernel 5-6 s, Parquet
I/O, validation and conversions 18-20 s); peak RSS 670 MiB, against 630 MiB
for a tenth of the traffic; query rows (no replay) 15,300-20,700 queries/s
in one process. The same machine gave 9,600 (one process) and 11,500 (two
workers) queries/s before the changes listed in ``docs/decisions.md`` item
17, with identical decisions. After the estimator's own ``predict`` became
the frozen path (no serving twin), 300,000 queries, runs interleaved with
the previous release: 26,500-28,100 against 27,400-29,500 queries/s with two
workers, 23,200-25,400 against 24,400-25,300 in one process, identical
output; decide p50 0.19-0.23 ms against 0.20-0.22 ms. (Peak RSS figures before 2026-12-01 came from
``ru_maxrss`` and included this pytest process's size; see :func:`_score`.)
With other jobs on the machine wall time is up to 2x longer;
``cpu_seconds_total`` (about 85-95 s per million queries, load and warm-up
included) is the contention-free figure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "routerbench_subset" / "routerbench_subset.parquet"
N_SCORE = int(os.environ.get("SERVING_BENCH_QUERIES", "100000"))
N_LATENCY = 2000


def _fit(folder: Path, data: Path | None) -> Path:
    from training.artifact import save_artifact
    from training.data import read_table
    from training.fit import fit_router
    from training.synthetic import default_table, synthetic_prices
    table, prices = (read_table(data), None) if data is not None else (default_table(3000, seed=0), synthetic_prices())
    router, _ = fit_router(table, [0.001], estimator="linear", prices=prices, curve_points=2)
    out = folder / "router.joblib"
    save_artifact(router, out, models=list(router.models_), budgets=router.budgets)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def source() -> pd.DataFrame:
    from training.synthetic import make_benchmark
    if SHARED.exists():
        return pd.read_parquet(SHARED)
    return make_benchmark(3000, seed=0)


@pytest.fixture(scope="module")
def artifact(workdir, source):
    path = workdir / "source.parquet"
    source.to_parquet(path)
    return _fit(workdir, path)


def make_logged_traffic(source, path: Path, n_queries: int, *, seed: int = 0, chunk: int = 100_000) -> Path:
    """Write ``n_queries`` logged queries (long format, rows of a query contiguous) drawn from ``source``.

    Queries are drawn with replacement and renamed ``q0000000``...; prompt,
    response and other text columns are dictionary-encoded, so the file
    stays small even at a million queries (the scorer reads plain strings).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    frame = source.sort_values(["query_id", "model"], kind="stable").reset_index(drop=True)
    k = frame["model"].nunique()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name in ("prompt", "response", "task", "subtask", "model", "split", "extra"):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, pc.dictionary_encode(table[name]))
    n_source = len(frame) // k
    rng = np.random.default_rng(seed)
    writer = None
    width = len(str(n_queries - 1))
    for start in range(0, n_queries, chunk):
        size = min(chunk, n_queries - start)
        picks = rng.integers(0, n_source, size)
        part = table.take(pa.array((picks[:, None] * k + np.arange(k)).ravel()))
        ids = np.repeat(np.array([f"q{i:0{width}d}" for i in range(start, start + size)], dtype=object), k)
        part = part.set_column(part.column_names.index("query_id"), "query_id", pa.array(ids, pa.string()))
        if writer is None:
            writer = pq.ParquetWriter(path, part.schema, compression="zstd")
        writer.write_table(part, row_group_size=128 * 1024)
    writer.close()
    return path


def make_pandas_shaped_traffic(source_path: Path, path: Path, n_queries: int) -> Path:
    """Tile the RouterBench table to ``n_queries`` logged queries, written as ``DataFrame.to_parquet`` writes.

    Real logs as users write them: every copy of a query gets a new id
    (``<id>#<copy>``), its rows stay together, and prompts (~1,500
    characters) and responses are plain strings repeated on every model's
    row. The file has pandas' layout: ``large_string`` columns (pandas 3's
    string dtype), snappy, Parquet dictionary encoding left to fall back to
    plain, row groups of 1,048,576 rows. It is written a row group at a time
    (pandas would need the whole 11-million-row frame in memory, the same
    bytes otherwise).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    frame = pd.read_parquet(source_path)
    order = pd.Index(frame["query_id"].unique())  # rows of a query together, in the table's query order
    frame = frame.iloc[np.argsort(order.get_indexer(frame["query_id"]), kind="stable")].reset_index(drop=True)
    k = frame["model"].nunique()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    rows = n_queries * k
    separator = pa.scalar("#", table.schema.field("query_id").type)
    with pq.ParquetWriter(path, table.schema) as writer:  # pandas' defaults: snappy, dictionary encoding tried
        for start in range(0, rows, 1024 * 1024):  # pyarrow's default row group, what to_parquet writes
            index = np.arange(start, min(start + 1024 * 1024, rows))
            part = table.take(pa.array(index % len(frame)))
            copies = pa.array((index // len(frame)).astype(str).astype(object), separator.type)
            ids = pc.binary_join_element_wise(part["query_id"], copies, separator)
            writer.write_table(part.set_column(part.column_names.index("query_id"), "query_id", ids))
    return path


@pytest.fixture(scope="module")
def traffic(workdir, source):
    started = time.perf_counter()
    path = make_logged_traffic(source, workdir / "traffic.parquet", N_SCORE)
    print(f"\ngenerated {N_SCORE:,} logged queries in {time.perf_counter() - started:.1f} s "
          f"({path.stat().st_size / 2**20:.0f} MiB)")
    return path


def test_single_query_decide_latency(benchmark, artifact, source):
    from training.router import load_router
    router = load_router(artifact)  # strict load + warm-up: compile time excluded
    queries = source.drop_duplicates("query_id").sample(n=N_LATENCY, replace=True, random_state=0)
    cases = list(zip(queries["prompt"], queries["task"], queries["subtask"], strict=True))
    samples: list[float] = []
    position = iter(range(10**9))

    def one() -> None:
        prompt, task, subtask = cases[next(position) % len(cases)]
        began = time.perf_counter()
        router.decide([prompt], tasks=[task], subtasks=[subtask])
        samples.append(time.perf_counter() - began)

    benchmark.group = "serving: single-query decide"
    benchmark.pedantic(one, rounds=N_LATENCY, warmup_rounds=50, iterations=1)
    measured = np.array(samples[50:] if len(samples) > N_LATENCY else samples) * 1e3
    p50, p99 = np.percentile(measured, [50, 99])
    # where the time goes, on the same prompts in the same run (issue 33): featurizing and the ex-ante costs
    # (prepare), then estimating and deciding on the prepared query
    prepared = [router.prepare([p], tasks=[t], subtasks=[s]) for p, t, s in cases]
    parts = {"prepare_ms": lambda i: router.prepare([cases[i][0]], tasks=[cases[i][1]], subtasks=[cases[i][2]]),
             "decide_prepared_ms": lambda i: router.decide([cases[i][0]], prepared=prepared[i])}
    split = {}
    for name, call in parts.items():
        times = []
        for i in range(len(cases)):
            began = time.perf_counter()
            call(i)
            times.append(time.perf_counter() - began)
        split[name] = round(float(np.median(times)) * 1e3, 4)
    benchmark.extra_info.update({"calls": len(measured), "p50_ms": round(float(p50), 4),
                                 "p99_ms": round(float(p99), 4), "max_ms": round(float(measured.max()), 3),
                                 "models": len(router.models_), **split})
    print(f"\nsingle-query decide over {len(measured)} calls: p50 {p50:.3f} ms, p99 {p99:.3f} ms "
          f"({len(router.models_)} models); medians: prepare {split['prepare_ms']:.3f} ms, decide on the "
          f"prepared query {split['decide_prepared_ms']:.3f} ms")
    assert p50 <= 1.0 and p99 <= 5.0


def test_first_decide_after_load_router(benchmark, artifact, source):
    """Each round loads the router afresh (untimed) and times its first request."""
    from training.router import load_router
    first = source.iloc[0]

    def fresh():
        return (load_router(artifact),), {}

    def decide(router):
        return router.decide([first["prompt"]], tasks=[first["task"]], subtasks=[first["subtask"]])

    benchmark.group = "serving: first decide after load_router"
    chosen = benchmark.pedantic(decide, setup=fresh, rounds=5, warmup_rounds=1, iterations=1)
    worst = benchmark.stats.stats.max
    benchmark.extra_info.update({"queries": 1, "max_ms": round(worst * 1e3, 3),
                                 "median_ms": round(benchmark.stats.stats.median * 1e3, 3)})
    print(f"\nfirst decide after load_router: median {benchmark.stats.stats.median * 1e3:.2f} ms, "
          f"max {worst * 1e3:.2f} ms")
    assert chosen[0] in set(source["model"])
    assert worst <= 0.25


def _score(artifact: Path, traffic: Path, output: Path, batch_size: int, workers: int) -> dict:
    """Run the CLI in a child process and return its totals, wall time and peak RSS.

    The child's own peak is its ``VmHWM``, not ``ru_maxrss``: Linux carries
    the high-water mark of the forked copy of this (large) pytest process
    across ``exec`` into ``ru_maxrss``. Its workers' peaks come from
    ``RUSAGE_CHILDREN``, which that carry-over can only raise to the child's
    own size at their start, never above its peak.
    """
    script = (
        "import json, re, resource, sys, time\n"
        "from training.serving.batch import parse_args, run\n"
        "args = parse_args(sys.argv[1:])\n"
        "from training.router import load_router\n"
        "t = time.perf_counter(); load_router(args.artifact); load = time.perf_counter() - t\n"
        "totals = run(args)\n"
        "totals['load_seconds'] = load\n"
        "me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "own = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))\n"
        "totals['peak_rss_mib'] = max(own, kids.ru_maxrss) / 1024\n"
        "totals['cpu_seconds'] = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime\n"
        "print('TOTALS' + json.dumps(totals))\n"
    )
    command = [sys.executable, "-c", script, "--artifact", str(artifact), "--input", str(traffic),
               "--output", str(output), "--batch-size", str(batch_size), "--workers", str(workers), "--quiet"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(re.search(r"TOTALS(\{.*\})", done.stdout).group(1))


#: Totals of the full-size replay runs, by number of workers (for the memory comparison below).
_FULL_RUNS: dict[int, dict] = {}


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_scoring_with_full_replay(benchmark, artifact, traffic, workdir, workers):
    """End to end on the generated traffic; ``workers=1`` is one process with two-thread kernels."""
    totals = benchmark.pedantic(lambda: _score(artifact, traffic, workdir / f"decisions{workers}.parquet", 65536,
                                               workers), rounds=1, iterations=1)
    _FULL_RUNS[workers] = totals
    split = {k: round(v, 2) for k, v in totals["timings"].items()}
    accounted = sum(totals["timings"].values())
    if workers == 1:  # with workers the split is summed over processes, so it does not subtract from wall time
        split["io_and_validation"] = round(totals["seconds"] - accounted, 2)
    benchmark.group = "serving: batch scoring, full replay"
    benchmark.extra_info.update({
        "queries": totals["queries"], "queries_per_second": round(totals["queries_per_second"]),
        "peak_rss_mib": round(totals["peak_rss_mib"]), "seconds": round(totals["seconds"], 2),
        "load_seconds": round(totals["load_seconds"], 2), "time_split_seconds": split,
        "warm_up_seconds": round(totals["warm_up_seconds"], 2), "workers": workers,
        # CPU seconds of the whole child (load, warm-up and scoring, all processes): with other jobs
        # on the machine, wall time overstates the cost; this does not.
        "cpu_seconds_total": round(totals["cpu_seconds"], 2),
        "models_per_query": round(totals["models_per_query"], 3), "mean_cost": totals["mean_cost"],
        "budget": totals["budget"], "cpu_count": os.cpu_count()})
    print(f"\nscored {totals['queries']:,} logged queries with {workers} worker(s): "
          f"{totals['queries_per_second']:,.0f} queries/s, peak RSS {totals['peak_rss_mib']:.0f} MiB, "
          f"CPU {totals['cpu_seconds']:.1f} s (load and warm-up included), split {split}")
    assert totals["queries"] == N_SCORE
    assert totals["peak_rss_mib"] <= 2048


@pytest.fixture(scope="module")
def query_rows(workdir, traffic):
    """The same queries, one row per query (no logged outcomes): what a planning job scores."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    table = pq.read_table(traffic, columns=["query_id", "prompt", "task", "subtask", "model"])
    first = table.filter(pc.equal(table["model"], table["model"][0])).drop_columns(["model"])
    path = workdir / "queries.parquet"
    pq.write_table(first, path, compression="zstd")
    return path


def test_batch_scoring_of_query_rows(benchmark, artifact, query_rows, workdir):
    """First model, plan and ex-ante estimates per query, one process (no replay)."""
    totals = benchmark.pedantic(lambda: _score(artifact, query_rows, workdir / "plans.parquet", 65536, 1),
                                rounds=1, iterations=1)
    benchmark.group = "serving: batch scoring, query rows"
    benchmark.extra_info.update({
        "queries": totals["queries"], "queries_per_second": round(totals["queries_per_second"]),
        "peak_rss_mib": round(totals["peak_rss_mib"]), "seconds": round(totals["seconds"], 2),
        "cpu_seconds_total": round(totals["cpu_seconds"], 2), "cpu_count": os.cpu_count()})
    print(f"\nscored {totals['queries']:,} query rows in one process: {totals['queries_per_second']:,.0f} "
          f"queries/s, peak RSS {totals['peak_rss_mib']:.0f} MiB")
    assert totals["queries"] == N_SCORE
    assert totals["peak_rss_mib"] <= 2048


def test_peak_memory_does_not_grow_with_the_input(artifact, source, traffic, workdir):
    """Streaming: a tenth of the traffic needs about as much memory as all of it (two workers)."""
    small = make_logged_traffic(source, workdir / "traffic_tenth.parquet", max(N_SCORE // 10, 1000), seed=1)
    part = _score(artifact, small, workdir / "decisions_tenth.parquet", 65536, 2)
    whole = _FULL_RUNS.get(2) or _score(artifact, traffic, workdir / "decisions2.parquet", 65536, 2)
    print(f"\npeak RSS: {part['peak_rss_mib']:.0f} MiB for {part['queries']:,} queries, "
          f"{whole['peak_rss_mib']:.0f} MiB for {whole['queries']:,}")
    assert whole["peak_rss_mib"] <= 1.15 * part["peak_rss_mib"] + 64


#: Queries of the pandas-shaped traffic (``SERVING_BENCH_PANDAS_QUERIES``, default the issue's million).
N_PANDAS = int(os.environ.get("SERVING_BENCH_PANDAS_QUERIES", "1000000"))


def _run_measured(command: list[str]) -> dict:
    """Run ``command`` to its end; its wall time, CPU seconds and the peak of its process tree's summed RSS.

    The tree (the scoring process and its workers) is sampled from
    ``/proc`` every 20 ms, so the figure is what the machine had to hold at
    once, not the largest single process.
    """
    import resource

    def rss_kib(pid: int) -> int:
        try:
            return int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1))
        except (OSError, AttributeError):
            return 0

    def children(pid: int) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        tree, total = [child.pid], 0
        while tree:
            pid = tree.pop()
            total += rss_kib(pid)
            tree += children(pid)
        peak = max(peak, total)
        time.sleep(0.02)
    wall = time.perf_counter() - started
    out, err = child.communicate()
    assert child.returncode == 0, err
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu_seconds": cpu, "peak_sum_mib": peak / 1024, "stdout": out}


@pytest.fixture(scope="module")
def pandas_traffic(workdir, routerbench_subset):
    """The issue's traffic: RouterBench tiled to ``N_PANDAS`` queries, as pandas writes it.

    Skips without the shared data.
    """
    started = time.perf_counter()
    path = make_pandas_shaped_traffic(routerbench_subset / "routerbench_subset.parquet",
                                      workdir / "pandas_traffic.parquet", N_PANDAS)
    print(f"\ngenerated {N_PANDAS:,} pandas-shaped logged queries in {time.perf_counter() - started:.1f} s "
          f"({path.stat().st_size / 2**20:.0f} MiB)")
    return path


def test_pandas_shaped_traffic_end_to_end(benchmark, artifact, pandas_traffic, workdir):
    """``python -m training.score --workers 2`` from process start to exit: >= 20,000 queries/s, <= 2 GiB together."""
    output = workdir / "pandas_decisions.parquet"
    command = [sys.executable, "-m", "training.score", "--artifact", str(artifact), "--input", str(pandas_traffic),
               "--output", str(output), "--workers", "2", "--quiet"]
    run = benchmark.pedantic(lambda: _run_measured(command), rounds=1, iterations=1)
    scored = int(re.search(r"^(\d+) queries scored in ([\d.]+) s", run["stdout"], re.M).group(1))
    scoring_seconds = float(re.search(r"queries scored in ([\d.]+) s", run["stdout"]).group(1))
    split = dict((k, float(v)) for k, v in re.findall(r"(\w+) ([\d.]+) s", run["stdout"].split("time:")[-1]))
    per_second = scored / run["wall"]
    benchmark.group = "serving: batch scoring, pandas-shaped traffic"
    benchmark.extra_info.update({
        "queries": scored, "queries_per_second_end_to_end": round(per_second),
        "wall_seconds": round(run["wall"], 2), "start_and_load_seconds": round(run["wall"] - scoring_seconds, 2),
        "scoring_seconds": round(scoring_seconds, 2), "worker_time_split_seconds": split,
        "peak_rss_all_processes_mib": round(run["peak_sum_mib"]), "cpu_seconds_total": round(run["cpu_seconds"], 1),
        "cpu_count": os.cpu_count()})
    print(f"\npandas-shaped traffic, {scored:,} queries x 11 models, two workers: {per_second:,.0f} queries/s end to "
          f"end ({run['wall']:.1f} s wall, {run['wall'] - scoring_seconds:.1f} s of it start and load), peak RSS of "
          f"all processes {run['peak_sum_mib']:.0f} MiB, CPU {run['cpu_seconds']:.1f} s, workers' split {split}")
    assert scored == N_PANDAS
    assert run["peak_sum_mib"] <= 2048
    assert per_second >= 20_000
