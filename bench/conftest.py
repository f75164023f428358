"""Benchmarks reuse the slow twins in tests/ as their reference."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
