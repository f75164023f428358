"""``python -m training.score``: score traffic in bounded memory with a fitted router.

Two kinds of input, told apart by the presence of a ``model`` column:

* **queries** (one row per query: ``query_id``, ``prompt``, ``task``,
  ``subtask`` as the estimator needs): per query, the first model to run,
  the planned supermodel and the ex-ante estimates of every model
  (``quality[m]``, ``sigma[m]``, ``cost[m]``);
* **logged** (the long format of ``../shared/data/README.md``: one row per
  query and model with ``quality``, ``cost_usd``, ``response``; rows of a
  query contiguous): the whole cascade is replayed per query, the logged
  responses and costs standing in for the calls, and per query the models
  run, the realised cost and the quality of the selected answer are written.

The per-batch work is :func:`score_batch`, a pure ``DataFrame -> DataFrame``
function, so Spark's ``mapInPandas`` or Dask's ``map_partitions`` can run it
unchanged (for logged input, partition by ``query_id`` first). The CLI
streams the input with ``pyarrow.parquet.ParquetFile.iter_batches``, carries
a query whose rows straddle a batch boundary over to the next batch, and
writes as it goes, so memory stays bounded by the batch size.

Nothing is dropped silently: a malformed row (unknown model, missing
prompt, NaN or negative cost, NaN quality, a query missing a model or
split into two runs) rejects its query, and *every* input row of a rejected
query is written to the rejects file with its row number and a reason.
Exit codes: 0 (with a ``warning:`` line when there are rejects), 2 with a
one-line ``error:`` on unusable input (missing file, missing columns,
unreadable Parquet).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

import kernel

from .router import Router, kernel_spread, load_router, prompt_uniforms
from estimators.frozen import ResponseMemo

__all__ = ["score_batch", "replay", "output_schema", "main", "ScoreError", "STATUS_OK", "STATUS_REJECTED"]

STATUS_OK = "ok"
STATUS_REJECTED = "rejected"
#: Columns of the logged (long) format that replay needs besides the per-query ones.
LOGGED_COLUMNS = ("query_id", "model", "quality", "cost_usd")


class ScoreError(ValueError):
    """The input cannot be scored at all (missing columns, ...): exit code 2."""


# --------------------------------------------------------------------------- #
# columns and checks
# --------------------------------------------------------------------------- #


def _per_query_columns(router: Router) -> list[str]:
    return list(getattr(router.estimator, "columns_", ["prompt"]))


def required_columns(router: Router, logged: bool) -> list[str]:
    """Columns the input must have: ``query_id``, the estimator's per-query inputs, and for
    logged input ``model``, ``quality``, ``cost_usd`` (``response`` and signals when the estimator uses them)."""
    columns = ["query_id", *_per_query_columns(router)]
    if logged:
        columns += ["model", "quality", "cost_usd"]
        if getattr(router.estimator, "uses_responses_", False):
            columns.append("response")
        columns += list(getattr(router.estimator, "signal_names_", []))
    return list(dict.fromkeys(columns))


def check_columns(router: Router, columns: Sequence[str]) -> bool:
    """Return whether the input is logged (has ``model``); raise :class:`ScoreError` if columns are missing."""
    logged = "model" in columns
    missing = [c for c in required_columns(router, logged) if c not in columns]
    if missing:
        kind = "logged (long) input" if logged else "query input"
        raise ScoreError(f"{kind} lacks column(s) {missing}; it has {list(columns)}")
    return logged


def _row_numbers(frame: pd.DataFrame) -> np.ndarray:
    return (frame["row"].to_numpy(dtype=np.int64) if "row" in frame.columns
            else np.asarray(frame.index, dtype=np.int64))


def _text_column(series: pd.Series, rows: np.ndarray | None = None) -> np.ndarray:
    """Object array of str from a column (optionally only ``rows``); missing as ''.

    Selects before converting: a logged batch repeats each prompt on every
    model's row, and turning all of them into Python strings costs more
    than scoring.
    """
    if rows is not None:
        series = series.iloc[rows]
    if isinstance(series.dtype, pd.CategoricalDtype):  # dictionary-encoded Parquet: convert each value once
        values = np.append(_text(series.cat.categories.to_numpy(dtype=object)), "")
        return values[series.cat.codes.to_numpy()]  # code -1 (missing) takes the '' appended last
    if series.dtype == object:
        return _text(series.to_numpy())
    return series.astype("string").fillna("").to_numpy(dtype=object)


def _text(values: np.ndarray) -> np.ndarray:
    """Object array of str; missing (None/NaN) as ''."""
    return np.array([v if isinstance(v, str) else "" if pd.isna(v) else str(v) for v in values], dtype=object)


def _missing(values: np.ndarray) -> np.ndarray:
    return np.fromiter((not isinstance(v, str) and pd.isna(v) for v in values), dtype=bool, count=len(values))


def _codes_of(series: pd.Series, names: Sequence[str]) -> np.ndarray:
    """Position of each value in ``names``, ``-1`` when absent (missing values included)."""
    known = pd.Index(list(names))
    if isinstance(series.dtype, pd.CategoricalDtype):  # look up each category once
        found = np.append(known.get_indexer(series.cat.categories), -1)
        return found[series.cat.codes.to_numpy()].astype(np.int64)
    return known.get_indexer(series.to_numpy(dtype=object)).astype(np.int64)


def _numbers(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


# --------------------------------------------------------------------------- #
# replay
# --------------------------------------------------------------------------- #


def replay(router: Router, policy, prompts, tasks, subtasks, cost: np.ndarray, responses: np.ndarray,
           signals: dict[str, np.ndarray], *, parallel: bool = True,
           timings: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Play ``policy`` on queries whose every model outcome is logged.

    Each step estimates the queries still going with the run sets they have
    reached (post-hoc features from the logged responses of the models
    run), asks the kernel for the next model, and "runs" it by revealing its
    logged response and cost. Prompt features and ex-ante costs are computed
    once per query.

    Returns
    -------
    order : ndarray of int64, shape (N, max_depth)
        Models run in order, ``-1`` padded.
    run : ndarray of bool, shape (N, K)
    answer : ndarray of int64, shape (N,)
        Selected model (best post-hoc quality estimate among those run).
    """
    timings = {} if timings is None else timings
    predictor = router._predictor()
    n, k = cost.shape
    if prompts is None:  # an estimator without prompt text: ties then break the same for every query
        prompts = np.full(n, "", dtype=object)
    depth = int(policy.max_depth or k)
    order = np.full((n, depth), kernel.STOP, dtype=np.int64)
    run = np.zeros((n, k), dtype=bool)
    options = policy.kernel_options()
    compiled = predictor is not router.estimator
    memo = ResponseMemo() if compiled else None  # each revealed response parsed once, not once per step
    started = time.perf_counter()
    u = prompt_uniforms(prompts)
    if compiled:
        features, _ = predictor.prompt_features(prompts, tasks, subtasks, parallel=parallel)
    _add(timings, "featurize", started)
    if compiled:  # ex-ante costs and the prompt's share of quality: once per query, not once per step
        started = time.perf_counter()
        ante_cost = predictor.ante_cost(features, predictor.input_tokens(prompts, n), parallel=parallel)
        base = predictor.quality_base(features)
        _add(timings, "estimate", started)

    def estimate(rows: np.ndarray, with_sigma: bool = True):
        began = time.perf_counter()
        sub_run = run[rows]
        sub_signals = {name: np.where(sub_run, value[rows], np.nan) for name, value in signals.items()}
        if compiled:
            info = predictor.responses_info(responses[rows], sub_run, memo)
            quality, sigma = predictor.quality_sigma(features[rows], sub_run, sub_signals, info,
                                                     with_sigma=with_sigma, parallel=parallel,
                                                     base=None if base is None else base[rows])
            step_cost = np.where(sub_run, cost[rows], ante_cost[rows])
            cov = predictor.covariance(sigma, sub_run) if with_sigma else None
        else:
            found = predictor.predict(
                prompts[rows], tasks=None if tasks is None else tasks[rows],
                subtasks=None if subtasks is None else subtasks[rows], run=sub_run, responses=responses[rows],
                signals=sub_signals, observed_cost=np.where(sub_run, cost[rows], np.nan))
            quality, sigma, step_cost, cov = found.quality, found.sigma, found.cost, found.cov
        _add(timings, "estimate", began)
        return quality, sigma, step_cost, cov

    active = np.arange(n)
    for step in range(depth):
        if active.size == 0:
            break
        quality, sigma, step_cost, cov = estimate(active)
        began = time.perf_counter()
        spread = kernel_spread(sigma, cov, policy)
        chosen, _ = kernel.plan(quality, step_cost, run=run[active], u=u[active], parallel=parallel,
                                **spread, **options)
        _add(timings, "kernel", began)
        going = chosen != kernel.STOP
        active, chosen = active[going], chosen[going]
        order[active, step] = chosen
        run[active, chosen] = True
    every = np.arange(n)
    final_quality = estimate(every, with_sigma=False)[0]
    began = time.perf_counter()
    answer = kernel.select_answer(final_quality, run)
    _add(timings, "kernel", began)
    return order, run, answer


