"""``python -m training.score`` under faults: nothing a user owns is overwritten, lost or left half-written.

Each fault of issue 11 point 1-2 is reproduced: outputs that are the input
or each other, a directory or an unwritable place as output, an earlier
interrupted run, SIGKILL and SIGTERM in the middle of a run with worker
processes, and ``--resume`` after them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from training.serving.batch import main
from training.synthetic import make_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Path:
    """Logged traffic of the synthetic benchmark (the shared small router's models), 2,000 queries."""
    path = tmp_path_factory.mktemp("faults") / "traffic.parquet"
    make_benchmark(2000, seed=5).to_parquet(path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _score(artifact, source, output, *extra) -> list[str]:
    return ["--artifact", str(artifact), "--input", str(source), "--output", str(output), "--quiet", *extra]


def test_an_output_that_is_the_input_is_refused_and_the_input_is_intact(artifact, logged, tmp_path, capsys):
    copy = tmp_path / "traffic.parquet"
    copy.write_bytes(logged.read_bytes())
    before = _digest(copy)
    assert main(_score(artifact, copy, copy)) == 2
    assert "is the input file" in capsys.readouterr().err
    assert main(_score(artifact, copy, tmp_path / "out.parquet", "--rejects", str(tmp_path / "." / copy.name))) == 2
    link = tmp_path / "link.parquet"
    link.symlink_to(copy)
    assert main(_score(artifact, copy, link)) == 2
    assert _digest(copy) == before
    assert not (tmp_path / "out.parquet").exists()


def test_rejects_equal_to_output_or_a_directory_as_output_are_refused(artifact, logged, tmp_path, capsys):
    out = tmp_path / "out.parquet"
    assert main(_score(artifact, logged, out, "--rejects", str(out))) == 2
    assert "are the same file" in capsys.readouterr().err
    assert main(_score(artifact, logged, tmp_path)) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not out.exists()


def test_an_unwritable_output_fails_before_any_work(artifact, logged, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    started = time.perf_counter()
    assert main(_score(artifact, logged, blocker / "out.parquet")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write --output") and err.count("\n") == 1
    assert time.perf_counter() - started < 30  # no scoring happened (loading the router is all)


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.add(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


def _start(artifact, source, output) -> subprocess.Popen:
    command = [sys.executable, "-m", "training.score",
               *_score(artifact, source, output, "--workers", "2", "--batch-size", "400")]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_batches(output: Path, process: subprocess.Popen, at_least: int) -> int:
    progress = output.with_name(output.name + ".partial") / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            done = json.loads(progress.read_text())["done"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= at_least:
            return done
        time.sleep(0.05)
    raise AssertionError("the run made no progress")


@pytest.fixture(scope="module")
def clean_run(artifact, logged, tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("clean")
    out = folder / "out.parquet"
    assert main(_score(artifact, logged, out, "--workers", "2", "--batch-size", "400")) == 0
    return pd.read_parquet(out), pd.read_parquet(folder / "out.rejects.parquet")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_run_leaves_nothing_behind_and_resume_gives_the_clean_rows(artifact, logged, tmp_path, clean_run,
                                                                            sig):
    out = tmp_path / "out.parquet"
    process = _start(artifact, logged, out)
    _wait_for_batches(out, process, at_least=3)
    workers = _children(process.pid)
    assert workers, "the run has worker processes"
    process.send_signal(sig)
    code = process.wait(timeout=30)
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "worker processes outlived the run"
    assert not out.exists() and not out.with_name("out.rejects.parquet").exists()
    partial = out.with_name(out.name + ".partial")
    if sig == signal.SIGTERM:  # SIGKILL may cut a part's write: --resume removes what it left
        assert not list(partial.glob(".*.tmp")), "half-written parts were left"
        assert code == 143
        assert "--resume" in process.stderr.read()
    # without --resume the leftover run is named; with it, the run completes as a clean one would
    assert main(_score(artifact, logged, out, "--workers", "2", "--batch-size", "400")) == 2
    assert main(_score(artifact, logged, out, "--workers", "2", "--batch-size", "400", "--resume")) == 0
    scored, rejected = clean_run
    pd.testing.assert_frame_equal(pd.read_parquet(out), scored)
    pd.testing.assert_frame_equal(pd.read_parquet(out.with_name("out.rejects.parquet")), rejected)
    assert not partial.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_refuses_a_partial_run_of_other_settings(artifact, logged, tmp_path, capsys):
    out = tmp_path / "out.parquet"
    partial = out.with_name(out.name + ".partial")
    partial.mkdir()
    (partial / "progress.json").write_text(json.dumps({"run": {"input": "elsewhere"}, "done": 1, "totals": {}}))
    assert main(_score(artifact, logged, out, "--resume")) == 2
    assert "belongs to another run" in capsys.readouterr().err
    assert main(_score(artifact, logged, out)) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert not out.exists()


def test_sigterm_in_process_exits_143_through_the_command_contract(artifact, logged, tmp_path, monkeypatch, capsys):
    """The same contract without a subprocess: SIGTERM during the job unwinds and returns 143."""
    from training.serving import batch as score

    def job(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the job")

    monkeypatch.setattr(score, "run", job)
    assert score.main(_score(artifact, logged, tmp_path / "out.parquet")) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_input_scores_like_parquet(artifact, logged, tmp_path, suffix):
    frame = pd.read_parquet(logged).iloc[: 8 * 300]
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / f"t{suffix}", index=False)  # pandas defaults; prompts span several lines
    results = []
    for source in (tmp_path / "t.parquet", tmp_path / f"t{suffix}"):
        out = tmp_path / f"{source.name}.out.parquet"
        assert main(_score(artifact, source, out, "--batch-size", "250")) == 0
        result = pd.read_parquet(out)
        result["models_run"] = result["models_run"].map(tuple)
        results.append(result)
    assert len(results[0]) == 300
    pd.testing.assert_frame_equal(results[1], results[0])


def test_a_closed_stdout_ends_quietly_after_the_work_is_written(artifact, logged, tmp_path):
    """``training.score ... | head -1``: the reader leaves before the summary; no traceback, outputs complete."""
    output = tmp_path / "out.parquet"
    child = subprocess.Popen([sys.executable, "-m", "training.score", *_score(artifact, logged, output)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.stdout.close()  # before anything is printed
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert len(pd.read_parquet(output)) == 2000
