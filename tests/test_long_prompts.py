"""Issue 12: featurization reads a bounded slice of each prompt, so one huge prompt costs no more
memory than a normal one and text beyond the slice does not change what is fitted."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from estimators.estimator import make_router_estimator
from estimators.prompts import PROMPT_CHARS, read_prompts
from training.data import read_table
from training.synthetic import make_benchmark

pytestmark = pytest.mark.slow  # fits in child processes to measure their peak memory

MEGABYTE = 1 << 20


def _huge_prompt(seed: int = 0) -> str:
    """About 1 MB of varied words (n-grams galore), ending with a normal question."""
    words = np.random.default_rng(seed).integers(0, 50_000, MEGABYTE // 6).astype(str)
    return " ".join(words)[:MEGABYTE - 40] + "\nWhich of these numbers is prime?"


def _frames(n: int):
    frame = make_benchmark(n, seed=3)
    long = frame.copy()
    first = long["query_id"] == long["query_id"].iloc[0]
    long.loc[first, "prompt"] = _huge_prompt()
    return frame, long, first


def test_read_prompts_keeps_the_tail_and_refuses_non_strings():
    text = "a" * PROMPT_CHARS + "the question?"
    sliced, repaired = read_prompts([text, "short"])
    assert sliced[0] == text[-PROMPT_CHARS:] and len(sliced[0]) == PROMPT_CHARS and sliced[0].endswith("question?")
    assert sliced[1] == "short" and repaired == 0
    with pytest.raises(TypeError, match=r"prompts\[0\] is float"):
        read_prompts([float("nan")])


def test_text_beyond_the_slice_does_not_change_the_fitted_estimator():
    _, long, first = _frames(300)
    cut = long.copy()
    cut.loc[first, "prompt"] = _huge_prompt()[-PROMPT_CHARS:]
    other = long.copy()
    other.loc[first, "prompt"] = "different words entirely " * 40_000 + _huge_prompt()[-PROMPT_CHARS:]
    assert len(other.loc[first, "prompt"].iloc[0]) > PROMPT_CHARS
    tables = [read_table(f) for f in (long, cut, other)]
    fitted = [make_router_estimator("learned", None).fit(t) for t in tables]
    reference = fitted[1].predict_table(tables[1])
    for estimator, table in zip(fitted[::2], tables[::2], strict=True):
        estimates = estimator.predict_table(table)
        np.testing.assert_array_equal(estimates.quality, reference.quality)
        np.testing.assert_array_equal(estimates.cost, reference.cost)
        np.testing.assert_array_equal(estimates.sigma, reference.sigma)


PEAK_RSS = """
import resource, sys
from training.fit import main
code = main(sys.argv[1:])
print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _fit_peak_rss_kib(frame, folder) -> int:
    data = folder / "data.parquet"
    frame.to_parquet(data)
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, "--data", str(data), "--quiet", "--budget", "0.0005",
                             "--out", str(folder / "r.joblib"), "--report", str(folder / "report")],
                            capture_output=True, text=True, check=True)
    code, peak = result.stdout.split()[-2:]
    assert code == "0", result.stderr
    return int(peak)


def test_one_megabyte_prompt_costs_fit_no_more_memory(tmp_path):
    """Peak RSS of ``training.fit`` in a child process, 600 queries, with and without one 1 MB prompt."""
    frame, long, _ = _frames(600)
    (tmp_path / "plain").mkdir()
    (tmp_path / "long").mkdir()
    plain = _fit_peak_rss_kib(frame, tmp_path / "plain")
    huge = _fit_peak_rss_kib(long, tmp_path / "long")
    print(f"fit peak RSS: {plain / 1024:.0f} MiB without, {huge / 1024:.0f} MiB with the 1 MB prompt")
    assert huge <= 1.2 * plain