def _add(timings: dict, key: str, started: float) -> None:
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - started


# --------------------------------------------------------------------------- #
# the per-batch function
# --------------------------------------------------------------------------- #


def score_batch(router: Router, frame: pd.DataFrame, budget: float | None = None, *,
                parallel: bool = True, timings: dict | None = None) -> pd.DataFrame:
    """Score one batch: a pure ``DataFrame -> DataFrame`` function.

    Parameters
    ----------
    router : Router
        Loaded with :func:`training.serving.router.load_router` (or unpickled: the
        compiled estimator is then built on first use).
    frame : pandas.DataFrame
        Query rows, or logged rows (a ``model`` column) with every row of a
        query in this frame and contiguous. An optional ``row`` column holds
        input row numbers for the reject report (default: the frame's index).
    budget : float, optional
        Selects the fitted policy (:meth:`Router.policy`).
    parallel : bool, default=True
        Multi-threaded kernel. Pass ``False`` when the caller already runs
        one batch per core (Spark executors, ``--workers``).
    timings : dict, optional
        If given, seconds spent in ``featurize``, ``estimate`` and ``kernel``
        are added to it (instrumentation only; the result does not depend
        on it).

    Returns
    -------
    pandas.DataFrame
        One row per scored query (``status == "ok"``) and one row per input
        row of every rejected query (``status == "rejected"``, with
        ``row``, ``reason``); columns as :func:`output_schema`.

    Raises
    ------
    ScoreError
        If required columns are missing.
    """
    logged = check_columns(router, list(frame.columns))
    policy = router.policy(budget)
    if logged:
        return _score_logged(router, policy, frame, parallel, timings)
    return _score_queries(router, policy, frame, parallel, timings)


