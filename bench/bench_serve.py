"""Load test of the routing service (``python -m training.serve``): its own overhead per request.

Run: ``python -m pytest bench/bench_serve.py -s`` (about 10 s). Three
processes on loopback: the fake upstreams (``tests/servekit.py``, one
uvicorn process answering every model after ``SERVE_BENCH_UPSTREAM_MS``,
default 20 ms), the service (``python -m training.serve``, default
settings: decision steps under 32,000 new characters on the event loop,
two decision threads for longer ones, the router of ``tests/servekit.py`` whose
hand-set cascade-routing policy calls one to three of four models), and the
load generator (this process: ``SERVE_BENCH_CONCURRENCY`` = 32 asyncio
workers with one pooled aiohttp client, ``SERVE_BENCH_REQUESTS`` = 2,000
requests after 100 for warm-up; ``SERVE_BENCH_SERVICE_ARGS`` adds service
flags). All of them share the machine's cores.
The run stops by itself: every request has a 30 s timeout, and the child
processes are stopped at the end whatever happens.

Overhead per request, three ways (p50 and p99 in ``extra_info``):

* ``service``: the service's own figure (``x-router-overhead-ms``): from the
  handler's start to the response, minus the time spent waiting on
  upstreams (``x-router-upstream-ms``, the sum of the per-step latencies).
* ``client``: the time this process (an aiohttp client) measured for the request, minus
  ``x-router-upstream-ms``: adds the HTTP parsing and writing on both ends
  of the loopback and this process's own scheduling under load.
* ``strict``: the client's time minus 20 ms per upstream call: adds the
  upstream calls' own HTTP work (the service's aiohttp client and the fake
  upstreams' server) too.

``SERVE_BENCH_BASELINE`` names another checkout of the project (e.g. the
main branch's): a second service then runs that checkout's code beside this
one (each with its own fake upstreams), and the load goes to them in turn,
``SERVE_BENCH_ROUNDS`` rounds (default 4) of ``SERVE_BENCH_REQUESTS`` / rounds
requests each, alternating which goes first, so that the machine's other
load weighs on both alike; both summaries are printed (``baseline_*`` in
``extra_info``); the flood test then floods the baseline's service too,
right after this one's. The idle measurement, old against new in one command::

    uptime; SERVE_BENCH_BASELINE=/path/to/main python -m pytest bench/bench_serve.py -s -p no:cacheprovider

Target on 2 cores (issue 17): no error, overhead p50 <= 2 ms and p99 <=
10 ms. The results are printed and kept in ``extra_info`` (``meets_target``
for the ``service`` figure); the assertion is on errors only, because
timings depend on the machine and its other load (the closed loop keeps the
CPU saturated, so the client-side figures are mostly queueing; see the
README's measured figures).

``test_healthz_under_a_message_flood`` (issue 30): ``SERVE_BENCH_FLOODERS`` = 32
clients (in a process of their own) each post bodies of 0.93 MB holding 30,000 messages (or 256 messages of
3,600 characters: decoded whole), over and over
for ``SERVE_BENCH_FLOOD_S`` = 10 s, while one other client asks ``/healthz``
one request after another; its p50 and p99 are printed beside the same
client's figures with no flood, measured in the same run. Target: p99 <=
50 ms. The assertion is that every flood request was refused (400) and every
``/healthz`` answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
httpx = pytest.importorskip("httpx")
from servekit import backends_toml, build_router_artifact  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_REQUESTS = int(os.environ.get("SERVE_BENCH_REQUESTS", "2000"))
CONCURRENCY = int(os.environ.get("SERVE_BENCH_CONCURRENCY", "32"))
UPSTREAM_MS = float(os.environ.get("SERVE_BENCH_UPSTREAM_MS", "20"))
WARM_UP = 100
#: More ``python -m training.serve`` flags, e.g. ``--inline-decision-chars 0`` (every step on a thread).
SERVICE_ARGS = os.environ.get("SERVE_BENCH_SERVICE_ARGS", "").split()
#: Another checkout whose service is measured beside this one's, rounds interleaved (see the module docstring).
BASELINE = os.environ.get("SERVE_BENCH_BASELINE")
ROUNDS = int(os.environ.get("SERVE_BENCH_ROUNDS", "4"))


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(url: str, queries: list[tuple[str, str, str]], n: int, concurrency: int) -> list[dict]:
    """``n`` chat requests from ``concurrency`` workers; per request its time and the service's headers."""
    results: list[dict] = []
    order = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:
        async def worker() -> None:
            for i in order:
                prompt, task, subtask = queries[i % len(queries)]
                began = time.perf_counter()
                try:
                    async with client.post("/v1/chat/completions", json={
                            "model": "router", "messages": [{"role": "user", "content": prompt}],
                            "metadata": {"task": task, "subtask": subtask}}) as reply:
                        text = await reply.text()
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    results.append({"error": repr(error)})
                    continue
                seconds = time.perf_counter() - began
                if reply.status != 200:
                    results.append({"error": f"HTTP {reply.status}: {text[:200]}"})
                    continue
                h = reply.headers
                results.append({"seconds": seconds, "calls": len(h["x-router-models"].split(",")),
                                "upstream_ms": float(h["x-router-upstream-ms"]),
                                "service_ms": float(h["x-router-overhead-ms"])})

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


