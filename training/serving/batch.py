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

This module streams files: it reads the input with
``pyarrow.parquet.ParquetFile.iter_batches`` a few megabytes at a time
(:data:`READ_BYTES`, whatever the row groups), gathers the reads into
batches of whole queries (a query whose rows straddle a boundary is carried
over) with each query's repeated text kept once, scores each batch with
:func:`training.serving.replay.score_batch` (in worker processes with
``--workers``) and writes as it goes, so memory stays bounded by the batch
size. Checking logged rows is :mod:`training.serving.logged`; the per-batch
scoring and the replay are :mod:`training.serving.replay`.

Nothing is dropped silently: a malformed row (unknown model, missing
prompt, NaN or negative cost, NaN quality, a duplicate model, a query whose
rows are split over the file: :func:`scattered_queries` finds those in a
first pass over ``query_id``) rejects its query, and *every* input row of a
rejected query is written to the rejects file with its row number and a
reason. A query without rows for some models is not malformed: it is
replayed until the policy needs one of them (status ``unreplayable``).
Exit codes: 0 (with a ``warning:`` line when there are rejects), 2 with a
one-line ``error:`` on unusable input (bad arguments, missing file, missing
columns, unreadable Parquet, a budget below every fitted policy), 1 when an
output cannot be written.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from ..artifact import manifest_path
from ..cli import (
    SCORE_EXIT_STATUS,
    RunFailed,
    fail,
    refuse_inputs_as_outputs,
    run_command,
    score_parser,
    verification_key,
)
from ..data import READ_BYTES, parquet_rows_per_read
from ..defaults import AUTO_WORKERS_FROM_ROWS, MAX_AUTO_WORKERS
from ..router import Router, load_router, load_router_with_sha256
from .logged import DISAGREES_ON, PER_QUERY_TEXT, ScoreError, check_columns, required_columns
from .outputs import RunOutputs, check_paths
from .replay import STATUS_OK, STATUS_REJECTED, output_schema, rejects_schema, score_batch

__all__ = ["AUTO_WORKERS_FROM_ROWS", "EXIT_CODES", "MAX_AUTO_WORKERS", "auto_workers", "input_columns", "is_csv",
           "iter_tables", "main", "parse_args", "run", "scattered_queries", "summary"]

#: Exit codes of :func:`main`, listed in ``--help``.
EXIT_CODES = SCORE_EXIT_STATUS


# --------------------------------------------------------------------------- #
# streaming
# --------------------------------------------------------------------------- #


#: Per-(query, model) columns read as text from CSV (empty fields are '', as ``training.data`` reads them).
_TEXT_COLUMNS = ("query_id", "prompt", "task", "subtask", "model", "response")


def _csv_parse_options():
    import pyarrow.csv as pacsv
    return pacsv.ParseOptions(newlines_in_values=True)  # prompts and responses span lines


def is_csv(path: Path) -> bool:
    """Whether ``path`` is read as CSV (``.csv``, ``.csv.gz``) rather than Parquet.

    Parameters
    ----------
    path : Path

    Returns
    -------
    bool
    """
    return path.name.lower().endswith((".csv", ".csv.gz"))


def input_columns(path: Path) -> tuple[list[str], int | None]:
    """Column names of the input and its number of rows (``None`` for CSV, which would need a full read).

    Parameters
    ----------
    path : Path
        The input file.

    Returns
    -------
    (list of str, int or None)

    Raises
    ------
    ScoreError
        If the file cannot be read as Parquet or CSV, or its ``prompt`` column is not text.
    """
    import pyarrow.csv as pacsv
    try:
        if is_csv(path):
            with pacsv.open_csv(path, parse_options=_csv_parse_options()) as reader:
                return list(reader.schema.names), None
        parquet = pq.ParquetFile(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file
        kind = "CSV" if is_csv(path) else "Parquet"
        raise ScoreError(f"--input {path} is not a readable {kind} file ({error})") from error
    schema = parquet.schema_arrow
    for name in _TEXT_COLUMNS:
        if name not in schema.names:
            continue
        kind = schema.field(name).type
        value = pa.types.is_dictionary(kind) and kind.value_type or kind
        if pa.types.is_binary(value) or pa.types.is_large_binary(value) or pa.types.is_fixed_size_binary(value):
            # bytes would be read as their repr ("b'...'"), not as the text they hold
            raise ScoreError(f"--input {path}: column {name!r} holds {kind} (bytes), not text; write it as "
                             "UTF-8 strings")
        if name == "prompt" and not (pa.types.is_string(value) or pa.types.is_large_string(value)
                                     or pa.types.is_null(value)):
            # a number read as a prompt would be featurized as its digits
            raise ScoreError(f"--input {path}: column 'prompt' holds {kind}, not text; prompts must be strings")
    return list(schema.names), parquet.metadata.num_rows


#: Most bytes of input gathered into one scored table (besides ``--batch-size`` rows): a table is held by the
#: reader, shipped to a worker and converted to pandas there, so counting rows alone let memory grow with
#: the prompts' length (8,000 rows of 100,000-character prompts took 3.1 GiB, issue 30).
BATCH_BYTES = 64 * 2**20


def _record_batches(path: Path, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """The input's ``columns`` in consecutive record batches of at most ``batch_size`` rows (CSV: a block each)."""
    if not is_csv(path):
        # pre_buffer (pyarrow's default) keeps every column chunk read so far until the file is closed:
        # memory would grow with the input instead of staying bounded by the batch.
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=2**20)
        yield from parquet.iter_batches(batch_size=parquet_rows_per_read(parquet, columns, batch_size, READ_BYTES),
                                        columns=columns)
        return
    import pyarrow.csv as pacsv
    convert = pacsv.ConvertOptions(include_columns=columns, strings_can_be_null=False,
                                   column_types={c: pa.string() for c in columns if c in _TEXT_COLUMNS})
    with pacsv.open_csv(path, parse_options=_csv_parse_options(), convert_options=convert) as reader:
        yield from reader  # blocks of about a megabyte


def _run_starts(ids: pa.Array) -> np.ndarray:
    """Positions where a run of equal query ids starts (a missing id is a value like any other)."""
    if not len(ids):
        return np.zeros(0, np.int64)
    changed = pc.fill_null(pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)), True)
    nulls = pc.is_null(ids).to_numpy(zero_copy_only=False)
    return np.flatnonzero(np.r_[True, changed.to_numpy(zero_copy_only=False) | (nulls[1:] != nulls[:-1])])