def _reject_frame(frame: pd.DataFrame, rows: np.ndarray, reasons: list[str]) -> pd.DataFrame:
    """Rejected input rows: status, row number, query id, model (if any) and reason."""
    if not len(rows):
        return pd.DataFrame()
    out = pd.DataFrame({
        "status": STATUS_REJECTED,
        "row": _row_numbers(frame)[rows],
        "query_id": _text(frame["query_id"].to_numpy(dtype=object)[rows]),
        "reason": reasons,
    })
    if "model" in frame.columns:
        out["model"] = _text(frame["model"].to_numpy(dtype=object)[rows])
    return out


def _score_queries(router: Router, policy, frame: pd.DataFrame, parallel: bool, timings) -> pd.DataFrame:
    per_query = _per_query_columns(router)
    n = len(frame)
    reasons: list[list[str]] = [[] for _ in range(n)]
    ids = frame["query_id"].to_numpy(dtype=object)
    for r in np.flatnonzero(_missing(ids)):
        reasons[r].append("query_id is missing")
    if "prompt" in per_query:
        for r in np.flatnonzero(_missing(frame["prompt"].to_numpy(dtype=object))):
            reasons[r].append("prompt is missing")
    bad = np.array([bool(r) for r in reasons], dtype=bool)
    good = np.flatnonzero(~bad)
    rejected = _reject_frame(frame, np.flatnonzero(bad), ["; ".join(r) for r in reasons if r])
    values = {c: _text(frame[c].to_numpy(dtype=object)[good]) for c in per_query}
    out = pd.DataFrame({"status": STATUS_OK, "row": _row_numbers(frame)[good], "query_id": _text(ids[good])})
    if good.size:
        started = time.perf_counter()
        prompts = list(values.get("prompt", [""] * good.size))
        estimates, _, next_model, masks = router.plan_arrays(prompts, tasks=values.get("task"),
                                                             subtasks=values.get("subtask"), policy=policy,
                                                             parallel=parallel)
        if timings is not None:
            _add(timings, "plan", started)
        k = len(router.models_)
        planned = (masks[:, None] >> np.arange(k)) & 1 == 1
        names = np.array(router.models_, dtype=object)
        out["next_model"] = np.where(next_model >= 0, names[np.maximum(next_model, 0)], None)
        out["plan"] = _model_lists(np.where(planned, np.arange(k), -1), router.models_)
        out["plan_cost"] = np.where(planned, estimates.cost, 0.0).sum(axis=1)
        for name in ("quality", "sigma", "cost"):
            matrix = getattr(estimates, name)
            for j, model in enumerate(router.models_):
                out[f"{name}[{model}]"] = matrix[:, j]
    return pd.concat([out, rejected], ignore_index=True) if len(rejected) else out