@contextlib.contextmanager
def _running(tmp_path: Path, args: tuple[str, ...] = (), root: Path = ROOT):
    """The fake upstreams and ``python -m training.serve`` (``args`` added; the code of the checkout ``root``) as
    child processes; yields (service URL, children, queries) and stops both whatever happens."""
    from training.data import read_table
    from training.router import load_router
    from training.synthetic import make_benchmark

    artifact = build_router_artifact(tmp_path)
    models = load_router(artifact, warm_up=False).models_
    table = read_table(make_benchmark(400, seed=7)).select_models(list(models))
    queries = list(zip(table.prompts, table.tasks, table.subtasks, strict=True))
    random.Random(0).shuffle(queries)
    upstream_port, service_port = _free_port(), _free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    (tmp_path / "backends.toml").write_text(backends_toml(upstream_url, models, timeout_s=10))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    children = []
    try:
        children.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "servekit.py"), str(upstream_port),
                                          str(UPSTREAM_MS / 1e3)], env=env))
        children.append(subprocess.Popen([sys.executable, "-m", "training.serve", "--artifact", str(artifact),
                                          "--backends", str(tmp_path / "backends.toml"), "--port", str(service_port),
                                          "--log-level", "warning", *SERVICE_ARGS, *args],
                                         env={**env, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])},
                                         cwd=root))
        service_url = f"http://127.0.0.1:{service_port}"
        _wait_healthy(f"{upstream_url}/", children[0])
        _wait_healthy(f"{service_url}/healthz", children[1])
        yield service_url, children, queries
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


