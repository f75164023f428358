"""Validation of what callers pass to :class:`~estimators.estimator.RouterEstimator`.

Every check names the parameter, what it received and what to do, and runs
before any model sees the data: a wrong run matrix or a NaN signal of a model
that ran would otherwise turn silently into "model not run".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["check_run", "check_signals", "check_responses", "check_observed_cost", "check_per_query",
           "per_query_inputs"]


def check_run(run, n: int, models: Sequence[str]) -> np.ndarray:
    """Return the run matrix as ``(n, K)`` bool.

    ``run`` may be ``None`` (nothing run), a sequence of model names (the same
    run set for every query) or an ``(n, K)`` array of bool or 0/1 integers.
    """
    k = len(models)
    if run is None:
        return np.zeros((n, k), dtype=bool)
    if isinstance(run, (list, tuple)) and all(isinstance(name, str) for name in run):
        unknown = [name for name in run if name not in models]
        if unknown:
            raise ValueError(f"run names unknown model(s) {unknown}; known models are {list(models)}")
        mask = np.isin(np.asarray(models, dtype=object), list(run))
        return np.tile(mask, (n, 1))
    run = np.asarray(run)
    if run.dtype != bool and not np.issubdtype(run.dtype, np.integer):
        raise TypeError(f"run must be a bool (or 0/1 integer) array or a list of model names; got dtype {run.dtype}")
    if run.shape != (n, k):
        raise ValueError(f"run must have shape (n_queries, n_models) = {(n, k)}; got {run.shape}")
    if run.dtype != bool and not np.isin(run, (0, 1)).all():
        raise ValueError("run as integers must hold only 0 and 1")
    return run.astype(bool)


def check_per_query(name: str, values, n: int | None) -> np.ndarray | None:
    """Return ``values`` as an object array of one string per query (or None)."""
    if values is None:
        return None
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, one per query; got a single string")
    values = np.asarray(values, dtype=object)
    if values.ndim != 1 or (n is not None and len(values) != n):
        raise ValueError(f"{name} must have shape ({n},); got {values.shape}")
    return values


def check_signals(signals, names: Sequence[str], run: np.ndarray) -> dict[str, np.ndarray]:
    """Return the named signals as float64 ``(N, K)`` arrays, NaN only where a model did not run."""
    signals = {} if signals is None else dict(signals)
    missing = [name for name in names if name not in signals]
    extra = [name for name in signals if name not in names]
    if extra:
        raise ValueError(f"signals has unknown name(s) {extra}; the estimator was fitted with {list(names)}")
    if missing and run.any():
        raise ValueError(f"signals is missing {missing}, which the estimator was fitted with; pass them for the run models")
    checked = {}
    for name in names:
        if name not in signals:
            checked[name] = np.full(run.shape, np.nan)
            continue
        value = np.asarray(signals[name], dtype=np.float64)
        if value.shape != run.shape:
            raise ValueError(f"signal {name!r} must have shape {run.shape}; got {value.shape}")
        bad = np.argwhere(run & ~np.isfinite(value))
        if len(bad):
            row, col = bad[0]
            raise ValueError(
                f"signal {name!r} is NaN or infinite for a model that ran (row {row}, column {col}); "
                "NaN is allowed only for models not run"
            )
        checked[name] = value
    return checked


def check_responses(responses, run: np.ndarray) -> np.ndarray:
    """Return responses as an ``(N, K)`` object array, ``''`` for models not run."""
    if responses is None:
        return np.full(run.shape, "", dtype=object)
    responses = np.asarray(responses, dtype=object)
    if responses.shape != run.shape:
        raise ValueError(f"responses must have shape {run.shape}; got {responses.shape}")
    return np.where(run, responses, "")


def check_observed_cost(observed_cost, run: np.ndarray) -> np.ndarray:
    """Return observed costs as float64 ``(N, K)``; finite and >= 0 wherever a model ran."""
    if observed_cost is None:
        if run.any():
            raise ValueError("observed_cost is required when some model has run: its cost is used exactly")
        return np.full(run.shape, np.nan)
    cost = np.asarray(observed_cost, dtype=np.float64)
    if cost.shape != run.shape:
        raise ValueError(f"observed_cost must have shape {run.shape}; got {cost.shape}")
    bad = np.argwhere(run & ~(np.isfinite(cost) & (cost >= 0)))
    if len(bad):
        row, col = bad[0]
        raise ValueError(
            f"observed_cost must be finite and >= 0 for models that ran; row {row}, column {col} has {cost[row, col]}"
        )
    return cost


def per_query_inputs(columns: Sequence[str], prompts, tasks, subtasks) -> tuple[dict, int]:
    """Check the per-query inputs an estimator was fitted with; return them by column and ``N``.

    Raises ``ValueError`` naming what is missing, so that a request without
    the ``tasks`` the estimator needs fails clearly instead of deep inside the
    featurizer.
    """
    given = {"prompt": prompts, "task": tasks, "subtask": subtasks}
    n = next((len(v) for v in given.values() if v is not None and not isinstance(v, str)), None)
    given = {name: check_per_query(f"{name}s", value, n) for name, value in given.items()}
    missing = [name for name in columns if given[name] is None]
    if missing:
        raise ValueError(
            f"{', '.join(name + 's' for name in missing)} required: the estimator was fitted with "
            f"per-query columns {list(columns)}")
    if n is None:
        raise ValueError("pass prompts, tasks or subtasks: at least one per-query input is needed")
    return given, n