def _score_logged(router: Router, policy, frame: pd.DataFrame, parallel: bool, timings) -> pd.DataFrame:
    models = router.models_
    k = len(models)
    per_query = _per_query_columns(router)
    n_rows = len(frame)
    model_codes = _codes_of(frame["model"], models)
    cost = _numbers(frame["cost_usd"])
    quality = _numbers(frame["quality"])
    row_reason = np.full(n_rows, "", dtype=object)

    def flag(mask: np.ndarray, reason) -> None:
        for r in np.flatnonzero(mask & (row_reason == "")):
            row_reason[r] = reason(r) if callable(reason) else reason

    flag(frame["query_id"].isna().to_numpy(), "query_id is missing")
    flag(frame["model"].isna().to_numpy(), "model is missing")
    flag(model_codes < 0, lambda r: f"unknown model {frame['model'].iloc[r]!r}; the router knows {list(models)}")
    flag(~(np.isfinite(cost) & (cost >= 0)), lambda r: f"cost_usd must be a finite number >= 0, got {frame['cost_usd'].iloc[r]}")
    flag(np.isnan(quality), lambda r: f"quality must be a number, got {frame['quality'].iloc[r]}")
    if "prompt" in per_query:
        flag(frame["prompt"].isna().to_numpy(), "prompt is missing")
    signal_values = {}
    for name in getattr(router.estimator, "signal_names_", []):
        signal_values[name] = _numbers(frame[name])
        flag(~np.isfinite(signal_values[name]), f"signal {name!r} must be a finite number")

    # queries: runs of equal query_id (rows of a query are contiguous)
    key = _text_column(frame["query_id"])
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if n_rows else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n_rows]
    query_of_row = np.repeat(np.arange(starts.size), ends - starts)
    first_keys = key[starts]
    repeated = pd.Series(first_keys).duplicated(keep=False).to_numpy()
    flag(repeated[query_of_row] & ~frame["query_id"].isna().to_numpy(),
         lambda r: f"rows of query {key[r]!r} are not contiguous; sort the input by query_id")
    # one row per router model
    slot = query_of_row * k + np.where(model_codes >= 0, model_codes, 0)
    valid_model = model_codes >= 0
    counts = np.bincount(slot[valid_model], minlength=starts.size * k).reshape(starts.size, k)
    flag(valid_model & (counts.reshape(-1)[slot] > 1),
         lambda r: f"query {key[r]!r} has more than one row for model {models[model_codes[r]]!r}")
    lacking = counts == 0
    query_bad = np.zeros(starts.size, dtype=bool)
    np.logical_or.at(query_bad, query_of_row, row_reason != "")
    query_bad |= lacking.any(axis=1)
    bad_rows = query_bad[query_of_row]
    own_reason = row_reason != ""  # before the rows that are only collateral get theirs
    for r in np.flatnonzero(bad_rows & ~own_reason):
        q = query_of_row[r]
        if lacking[q].any():
            row_reason[r] = f"query {key[r]!r} has no row for model(s) {[models[j] for j in np.flatnonzero(lacking[q])]}"
        else:
            culprit = starts[q] + int(np.flatnonzero(own_reason[starts[q]:ends[q]])[0])
            row_reason[r] = f"query rejected because of row {_row_numbers(frame)[culprit]}"
    rejected = _reject_frame(frame, np.flatnonzero(bad_rows), list(row_reason[bad_rows]))

    good = np.flatnonzero(~query_bad)
    out = pd.DataFrame({"status": STATUS_OK, "row": _row_numbers(frame)[starts[good]],
                        "query_id": first_keys[good]})
    if good.size:
        rows_good = ~bad_rows
        cell = (query_of_row[rows_good], model_codes[rows_good])
        remap = np.full(starts.size, -1, np.int64)
        remap[good] = np.arange(good.size)
        cell = (remap[cell[0]], cell[1])
        grid_cost = np.empty((good.size, k))
        grid_cost[cell] = cost[rows_good]
        grid_quality = np.empty((good.size, k))
        grid_quality[cell] = quality[rows_good]
        responses = np.full((good.size, k), "", dtype=object)
        if "response" in frame.columns and getattr(router.estimator, "uses_responses_", False):
            responses[cell] = _text_column(frame["response"], np.flatnonzero(rows_good))
        signals = {}
        for name, value in signal_values.items():
            signals[name] = np.full((good.size, k), np.nan)
            signals[name][cell] = value[rows_good]
        first_rows = starts[good]
        values = {c: _text_column(frame[c], first_rows) for c in per_query}
        order, run, answer = replay(router, policy, values.get("prompt"), values.get("task"), values.get("subtask"),
                                    grid_cost, responses, signals, parallel=parallel, timings=timings)
        names = np.array(models, dtype=object)
        out["first_model"] = np.where(order[:, 0] >= 0, names[np.maximum(order[:, 0], 0)], None)
        out["models_run"] = _model_lists(order, models)
        out["n_run"] = run.sum(axis=1)
        out["answer_model"] = names[answer]
        out["cost"] = (grid_cost * run).sum(axis=1)
        out["quality"] = grid_quality[np.arange(good.size), answer]
    return pd.concat([out, rejected], ignore_index=True) if len(rejected) else out


