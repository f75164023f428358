"""Every code block of the README runs as written, in order, in a fresh copy of the repository (slow tier).

The bash blocks run in one ``bash`` (exports and ``$!`` carry from block to
block, as in one terminal) and the Python blocks in one interpreter (names
carry over, as in one REPL), in README order, from the root of a copy of the
repository's tracked files in a temporary folder, so that nothing the
examples write lands in the checkout. The service examples bind loopback
ports 8000 and 9000. A block preceded by ``<!-- readme-test: skip: REASON
-->`` is not run (the fresh-machine block, which ``.ci/run`` runs itself);
``toml`` blocks are parsed, not run. Afterwards every file the examples
wrote must be ignored by ``.gitignore``, so that running them from the
repository root leaves ``git status`` clean.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: A fenced block with its language, and the skip note that may precede it.
BLOCK = re.compile(r"(?:<!-- readme-test: skip: (?P<skip>[^>]*?) -->\n)?^```(?P<lang>\w+)\n(?P<code>.*?)^```$",
                   re.S | re.M)
DONE = "__README_BLOCK_DONE__"
#: Seconds one block may take (the slowest fits on a loaded 2-core machine), and the whole README.
BLOCK_TIMEOUT, TOTAL_TIMEOUT = 1500.0, 3000.0  # ~5 min in all on 2 idle cores; a loaded machine is 3-5x slower
PORTS = (8000, 9000)

#: The interpreter the Python blocks run in: one namespace, one block per line of stdin (a file to run).
DRIVER = f"""
import sys, traceback
namespace = {{"__name__": "__main__"}}
for line in sys.stdin:
    path = line.strip()
    try:
        exec(compile(open(path, encoding="utf-8").read(), path, "exec"), namespace)
        status = 0
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stderr.flush()
    print("\\n{DONE}", status, flush=True)  # on a line of its own, whatever the block printed last
"""


def readme_blocks(text: str) -> list[tuple[str, str, str | None]]:
    """``(language, code, skip reason or None)`` of every fenced block, in order."""
    return [(m["lang"], m["code"], m["skip"]) for m in BLOCK.finditer(text)]


class Session:
    """A long-lived shell or interpreter fed one block at a time; its output is collected line by line."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: list[str]) -> None:
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log = log
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command: str, deadline: float) -> int:
        """Send ``command`` (one line) and wait for its end marker; the block's status (EOF: the session died)."""
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError("block did not finish in time") from None
            if line is None:
                return -1
            if line.startswith(DONE):
                return int(line.split()[1])
            self.log.append(line)

    def close(self) -> None:
        """End the session and everything it started (background servers included: one process group)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=20)
                time.sleep(0.5)  # background jobs of the group get the signal too; let them go
            except subprocess.TimeoutExpired:
                continue


def fresh_copy(destination: Path) -> None:
    """Copy the checkout's tracked (and new, not ignored) files; with Numba's cache, so kernels are not recompiled."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if not source.is_file():  # deleted in the working tree
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)  # keeps the modification time Numba's cache index is keyed on
    for cache in ROOT.glob("*/**/__pycache__"):
        if (destination / cache.relative_to(ROOT).parent).is_dir():
            for entry in [*cache.glob("*.nb[ic]"), *cache.glob("*.sha256")]:  # the kernels and their sources' stamp
                target = destination / entry.relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(entry, target)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[tuple[Path, Session, Session, list[str]]]:
    work = tmp_path / "repo"
    work.mkdir()
    fresh_copy(work)
    env = {**os.environ, "PYTHONPATH": str(work), "MPLBACKEND": "Agg",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log: list[str] = []
    shell = Session(["bash", "--noprofile", "--norc"], work, env, log)
    python = Session([sys.executable, "-u", "-c", DRIVER], work, env, log)
    try:
        yield work, shell, python, log
    finally:
        python.close()
        shell.close()


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_readme_runs_top_to_bottom(sessions: tuple[Path, Session, Session, list[str]]) -> None:
    if shutil.which("curl") is None or shutil.which("java") is None:
        pytest.skip("the README's examples need curl and Java 17 (Spark)")
    busy = [port for port in PORTS if not _port_free(port)]
    assert not busy, f"ports {busy} are in use on 127.0.0.1; the README's service example binds them"
    work, shell, python, log = sessions
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert [lang for lang, _, _ in blocks].count("bash") >= 5, "the README's blocks were not found"
    files_before = {path for path in work.rglob("*") if path.is_file()}
    assert shell.run(f"set -e -o pipefail; echo {DONE} 0", time.monotonic() + 10) == 0
    start = time.monotonic()
    for index, (lang, code, skip) in enumerate(blocks):
        if skip is not None:
            continue
        if lang == "toml":
            toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
            toml.loads(code)
            continue
        assert lang in ("bash", "python"), f"README block {index} is ```{lang}, which this test cannot run"
        script = work / f".readme-block-{index}.{'sh' if lang == 'bash' else 'py'}"
        script.write_text(code, encoding="utf-8")
        command = (f"source {script} < /dev/null; printf '\\n%s %s\\n' {DONE} $?" if lang == "bash"
                   else str(script))  # the marker on a line of its own, whatever the block printed last
        log.append(f"--- block {index} ({lang}) ---\n")
        deadline = min(time.monotonic() + BLOCK_TIMEOUT, start + TOTAL_TIMEOUT)
        status = (shell if lang == "bash" else python).run(command, deadline)
        assert status == 0, f"README block {index} ({lang}) failed:\n{code}\n--- output ---\n{''.join(log[-80:])}"
    written = sorted(str(path.relative_to(work)) for path in work.rglob("*")
                     if path.is_file() and path not in files_before and "__pycache__" not in path.parts
                     and not path.name.startswith(".readme-block-"))
    assert written, "the README's examples wrote nothing; were they run?"
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    ignored = subprocess.run(["git", "check-ignore", "--stdin"], cwd=work, input="\n".join(written), text=True,
                             capture_output=True).stdout.split("\n")
    unignored = sorted(set(written) - set(ignored))
    assert not unignored, f"README examples write files .gitignore does not cover: {unignored}"
