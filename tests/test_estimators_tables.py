"""Test helper: RoutingTables from the shared data, and a small synthetic one.

The checks at the bottom pin what the estimator tests rely on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from estimators.table import RoutingTable
from training.data import read_prices, read_table


def load_table(shared_data: Path, name: str) -> RoutingTable:
    """Read ``name/name.parquet`` of the shared data folder (the ``shared_data`` fixture) with the
    project loader; skip the test when that dataset is absent."""
    path = shared_data / name / f"{name}.parquet"
    if not path.exists():
        pytest.skip(f"shared data {path} is not available")
    return read_table(path)


def load_prices(shared_data: Path, name: str) -> dict[str, tuple[float, float]]:
    """Token prices from ``name/models.csv`` of the shared data folder."""
    return read_prices(shared_data / name / "models.csv")


def split_rows(table: RoutingTable, test_size: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random train/test query indices (the sources' own splits are not stratified)."""
    order = np.random.default_rng(seed).permutation(table.n_queries)
    cut = int(round(table.n_queries * (1 - test_size)))
    return np.sort(order[:cut]), np.sort(order[cut:])


def synthetic_table(n: int = 300, k: int = 3, seed: int = 0, responses: bool = True) -> RoutingTable:
    """A small table whose quality depends on the prompt, with a logged signal.

    Prompts are "math" or "code" questions; model ``j`` is good at math with
    probability rising in ``j``; responses are option letters, right ones
    shared, wrong ones random, so agreement carries information.
    """
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, size=n)
    prompts = np.array(
        [f"{'Compute 12 + 7 = ?' if c else 'def f(x): return x'} item {i}" for i, c in enumerate(kind)], dtype=object
    )
    skill = np.linspace(0.3, 0.9, k)
    p = np.where(kind[:, None] == 1, skill, skill[::-1])
    quality = (rng.random((n, k)) < p).astype(np.float64)
    truth = rng.choice(list("ABCD"), size=n)
    wrong = rng.choice(list("ABCD"), size=(n, k))
    answers = np.where(quality == 1, truth[:, None], wrong).astype(object)
    cost = np.outer(np.ones(n), np.geomspace(1e-4, 1e-2, k)) * (1 + rng.random((n, k)))
    return RoutingTable(
        models=tuple(f"m{j}" for j in range(k)),
        query_ids=np.array([f"q{i}" for i in range(n)], dtype=object),
        quality=quality,
        cost=cost,
        prompts=prompts,
        tasks=np.where(kind == 1, "math", "code").astype(object),
        responses=answers if responses else None,
        signals={"logprob": np.log(np.clip(p + rng.normal(0, 0.1, (n, k)), 0.01, 1.0))},
    )


def test_load_table_sorts_models_by_mean_cost(shared_data):
    table = load_table(shared_data, "routerbench_subset")
    assert table.quality.shape == (3150, 11)
    assert np.all(np.diff(table.cost.mean(axis=0)) >= 0)
    assert table.responses.shape == (3150, 11) and table.responses[0, 0] != ""


def test_synthetic_table_is_valid():
    table = synthetic_table(n=50, k=4)
    assert table.quality.shape == (50, 4)
    assert set(np.unique(table.quality)) <= {0.0, 1.0}