def _model_lists(order: np.ndarray, models: Sequence[str]) -> pd.Series:
    """Per row, the model names of ``order``'s non-negative entries (in their order), as an Arrow list column.

    Built from flat arrays (offsets + indices into a dictionary), not one
    Python list per query, which cost as much as the kernel.
    """
    taken = order >= 0
    offsets = np.zeros(len(order) + 1, np.int32)
    np.cumsum(taken.sum(axis=1), out=offsets[1:])
    names = pa.array(list(models), pa.string()).take(pa.array(order[taken], pa.int64()))
    return pd.Series(pd.arrays.ArrowExtensionArray(pa.ListArray.from_arrays(pa.array(offsets), names)))


def output_schema(router: Router, logged: bool):
    """The pyarrow schema of :func:`score_batch` results (scored and rejected rows together)."""
    fields = [("status", pa.string()), ("row", pa.int64()), ("query_id", pa.string())]
    if logged:
        fields += [("first_model", pa.string()), ("models_run", pa.list_(pa.string())), ("n_run", pa.int64()),
                   ("answer_model", pa.string()), ("cost", pa.float64()), ("quality", pa.float64())]
    else:
        fields += [("next_model", pa.string()), ("plan", pa.list_(pa.string())), ("plan_cost", pa.float64())]
        fields += [(f"{name}[{m}]", pa.float64()) for name in ("quality", "sigma", "cost") for m in router.models_]
    return pa.schema(fields)


