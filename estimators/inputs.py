"""Validation of what callers pass to :class:`~estimators.estimator.RouterEstimator`.

Every check names the parameter, what it received and what to do, and runs
before any model sees the data: a wrong run matrix or a NaN signal of a model
that ran would otherwise turn silently into "model not run".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["check_run", "check_signals", "check_responses", "check_observed_cost", "check_observed_latency",
           "check_per_query", "per_query_inputs"]


def check_run(run: ArrayLike | Sequence[str] | None, n: int, models: Sequence[str]) -> NDArray[np.bool_]:
    """Return the run matrix as ``(n, K)`` bool, so that a wrong one fails here and not as "not run".

    Parameters
    ----------
    run : (n, K) array-like of bool or 0/1 integers, list of str, or None
        ``None``: nothing run; a list (or tuple) of model names: the same
        run set for every query; else one row per query.
    n : int
        Number of queries.
    models : sequence of str
        The ``K`` model names, in column order.

    Returns
    -------
    ndarray of bool, shape (n, K)

    Raises
    ------
    ValueError
        On an unknown model name, a wrong shape or integers other than 0/1.
    TypeError
        On another dtype.
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


def check_per_query(name: str, values: ArrayLike | None, n: int | None) -> NDArray[np.object_] | None:
    """Return ``values`` as an object array of one entry per query (or None), refusing a lone string.

    A single string would otherwise read as one query per character.

    Parameters
    ----------
    name : str
        Argument name, quoted in error messages (``prompts``, ``tasks``, ...).
    values : array-like of str, shape (n,), or None
    n : int or None
        Expected number of queries; ``None`` accepts any length.

    Returns
    -------
    ndarray of object, shape (n,), or None
        ``None`` when ``values`` is.

    Raises
    ------
    TypeError
        If ``values`` is a single string.
    ValueError
        If it is not 1-D of length ``n``.
    """
    if values is None:
        return None
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, one per query; got a single string")
    values = np.asarray(values, dtype=object)
    if values.ndim != 1 or (n is not None and len(values) != n):
        raise ValueError(f"{name} must have shape ({n},); got {values.shape}")
    return values


def check_signals(signals: Mapping[str, ArrayLike] | None, names: Sequence[str],
                  run: NDArray[np.bool_]) -> dict[str, NDArray[np.float64]]:
    """Return the named signals as float64 ``(N, K)`` arrays, NaN only where a model did not run.

    A NaN signal of a model that ran would otherwise read as "not run".

    Parameters
    ----------
    signals : mapping of str to (N, K) array-like of float, or None
        The signals passed; may omit all of them when nothing ran.
    names : sequence of str
        The signals the estimator was fitted with, in feature order.
    run : ndarray of bool, shape (N, K)

    Returns
    -------
    dict of str to ndarray of float64, shape (N, K)
        One entry per name, in ``names`` order; all NaN for an omitted one.

    Raises
    ------
    ValueError
        On an unknown or (when a model ran) missing name, a wrong shape, or
        a NaN or infinite value where a model ran.
    """
    signals = {} if signals is None else dict(signals)
    missing = [name for name in names if name not in signals]
    extra = [name for name in signals if name not in names]
    if extra:
        raise ValueError(f"signals has unknown name(s) {extra}; the estimator was fitted with {list(names)}")
    if missing and run.any():
        raise ValueError(f"signals is missing {missing}, which the estimator was fitted with; "
                         "pass them for the run models")
    checked = {}
    for name in names:
        if name not in signals:
            checked[name] = np.full(run.shape, np.nan)
            continue
        value = np.asarray(signals[name], dtype=np.float64)
        if value.shape != run.shape:
            raise ValueError(f"signal {name!r} must have shape {run.shape}; got {value.shape}")
        bad = run & ~np.isfinite(value)
        if bad.any():  # located only then: argwhere costs more than the check
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"signal {name!r} is NaN or infinite for a model that ran (row {row}, column {col}); "
                "NaN is allowed only for models not run"
            )
        checked[name] = value
    return checked


def check_responses(responses: ArrayLike | None, run: NDArray[np.bool_]) -> NDArray[np.object_]:
    """Return responses as an ``(N, K)`` object array, ``''`` for models not run (their text is never read).

    Parameters
    ----------
    responses : (N, K) array-like of object, or None
        Response texts; ``None`` means none.
    run : ndarray of bool, shape (N, K)

    Returns
    -------
    ndarray of object, shape (N, K)

    Raises
    ------
    ValueError
        On a wrong shape.
    """
    if responses is None:
        return np.full(run.shape, "", dtype=object)
    responses = np.asarray(responses, dtype=object)
    if responses.shape != run.shape:
        raise ValueError(f"responses must have shape {run.shape}; got {responses.shape}")
    return np.where(run, responses, "")


