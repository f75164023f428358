"""Benchmarks reuse the slow twins in tests/ as their reference, and its shared-data fixtures."""

import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

# ``shared_data`` and ``routerbench_subset`` (skip when ../shared/data is absent) and the service tests' router
# (``serve_artifact``, ``serve_router``, ``upstream_server``) are defined once, in
# tests/conftest.py; load that file under another name so that its fixtures are visible here too.
_spec = importlib.util.spec_from_file_location("_tests_conftest", TESTS / "conftest.py")
_tests_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tests_conftest)
shared_data = _tests_conftest.shared_data
routerbench_subset = _tests_conftest.routerbench_subset
serve_artifact = _tests_conftest.serve_artifact
serve_router = _tests_conftest.serve_router
upstream_server = _tests_conftest.upstream_server