def rejects_schema():
    return pa.schema([("row", pa.int64()), ("query_id", pa.string()), ("model", pa.string()), ("reason", pa.string())])


# --------------------------------------------------------------------------- #
# streaming
# --------------------------------------------------------------------------- #


def iter_tables(path: Path, columns: list[str], batch_size: int, logged: bool) -> Iterator[pa.Table]:
    """Batches of the input as Arrow tables with a ``row`` column; logged queries never split.

    The rows of the last query of a batch may continue in the next one, so
    they are held back and prepended to it (and flushed at the end). The
    split and the carry-over stay in Arrow (slices and chunk lists, no
    copies), so the worker that scores a batch pays for its pandas
    conversion, not the process that reads.
    """
    # pre_buffer (pyarrow's default) keeps every column chunk read so far until the file is closed:
    # memory would grow with the input instead of staying bounded by the batch.
    reader = pq.ParquetFile(path, pre_buffer=False)
    offset = 0
    carry = None
    for batch in reader.iter_batches(batch_size=batch_size, columns=columns):
        table = pa.Table.from_batches([batch]).append_column(
            "row", pa.array(np.arange(offset, offset + batch.num_rows, dtype=np.int64)))
        offset += batch.num_rows
        if carry is not None and carry.num_rows:
            table = pa.concat_tables([carry, table])
        if not logged or not table.num_rows:
            carry = None
            yield table
            continue
        ids = table.column("query_id")
        last = ids[-1]
        same = pc.is_null(ids) if not last.is_valid else pc.fill_null(pc.equal(ids, last), False)
        different = np.flatnonzero(~same.to_numpy())
        tail = int(different[-1]) + 1 if different.size else 0
        if tail == 0:  # the whole batch is one query: keep collecting
            carry = table
            continue
        carry = table.slice(tail)
        yield table.slice(0, tail)
    if carry is not None and carry.num_rows:
        yield carry


def iter_frames(path: Path, columns: list[str], batch_size: int, logged: bool) -> Iterator[pd.DataFrame]:
    """:func:`iter_tables` as DataFrames (what :func:`score_batch` takes)."""
    for table in iter_tables(path, columns, batch_size, logged):
        yield table.to_pandas()


_WORKER_ROUTER: Router | None = None


def _init_worker(artifact: str) -> None:
    """Load and warm the router once per worker process; kernels single-threaded (one batch per core)."""
    global _WORKER_ROUTER
    import numba
    numba.set_num_threads(1)
    threadpool_limits(1, user_api="blas")  # for the life of the worker
    _WORKER_ROUTER = load_router(artifact)


def _warm_worker(_: int) -> int:
    time.sleep(0.2)  # keep this worker busy so that the next warm-up task starts another one
    return os.getpid()


def _score_in_worker(table, budget: float | None) -> tuple[pd.DataFrame, dict]:
    """Score one Arrow batch (pickled as Arrow buffers, far cheaper to ship than a DataFrame)."""
    batch_timings: dict = {}
    return score_batch(_WORKER_ROUTER, table.to_pandas(), budget, parallel=False,
                       timings=batch_timings), batch_timings


