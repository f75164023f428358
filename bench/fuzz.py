"""Fuzz campaign: the properties of ``tests/test_fuzz.py`` on many inputs per target, under a memory limit.

Run once, not in CI (about 20 minutes on 2 cores for 10,000 inputs per target)::

    python bench/fuzz.py                      # 10,000 inputs per target
    python bench/fuzz.py --examples 500 -k artifact

Each test of ``tests/test_fuzz.py`` is one target; hypothesis' statistics
(inputs run, time per input, the slowest) are printed per target. The
address-space limit turns an input that makes a reader allocate without
bound into a ``MemoryError``, which the properties report as a finding (it
is no documented error type). A hang shows as a target that never finishes:
its statistics name the slowest inputs.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the fuzz tests with ``--examples`` inputs per target; return pytest's exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--examples", type=int, default=10_000, help="inputs per target")
    parser.add_argument("--memory-gb", type=float, default=8.0,
                        help="address-space limit of this process (pyarrow and numba reserve a few GB of it)")
    parser.add_argument("-k", default=None, help="pytest -k expression selecting targets")
    args = parser.parse_args(argv)
    limit = int(args.memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.environ["FUZZ_EXAMPLES"] = str(args.examples)
    import pytest

    options = [str(ROOT / "tests" / "test_fuzz.py"), "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics"]
    return int(pytest.main(options + (["-k", args.k] if args.k else [])))


if __name__ == "__main__":
    sys.exit(main())