def check_observed_cost(observed_cost: ArrayLike | None, run: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Return observed costs as float64 ``(N, K)``; finite and >= 0 wherever a model ran, since they are used exactly.

    Parameters
    ----------
    observed_cost : (N, K) array-like of float, or None
        ``None`` only when nothing ran.
    run : ndarray of bool, shape (N, K)

    Returns
    -------
    ndarray of float64, shape (N, K)
        All NaN when ``observed_cost`` is ``None``.

    Raises
    ------
    ValueError
        If it is missing while a model ran, has a wrong shape, or is NaN,
        infinite or negative where a model ran.
    """
    if observed_cost is None:
        if run.any():
            raise ValueError("observed_cost is required when some model has run: its cost is used exactly")
        return np.full(run.shape, np.nan)
    cost = np.asarray(observed_cost, dtype=np.float64)
    if cost.shape != run.shape:
        raise ValueError(f"observed_cost must have shape {run.shape}; got {cost.shape}")
    bad = run & ~(np.isfinite(cost) & (cost >= 0))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"observed_cost must be finite and >= 0 for models that ran; row {row}, column {col} has {cost[row, col]}"
        )
    return cost


def check_observed_latency(observed_latency: ArrayLike | None, run: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Return observed latencies as float64 ``(N, K)``; NaN where unknown, else finite and >= 0.

    Unlike a cost, a latency a caller did not measure is not an error: the
    seconds already spent do not change which model to call next (every
    candidate plan includes them), so a run model without one keeps its
    estimate.

    Parameters
    ----------
    observed_latency : (N, K) array-like of float, or None
        Seconds each run model took; NaN (or ``None`` for all) when not measured.
    run : ndarray of bool, shape (N, K)

    Returns
    -------
    ndarray of float64, shape (N, K)
        All NaN when ``observed_latency`` is ``None``.

    Raises
    ------
    ValueError
        If it has a wrong shape, or is infinite or negative where a model ran.
    """
    if observed_latency is None:
        return np.full(run.shape, np.nan)
    latency = np.asarray(observed_latency, dtype=np.float64)
    if latency.shape != run.shape:
        raise ValueError(f"observed_latency must have shape {run.shape}; got {latency.shape}")
    bad = run & ~np.isnan(latency) & ~(np.isfinite(latency) & (latency >= 0))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"observed_latency must be finite and >= 0 seconds (or NaN when not measured) for models "
                         f"that ran; row {row}, column {col} has {latency[row, col]}")
    return latency


def per_query_inputs(columns: Sequence[str], prompts: ArrayLike | None, tasks: ArrayLike | None,
                     subtasks: ArrayLike | None) -> tuple[dict[str, NDArray[np.object_] | None], int]:
    """Check the per-query inputs an estimator was fitted with; return them by column and ``N``.

    Raises ``ValueError`` naming what is missing, so that a request without
    the ``tasks`` the estimator needs fails clearly instead of deep inside the
    featurizer.

    Parameters
    ----------
    columns : sequence of str
        The per-query inputs the estimator reads (``prompt``, ``task``, ``subtask``).
    prompts, tasks, subtasks : array-like of str, shape (N,), or None
        As the caller passed them; ``N`` is the length of the first given.

    Returns
    -------
    given : dict of str to (ndarray of object or None)
        Keys ``prompt``, ``task``, ``subtask``, checked by :func:`check_per_query`.
    n : int
        Number of queries.

    Raises
    ------
    ValueError
        If a column in ``columns`` is not given, none is given, or lengths differ.
    TypeError
        If one of them is a single string, or a task or subtask is not a
        ``str`` (``None`` would otherwise become ``''`` and a number its digits).
    """
    raw = {"prompt": prompts, "task": tasks, "subtask": subtasks}
    n = next((len(v) for v in raw.values()  # type: ignore[arg-type]  # ArrayLike admits scalars: refused below
              if v is not None and not isinstance(v, str)), None)
    given = {name: check_per_query(f"{name}s", value, n) for name, value in raw.items()}
    for name in ("task", "subtask"):  # prompts are checked where they are read (estimators.prompts.read_prompts)
        values = given[name]
        if values is None:
            continue
        wrong = [row for row, value in enumerate(values) if not isinstance(value, str)]
        if wrong:
            value = values[wrong[0]]
            raise TypeError(f"{name}s[{wrong[0]}] is {type(value).__name__} {repr(value)[:40]}, not str; every "
                            f"{name} must be text (use '' for a query without one)")
    missing = [name for name in columns if given[name] is None]
    if missing:
        raise ValueError(
            f"{', '.join(name + 's' for name in missing)} required: the estimator was fitted with "
            f"per-query columns {list(columns)}")
    if n is None:
        raise ValueError("pass prompts, tasks or subtasks: at least one per-query input is needed")
    return given, n