def _start_workers(artifact: Path, n_workers: int):
    """A spawn-started process pool whose workers have loaded the router (before the clock starts).

    ``spawn``, not ``fork``: the parent may already run OpenMP threads
    (numba's threading layer), which do not survive a fork.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(str(artifact),))
    list(pool.map(_warm_worker, range(n_workers)))
    return pool


class _Writer:
    """Parquet writer that opens lazily and takes DataFrames in a fixed schema."""

    def __init__(self, path: Path, schema) -> None:
        self.path, self.schema, self.writer = path, schema, None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        data = frame.reindex(columns=self.schema.names)
        self.writer.write_table(pa.Table.from_pandas(data, schema=self.schema, preserve_index=False))
        self.rows += len(frame)

    def close(self) -> None:
        if self.writer is None:  # still write an empty file with the schema
            self.path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(self.schema.empty_table(), self.path)
        else:
            self.writer.close()


#: ``--workers`` default: from this many input rows, one process per core (the ~3 s to start
#: them and load the router pay off); below, one process with single-threaded kernels, which
#: need no compiling (multi-threaded ones are compiled at start, ~6 s).
AUTO_WORKERS_FROM_ROWS = 500_000
#: At most this many processes by default: each holds the router (and a batch) in memory.
MAX_AUTO_WORKERS = 8


def auto_workers(n_rows: int) -> int:
    """Processes for ``n_rows`` input rows when ``--workers`` is not given."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, MAX_AUTO_WORKERS) if n_rows >= AUTO_WORKERS_FROM_ROWS else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.score",
        description="Score traffic with a fitted router: first model, plan and ex-ante estimates per query, "
                    "or (logged input with a 'model' column) a full cascade replay with realised cost and quality.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True, help="router.joblib written by training.fit")
    parser.add_argument("--input", type=Path, required=True,
                        help="Parquet file: one row per query, or the long format with logged outcomes")
    parser.add_argument("--output", type=Path, required=True, help="Parquet file for the decisions")
    parser.add_argument("--budget", type=float, default=None,
                        help="pick the fitted policy for this budget; default: the largest fitted budget")
    parser.add_argument("--batch-size", type=int, default=65536, help="input rows read per batch")
    parser.add_argument("--rejects", type=Path, default=None,
                        help="Parquet file for rejected rows; default: OUTPUT with suffix .rejects.parquet")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes scoring batches in parallel, each loading the router; 1 = in this "
                             "process with multi-threaded kernels (compiled at start, a few seconds); "
                             f"default: one process per core (up to {MAX_AUTO_WORKERS}) from "
                             f"{AUTO_WORKERS_FROM_ROWS:,} input rows, below that this process with "
                             "single-threaded kernels")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    return args