def _summary(results: list[dict], cpu: list[float], wall: float) -> dict[str, object]:
    """The load test's figures from its results, the children's CPU-seconds (upstreams, service) and its wall time."""
    errors = [r["error"] for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    seconds = np.array([r["seconds"] for r in ok])
    upstream = np.array([r["upstream_ms"] for r in ok]) / 1e3
    calls = np.array([r["calls"] for r in ok])
    overhead = {"service": np.array([r["service_ms"] for r in ok]) / 1e3, "client": seconds - upstream,
                "strict": seconds - calls * UPSTREAM_MS / 1e3}
    summary = {"requests": len(results), "errors": len(errors), "concurrency": CONCURRENCY,
               "requests_per_s": round(len(ok) / wall, 1), "calls_per_request": round(float(calls.mean()), 3),
               "upstream_ms": UPSTREAM_MS, "cores": os.cpu_count(),
               "service_cpu_ms_per_request": round(cpu[1] / len(results) * 1e3, 3),
               "upstreams_cpu_ms_per_request": round(cpu[0] / len(results) * 1e3, 3),
               "end_to_end_ms_p50": round(float(np.percentile(seconds, 50)) * 1e3, 3)}
    for name, values in overhead.items():
        summary[f"{name}_overhead_ms_p50"] = round(float(np.percentile(values, 50)) * 1e3, 3)
        summary[f"{name}_overhead_ms_p99"] = round(float(np.percentile(values, 99)) * 1e3, 3)
    summary["meets_target"] = bool(summary["service_overhead_ms_p50"] <= 2.0
                                   and summary["service_overhead_ms_p99"] <= 10.0)
    summary["first_errors"] = errors[:5]
    return summary


def test_service_overhead_under_load(benchmark, tmp_path):
    """The load test; with ``SERVE_BENCH_BASELINE``, this checkout's service and the baseline's in turns."""
    services = {"this": ROOT} if BASELINE is None else {"this": ROOT, "baseline": Path(BASELINE).resolve()}
    with contextlib.ExitStack() as stack:
        running = {}
        for name, root in services.items():
            (tmp_path / name).mkdir()
            running[name] = stack.enter_context(_running(tmp_path / name, root=root))
        queries = running["this"][2]
        for url, _, _ in running.values():
            asyncio.run(_load(url, queries, WARM_UP, CONCURRENCY))
        results: dict[str, list[dict]] = {name: [] for name in services}
        cpu = {name: [0.0, 0.0] for name in services}
        wall = dict.fromkeys(services, 0.0)
        rounds = 1 if BASELINE is None else ROUNDS

        def load() -> None:
            for index in range(rounds):
                order = list(running.items())
                for name, (url, children, _) in order if index % 2 == 0 else order[::-1]:
                    before = [_cpu_seconds(child.pid) for child in children]
                    began = time.perf_counter()
                    results[name] += asyncio.run(_load(url, queries, max(N_REQUESTS // rounds, 1), CONCURRENCY))
                    wall[name] += time.perf_counter() - began
                    for i, (child, was) in enumerate(zip(children, before, strict=True)):
                        cpu[name][i] += _cpu_seconds(child.pid) - was

        benchmark.pedantic(load, rounds=1, iterations=1)
    summaries = {name: _summary(results[name], cpu[name], wall[name]) for name in services}
    benchmark.group = "serving: HTTP service under load"
    for name, summary in summaries.items():
        prefix = "" if name == "this" else f"{name}_"
        benchmark.extra_info.update({f"{prefix}{key}": value for key, value in summary.items()})
        print(f"\n  [{name}: {services[name]}; load {os.getloadavg()[0]:.2f}]")
        print("\n".join(f"  {key}: {value}" for key, value in summary.items() if key != "first_errors"))
        print(f"  target p50 <= 2 ms, p99 <= 10 ms (service figure): {'met' if summary['meets_target'] else 'NOT met'}")
    for summary in summaries.values():
        assert not summary["errors"], summary["first_errors"]


FLOODERS = int(os.environ.get("SERVE_BENCH_FLOODERS", "32"))
FLOOD_S = float(os.environ.get("SERVE_BENCH_FLOOD_S", "10"))


async def _healthz_latencies(url: str, seconds: float) -> list[float]:
    """``/healthz`` one request after another for ``seconds``, from 127.0.0.2 (another client than the
    flooders' 127.0.0.1, so the per-client limit does not mix them); each request's time (a failure raises)."""
    times: list[float] = []
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.perf_counter()
            async with client.get("/healthz") as reply:
                await reply.read()
                assert reply.status == 200
            times.append(time.perf_counter() - began)
            await asyncio.sleep(0.01)
    return times


#: The flood's bodies, each about 0.93 MB: many tiny messages (refused by their count while decoding), or as many
#: messages as --max-messages allows, each 3,600 characters long (decoded whole, then refused by --max-prompt-chars).
FLOOD_BODIES = {"30000_messages": [{"role": "user", "content": "xx"}] * 30_000,
                "256_messages": [{"role": "user", "content": "x" * 3_600}] * 256}


async def _flood(url: str, seconds: float, flooders: int, shape: str) -> list[int]:
    """``flooders`` clients posting the ``shape`` body of :data:`FLOOD_BODIES` for ``seconds``; their statuses."""
    body = json.dumps({"model": "router", "metadata": {"task": "math"}, "messages": FLOOD_BODIES[shape]},
                      separators=(",", ":")).encode()
    assert 0.8 * 2**20 < len(body) < 2**20, "under the default --max-body-bytes, so that it is parsed"
    statuses: list[int] = []
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=60)) as client:
        async def flooder() -> None:
            while time.monotonic() < end:
                async with client.post("/v1/chat/completions", data=body,
                                       headers={"content-type": "application/json"}) as reply:
                    await reply.read()
                    statuses.append(reply.status)

        await asyncio.gather(*(flooder() for _ in range(flooders)))
    return statuses


def _flood_process(url: str, seconds: float, flooders: int, shape: str, results) -> None:
    """The flood in a process of its own, so that the /healthz client's figures are not this process's queue."""
    results.put(asyncio.run(_flood(url, seconds, flooders, shape)))


def _healthz_flooded(service_url: str, shape: str, measure) -> dict[str, object]:
    """Another client's /healthz quiet, then under the ``shape`` flood (in a process of its own) of one service;
    ``measure(function)`` runs the flooded measurement (the benchmark's timer for the first service)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    quiet = asyncio.run(_healthz_latencies(service_url, min(FLOOD_S, 5.0)))
    results = context.Queue()
    flood = context.Process(target=_flood_process, args=(service_url, FLOOD_S, FLOODERS, shape, results))
    flood.start()
    try:
        time.sleep(1.0)  # the flood under way
        flooded = measure(lambda: asyncio.run(_healthz_latencies(service_url, FLOOD_S - 2.0)))
        statuses = results.get(timeout=120)
    finally:
        flood.join(30)
        if flood.is_alive():
            flood.kill()
    summary: dict[str, object] = {"shape": shape, "flooders": FLOODERS, "flood_requests": len(statuses),
                                  "flood_statuses": sorted(set(statuses)), "healthz_requests": len(flooded)}
    for name, values in (("quiet", quiet), ("flooded", flooded)):
        summary[f"healthz_{name}_ms_p50"] = round(float(np.percentile(values, 50)) * 1e3, 3)
        summary[f"healthz_{name}_ms_p99"] = round(float(np.percentile(values, 99)) * 1e3, 3)
    summary["meets_target"] = bool(np.percentile(flooded, 99) * 1e3 <= 50.0)
    return summary


@pytest.mark.parametrize("shape", list(FLOOD_BODIES))
def test_healthz_under_a_message_flood(benchmark, tmp_path, shape):
    """The flood; with ``SERVE_BENCH_BASELINE``, the baseline's service flooded the same way right after."""
    services = {"this": ROOT} if BASELINE is None else {"this": ROOT, "baseline": Path(BASELINE).resolve()}
    summaries = {}
    for name, root in services.items():
        (tmp_path / name).mkdir()
        with _running(tmp_path / name, root=root) as (service_url, _, _):
            measure = ((lambda f: benchmark.pedantic(f, rounds=1, iterations=1)) if name == "this"
                       else (lambda f: f()))
            summaries[name] = _healthz_flooded(service_url, shape, measure)
    benchmark.group = "serving: HTTP service under a message flood"
    for name, summary in summaries.items():
        prefix = "" if name == "this" else f"{name}_"
        benchmark.extra_info.update({f"{prefix}{key}": value for key, value in summary.items()})
        print(f"\n  [{name}: {services[name]}; load {os.getloadavg()[0]:.2f}]")
        print("\n".join(f"  {key}: {value}" for key, value in summary.items()))
    for summary in summaries.values():
        assert summary["flood_statuses"] == [400], "every flood request is refused (message count or prompt length)"


LOG_ROUNDS = int(os.environ.get("SERVE_BENCH_LOG_ROUNDS", "2"))


def test_traffic_log_overhead_and_sigkill(benchmark, tmp_path):
    """Issue 34: the service's overhead with ``--log-dir`` against without, measured in the same run.

    Two services side by side (the same fake upstreams), loaded in turns
    (off, on, off, on: ``SERVE_BENCH_LOG_ROUNDS`` rounds of
    ``SERVE_BENCH_REQUESTS`` / 2 requests each), so that the machine's other
    load weighs on both alike. The logging service writes a file every 500
    rows. Then it is SIGKILLed under load: every file under a final name
    must be complete and readable (by ``read_logs``, then ``read_table``).
    Target: the logging service's overhead p50 <= 2 ms, p99 <= 10 ms.
    """
    from training.data import read_table
    from training.traffic_log import read_logs

    folder = tmp_path / "log"
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    n = max(N_REQUESTS // 2, 100)
    with _running(tmp_path / "off") as (off_url, _, queries), \
            _running(tmp_path / "on", ("--log-dir", str(folder), "--log-file-rows", "500")) as (on_url, on, _):
        for url in (off_url, on_url):
            asyncio.run(_load(url, queries, WARM_UP, CONCURRENCY))
        results: dict[str, list[dict]] = {"off": [], "on": []}

        def rounds() -> None:
            for _ in range(LOG_ROUNDS):
                for name, url in (("off", off_url), ("on", on_url)):
                    results[name] += asyncio.run(_load(url, queries, n, CONCURRENCY))

        benchmark.pedantic(rounds, rounds=1, iterations=1)

        async def killed_under_load() -> list[dict]:
            load = asyncio.ensure_future(_load(on_url, queries, 4 * n, CONCURRENCY))
            await asyncio.sleep(3.0)
            on[1].kill()  # SIGKILL: no shutdown, no flush
            return await load

        asyncio.run(killed_under_load())
        on[1].wait(30)
    summary: dict[str, object] = {"requests_per_round": n, "rounds": LOG_ROUNDS, "concurrency": CONCURRENCY}
    for name, batch in results.items():
        errors = [r["error"] for r in batch if "error" in r]
        assert not errors, errors[:5]
        service = np.array([r["service_ms"] for r in batch])
        summary[f"log_{name}_overhead_ms_p50"] = round(float(np.percentile(service, 50)), 3)
        summary[f"log_{name}_overhead_ms_p99"] = round(float(np.percentile(service, 99)), 3)
    finals = sorted(folder.glob("traffic-*.parquet"))
    rows = read_logs(folder, keep_unlabelled=True)
    summary.update(log_files=len(finals), log_rows=len(rows),
                   leftover_temporary_files=len([p for p in folder.iterdir() if p.name.startswith(".")]))
    labels = rows.drop_duplicates("query_id")[["query_id"]].assign(quality=1.0)
    table = read_table(read_logs(folder, labels))
    summary["meets_target"] = bool(summary["log_on_overhead_ms_p50"] <= 2.0
                                   and summary["log_on_overhead_ms_p99"] <= 10.0)
    benchmark.group = "serving: traffic log overhead"
    benchmark.extra_info.update(summary)
    print("\n" + "\n".join(f"  {key}: {value}" for key, value in summary.items()))
    assert finals and len(table.query_ids) == len(labels)
    assert all(p.name.startswith(("traffic-", ".")) for p in folder.iterdir())
