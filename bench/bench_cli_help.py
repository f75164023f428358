"""How long ``python -m training.X --help`` takes, for every command the README shows (issue 32).

Run: ``python -m pytest bench/bench_cli_help.py --benchmark-json=help.json``.
Target: at most 0.5 s wall each, interpreter start included. Each round is a
fresh interpreter (``subprocess``), so the time is what a user waits for. The
CPU seconds of the rounds (``getrusage`` of the children) are recorded beside
the wall time and checked against the target always; the wall time only when
the machine is quiet (1-minute load below 1.5), since on a shared machine it
measures the other jobs. ``tests/test_cli_vocabulary.py`` checks, without
timing, that no heavy module is imported.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["fit", "evaluate", "score", "serve", "synthetic", "data", "keygen"]
TARGET_S = 0.5
ROUNDS = 5


@pytest.mark.parametrize("command", COMMANDS)
def test_help_time(benchmark, command: str) -> None:
    benchmark.group = "--help, fresh interpreter"
    argv = [sys.executable, "-m", f"training.{command}", "--help"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run() -> None:
        subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)

    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / (ROUNDS + 1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update({"median_wall_s": round(median, 3), "cpu_s": round(cpu, 3), "load": load})
    print(f"\npython -m training.{command} --help: median {median:.3f} s wall, {cpu:.3f} CPU-s (load {load:.1f})")
    assert cpu <= TARGET_S
    if load < 1.5:
        assert median <= TARGET_S