def run(args: argparse.Namespace) -> dict:
    """Score the input file; returns the totals printed by :func:`main`."""
    from tqdm.auto import tqdm
    if not args.input.exists():
        raise ScoreError(f"--input {args.input} does not exist")
    if not args.artifact.exists():
        raise ScoreError(f"--artifact {args.artifact} does not exist")
    try:
        parquet = pq.ParquetFile(args.input)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ScoreError(f"--input {args.input} is not a readable Parquet file ({error})") from error
    names = parquet.schema_arrow.names
    router = load_router(args.artifact)
    logged = check_columns(router, names)
    policy = router.policy(args.budget)
    columns = [c for c in required_columns(router, logged) if c in names]
    if logged and "response" in names and "response" not in columns:
        columns.append("response")
    rejects_path = args.rejects or args.output.with_name(args.output.name.removesuffix(".parquet") + ".rejects.parquet")
    writer, rejects = _Writer(args.output, output_schema(router, logged)), _Writer(rejects_path, rejects_schema())
    totals = {"queries": 0, "rejected_rows": 0, "cost": 0.0, "quality": 0.0, "models": 0.0}
    timings: dict = {}
    workers = args.workers or auto_workers(parquet.metadata.num_rows)
    parallel = args.workers == 1  # asked for one process: use its cores through multi-threaded kernels
    warming = time.perf_counter()
    pool = _start_workers(args.artifact, workers) if workers > 1 else None
    predictor = router._predictor()
    if parallel and predictor is not router.estimator:
        predictor.warm_up_batch()  # row-parallel kernels are compiled per process, not cached
    warm_up_seconds = time.perf_counter() - warming
    started = time.perf_counter()
    progress = tqdm(total=parquet.metadata.num_rows, unit="row", desc="training.score", disable=args.quiet)

    def consume(result: pd.DataFrame, batch_timings: dict, n_rows: int) -> None:
        for key, value in batch_timings.items():
            timings[key] = timings.get(key, 0.0) + value
        ok = result["status"] == STATUS_OK
        scored, rejected = result[ok], result[~ok]
        writer.write(scored)
        if len(rejected):
            rejects.write(rejected)
        totals["queries"] += len(scored)
        totals["rejected_rows"] += len(rejected)
        if logged and len(scored):
            totals["cost"] += float(scored["cost"].sum())
            totals["quality"] += float(scored["quality"].sum())
            totals["models"] += float(scored["n_run"].sum())
        elif len(scored):
            totals["cost"] += float(scored["plan_cost"].sum())
        progress.update(n_rows)

    # BLAS threads only ever wait here: the products are small (a batch times a few hundred columns)
    # and, beside numba's threads or other workers, OpenBLAS's spinning threads made them 10x slower.
    blas = threadpool_limits(1, user_api="blas")
    try:
        if pool is None:
            for frame in iter_frames(args.input, columns, args.batch_size, logged):
                batch_timings: dict = {}
                consume(score_batch(router, frame, args.budget, parallel=parallel, timings=batch_timings),
                        batch_timings, len(frame))
        else:
            pending: deque = deque()
            for table in iter_tables(args.input, columns, args.batch_size, logged):
                pending.append((pool.submit(_score_in_worker, table, args.budget), table.num_rows))
                if len(pending) >= 2 * workers:  # bounded read-ahead: memory stays bounded
                    future, n_rows = pending.popleft()
                    consume(*future.result(), n_rows)
            while pending:
                future, n_rows = pending.popleft()
                consume(*future.result(), n_rows)
    finally:
        blas.restore_original_limits()
        progress.close()
        writer.close()
        rejects.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    seconds = time.perf_counter() - started
    n = max(totals["queries"], 1)
    return {"logged": logged, "queries": totals["queries"], "rejected_rows": totals["rejected_rows"],
            "mean_cost": totals["cost"] / n, "mean_quality": totals["quality"] / n if logged else None,
            "models_per_query": totals["models"] / n if logged else None, "budget": policy.budget,
            "seconds": seconds, "queries_per_second": totals["queries"] / seconds if seconds > 0 else None,
            "timings": timings, "warm_up_seconds": warm_up_seconds, "workers": workers, "output": str(args.output),
            "rejects": str(rejects_path)}


def summary(totals: dict) -> str:
    budget = totals["budget"]
    what = "realised cost" if totals["logged"] else "planned ex-ante cost"
    processes = f"{totals['workers']} worker processes" if totals["workers"] > 1 else "one process"
    lines = [f"{totals['queries']} queries scored in {totals['seconds']:.1f} s "
             f"({totals['queries_per_second'] or 0:,.0f} queries/s, {processes}); decisions: {totals['output']}",
             f"mean {what} per query {totals['mean_cost']:.6g} vs budget {budget:.6g} "
             f"({totals['mean_cost'] / budget:.1%} of it)" if budget > 0 else ""]
    if totals["logged"]:
        lines.append(f"mean quality {totals['mean_quality']:.4f}, {totals['models_per_query']:.2f} models per query")
    split = ", ".join(f"{k} {v:.1f} s" for k, v in totals["timings"].items())
    if split:
        lines.append(f"time: {split}")
    return "\n".join(line for line in lines if line)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        totals = run(args)
    except (ValueError, FileNotFoundError) as error:  # ScoreError, bad artifact, budget below every policy
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(summary(totals))
    if totals["rejected_rows"]:
        print(f"warning: {totals['rejected_rows']} input row(s) rejected (malformed, or in a query with a "
              f"malformed row); see {totals['rejects']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
