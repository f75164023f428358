"""Replaying cascades on logged traffic, and the per-batch function :func:`score_batch`.

:func:`score_batch` is a pure ``DataFrame -> DataFrame`` function, so
Spark's ``mapInPandas`` or Dask's ``map_partitions`` can run it unchanged
(for logged input, partition by ``query_id`` first):

* **query input** (one row per query): per query the first model to run,
  the planned supermodel and the ex-ante estimates of every model;
* **logged input** (a ``model`` column; checked and laid out as grids by
  :mod:`training.serving.logged`): :func:`replay` plays the whole cascade
  per query, the logged responses and costs standing in for the calls, and
  per query the models run, the realised cost and the quality of the
  selected answer are written. Logs may be partial (rows only for the
  models that were called): a query whose cascade reaches a model without a
  logged outcome stops there (``status == "unreplayable"``, the model in
  ``needed_model``).

Its result has one ``status == "ok"`` (or ``"unreplayable"``) row per scored
query and one ``status == "rejected"`` row per input row of a rejected query,
in the columns and types of :func:`output_schema` followed by ``reason`` and
``model`` (:func:`rejects_schema`), whatever the batch holds. Streaming files
through it is :mod:`training.serving.batch` (``python -m training.score``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.typing import NDArray

from estimators.estimator import Estimates
from estimators.posthoc import ResponseMemo

from ..decision import play_cascades
from ..policy import Policy
from ..router import Router, prompt_uniforms
from .logged import (
    _missing,
    _per_query_columns,
    _reject_frame,
    _row_numbers,
    _text,
    check_columns,
    check_prompt_types,
    validate_logged,
)

__all__ = ["STATUS_OK", "STATUS_REJECTED", "STATUS_UNREPLAYABLE", "output_schema", "rejects_schema", "replay",
           "score_batch"]

#: ``status`` of a scored query's row in :func:`score_batch` results (for logged input: replayed to the end).
STATUS_OK = "ok"
#: ``status`` of a logged query whose cascade reached a model with no logged outcome (``needed_model``).
STATUS_UNREPLAYABLE = "unreplayable"
#: ``status`` of a rejected input row in :func:`score_batch` results.
STATUS_REJECTED = "rejected"


# --------------------------------------------------------------------------- #
# replay
# --------------------------------------------------------------------------- #


def replay(router: Router, policy: Policy, prompts: NDArray[np.object_] | None, tasks: NDArray[np.object_] | None,
           subtasks: NDArray[np.object_] | None, cost: NDArray[np.float64], responses: NDArray[np.object_],
           signals: dict[str, NDArray[np.float64]], *, parallel: bool = True,
           timings: dict | None = None, available: NDArray[np.bool_] | None = None,
           latency: NDArray[np.float64] | None = None
           ) -> (tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64]]
                 | tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]):
    """Play ``policy`` on logged queries, each up to the end or to the first model it needs that was not logged.

    The episode loop of policy evaluation (:func:`~training.decision.play_cascades`),
    with the logged responses, signals and costs revealed as models "run".
    The per-query part of the estimates (prompt features, ex-ante costs) is
    computed once per query (:meth:`~estimators.estimator.RouterEstimator.prepare`),
    and each revealed response is parsed once.

    Parameters
    ----------
    router : Router
        Its estimator gives the estimates at every step.
    policy : Policy
        The fitted policy to play (its kernel options and σ scale).
    prompts, tasks, subtasks : ndarray of str, shape (N,), or None
        The per-query inputs the estimator reads.
    cost : ndarray of float64, shape (N, K)
        Logged cost of every model on every query (read only where a model runs).
    responses : ndarray of object, shape (N, K)
        Logged responses (``''`` when the estimator reads none).
    signals : dict of str to ndarray of float64, shape (N, K)
        Logged post-hoc signals.
    parallel : bool, default=True
        Multi-threaded kernels (same numbers).
    timings : dict, optional
        Seconds spent in ``prepare`` (featurization and ex-ante costs),
        ``estimate`` and ``kernel`` are added to it.
    available : ndarray of bool, shape (N, K), optional
        Which models are logged per query (partial logs); default all.
    latency : ndarray of float64, shape (N, K), optional
        Logged latency (seconds) of every model, revealed like the cost once
        a model runs; default none (the estimates stand).

    Returns
    -------
    order : ndarray of int64, shape (N, max_depth)
        Models run in order, ``-1`` padded.
    run : ndarray of bool, shape (N, K)
        Final run sets.
    answer : ndarray of int64, shape (N,)
        Selected model per query (as :func:`~training.decision.play_cascades`;
        ``-1`` for a query stopped on a model not logged).
    needed : ndarray of int64, shape (N,)
        Only with ``available``: the model a query needed and that was not
        logged, ``-1`` for the queries replayed to the end.
    """
    timings = {} if timings is None else timings
    estimator = router.estimator
    n, k = cost.shape
    if prompts is None:  # an estimator without prompt text: ties then break the same for every query
        prompts = np.full(n, "", dtype=object)
    started = time.perf_counter()
    u = prompt_uniforms(prompts)
    prepared = estimator.prepare(prompts, tasks, subtasks, parallel=parallel)
    _add(timings, "prepare", started)
    memo = ResponseMemo()  # each revealed response parsed once, not once per step

    def estimate(rows: np.ndarray, run: np.ndarray, with_sigma: bool) -> Estimates:
        began = time.perf_counter()
        found = estimator.estimate(prepared, rows, run, responses=responses[rows],
                                   signals={name: value[rows] for name, value in signals.items()},
                                   observed_cost=cost[rows], memo=memo, with_sigma=with_sigma, parallel=parallel,
                                   observed_latency=None if latency is None else latency[rows])
        _add(timings, "estimate", began)
        return found

    return play_cascades(policy, estimate, n, k, u=u, parallel=parallel, timings=timings, available=available)


def _add(timings: dict, key: str, started: float) -> None:
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - started


# --------------------------------------------------------------------------- #
# the per-batch function
# --------------------------------------------------------------------------- #


def score_batch(router: Router, frame: pd.DataFrame, budget: float | None = None, *,
                parallel: bool = True, timings: dict | None = None,
                latency_budget: float | None = None) -> pd.DataFrame:
    """Score one batch: a pure ``DataFrame -> DataFrame`` function.

    Parameters
    ----------
    router : Router
        Loaded with :func:`training.router.load_router` (or unpickled:
        kernels then compile on first use).
    frame : pandas.DataFrame
        Query rows, or logged rows (a ``model`` column) with every row of a
        query in this frame and contiguous: rows of a query that are not
        contiguous reject it (bounded memory needs contiguity: a stream is
        scored one batch of rows at a time, so a query's rows must come
        together), and a query whose rows continue in another frame is seen
        as two queries, each part scored or rejected on its own (this
        function sees one frame). A query may lack rows for some models
        (partial logs). An optional ``row`` column holds input row numbers
        for the reject report (default: the frame's index).
    budget : float, optional
        Selects the fitted policy (:meth:`Router.policy`), with ``latency_budget``.
    parallel : bool, default=True
        Multi-threaded kernel. Pass ``False`` when the caller already runs
        one batch per core (Spark executors, ``--workers``).
    timings : dict, optional
        If given, seconds spent in ``featurize``, ``estimate`` and ``kernel``
        are added to it (instrumentation only; the result does not depend
        on it).
    latency_budget : float, optional
        With ``budget``, selects the fitted policy for both (:meth:`Router.policy`).

    Returns
    -------
    pandas.DataFrame
        One row per scored query, then one row per input row of every
        rejected query (``status == "rejected"``, with ``row``, ``reason``,
        ``model``). Columns: those of :func:`output_schema` in its order and
        types (string columns ``str``/object with missing values, the list
        column an Arrow list, ``n_run`` nullable ``Int64``), then ``reason``
        and ``model`` (null on scored rows), whatever the batch holds (no
        accepted query, only rejects, no rows), so every subset converts to
        the declared schema.

        A logged query replayed to the end has ``status == "ok"``. A logged
        query whose cascade reached a model with no row for it (partial
        logs) has ``status == "unreplayable"``: ``needed_model`` is that
        model (null on every other row); ``models_run``, ``n_run`` and
        ``cost`` cover the models run before it (empty, 0 and 0.0 when it
        was the first); ``first_model`` is the policy's first model all the
        same (``needed_model`` itself when nothing ran); ``answer_model`` and
        ``quality`` are null (the cascade did not finish, so no answer was
        selected).

        When the router's estimator has latency, logged results also have
        ``latency`` (seconds: the logged ``latency_s`` of the models run,
        added up; NaN without that column) and query results
        ``plan_latency`` and ``latency[m]`` per model (estimates).

    Raises
    ------
    training.serving.logged.ScoreError
        If required columns are missing.
    TypeError
        If a prompt is neither text nor missing (a number, ``bytes``):
        :func:`~training.serving.logged.check_prompt_types` names its row.
    """
    logged = check_columns(router, list(frame.columns))
    policy = router.policy(budget, latency_budget)
    if logged:
        return _score_logged(router, policy, frame, parallel, timings)
    return _score_queries(router, policy, frame, parallel, timings)


def _result(schema: pa.Schema, scored: dict, n: int, rejected: pd.DataFrame) -> pd.DataFrame:
    """The ``n`` scored rows (``scored``: column name -> values), then the rejected input rows.

    Columns: every field of ``schema`` in its order, then ``reason`` and
    ``model``, each built at its full length with a type that converts to
    the schema's (missing values where a part has none) and that does not
    depend on what the batch holds, so an empty part never leaves a column
    typed by accident (a float column of NaN, which Arrow cannot write as a
    string list).
    """
    m = len(rejected)
    total = n + m
    data: dict = {}
    for field in schema:
        name, kind = field.name, field.type
        value = scored.get(name) if n else None
        below = rejected[name].to_numpy() if m and name in rejected.columns else None
        if name == "status":
            column = np.empty(total, dtype=object)
            column[:n] = scored["status"] if n else STATUS_OK
            column[n:] = STATUS_REJECTED
        elif pa.types.is_list(kind):
            top = value if value is not None else pa.array([], kind)
            column = pd.arrays.ArrowExtensionArray(pa.concat_arrays([top.cast(kind), pa.nulls(m, kind)]))
        elif pa.types.is_string(kind):
            column = np.full(total, None, dtype=object)
            if value is not None:
                column[:n] = value
            if below is not None:
                column[n:] = below
        elif pa.types.is_floating(kind):
            column = np.full(total, np.nan)
            if value is not None:
                column[:n] = value
        elif name == "row":
            column = np.empty(total, dtype=np.int64)
            column[:n] = value if value is not None else 0
            column[n:] = below if below is not None else 0
        else:  # other integer columns: nullable, null on the rejected rows
            column = pd.array(np.zeros(total, dtype=np.int64), dtype="Int64")
            if value is not None:
                column[:n] = np.asarray(value, dtype=np.int64)
            column[n:] = pd.NA
        data[name] = column
    for name in ("reason", "model"):
        column = np.full(total, None, dtype=object)
        if m and name in rejected.columns:
            column[n:] = rejected[name].to_numpy()
        data[name] = column
    result = pd.DataFrame(data)
    text = pd.Series(["a"]).dtype  # what pandas makes of strings (object, or str with pandas 3's string inference)
    for name in [f.name for f in schema if pa.types.is_string(f.type)] + ["reason", "model"]:
        if result[name].dtype != text:  # a column of nulls only: the same type as when it holds strings
            result[name] = result[name].astype(text)
    return result


def _names(index: np.ndarray, models: Sequence[str]) -> np.ndarray:
    """Model names of ``index`` (object array), ``None`` where it is negative."""
    names = np.array(list(models), dtype=object)[np.maximum(index, 0)]  # a copy (fancy indexing)
    names[index < 0] = None
    return names


def _score_queries(router: Router, policy, frame: pd.DataFrame, parallel: bool, timings) -> pd.DataFrame:
    per_query = _per_query_columns(router)
    n = len(frame)
    reasons: list[list[str]] = [[] for _ in range(n)]
    ids = frame["query_id"].to_numpy(dtype=object)
    for r in np.flatnonzero(_missing(ids)):
        reasons[r].append("query_id is missing")
    if "prompt" in per_query:
        check_prompt_types(frame)
        for r in np.flatnonzero(_missing(frame["prompt"].to_numpy(dtype=object))):
            reasons[r].append("prompt is missing")
    bad = np.array([bool(r) for r in reasons], dtype=bool)
    good = np.flatnonzero(~bad)
    rejected = _reject_frame(frame, np.flatnonzero(bad), ["; ".join(r) for r in reasons if r])
    values = {c: _text(frame[c].to_numpy(dtype=object)[good]) for c in per_query}
    out: dict = {"status": np.full(good.size, STATUS_OK, dtype=object), "row": _row_numbers(frame)[good],
                 "query_id": _text(ids[good])}
    if good.size:
        started = time.perf_counter()
        prompts = list(values.get("prompt", [""] * good.size))
        estimates, _, next_model, masks = router.plan_arrays(
            prompts, policy=policy, parallel=parallel,
            tasks=values.get("task"),  # type: ignore[arg-type]  # object arrays of str read as Sequence[str]
            subtasks=values.get("subtask"))  # type: ignore[arg-type]  # as above
        if timings is not None:
            _add(timings, "plan", started)
        k = len(router.models_)
        planned = (masks[:, None] >> np.arange(k)) & 1 == 1
        out["next_model"] = _names(next_model, router.models_)
        out["plan"] = _model_lists(np.where(planned, np.arange(k), -1), router.models_)
        out["plan_cost"] = np.where(planned, estimates.cost, 0.0).sum(axis=1)
        if estimates.latency is not None:
            out["plan_latency"] = np.where(planned, estimates.latency, 0.0).sum(axis=1)
        for name in _estimate_columns(router):
            matrix = getattr(estimates, name)
            for j, model in enumerate(router.models_):
                out[f"{name}[{model}]"] = matrix[:, j]
    return _result(output_schema(router, logged=False), out, good.size, rejected)


def _score_logged(router: Router, policy, frame: pd.DataFrame, parallel: bool, timings) -> pd.DataFrame:
    batch = validate_logged(router, frame)
    n = len(batch.query_ids)
    out: dict = {"row": batch.first_rows, "query_id": batch.query_ids}
    if n:
        models = router.models_
        values = batch.values
        order, run, answer, needed = replay(  # type: ignore[misc]  # with available: four arrays
            router, policy, values.get("prompt"), values.get("task"), values.get("subtask"), batch.cost,
            batch.responses, batch.signals, parallel=parallel, timings=timings, available=batch.available,
            latency=batch.latency)
        out["status"] = np.where(needed >= 0, STATUS_UNREPLAYABLE, STATUS_OK).astype(object)
        out["first_model"] = _names(np.where(order[:, 0] >= 0, order[:, 0], needed), models)
        out["models_run"] = _model_lists(order, models)
        out["n_run"] = run.sum(axis=1)
        out["answer_model"] = _names(answer, models)
        out["cost"] = (batch.cost * run).sum(axis=1)  # 0 in cells not logged, never run
        if _has_latency(router):  # the models of a cascade run one after another: their latencies add up
            out["latency"] = (np.full(run.shape, np.nan) if batch.latency is None
                              else np.where(run, batch.latency, 0.0)).sum(axis=1)
        out["quality"] = np.where(answer >= 0, batch.quality[np.arange(n), np.maximum(answer, 0)], np.nan)
        out["needed_model"] = _names(needed, models)
    return _result(output_schema(router, logged=True), out, n, batch.rejected)


def _model_lists(order: np.ndarray, models: Sequence[str]) -> pa.ListArray:
    """Per row, the model names of ``order``'s non-negative entries (in their order), as an Arrow list array.

    Built from flat arrays (offsets + indices into a dictionary), not one
    Python list per query, which cost as much as the kernel.
    """
    taken = order >= 0
    offsets = np.zeros(len(order) + 1, np.int32)
    np.cumsum(taken.sum(axis=1), out=offsets[1:])
    names = pa.array(list(models), pa.string()).take(pa.array(order[taken], pa.int64()))
    return pa.ListArray.from_arrays(pa.array(offsets), names)


def output_schema(router: Router, logged: bool) -> pa.Schema:
    """The pyarrow schema of :func:`score_batch` results, so every batch written to one file has the same columns.

    Parameters
    ----------
    router : Router
        Its models name the per-model estimate columns of query input.
    logged : bool
        Logged input (replay results) rather than query input (plans).

    Returns
    -------
    pyarrow.Schema
        ``status``, ``row``, ``query_id``, then for logged input
        ``first_model``, ``models_run``, ``n_run``, ``answer_model``,
        ``cost``, ``quality``, ``needed_model`` (see :func:`score_batch` for
        ``unreplayable`` rows); for query input ``next_model``, ``plan``,
        ``plan_cost`` and ``quality[m]``, ``sigma[m]``, ``cost[m]`` per model.
        :func:`score_batch` results have these columns followed by
        ``reason`` and ``model`` for the rejected rows.
    """
    fields = [("status", pa.string()), ("row", pa.int64()), ("query_id", pa.string())]
    if logged:
        fields += [("first_model", pa.string()), ("models_run", pa.list_(pa.string())), ("n_run", pa.int64()),
                   ("answer_model", pa.string()), ("cost", pa.float64()), ("quality", pa.float64()),
                   ("needed_model", pa.string())]
        fields += [("latency", pa.float64())] if _has_latency(router) else []
    else:
        fields += [("next_model", pa.string()), ("plan", pa.list_(pa.string())), ("plan_cost", pa.float64())]
        fields += [("plan_latency", pa.float64())] if _has_latency(router) else []
        fields += [(f"{name}[{m}]", pa.float64()) for name in _estimate_columns(router) for m in router.models_]
    return pa.schema(fields)


def _has_latency(router: Router) -> bool:
    """Whether the router's estimator predicts latency (fitted on a table with latency)."""
    return router.estimator.latency_ is not None


def _estimate_columns(router: Router) -> tuple[str, ...]:
    """The per-model estimates query results carry: quality, σ, cost, and latency when the router has it."""
    return ("quality", "sigma", "cost", "latency") if _has_latency(router) else ("quality", "sigma", "cost")


def rejects_schema() -> pa.Schema:
    """The pyarrow schema of the rejects file, so it is the same whichever input kind was rejected.

    Returns
    -------
    pyarrow.Schema
        ``row``, ``query_id``, ``model``, ``reason``: the rejected rows of
        :func:`score_batch` without ``status``.
    """
    return pa.schema([("row", pa.int64()), ("query_id", pa.string()), ("model", pa.string()), ("reason", pa.string())])
