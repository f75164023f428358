"""The traffic log writer: rows in, Parquet files out, on a thread of its own (issue 34).

Why a thread and a bounded queue: a request must never wait on the disk.
The handler hands its rows to :meth:`TrafficLog.submit`, which only appends
them to a queue (it never blocks, and wakes nobody); when the queue is full
(the disk is slower than the traffic for longer than the queue lasts) the
request's rows are dropped and counted (``router_log_dropped_rows``), the
request itself is served as usual. A writer thread takes the rows, and
writes a file when it holds ``max_rows`` rows or its oldest row is
``max_seconds`` old, and on shutdown.

Why the writer wakes on a clock and converts a chunk at a time: it shares
the interpreter lock with the event loop. Woken for every request (a
``queue.Queue``), it took the lock once per request; converting a file's
rows to Arrow in one call held it for the whole conversion (10,000 rows:
over 100 ms, during which no request moved). It now wakes every
:data:`WAKE_S` (or when the queue is half full), converts
:data:`CHUNK_ROWS` rows per call and pauses between calls so that the loop
takes the lock back (``docs/decisions.md``, item 160); writing the Parquet
file runs without the lock.

Each file is written under a temporary name starting with ``.`` (which
readers skip) and renamed once complete and fsynced, so a reader never sees
half a file and a SIGKILL leaves every completed file readable and nothing
half-written under a final name (a leftover temporary file is removed when
the next log opens the folder).

Disk use is bounded by ``max_bytes`` (the final files of the folder, at
most one file over): once they hold that much, new rows are not written but counted
(``router_log_refused_rows``), with one warning; the log never deletes a
file (they are the user's training data). Moving files out of the folder
(e.g. after a refit has read them) makes room, and logging resumes.

Keys never reach the log: rows are built from the router's view of a
request (prompt, task, the answers, costs, the decision), never from its
headers.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..explore import Exploration
from ..files import write_atomically
from ..traffic_log import FEEDBACK_PREFIX, FEEDBACK_SCHEMA, TRAFFIC_PREFIX, TRAFFIC_SCHEMA

__all__ = ["LogConfig", "TrafficLog", "feedback_row", "log_config", "request_rows"]

log = logging.getLogger(__name__)

_SCHEMAS = {TRAFFIC_PREFIX: TRAFFIC_SCHEMA, FEEDBACK_PREFIX: FEEDBACK_SCHEMA}
#: Seconds between the writer's looks at the queue.
WAKE_S = 0.25
#: Rows converted to Arrow per call: about a millisecond holding the interpreter lock.
CHUNK_ROWS = 64
#: The writer's pause after each conversion: long enough for a waiting event loop to take the lock.
PAUSE_S = 2e-4


class TrafficLog:
    """Appends rows to Parquet files in ``directory`` without blocking the caller (see the module docstring).

    Parameters
    ----------
    directory : path
        Created if missing; files of an earlier run are kept (and count towards ``max_bytes``).
    max_rows : int, default=10,000
        Rows per file (a larger file compresses better; a smaller one is readable sooner).
    max_seconds : float, default=60
        Age of the oldest unwritten row at which a file is written anyway.
    max_bytes : int, default=10 GiB
        Disk use of the folder's log files past which rows are refused (counted, never written).
    queue_requests : int, default=10,000
        Requests whose rows may wait for the writer; beyond, rows are dropped and counted.

    Attributes
    ----------
    dropped_rows, refused_rows, written_rows, written_files : int
        Counts since the log opened (read them from any thread; the writer updates them).
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_rows: int = 10_000, max_seconds: float = 60.0,
                 max_bytes: int = 10 << 30, queue_requests: int = 10_000) -> None:
        if max_rows < 1 or max_seconds <= 0 or max_bytes < 1 or queue_requests < 1:
            raise ValueError("the traffic log needs max_rows, max_seconds, max_bytes and queue_requests > 0")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(".*.parquet*.tmp"):  # a killed writer's half file: never a final name
            stale.unlink(missing_ok=True)
        self.max_rows, self.max_seconds, self.max_bytes = max_rows, max_seconds, max_bytes
        self.dropped_rows = self.refused_rows = self.written_rows = self.written_files = 0
        self.queue_requests = queue_requests
        self._queue: deque[tuple[str, Sequence[dict[str, Any]]]] = deque()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._sequence = itertools.count()
        self._used = self._disk_use()
        self._full_warned = False
        self._thread = threading.Thread(target=self._run, name="router-traffic-log", daemon=True)
        self._thread.start()

    # -- the request side ----------------------------------------------------------------------------------
    def submit(self, rows: Sequence[dict[str, Any]], kind: str = TRAFFIC_PREFIX) -> bool:
        """Queue one request's rows (or labels, ``kind=FEEDBACK_PREFIX``); ``False`` if dropped (queue full)."""
        waiting = len(self._queue)
        if waiting >= self.queue_requests:
            self.dropped_rows += len(rows)
            return False
        self._queue.append((kind, rows))  # deque.append is atomic: the writer may pop meanwhile
        if waiting == self.queue_requests // 2:  # half full: the writer comes before its next tick
            self._wake.set()
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the writer (waits at most ``timeout`` seconds)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    # -- the writer thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        files = {kind: _Chunks(schema) for kind, schema in _SCHEMAS.items()}
        while True:
            self._wake.wait(min(WAKE_S, self.max_seconds))
            self._wake.clear()
            stopping = self._stop.is_set()  # read before draining: what was queued before close() is written
            while self._queue:
                kind, rows = self._queue.popleft()
                chunks = files[kind]
                try:
                    chunks.add(rows)
                except Exception:  # a row Arrow cannot hold: those rows are lost, the writer goes on
                    log.exception("the traffic log could not convert rows for %s", self.directory)
                    self.refused_rows += chunks.drop_waiting()
                if chunks.rows >= self.max_rows:
                    self._flush(kind, chunks)
            now = time.monotonic()
            for kind, chunks in files.items():
                if chunks.rows and (stopping or now - chunks.since >= self.max_seconds):
                    self._flush(kind, chunks)
            if stopping:
                return

    def _flush(self, kind: str, chunks: _Chunks) -> None:
        rows = chunks.rows
        try:
            self._write(kind, chunks)
        except Exception:  # the writer must outlive a bad disk moment: count the rows and go on
            log.exception("the traffic log could not write %d rows to %s", rows, self.directory)
            self.refused_rows += rows
        chunks.clear()

    def _write(self, kind: str, chunks: _Chunks) -> None:
        rows = chunks.rows
        if self._used >= self.max_bytes:
            self._used = self._disk_use()  # files moved away free room
            if self._used >= self.max_bytes:
                if not self._full_warned:
                    log.warning("the traffic log %s holds %d bytes, its limit (--log-max-bytes): new rows are "
                                "counted, not written, until files are moved out", self.directory, self._used)
                    self._full_warned = True
                self.refused_rows += rows
                return
            self._full_warned = False
        table = chunks.table()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        name = f"{kind}{stamp}-{os.getpid()}-{next(self._sequence):06d}.parquet"
        final = self.directory / name
        write_atomically(final, functools.partial(pq.write_table, table, compression="zstd"))
        self._used += final.stat().st_size
        self.written_rows += rows
        self.written_files += 1

    def _disk_use(self) -> int:
        return sum(path.stat().st_size for kind in _SCHEMAS for path in self.directory.glob(f"{kind}*.parquet"))


