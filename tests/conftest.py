"""Shared test setup: tests import their slow twins from this folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest

#: The real benchmark tables beside the repository (``../shared/data``); optional.
_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder; the test is skipped when it is absent."""
    if not _SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {_SHARED_DATA} is absent")
    return _SHARED_DATA


@pytest.fixture(scope="session")
def routerbench_subset(shared_data) -> Path:
    """The ``routerbench_subset`` folder of the shared data (skipped when absent)."""
    folder = shared_data / "routerbench_subset"
    if not folder.is_dir():
        pytest.skip(f"shared data {folder} is absent")
    return folder


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
    from training.router import load_router

    return load_router(artifact)


@pytest.fixture(scope="session")
def serve_artifact(tmp_path_factory):
    """A router artifact whose hand-set cascade-routing policies call one to three of four models, for the
    service tests (``tests/servekit.py``)."""
    from servekit import build_router_artifact

    return build_router_artifact(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def serve_router(serve_artifact):
    """The service tests' router, loaded strictly and warmed up."""
    from training.router import load_router

    return load_router(serve_artifact)


@pytest.fixture(scope="module")
def upstream_server():
    """Fake OpenAI-compatible upstreams on a loopback thread (``servekit.FakeUpstreams``), one per test module."""
    from servekit import running_upstreams

    with running_upstreams(hang=1.0) as fake:
        yield fake


@pytest.fixture
def upstreams(upstream_server):
    """The module's fake upstreams, reset: no calls recorded, every model answering."""
    upstream_server.reset()
    return upstream_server


#: Fixtures (here or in a test module) that run a full ``training.fit`` (~half a minute on 2 cores), or stand
#: on one: a test that uses one, directly or through another fixture, is in the slow tier.
FIT_FIXTURES = frozenset({"fitted_artifact", "artifact", "router", "two_budget_fit", "forced_loss", "partial_fit"})


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs a fit-based fixture ``slow``, so the default run (``-m "not slow"``) skips it."""
    for item in items:
        if FIT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