def _query_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of query ids (``None`` hashes like any other value, the same everywhere)."""
    return pd.util.hash_array(np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object))


def scattered_queries(path: Path, batch_size: int) -> np.ndarray:
    """Hashes of the query ids whose rows do not stand together in the file, sorted (a pass over ``query_id``).

    Scoring streams the file one batch at a time, so a query whose rows are
    split over the file would be scored in parts; this pass over the
    ``query_id`` column alone (8 bytes per query kept) finds them first, so
    that all their rows are rejected instead.

    Parameters
    ----------
    path : Path
        The logged input file.
    batch_size : int
        Rows read at a time.

    Returns
    -------
    ndarray of uint64
        Sorted hashes (``pandas.util.hash_array``) of the scattered query ids.
    """
    heads: list[np.ndarray] = []
    last = None
    for batch in _record_batches(path, ["query_id"], batch_size):
        ids = batch.column(0)
        if not len(ids):
            continue
        # run starts found in Arrow, so only one id per run (per query) becomes a Python object
        hashes = _query_hashes(ids.take(pa.array(_run_starts(ids))))
        if last is not None and hashes[0] == last:  # the run continues from the previous batch
            hashes = hashes[1:]
        if hashes.size:
            heads.append(hashes)
        last = _query_hashes(ids.slice(len(ids) - 1))[0]
    if not heads:
        return np.zeros(0, np.uint64)
    values, counts = np.unique(np.concatenate(heads), return_counts=True)
    return values[counts > 1]


def _mark_scattered(tables: Iterator[pa.Table], scattered: np.ndarray) -> Iterator[pa.Table]:
    """Add the ``scattered`` column (rows of a query split over the file) that :func:`score_batch` rejects."""
    for table in tables:
        if scattered.size:
            marked = np.isin(_query_hashes(table.column("query_id")), scattered)
            table = table.append_column("scattered", pa.array(marked))
        yield table


def iter_tables(path: Path, columns: list[str], batch_size: int, logged: bool) -> Iterator[pa.Table]:
    """Batches of the input as Arrow tables with a ``row`` column; logged queries never split.

    The file is read a few megabytes at a time (:data:`READ_BYTES`) and the
    reads gathered into tables of about ``batch_size`` rows or
    :data:`BATCH_BYTES` bytes, whichever comes first, so memory is bounded
    whatever the file's row groups and the prompts' length. The rows of the last query of a
    table may continue in the next read, so they are held back and start the
    next table (and are flushed at the end). For logged input the text
    repeated on every row of a query (``query_id``, ``prompt``, ``task``,
    ``subtask``) is kept once per query and ``model`` once per value, as
    dictionary columns: a prompt is held and shipped once per query, not once
    per model row, and ``to_pandas`` gives categoricals, which the scoring
    converts once per distinct value. A dictionary column is one chunk per
    table (its reads' dictionaries unified), so a dictionary is pickled once
    per table, not once per read. Everything stays in Arrow (no Python
    objects), so the worker that scores a table pays for its pandas
    conversion, not the process that reads.

    Parameters
    ----------
    path : Path
        The input file: Parquet, or CSV / CSV.gz (streamed with ``pyarrow.csv.open_csv``).
    columns : list of str
        Columns to read (``query_id`` among them when ``logged``).
    batch_size : int
        Rows per yielded table; one may hold more (a query carried over) or
        fewer (a query held back, or the end of the file).
    logged : bool
        Logged (long) input: never split a run of equal ``query_id`` across
        two tables, and keep repeated text once. Query input is cut every
        ``batch_size`` rows.

    Yields
    ------
    pyarrow.Table
        The ``columns`` of consecutive input rows, plus ``row`` (int64, the
        input row number from 0).
    """
    offset = 0
    held: list[pa.Table] = []
    n_held = held_bytes = 0
    last_start = 0  # where the last query of ``held`` starts, counted from the first held row
    last_id = None  # the query id of the row before this read
    for batch in _record_batches(path, columns, batch_size):
        table = pa.Table.from_batches([batch]).append_column(
            "row", pa.array(np.arange(offset, offset + batch.num_rows, dtype=np.int64)))
        offset += batch.num_rows
        if not table.num_rows:
            continue
        if logged:
            ids = table.column("query_id").chunk(0)  # one record batch: one chunk
            starts = _run_starts(ids)
            continues = last_id is not None and ids[0].equals(last_id)
            if starts.size > 1 or not continues:
                last_start = n_held + int(starts[-1])
            last_id = ids[-1]
            table = _compact(table, starts)
        held.append(table)
        n_held += table.num_rows
        held_bytes += table.nbytes
        if n_held < batch_size and held_bytes < BATCH_BYTES:
            continue
        joined = pa.concat_tables(held)
        cut = last_start if logged else n_held
        if cut == 0:  # the whole of it is one query: keep collecting
            continue
        yield _one_dictionary(joined.slice(0, cut))
        held, n_held, last_start = [joined.slice(cut)], n_held - cut, 0
        held_bytes = held[0].nbytes
    if n_held:
        yield _one_dictionary(pa.concat_tables(held))


def _one_dictionary(table: pa.Table) -> pa.Table:
    """``table`` with each dictionary column one chunk holding only the values its rows use, so it ships once.

    The reads' dictionaries are unified, and a slice's dictionary (a query
    carried over keeps the dictionary of the read it came from) is cut down
    to what the rows use. Other columns keep their chunks: pickling them
    costs the same, and joining them would copy every response once more.
    """
    for index, field in enumerate(table.schema):
        column = table.column(index)
        if pa.types.is_dictionary(field.type) and column.num_chunks:
            array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
            missing = array.is_null().to_numpy(zero_copy_only=False)
            used, codes = np.unique(pc.fill_null(array.indices, 0).to_numpy()[~missing], return_inverse=True)
            indices = np.zeros(len(array), np.int32)
            indices[~missing] = codes
            table = table.set_column(index, field.name, pa.DictionaryArray.from_arrays(
                pa.array(indices, mask=missing), array.dictionary.take(pa.array(used, pa.int64()))))
    return table


_WORKER_ROUTER: Router | None = None


def _end_with_parent(parent: int) -> None:
    """Make this worker end when the scoring process ends, however it ends (SIGKILL included).

    On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``);
    everywhere a daemon thread also checks every half second that the parent
    is still the one that started it.
    """
    import ctypes
    import signal
    import threading
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (AttributeError, OSError):  # not Linux: the watchdog alone
        pass
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def _keep_freed_memory() -> None:
    """Let glibc's ``malloc`` reuse freed blocks instead of returning them to the kernel after every batch.

    A batch's arrays (tens of MB) are allocated and freed once per batch; by
    default large blocks are ``mmap``-ed and unmapped each time, so every
    batch page-faults its memory in afresh (a tenth of a worker's time went
    to the kernel). Peak memory is unchanged: the blocks are reused, not kept
    in addition. No effect where glibc is absent.
    """
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc's <malloc.h>
    mallopt(m_mmap_threshold, 64 * 2**20)
    mallopt(m_trim_threshold, 256 * 2**20)
    mallopt(m_top_pad, 16 * 2**20)


def _init_worker(artifact: str, sha256: str, parent: int) -> None:
    """Load and warm the router once per worker process; kernels single-threaded (one batch per core).

    The payload must have the digest the parent verified (with the key, if
    one was given): workers never see the key, and a file replaced after
    the parent's check is refused. (So no unsigned-artifact warning here:
    the parent gave it if it had no key.)
    """
    global _WORKER_ROUTER
    _end_with_parent(parent)
    _keep_freed_memory()
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    import numba
    numba.set_num_threads(1)
    threadpool_limits(1, user_api="blas")  # for the life of the worker
    _WORKER_ROUTER = load_router(artifact, expected_sha256=sha256)


def _warm_worker(_: int) -> int:
    time.sleep(0.2)  # keep this worker busy so that the next warm-up task starts another one
    return os.getpid()


def _compact(table: pa.Table, starts: np.ndarray) -> pa.Table:
    """``table`` with its per-query text columns once per query and ``model`` once per value (dictionary columns).

    ``starts`` are the queries' first rows. Within a query, each row keeps
    its own missing-or-not state; a present value is the query's first
    present value, the one scoring reads (it reads only a query's first row).
    A row whose value differed from the row before it in its query is marked
    in the :data:`~training.serving.logged.DISAGREES_ON` column, so that
    validation rejects the query instead of scoring it with one row's text.
    """
    n = table.num_rows
    continues = np.ones(n, dtype=bool)
    continues[starts] = False
    disagrees = np.zeros(n, np.int8)
    for index, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        column = table.column(index)
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()  # one read: no copy
        if field.name == "model":
            table = table.set_column(index, field.name, pc.dictionary_encode(column))
        elif field.name in PER_QUERY_TEXT:
            nulls = pc.is_null(column).to_numpy(zero_copy_only=False)
            # what validation can no longer see once the query's first value stands for all rows
            if n > 1 and field.name != "query_id":
                unequal = pc.fill_null(pc.not_equal(column.slice(1), column.slice(0, n - 1)), False)
                differs = np.r_[False, unequal.to_numpy(zero_copy_only=False) | (nulls[1:] != nulls[:-1])]
                disagrees[(disagrees == 0) & continues & differs] = PER_QUERY_TEXT.index(field.name) + 1
            edges = np.union1d(starts, 1 + np.flatnonzero(nulls[1:] != nulls[:-1]))  # present-or-not runs too
            first = pc.dictionary_encode(column.take(pa.array(edges)))
            indices = first.indices.take(pa.array(np.repeat(np.arange(edges.size), np.diff(np.r_[edges, n]))))
            table = table.set_column(index, field.name, pa.DictionaryArray.from_arrays(indices, first.dictionary))
    return table.append_column(DISAGREES_ON, pa.array(disagrees))


def _score_table(router: Router, table: pa.Table, budgets: tuple[float | None, float | None],
                 schemas: tuple[pa.Schema, pa.Schema], parallel: bool) -> tuple[pa.Table, pa.Table, dict, dict]:
    """Score one batch into the output's and the rejects' Arrow tables, with the batch's totals and timings.

    Done where the batch is scored (a worker, with ``--workers``), so that
    the process that reads and writes only adds numbers and writes Arrow.
    """
    timings: dict = {}
    budget, latency_budget = budgets
    result = score_batch(router, table.to_pandas(), budget, parallel=parallel, timings=timings,
                         latency_budget=latency_budget)
    status = result["status"].to_numpy()
    is_rejected = status == STATUS_REJECTED
    scored, rejected = result[~is_rejected], result[is_rejected]  # unreplayable rows are scored rows
    replayed = scored[status[~is_rejected] == STATUS_OK]  # the totals cover these only
    logged = "cost" in replayed.columns
    totals = {"rows": table.num_rows, "reasons": reason_counts(rejected),
              "queries": len(replayed), "unreplayable": len(scored) - len(replayed), "rejected_rows": len(rejected),
              "cost": float(replayed["cost" if logged else "plan_cost"].sum()) if len(replayed) else 0.0,
              "quality": float(replayed["quality"].sum()) if logged and len(replayed) else 0.0,
              "models": float(replayed["n_run"].sum()) if logged and len(replayed) else 0.0}
    spent = "latency" if logged else "plan_latency"
    if spent in replayed.columns:  # a router with latency: seconds added up like the cost
        totals["latency"] = float(replayed[spent].sum()) if len(replayed) else 0.0
    scored_table, rejected_table = (pa.Table.from_pandas(frame.reindex(columns=schema.names), schema=schema,
                                                         preserve_index=False)
                                    for frame, schema in zip((scored, rejected), schemas, strict=True))
    return scored_table, rejected_table, totals, timings


#: Distinct rejection reasons kept in the running totals (the most frequent; the rest are counted as "other").
MAX_REASONS = 50
_ROW_NUMBER = re.compile(r"\brow \d+")


def reason_counts(rejected: pd.DataFrame) -> dict[str, int]:
    """Rejected rows per kind of reason: the reason with its query id and row numbers taken out.

    So that a run whose rows are all rejected can say why in one line,
    without the rejects file (which holds each row's own reason).

    Parameters
    ----------
    rejected : pandas.DataFrame
        Rejected rows with ``reason`` and ``query_id``.

    Returns
    -------
    dict of str to int
    """
    counts: dict[str, int] = {}
    if not len(rejected):
        return counts
    for reason, query in zip(rejected["reason"].to_numpy(dtype=object), rejected["query_id"].to_numpy(dtype=object),
                             strict=True):
        kind = _ROW_NUMBER.sub("row N",
                               str(reason).replace(repr(query), "Q") if isinstance(query, str) else str(reason))
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _add_reasons(total: dict[str, int], batch: dict[str, int]) -> dict[str, int]:
    """``total`` plus ``batch``, cut to the :data:`MAX_REASONS` most frequent (hostile input stays bounded)."""
    merged = dict(total)
    for kind, count in batch.items():
        merged[kind] = merged.get(kind, 0) + count
    if len(merged) <= MAX_REASONS:
        return merged
    ranked = sorted(merged.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ranked[:MAX_REASONS - 1])
    kept["other reasons"] = sum(count for _, count in ranked[MAX_REASONS - 1:])
    return kept


def _score_in_worker(table: pa.Table, budgets: tuple[float | None, float | None],
                     schemas: tuple[pa.Schema, pa.Schema]) -> tuple[pa.Table, pa.Table, dict, dict]:
    """:func:`_score_table` with the worker's router (batches travel as Arrow buffers, cheap to pickle)."""
    if _WORKER_ROUTER is None:
        raise RuntimeError("_score_in_worker runs in a worker whose initializer loaded the router")
    return _score_table(_WORKER_ROUTER, table, budgets, schemas, parallel=False)


#: Seconds between checks that every worker process is alive while a result is awaited.
WORKER_CHECK_SECONDS = 0.5
#: Seconds ``Pool.terminate`` is given before the workers are killed directly.
POOL_TERMINATE_SECONDS = 10.0


class _Workers:
    """A spawn-started process pool and its worker processes, so that a wait ends when one of them dies.

    ``multiprocessing.Pool`` replaces a dead worker but loses the batch it
    held: waiting for that batch would never end. Every wait here checks,
    every :data:`WORKER_CHECK_SECONDS`, that the processes the pool started
    are alive, and ends the run with :class:`~training.cli.RunFailed` when
    one is not (the completed batches stay in the partial folder).
    """

    def __init__(self, pool, processes: list, others: set) -> None:
        self.pool, self.processes, self.others = pool, processes, others

    def result(self, future, what: str) -> Any:
        """``future.get()``, or :class:`~training.cli.RunFailed` naming the dead worker and ``what`` was lost."""
        import multiprocessing
        while True:
            try:
                return future.get(timeout=WORKER_CHECK_SECONDS)
            except multiprocessing.TimeoutError:
                dead = [process for process in self.processes if process.exitcode is not None]
                if dead:
                    code = dead[0].exitcode
                    how = (f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}")
                    raise RunFailed(f"scoring worker process {dead[0].pid} died ({how}"
                                    f"{', as the out-of-memory killer does' if code == -9 else ''}) {what}; "
                                    "completed batches are kept in OUTPUT.partial/: rerun with --resume (with "
                                    "fewer --workers or a smaller --batch-size if memory ran out)") from None

    def close(self) -> None:
        """Terminate the pool, with a deadline: a worker killed while waiting for a task dies holding the task
        queue's lock, which ``Pool.terminate`` then waits for forever; its workers are killed instead."""
        import multiprocessing
        import threading
        closing = threading.Thread(target=self._terminate, daemon=True, name="pool-terminate")
        closing.start()
        closing.join(timeout=POOL_TERMINATE_SECONDS)
        if closing.is_alive():  # left behind: a daemon thread, blocked on a lock nobody will release
            for process in multiprocessing.active_children():
                if process not in self.others:
                    process.kill()

    def _terminate(self) -> None:
        self.pool.terminate()  # workers hold nothing worth waiting for once the parent stops
        self.pool.join()


def _signal_name(number: int) -> str:
    import signal
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _start_workers(artifact: Path, sha256: str, n_workers: int) -> _Workers:
    """A spawn-started process pool whose workers load the router in the background (wait with :func:`_await_workers`).

    ``spawn``, not ``fork``: the parent may already run OpenMP threads
    (numba's threading layer), which do not survive a fork. A
    ``multiprocessing.Pool`` because it can be terminated at once when the
    run stops; its workers also end by themselves if this process dies.
    Call it only with an artifact this process has loaded, and the sha256
    of the payload it loaded: a worker whose start-up fails is replaced by
    another that fails the same way.
    """
    import multiprocessing
    before = set(multiprocessing.active_children())
    pool = multiprocessing.get_context("spawn").Pool(n_workers, initializer=_init_worker,
                                                     initargs=(str(artifact), sha256, os.getpid()))
    return _Workers(pool, [p for p in multiprocessing.active_children() if p not in before], before)  # started


def _await_workers(workers: _Workers, n_workers: int) -> None:
    """Return once every worker has started and loaded the router (so the clock starts with all of them ready)."""
    workers.result(workers.pool.map_async(_warm_worker, range(n_workers), chunksize=1), "while loading the router")




def auto_workers(n_rows: int) -> int:
    """Processes for ``n_rows`` input rows when ``--workers`` is not given, so small files skip the pool's start-up.

    Parameters
    ----------
    n_rows : int
        Rows of the input file.

    Returns
    -------
    int
        One process per usable core, at most :data:`MAX_AUTO_WORKERS`, from
        :data:`AUTO_WORKERS_FROM_ROWS` rows; 1 (this process) below.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, MAX_AUTO_WORKERS) if n_rows >= AUTO_WORKERS_FROM_ROWS else 1


def _check_unchanged(path: Path, stat: os.stat_result, rows_read: int | None = None) -> None:
    """Refuse an input that changed since the run started (its passes would disagree), before the outputs are written.

    The contiguity pass and the scoring pass read the file separately, and a
    file appended to in between (a log still being written) gives them
    different rows: a query complete in the finished file could come out
    unreplayable, or its rows be taken for scattered ones.
    """
    now = path.stat()
    before = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if (now.st_size, now.st_mtime_ns, now.st_ino) != before:
        raise ScoreError(f"--input {path} changed while it was being scored ({stat.st_size:,} bytes at the start, "
                         f"{now.st_size:,} now{'' if rows_read is None else f'; {rows_read:,} rows read'}): score "
                         f"a finished file (copy it first, or wait for its writer); delete "
                         "OUTPUT.partial/ before scoring again")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.score``, apart from :func:`parse_args` so docs and tests can read its flags.

    Defined in :mod:`training.cli` (:func:`~training.cli.score_parser`), so
    that ``--help`` answers without importing this module.

    Returns
    -------
    argparse.ArgumentParser
    """
    return score_parser()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line, so that a bad flag fails before the artifact or the input is opened.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    argparse.Namespace
        The options, one attribute per flag (``args.batch_size``, ...).

    Raises
    ------
    SystemExit
        After argparse has printed the help (code 0) or a usage error (code
        2, also for ``--batch-size`` or ``--workers`` below 1).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_reject_share is not None and not 0 <= args.max_reject_share < 1:
        parser.error(f"--max-reject-share must be at least 0 and below 1, got {args.max_reject_share}")
    if args.max_reject_share is not None and args.engine == "spark":
        parser.error("--max-reject-share is for --engine local (Spark's totals do not count the input rows); a Spark "
                     "run that rejects rows and scores nothing still exits 2")
    if args.engine == "spark" and (args.resume or args.workers is not None):
        parser.error("--resume and --workers are for --engine local; Spark retries failed tasks and spreads the "
                     "work itself")
    if args.master is not None and args.engine != "spark":
        parser.error("--master needs --engine spark")
    if args.grouped and args.engine != "spark":
        parser.error("--grouped is for --engine spark (--engine local always reads each query's rows together)")
    if args.engine == "local":  # Spark takes URIs (hdfs://, s3a://) as they are: Path would fold their '//'
        args.input, args.output = Path(args.input), Path(args.output)
        args.rejects = None if args.rejects is None else Path(args.rejects)
    return args


def run(args: argparse.Namespace) -> dict:
    """Score the input file into ``--output`` and ``--rejects``, so that :func:`main` only prints and maps errors.

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`parse_args`.

    Returns
    -------
    dict
        The totals :func:`summary` prints: ``logged``, ``queries``,
        ``rejected_rows``, ``mean_cost``, ``mean_quality`` and
        ``models_per_query`` (``None`` for query input), ``budget``,
        ``seconds``, ``queries_per_second``, ``timings``,
        ``warm_up_seconds``, ``workers``, ``output``, ``rejects``.

    Raises
    ------
    training.serving.logged.ScoreError
        If the input or the artifact is missing, the input is not readable
        Parquet or lacks columns.
    ValueError or FileNotFoundError
        If the artifact cannot be loaded (no manifest, another format or
        library version; with ``--verify-key-env``, an unset variable or a
        missing or wrong signature) or ``--budget`` is below every fitted
        policy.
    training.cli.OutputError
        If the output or the rejects file cannot be written.
    """
    key = verification_key(args)
    if args.engine == "spark":
        from .spark import run_cli

        datasets = [("--output", args.output), ("--rejects", args.rejects or str(args.output).rstrip("/") + ".rejects")]
        refuse_inputs_as_outputs([(flag, path) for flag, path in datasets if "://" not in str(path)],
                                 [("--artifact", args.artifact),
                                  ("--artifact's manifest", manifest_path(args.artifact))])
        return run_cli(args, key)
    from tqdm.auto import tqdm
    if not args.input.exists():
        raise ScoreError(f"--input {args.input} does not exist")
    if args.input.is_dir():
        raise ScoreError(f"--input {args.input} is a folder: this engine streams one Parquet or CSV file; score each "
                         "file of the dataset, or the whole folder with --engine spark")
    if not args.artifact.exists():
        raise ScoreError(f"--artifact {args.artifact} does not exist")
    rejects_path = args.rejects or args.output.with_name(args.output.name.removesuffix(".parquet") + ".rejects.parquet")
    rejects_flag = "--rejects" if args.rejects else "the rejects file"
    written = [("--output", args.output), (rejects_flag, rejects_path),
               ("--output (its partial folder)", args.output.with_name(args.output.name + ".partial"))]
    refuse_inputs_as_outputs(written, [("--artifact", args.artifact),
                                       ("--artifact's manifest", manifest_path(args.artifact))])
    check_paths(args.input, args.output, rejects_path, rejects_flag)
    for flag, path in written[:2]:
        if not args.overwrite and path.exists():
            raise ScoreError(f"{flag} {path} exists (an earlier run's results?); pass --overwrite to replace it "
                             "when this run completes, or choose another path")
    names, n_rows = input_columns(args.input)
    # CSV has no row count up front: about 2 kB per logged row decides the default
    workers = args.workers or auto_workers(n_rows if n_rows is not None else args.input.stat().st_size // 2048)
    parallel = args.workers == 1  # asked for one process: use its cores through multi-threaded kernels
    # with workers, this process only reads and writes; they load the payload it verified (sha256)
    router, sha256 = load_router_with_sha256(args.artifact, warm_up=workers == 1, key=key)
    logged = check_columns(router, names)
    policy = router.policy(args.budget, args.latency_budget)
    budgets = (args.budget, args.latency_budget)
    columns = [c for c in required_columns(router, logged) if c in names]
    if logged and "response" in names and "response" not in columns:
        columns.append("response")
    if logged and "latency_s" in names:
        columns.append("latency_s")
    stat = args.input.stat()
    run_key = {"input": str(args.input.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
               "artifact": str(args.artifact.resolve()), "budget": policy.budget, "batch_size": args.batch_size,
               **({} if policy.latency_budget is None else {"latency_budget": policy.latency_budget})}
    outputs = RunOutputs(args.output, rejects_path, (output_schema(router, logged), rejects_schema()), run_key,
                         resume=args.resume, rejects_flag=rejects_flag)
    totals: dict[str, Any] = {"rows": 0, "reasons": {}, "queries": 0, "unreplayable": 0, "rejected_rows": 0,
                              "cost": 0.0, "quality": 0.0, "models": 0.0}
    if "latency" in output_schema(router, logged).names or "plan_latency" in output_schema(router, logged).names:
        totals["latency"] = 0.0
    totals.update({key: outputs.totals[key] for key in totals if key in outputs.totals})  # --resume
    resumed = outputs.done
    timings: dict = {}

    def consume(scored: pa.Table, rejected: pa.Table, batch_totals: dict, batch_timings: dict, n_rows: int) -> None:
        for key, value in batch_timings.items():
            timings[key] = timings.get(key, 0.0) + value
        for key, value in batch_totals.items():
            totals[key] = _add_reasons(totals[key], value) if key == "reasons" else totals[key] + value
        outputs.write_batch(outputs.done, scored, rejected, totals)
        if progress is not None:  # always: the bar is made before the first batch
            progress.update(n_rows)

    warming = time.perf_counter()
    pool = progress = None
    # BLAS threads only ever wait here: the products are small (a batch times a few hundred columns)
    # and, beside numba's threads or other workers, OpenBLAS's spinning threads made them 10x slower.
    blas = threadpool_limits(1, user_api="blas")
    try:
        pool = _start_workers(args.artifact, sha256, workers) if workers > 1 else None
        # while the workers start: the contiguity pass over query_id
        scattered = scattered_queries(args.input, args.batch_size) if logged else None
        _check_unchanged(args.input, stat)
        if pool is not None:
            _await_workers(pool, workers)
        if parallel:
            router.warm_up(parallel=True)  # row-parallel kernels are compiled per process, not cached
        warm_up_seconds = time.perf_counter() - warming
        started = time.perf_counter()
        progress = tqdm(total=n_rows, unit="row", desc="training.score", disable=args.quiet)
        batches = iter_tables(args.input, columns, args.batch_size, logged)
        if scattered is not None:
            batches = _mark_scattered(batches, scattered)
        try:
            for _ in range(resumed):  # --resume: batches an earlier run completed
                progress.update(next(batches).num_rows)
            if pool is None:
                for table in batches:
                    consume(*_score_table(router, table, budgets, outputs.schemas, parallel), table.num_rows)
            else:
                pending: deque = deque()
                for table in batches:
                    pending.append((pool.pool.apply_async(_score_in_worker, (table, budgets, outputs.schemas)),
                                    table.num_rows))
                    if len(pending) >= 2 * workers:  # bounded read-ahead: memory stays bounded
                        future, n_rows = pending.popleft()
                        scored, rejected, batch_totals, batch_timings = pool.result(
                            future, f"while scoring batch {outputs.done + 1}")
                        consume(scored, rejected, batch_totals, batch_timings, n_rows)
                while pending:
                    future, n_rows = pending.popleft()
                    scored, rejected, batch_totals, batch_timings = pool.result(
                        future, f"while scoring batch {outputs.done + 1}")
                    consume(scored, rejected, batch_totals, batch_timings, n_rows)
        except ValueError:  # a file still being written may end in half a row: say that, not the parser's error
            _check_unchanged(args.input, stat, totals["rows"])
            raise
        _check_unchanged(args.input, stat, totals["rows"])
        outputs.finish()
    finally:
        blas.restore_original_limits()
        if progress is not None:
            progress.close()
        if pool is not None:
            pool.close()
        outputs.discard_unfinished()
    seconds = time.perf_counter() - started
    n = max(totals["queries"], 1)
    return {"logged": logged, "queries": totals["queries"], "rejected_rows": totals["rejected_rows"],
            "mean_cost": totals["cost"] / n, "mean_quality": totals["quality"] / n if logged else None,
            "models_per_query": totals["models"] / n if logged else None, "budget": policy.budget,
            "mean_latency": totals["latency"] / n if "latency" in totals else None,
            "latency_budget": policy.latency_budget,
            "seconds": seconds, "queries_per_second": totals["queries"] / seconds if seconds > 0 else None,
            "timings": timings, "warm_up_seconds": warm_up_seconds, "workers": workers, "output": str(args.output),
            "rejects": str(rejects_path), "resumed_batches": resumed, "unreplayable": totals["unreplayable"],
            "rows": totals["rows"], "reasons": totals["reasons"], "max_reject_share": args.max_reject_share}


def summary(totals: dict) -> str:
    """Format the totals of :func:`run` for the terminal, so throughput and cost against budget read at a glance.

    Parameters
    ----------
    totals : dict
        As returned by :func:`run` (``unreplayable`` taken as 0 when absent).

    Returns
    -------
    str
        Queries scored, seconds, queries per second and processes; for
        logged input how many queries were replayed, how many could not be
        (``unreplayable``) and how many input rows were rejected, and that
        the totals cover only the replayed queries; the mean (realised or
        planned) cost per query against the budget; for logged input the
        mean quality and models per query; the time per stage.
    """
    budget = totals["budget"]
    logged = totals["logged"]
    replayed, unreplayable = totals["queries"], totals.get("unreplayable", 0)
    rejected = totals["rejected_rows"]
    scored = replayed + unreplayable
    seconds = totals["seconds"]
    what = "realised cost" if logged else "planned ex-ante cost"
    per = "per replayed query" if logged else "per query"
    processes = f"{totals['workers']} worker processes" if totals["workers"] > 1 else "one process"
    lines = [f"{scored} queries scored in {seconds:.1f} s ({scored / seconds if seconds > 0 else 0:,.0f} queries/s, "
             f"{processes}); decisions: {totals['output']}"]
    if logged:
        lines.append(f"{replayed} queries replayed, {unreplayable} could not be replayed (status 'unreplayable': "
                     f"their cascade needed a model with no logged outcome, see needed_model), {rejected} input "
                     f"row(s) rejected")
        if unreplayable or rejected:
            lines.append(f"the totals below cover only the {replayed} replayed queries")
    elif rejected:
        lines.append(f"{rejected} input row(s) rejected")
    if replayed:
        if budget > 0:
            lines.append(f"mean {what} {per} {totals['mean_cost']:.6g} vs budget {budget:.6g} "
                         f"({totals['mean_cost'] / budget:.1%} of it)")
        if totals.get("mean_latency") is not None and not math.isnan(totals["mean_latency"]):
            against = ("" if totals.get("latency_budget") is None else
                       f" vs latency budget {totals['latency_budget']:.4g} s "
                       f"({totals['mean_latency'] / totals['latency_budget']:.1%} of it)")
            lines.append(f"mean {'realised' if logged else 'planned'} latency {per} {totals['mean_latency']:.4g} s"
                         f"{against}")
        if logged:
            lines.append(f"mean quality {totals['mean_quality']:.4f}, {totals['models_per_query']:.2f} models "
                         f"{per}")
    else:
        lines.append("no query was " + ("replayed" if logged else "scored") + ": no totals")
    split = ", ".join(f"{k} {v:.1f} s" for k, v in totals["timings"].items())
    if split:
        lines.append(f"time: {split}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Score a file as ``python -m training.score`` does, returning the exit code so it can be called from Python.

    Never raises :class:`SystemExit`: ``--help`` returns 0 and a usage
    error 2, after argparse has printed them.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success (with a ``warning:`` line on stderr when rows were
        rejected), 2 on bad input (with a one-line ``error:``), 1 if an
        output cannot be written.
    """
    return run_command(argv, parse_args, run, _print_summary,
                       on_interrupt="completed batches are kept in OUTPUT.partial/ (nothing under the output "
                                    "names): rerun with --resume to continue")


def _print_summary(totals: dict) -> int:
    """Print the summary; exit 2 when rows were rejected and none scored, or more than ``--max-reject-share``."""
    print(summary(totals))
    rejected = totals["rejected_rows"]
    if not rejected:
        return 0
    why = rejection_reasons(totals.get("reasons", {}))
    scored = totals["queries"] + totals.get("unreplayable", 0)
    share = rejected / totals["rows"] if totals.get("rows") else None
    limit = totals.get("max_reject_share")
    if not scored:
        return fail(f"nothing was scored: all {rejected} input row(s) were rejected{why}; every row and its reason "
                    f"are in {totals['rejects']}")
    if limit is not None and share is not None and share > limit:
        return fail(f"{rejected} of {totals['rows']} input rows ({share:.1%}) were rejected, more than "
                    f"--max-reject-share {limit:g}{why}; the results and the rejects ({totals['rejects']}) are written")
    print(f"warning: {rejected} input row(s) rejected (malformed, or in a query with a malformed row){why}; "
          f"see {totals['rejects']}", file=sys.stderr)
    return 0


#: Reasons shown on the command line (the rejects file has every row's).
SHOWN_REASONS = 3
_COLLATERAL = "query rejected because of row N"


def rejection_reasons(reasons: dict[str, int]) -> str:
    """``"; top reasons: ..."``: the most frequent kinds of rejection with their counts ('' when none are known).

    Rows rejected only because another row of their query was are counted
    apart, so the reasons shown are the rows' own.

    Parameters
    ----------
    reasons : dict of str to int
        From :func:`reason_counts`, summed over the batches.

    Returns
    -------
    str
    """
    own = sorted(((count, kind) for kind, count in reasons.items() if kind != _COLLATERAL), key=lambda x: (-x[0], x[1]))
    if not own:
        return ""
    shown = "; ".join(f"{count} x {kind}" for count, kind in own[:SHOWN_REASONS])
    more = f"; {len(own) - SHOWN_REASONS} more kind(s)" if len(own) > SHOWN_REASONS else ""
    collateral = reasons.get(_COLLATERAL, 0)
    return (f" (top reasons: {shown}{more}"
            + (f"; {collateral} more row(s) rejected with their query" if collateral else "") + ")")


if __name__ == "__main__":
    sys.exit(main())
