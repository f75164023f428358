"""``training.files``: a file appears whole under its final name, or not at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from training import files
from training.files import staging_name, write_atomically

ROOT = Path(__file__).resolve().parents[1]


def test_bytes_and_writers_land_whole_with_the_umask_mode(tmp_path):
    target = tmp_path / "out.bin"
    write_atomically(target, b"first")
    assert target.read_bytes() == b"first"
    write_atomically(target, lambda handle: handle.write(b"second"))
    assert target.read_bytes() == b"second"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temporary file left behind


def test_while_writing_the_final_name_holds_the_old_file_and_a_failure_keeps_it(tmp_path):
    target = tmp_path / "report.json"
    target.write_bytes(b"old")
    seen = []

    def failing(handle):
        handle.write(b"half of the new")
        seen.append(target.read_bytes())
        raise RuntimeError("disk went away")

    with pytest.raises(RuntimeError, match="disk went away"):
        write_atomically(target, failing)
    assert seen == [b"old"] and target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_staging_names_are_hidden_unique_and_beside_the_target():
    names = {staging_name("router.joblib") for _ in range(100)}
    assert len(names) == 100
    assert all(name.startswith(".router.joblib.") and name.endswith(".tmp") for name in names)
    assert staging_name("data", ".old").endswith(".old")


@pytest.mark.parametrize("durable, syncs", [(True, 2), (False, 0)])
def test_durable_flushes_the_file_and_its_directory(tmp_path, monkeypatch, durable, syncs):
    calls = []
    real = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    write_atomically(tmp_path / "x", b"1", durable=durable)
    assert len(calls) == syncs


@pytest.mark.parametrize("content", ["text", None, 3, [b"a"]])
def test_content_that_is_not_bytes_or_a_writer_is_a_type_error_naming_the_fix(tmp_path, content):
    with pytest.raises(TypeError, match="bytes or a callable"):
        write_atomically(tmp_path / "x", content)
    assert not list(tmp_path.iterdir())


def test_a_killed_writer_leaves_the_old_file_under_the_final_name(tmp_path):
    target = tmp_path / "artifact.joblib"
    target.write_bytes(b"old artifact")
    started = tmp_path / "started"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from training.files import write_atomically

        def slow(handle):
            handle.write(b"new" * 1000)
            handle.flush()
            Path({str(started)!r}).touch()
            time.sleep(60)

        write_atomically(Path({str(target)!r}), slow)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert target.read_bytes() == b"old artifact"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("artifact.joblib", "started")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".artifact.joblib.")  # hidden, never the final name
