"""Shared test setup: tests import their slow twins from this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest


@pytest.fixture(scope="session")
def fitted_artifact(tmp_path_factory):
    """One small ``training.fit`` run (ridge estimator: fast) shared by the artifact,
    service and scoring tests: ``(artifact path, report directory)``."""
    from training.fit import main

    folder = tmp_path_factory.mktemp("fit")
    out, report = folder / "router.joblib", folder / "report"
    code = main(["--n-queries", "700", "--estimator", "linear", "--budget", "0.0004", "0.001",
                 "--out", str(out), "--report", str(report), "--quiet"])
    assert code == 0
    return out, report


@pytest.fixture(scope="session")
def artifact(fitted_artifact):
    """Path of the shared small router artifact."""
    return fitted_artifact[0]


@pytest.fixture(scope="session")
def router(artifact):
    """The shared small router, loaded strictly and warmed up."""
    from training.serving.router import load_router

    return load_router(artifact)