class _Chunks:
    """The rows of one file in the making, converted to Arrow :data:`CHUNK_ROWS` at a time.

    Attributes
    ----------
    rows : int
        Rows added since the last :meth:`clear`.
    since : float
        :func:`time.monotonic` time of the first of them.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.clear()

    def clear(self) -> None:
        self.rows, self.since = 0, 0.0
        self._batches: list[pa.RecordBatch] = []
        self._waiting: list[dict[str, Any]] = []

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        if not self.rows:
            self.since = time.monotonic()
        self.rows += len(rows)
        self._waiting.extend(rows)
        if len(self._waiting) >= CHUNK_ROWS:
            self._convert()

    def drop_waiting(self) -> int:
        """Forget the rows not converted yet (they failed to convert); how many."""
        lost = len(self._waiting)
        self.rows -= lost
        self._waiting = []
        return lost

    def table(self) -> pa.Table:
        """Every row added, as one table."""
        self._convert()
        return pa.Table.from_batches(self._batches, schema=self.schema)

    def _convert(self) -> None:
        if self._waiting:
            self._batches.append(pa.RecordBatch.from_pylist(self._waiting, schema=self.schema))
            self._waiting = []
            time.sleep(PAUSE_S)  # the conversion held the interpreter lock: let the event loop have it


@dataclass(frozen=True)
class LogConfig:
    """Where and how ``training.serve --log-dir`` logs (the arguments of :class:`TrafficLog`)."""

    directory: Path
    max_rows: int = 10_000
    max_seconds: float = 60.0
    max_bytes: int = 10 << 30
    queue_requests: int = 10_000

    def open(self) -> TrafficLog:
        """The log, its writer thread started."""
        return TrafficLog(self.directory, max_rows=self.max_rows, max_seconds=self.max_seconds,
                          max_bytes=self.max_bytes, queue_requests=self.queue_requests)


def request_rows(request_id: str, prompt: str, task: str, subtask: str, steps: Sequence[Any], selected: str, *,
                 budget: float, lambdas: Sequence[float], paced: bool, cost: float, explored: int,
                 exploration: Exploration, n_models: int, baseline: tuple[str | None, float | None] = (None, None)
                 ) -> list[dict[str, Any]]:
    """One request's rows of :data:`~training.traffic_log.TRAFFIC_SCHEMA`, one per model called.

    ``steps`` are the service's calls in order (``model``, ``reply`` or
    ``None``, ``failure`` or ``None``, ``seconds``); the last ``explored``
    are exploration calls, logged with ``propensity``; the policy's own
    calls have propensity 1. ``exploration`` is the service's (its ``epsilon`` 0 when the request
    could not explore), ``n_models`` the artifact's number of models, ``baseline`` the all-frontier
    baseline's model and estimated cost on this request. Nothing from
    the request's headers is read, so no key can reach a row.
    """
    now = datetime.now(timezone.utc)
    rows = []
    for index, step in enumerate(steps):
        reply, failure = step.reply, step.failure
        extra = index >= len(steps) - explored
        rows.append({
            "query_id": request_id, "prompt": prompt, "task": task or None, "subtask": subtask or None,
            "model": step.model, "response": None if reply is None else reply.text,
            "cost_usd": 0.0 if reply is None else reply.cost, "latency_s": step.seconds,
            "input_tokens": None if reply is None else float(reply.prompt_tokens),
            "output_tokens": None if reply is None else float(reply.completion_tokens),
            "propensity": exploration.propensity(n_models) if extra else 1.0, "quality": None, "step": index,
            "explored": extra,
            "selected": step.model == selected and not extra, "error": None if failure is None else failure.kind,
            "budget": budget, "lambdas": [float(v) for v in lambdas], "paced": paced, "request_cost_usd": cost,
            "baseline_model": baseline[0], "baseline_cost_usd": baseline[1],
            "explore_epsilon": exploration.epsilon, "explore_models": exploration.models, "n_models": n_models,
            "received_at": now})
    return rows


def feedback_row(request_id: str, model: str, quality: float) -> dict[str, Any]:
    """One label of :data:`~training.traffic_log.FEEDBACK_SCHEMA`."""
    return {"query_id": request_id, "model": model, "quality": quality, "received_at": datetime.now(timezone.utc)}


def log_config(args: argparse.Namespace) -> LogConfig | None:
    """The :class:`LogConfig` of :func:`training.cli.add_log_arguments`' options (``None`` without ``--log-dir``)."""
    if not 0 < args.log_file_seconds < float("inf"):
        raise ValueError(f"--log-file-seconds must be a number of seconds > 0, got {args.log_file_seconds}")
    if args.log_dir is None:
        return None
    if args.log_dir.exists() and not args.log_dir.is_dir():
        raise ValueError(f"--log-dir {args.log_dir} is a file; name a folder (it is created if missing)")
    return LogConfig(args.log_dir, max_rows=args.log_file_rows, max_seconds=args.log_file_seconds,
                     max_bytes=args.log_max_bytes)
