"""Time every command of the README as ``tests/test_readme.py`` runs it: wall, CPU-s and the machine's load.

``python bench/readme_times.py [--out times.txt]`` copies the checkout into a
temporary folder (as the README test does), runs the README's blocks in
order there, and records for every ``python``/``spark-submit`` command of the
bash blocks its wall seconds, CPU seconds (user + system, children
included: ``/usr/bin/time``) and the 1-minute load average before and after;
each Python block is timed as a whole (wall, and CPU of the interpreter's
threads), and so is every block (``block N total``: CPU of the shell or
interpreter and of the children it waited for, so a service stopped within
the block counts). The long-running services (``training.serve``, the stand-in
upstreams) are not timed. The figures go to the README by hand: on a shared
machine the wall time depends on the other jobs, which the load column
shows; the CPU seconds are the figure to compare.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("test_readme", ROOT / "tests" / "test_readme.py")
assert _spec is not None and _spec.loader is not None
readme_test = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_test)

#: Commands left untimed (they run until killed), matched in the command line.
UNTIMED = ("training.serve", "servekit.py")
#: Replaces ``python`` and ``spark-submit`` on the PATH of the README's shell: times each call into a file.
WRAPPER = """#!/bin/sh
real="{real}"
case "$*" in {untimed}) exec "$real" "$@";; esac
before=$(cut -d' ' -f1 /proc/loadavg)
command=$(printf '%s' "$*" | tr '\\n' ' ' | sed 's/%/%%/g')
/usr/bin/time -f "{name} $command|%e|%U|%S|%M|$before" -a -o "$README_TIMES" "$real" "$@"
status=$?
echo "load after $(cut -d' ' -f1 /proc/loadavg)" >> "$README_TIMES"
exit $status
"""
#: The Python blocks' interpreter: each block timed (wall, process CPU) into the same file.
DRIVER = readme_test.DRIVER.replace(
    "    try:\n",
    "    import os, time\n"
    "    wall, cpu, load = time.monotonic(), time.process_time(), os.getloadavg()[0]\n"
    "    try:\n").replace(
    "    sys.stderr.flush()\n",
    "    with open(os.environ['README_TIMES'], 'a') as times:\n"
    "        times.write(f'python-block {path}|{time.monotonic() - wall:.2f}|{time.process_time() - cpu:.2f}|0|0|"
    "{load:.2f}\\nload after {os.getloadavg()[0]:.2f}\\n')\n"
    "    sys.stderr.flush()\n")


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of its children it has waited for (``/proc/PID/stat``: utime to cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    """Run the README's blocks in a temporary copy and print the times file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("readme_times.txt"), help="the times file (appended)")
    args = parser.parse_args()
    out = args.out.resolve()
    with tempfile.TemporaryDirectory() as folder:
        work, tools = Path(folder) / "repo", Path(folder) / "bin"
        work.mkdir()
        tools.mkdir()
        readme_test.fresh_copy(work)
        untimed = "|".join(f"*{name}*" for name in UNTIMED)
        spark_submit = shutil.which("spark-submit", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                                      f"{os.environ.get('PATH', '')}")
        for name, real in (("python", sys.executable), ("spark-submit", spark_submit)):
            if real is None:
                continue
            wrapper = tools / name
            wrapper.write_text(WRAPPER.format(real=real, untimed=untimed, name=name))
            wrapper.chmod(0o755)
        env = {**os.environ, "PYTHONPATH": str(work), "MPLBACKEND": "Agg", "README_TIMES": str(out),
               "PATH": f"{tools}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        log: list[str] = []
        shell = readme_test.Session(["bash", "--noprofile", "--norc"], work, env, log)
        python = readme_test.Session([sys.executable, "-u", "-c", DRIVER], work, env, log)
        try:
            shell.run(f"set -e -o pipefail; echo {readme_test.DONE} 0", time.monotonic() + 10)
            blocks = readme_test.readme_blocks(readme_test.README.read_text(encoding="utf-8"))
            for index, (lang, code, skip) in enumerate(blocks):
                if skip is not None or lang not in ("bash", "python"):
                    continue
                script = work / f".readme-block-{index}.{'sh' if lang == 'bash' else 'py'}"
                script.write_text(code, encoding="utf-8")
                with out.open("a") as times:
                    times.write(f"--- block {index} ({lang})\n")
                command = (f"source {shlex.quote(str(script))} < /dev/null; printf '\\n%s %s\\n' "
                           f"{readme_test.DONE} $?" if lang == "bash" else str(script))
                session = shell if lang == "bash" else python
                wall, cpu = time.monotonic(), _cpu_seconds(session.process.pid)
                status = session.run(command, time.monotonic() + 3000)
                with out.open("a") as times:  # the block as a whole: its commands, their children, the services
                    times.write(f"block {index} total|{time.monotonic() - wall:.2f}|"
                                f"{_cpu_seconds(session.process.pid) - cpu:.2f}|0|0|{os.getloadavg()[0]:.2f}\n")
                if status != 0:
                    print("".join(log[-60:]), file=sys.stderr)
                    print(f"block {index} failed", file=sys.stderr)
                    return 1
        finally:
            python.close()
            shell.close()
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
