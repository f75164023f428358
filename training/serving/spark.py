"""Score traffic on Spark: the rows ``training.score`` writes, for logs too large for one machine.

:func:`score_spark` runs :func:`~training.serving.replay.score_batch` in
``mapInArrow`` over a Spark DataFrame in either input layout (query rows,
or logged long rows with a ``model`` column). What makes it safe to run on
any cluster without tuning:

* **whole queries**: logged input is repartitioned by ``query_id`` and
  sorted within partitions, and the partition's iterator carries a query
  whose rows reach the end of one Arrow batch over to the next, so no query
  is ever split between two ``score_batch`` calls whatever
  ``spark.sql.execution.arrow.maxRecordsPerBatch`` is;
* **one artifact load per Python worker**: the artifact and its manifest
  are shipped with ``SparkContext.addFile`` (or read from a path every
  executor sees) and loaded by :func:`~training.router.load_router`
  with its strict checks the first time a worker needs them, pinned to the
  payload sha256 the driver verified (with the signing key, if given: the
  key itself never leaves the driver);
* **deterministic rows**: a query's outcome depends on its own rows only,
  so a retried or speculative task writes the same rows.

Rejected input rows come back as ``status == "rejected"`` rows of the same
DataFrame, with ``reason`` and ``model`` set (as ``score_batch`` returns
them); :func:`split_rejects` separates them into the two tables
``training.score`` writes. ``row`` numbers are taken from a ``row`` column
when the input has one, else they are unique and increasing in the
DataFrame's order (not contiguous); the CLI numbers Parquet input by
position (:func:`read_parquet_with_rows`), as ``training.score`` does.

Requires ``pyspark`` (``pip install "cascade-router[spark]"``) and Java 17.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from ..artifact import manifest_path
from ..files import staging_name
from ..router import Router, load_router, load_router_with_sha256
from .logged import check_columns, required_columns
from .replay import STATUS_REJECTED, output_schema, rejects_schema, score_batch

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = ["read_parquet_with_rows", "run_cli", "score_spark", "session_settings", "split_rejects", "start_session"]

#: Stands for a missing query id in :func:`_check_grouped`.
_NO_ID = object()

#: Routers loaded in this Python worker, by (artifact name, its sha256): one load per worker, whatever the tasks.
_ROUTERS: dict[tuple[str, str], Router] = {}


def _result_schema(router: Router, logged: bool) -> pa.Schema:
    """``score_batch``'s columns: the output schema, then ``reason`` and ``model`` (set on rejected rows)."""
    schema = output_schema(router, logged)
    return pa.schema([*schema, pa.field("reason", pa.string()), pa.field("model", pa.string())])


def _executor_router(name: str, shipped: bool, sha256: str) -> Router:
    """The router of artifact ``name`` in this worker, loaded (strictly) on first use.

    Keyed by the artifact's sha256 too, so that a worker reused by a later
    job with another artifact of the same name does not serve the old one;
    the payload must have that sha256, the one the driver verified (so no
    unsigned-artifact warning here: the driver gave it if it had no key).
    """
    if (name, sha256) not in _ROUTERS:
        from pyspark import SparkFiles

        path = SparkFiles.get(name) if shipped else name
        _ROUTERS[(name, sha256)] = load_router(path, expected_sha256=sha256)
    return _ROUTERS[(name, sha256)]


def _check_grouped(ids: pd.Series, state: dict) -> None:
    """Raise unless each query id of ``ids`` forms one run with the partition's earlier batches.

    What ``grouped=True`` asserts, checked where it is used: within one
    partition, a query's rows come together. A partition is read in order,
    so one pass over its ids checks it, keeping (in ``state``) the ids whose
    run has ended and the id of the run still open at the last batch's end.
    """
    finished, open_id = state.setdefault("finished", set()), state.get("open")
    values = ids.to_numpy(dtype=object).copy()
    if not values.size:
        return
    values[pd.isna(values)] = _NO_ID  # rows without an id part runs (each is rejected alone), belong to none
    if open_id is not None and values[0] != open_id:
        finished.add(open_id)
    runs = values[np.flatnonzero(np.r_[True, values[1:] != values[:-1]])]
    runs = runs[runs != _NO_ID].tolist()
    again = [value for value in runs if value in finished]
    if not again and len(set(runs)) < len(runs):
        counts = pd.Series(runs).value_counts()
        again = counts[counts > 1].index.tolist()
    if again:
        raise ValueError(f"grouped input expected, but the rows of query {again[0]!r} are not together in its "
                         "split (--grouped / grouped=True asserts they are); drop it to regroup every query "
                         "by shuffling")
    state["open"] = None if values[-1] is _NO_ID else values[-1]
    finished.update(runs if state["open"] is None else runs[:-1])


def _score_partition(batches: Iterator[pa.RecordBatch], *, artifact: str, shipped: bool, sha256: str,
                     budget: float | None, logged: bool, schema: pa.Schema,
                     latency_budget: float | None = None, grouped: bool = False) -> Iterator[pa.RecordBatch]:
    """Score one partition's Arrow batches; for logged input, a query cut by a batch's end waits for the next one.

    The partition is sorted by ``query_id``, or (``grouped``) read in the
    input's order with each query's rows together, which is checked
    (:func:`_check_grouped`); either way only the last query of a batch
    can continue into the next batch. Results are Arrow batches of
    ``schema``, as ``training.score`` writes them.
    """
    from threadpoolctl import threadpool_limits

    router = _executor_router(artifact, shipped, sha256)

    def scored(frame: pd.DataFrame) -> pa.RecordBatch:
        result = score_batch(router, frame, budget, parallel=False, latency_budget=latency_budget)
        return pa.RecordBatch.from_pandas(result.reindex(columns=schema.names), schema=schema, preserve_index=False)

    carry: pd.DataFrame | None = None
    grouping: dict = {}
    with threadpool_limits(1, user_api="blas"):  # as training.score: BLAS threads only wait beside the others
        for record_batch in batches:
            batch = record_batch.to_pandas()
            if grouped and logged:
                _check_grouped(batch["query_id"], grouping)
            if carry is not None:
                batch = pd.concat([carry, batch], ignore_index=True)
                carry = None
            if logged and len(batch):
                ids = batch["query_id"]
                last = ids.iloc[-1]
                tail = ids.isna().to_numpy() if pd.isna(last) else (ids == last).to_numpy()
                carry, batch = batch[tail], batch[~tail]
            if len(batch):
                yield scored(batch)
        if carry is not None and len(carry):
            yield scored(carry)


def read_parquet_with_rows(spark, path: str) -> DataFrame:
    """A Parquet file or dataset with a ``row`` column: each row's position, files taken in name order.

    For one file these are the positions ``training.score`` reports. Built
    from Parquet's own row index (``_metadata.row_index``) and one count per
    file, so no row travels through Python to be numbered. An input that
    has a ``row`` column keeps it.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    path : str
        File, directory or URI.

    Returns
    -------
    pyspark.sql.DataFrame
    """
    from pyspark.sql import functions as F

    frame = spark.read.parquet(path)
    if "row" in frame.columns:
        return frame
    located = frame.select("*", F.col("_metadata.file_path").alias("_file"),
                           F.col("_metadata.row_index").alias("_row_in_file"))
    starts, offset = [], 0
    for record in located.groupBy("_file").count().orderBy("_file").collect():
        starts.append((record["_file"], offset))
        offset += record["count"]
    offsets = spark.createDataFrame(starts, "_file string, _offset long")
    return (located.join(F.broadcast(offsets), "_file")
            .withColumn("row", F.col("_offset") + F.col("_row_in_file"))
            .drop("_file", "_row_in_file", "_offset"))


def score_spark(frame: DataFrame, artifact: str | os.PathLike, *, budget: float | None = None,
                logged: bool | None = None, ship: bool = True, latency_budget: float | None = None,
                key: object = None, grouped: bool = False) -> DataFrame:
    """Score a Spark DataFrame of traffic with a fitted router, as ``training.score`` scores a file.

    Parameters
    ----------
    frame : pyspark.sql.DataFrame
        Query rows, or logged long rows (a ``model`` column and the logged
        outcomes), with the columns ``training.score`` reads; a ``row``
        column, when present, numbers the rows for the results; without
        one they get ``monotonically_increasing_id`` numbers.
    artifact : path
        ``router.joblib`` written by ``training.fit``, its manifest beside it.
        Loaded here (strict checks: a corrupted or mismatched artifact fails
        before any task runs) and in each executor's Python workers.
    budget : float, optional
        Picks the fitted policy, as ``--budget``; default the largest.
    latency_budget : float, optional
        With ``budget``, picks the fitted pair, as ``--latency-budget``.
    logged : bool, optional
        Force the input layout; default: logged when there is a ``model``
        column (:func:`~training.serving.logged.check_columns`).
    ship : bool, default=True
        Send the artifact and its manifest to the executors with
        ``SparkContext.addFile``. ``False``: every executor reads
        ``artifact`` at the same path (a shared file system).
    key : Ed25519PublicKey or its PEM, optional
        Verify the artifact's signature with this public key (or a deprecated HMAC secret) on the driver
        (:func:`~training.router.load_router`); executors then load
        only a payload with the verified sha256.
    grouped : bool, default=False
        Logged input only: the caller asserts that each query's rows stand
        together in ``frame``'s order (as ``training.score`` reads files).
        Each partition is then scored where it is, without the shuffle that
        regroups every row by ``query_id``; only the queries at partitions'
        edges, which a split may cut, are shuffled (:func:`_edge_queries`).
        A task that finds a query's rows apart within its partition fails,
        naming the query. Same rows as without it.

    Returns
    -------
    pyspark.sql.DataFrame
        Lazily evaluated; the columns of :func:`~training.serving.replay.output_schema`,
        then ``reason`` and ``model``: one row per scored query (``status``
        ``ok`` or ``unreplayable``) and one per rejected input row
        (``status`` ``rejected``). Same rows as ``training.score`` writes,
        in no particular order.

    Raises
    ------
    training.serving.logged.ScoreError
        If the input lacks a column the router needs.
    ValueError or FileNotFoundError
        If the artifact cannot be loaded, or ``budget`` is below every
        fitted policy.
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    path = Path(artifact)
    router, sha256 = load_router_with_sha256(path, warm_up=False, key=key)  # the driver checks it, reads the schema
    router.policy(budget, latency_budget)  # a budget below every fitted policy fails here, not in a task
    names = list(frame.columns)
    logged = check_columns(router, names) if logged is None else logged
    needed = [c for c in required_columns(router, logged) if c in names]
    if logged and "response" in names and "response" not in needed:
        needed.append("response")
    if "row" not in names:  # unique and increasing in the frame's order (positions: read_parquet_with_rows)
        from pyspark.sql import functions as F

        frame = frame.withColumn("row", F.monotonically_increasing_id())
    frame = frame.select(*needed, "row")
    edges = None
    if logged and grouped:
        from pyspark.sql import functions as F

        cut = _edge_queries(frame)
        inside = F.col("query_id").isNull() | ~F.col("query_id").isin(cut)
        frame, edges = frame.filter(inside), frame.filter(~inside)
        edges = edges.repartition(max(1, min(len(cut), frame.sparkSession.sparkContext.defaultParallelism)),
                                  "query_id").sortWithinPartitions("query_id", "row")
    elif logged:
        # as many partitions as the input has splits (about one per 128 MiB) and at least one per core: the
        # default 200 shuffle partitions make hundreds of Python tasks of a few hundred queries each
        partitions = max(frame.sparkSession.sparkContext.defaultParallelism, frame.rdd.getNumPartitions())
        frame = frame.repartition(partitions, "query_id").sortWithinPartitions("query_id", "row")
    if ship:
        context = frame.sparkSession.sparkContext
        context.addFile(str(path.resolve()))
        context.addFile(str(manifest_path(path).resolve()))
    name = path.name if ship else str(path.resolve())
    schema = _result_schema(router, logged)

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _score_partition(batches, artifact=name, shipped=ship, sha256=sha256, budget=budget, logged=logged,
                                schema=schema, latency_budget=latency_budget)

    def score_in_place(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _score_partition(batches, artifact=name, shipped=ship, sha256=sha256, budget=budget, logged=logged,
                                schema=schema, latency_budget=latency_budget, grouped=True)

    spark_schema = from_arrow_schema(schema)
    if edges is None:
        return frame.mapInArrow(score, schema=spark_schema)
    return frame.mapInArrow(score_in_place, schema=spark_schema).unionByName(
        edges.mapInArrow(score, schema=spark_schema))


def _edge_queries(frame: DataFrame) -> list:
    """The query ids first or last in some partition of ``frame``: the only ones a split can cut.

    With each query's rows together in the input, a query can span two
    partitions only where one ends and the next begins. One pass over the
    ``query_id`` column (Parquet reads that column alone) finds each
    partition's first and last id; the aggregation moves one row per
    partition, not the data.
    """
    from pyspark.sql import functions as F

    position = F.monotonically_increasing_id()  # increasing within a partition, in its order
    ends = (frame.select(F.spark_partition_id().alias("_partition"), "query_id", position.alias("_position"))
            .filter(F.col("query_id").isNotNull()).groupBy("_partition")
            .agg(F.min_by("query_id", "_position").alias("first"), F.max_by("query_id", "_position").alias("last"))
            .collect())
    return sorted({value for record in ends for value in (record["first"], record["last"]) if value is not None})


def split_rejects(scored: DataFrame) -> tuple[DataFrame, DataFrame]:
    """The two tables ``training.score`` writes: decisions (without ``reason``/``model``) and rejected rows.

    Parameters
    ----------
    scored : pyspark.sql.DataFrame
        :func:`score_spark`'s result.

    Returns
    -------
    (pyspark.sql.DataFrame, pyspark.sql.DataFrame)
        Rows with ``status`` other than ``rejected``, in the output
        schema's columns; and the rejected rows in :func:`~training.serving.replay.rejects_schema`'s.
    """
    from pyspark.sql import functions as F

    decisions = scored.filter(F.col("status") != STATUS_REJECTED).drop("reason", "model")
    rejected = scored.filter(F.col("status") == STATUS_REJECTED).select(*rejects_schema().names)
    return decisions, rejected


def session_settings(master: str | None) -> dict[str, str]:
    """The Spark settings ``training.score --engine spark`` starts its session with.

    For a local master (``local``, ``local[N]``, ``local[*]``, or none given
    outside ``spark-submit``, which Spark runs locally) everything stays on
    this machine (issue 30): the web UI, which can kill jobs and has no
    authentication, is off, and the driver binds and advertises 127.0.0.1
    only, so its RPC and block-manager ports are not on every interface.
    Its Python workers run this interpreter (issue 29): a virtualenv's
    Python started without activating the environment would otherwise give
    the workers the system ``python3``, without the project's packages.
    ``PYSPARK_PYTHON``, where set, still wins. A cluster master gets
    neither (its own settings decide), only the UI's kill links turned off.

    Parameters
    ----------
    master : str or None
        ``--master``.

    Returns
    -------
    dict of str to str
    """
    settings = {"spark.executorEnv.OPENBLAS_NUM_THREADS": "1", "spark.ui.killEnabled": "false"}
    if master is None:  # under spark-submit (which sets PYSPARK_GATEWAY_PORT) its --master decides: not assumed local
        local = "PYSPARK_GATEWAY_PORT" not in os.environ
    else:
        local = master.startswith("local")
    if local:
        settings.update({"spark.ui.enabled": "false", "spark.driver.bindAddress": "127.0.0.1",
                         "spark.driver.host": "127.0.0.1",
                         "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON", sys.executable)})
    return settings


def start_session(builder, master: str | None):
    """``builder.getOrCreate()`` with ``master`` and :func:`session_settings`.

    PySpark starts its Python workers with ``$PYSPARK_PYTHON`` (else
    ``python3`` from the ``PATH``), whatever ``spark.pyspark.python`` says,
    so for a local master the variable is set to that setting while the
    context starts, then put back.

    Parameters
    ----------
    builder : pyspark.sql.SparkSession.Builder
        With the caller's own settings (app name, ...).
    master : str or None

    Returns
    -------
    pyspark.sql.SparkSession
    """
    if master:
        builder = builder.master(master)
    settings = session_settings(master)
    for name, value in settings.items():
        builder = builder.config(name, value)
    python = settings.get("spark.pyspark.python")
    unset = python is not None and "PYSPARK_PYTHON" not in os.environ
    if python is not None and unset:
        os.environ["PYSPARK_PYTHON"] = python
    try:
        return builder.getOrCreate()
    finally:
        if unset:
            os.environ.pop("PYSPARK_PYTHON", None)


def run_cli(args, key: object = None) -> dict:
    """``python -m training.score --engine spark``: read the Parquet input with Spark, write two Parquet datasets.

    The decisions go to ``--output`` and the rejected rows to ``--rejects``
    (default ``OUTPUT.rejects``), each a directory written under a
    temporary name beside it and renamed into place when complete; an
    existing output is refused, never overwritten.

    Parameters
    ----------
    args : argparse.Namespace
        :func:`training.serving.batch.parse_args`'s options (``master`` may be ``None``:
        then ``spark-submit`` or the Spark defaults decide).
    key : Ed25519PublicKey or bytes, optional
        The key the artifact's signature is checked with on the driver (``--verify-key``, or the deprecated
        ``--verify-key-env`` secret); ``--require-signed`` was checked before.

    Returns
    -------
    dict
        The totals :func:`training.serving.batch.summary` prints.

    Raises
    ------
    training.serving.logged.ScoreError
        On a missing input or artifact, a CSV input, an output that exists
        or is the input, or missing columns.
    """
    from pyspark.sql import SparkSession

    from .logged import ScoreError

    output = str(args.output).rstrip("/")
    rejects = str(args.rejects) if args.rejects else output + ".rejects"
    if not Path(args.artifact).exists():
        raise ScoreError(f"--artifact {args.artifact} does not exist")
    if str(args.input).lower().endswith((".csv", ".csv.gz")):
        raise ScoreError("--engine spark reads Parquet (a file or a directory of files); convert the CSV first "
                         "or score it without --engine")
    spark = start_session(SparkSession.builder.appName("training.score"), args.master)
    try:
        return _score_to_datasets(spark, args, output, rejects, key)
    finally:
        spark.stop()


def _score_to_datasets(spark, args, output: str, rejects: str, key: object) -> dict:
    """Check the paths, score, write both datasets under temporary names, rename them, and sum up."""
    import time

    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from .logged import ScoreError

    files = _FileSystem(spark)
    if not files.exists(str(args.input)):
        raise ScoreError(f"--input {args.input} does not exist")
    for flag, path in (("--output", output), ("--rejects", rejects)):
        if files.exists(path) and not args.overwrite:
            raise ScoreError(f"{flag} {path} exists (an earlier run's results?); pass --overwrite to replace it "
                             "when this run completes, or choose another path")
        if files.same(path, str(args.input)):
            raise ScoreError(f"{flag} {path} is the input; write the results to another path")
    started = time.perf_counter()
    # both outputs filter one result: keep it, or Spark would score every query twice
    scored = score_spark(read_parquet_with_rows(spark, str(args.input)), args.artifact, budget=args.budget,
                         latency_budget=args.latency_budget, key=key, grouped=args.grouped)
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        for frame, target in zip(split_rejects(scored), (output, rejects), strict=True):
            staging = _beside(target, staging_name(_last_name(target)))
            try:
                frame.write.parquet(staging)
                files.replace(staging, target)
            finally:
                files.delete(staging)  # a failed or killed write leaves nothing under the output's name
    finally:
        scored.unpersist()
    seconds = time.perf_counter() - started
    written = spark.read.parquet(output)
    logged = "cost" in written.columns
    spent = [c for c in ("latency", "plan_latency") if c in written.columns]
    replayed = F.col("status") == "ok"  # one pass: counts, and means over the replayed queries only
    means = written.agg(F.count(F.lit(1)).alias("scored"), F.sum(replayed.cast("long")).alias("replayed"),
                        *(F.mean(F.when(replayed, F.col(c))).alias(c)
                          for c in (("cost", "quality", "n_run") if logged else ("plan_cost",)) + tuple(spent))).first()
    policy = load_router(args.artifact, warm_up=False, key=key).policy(args.budget, args.latency_budget)
    queries = means["replayed"] or 0
    return {"logged": logged, "queries": queries, "unreplayable": means["scored"] - queries,
            "rejected_rows": spark.read.parquet(rejects).count(),
            "mean_cost": (means["cost" if logged else "plan_cost"] or 0.0),
            "mean_quality": means["quality"] if logged else None,
            "models_per_query": means["n_run"] if logged else None,
            "budget": policy.budget, "latency_budget": policy.latency_budget,
            "mean_latency": means[spent[0]] if spent else None, "seconds": seconds,
            "queries_per_second": queries / seconds if seconds > 0 else None, "timings": {},
            "warm_up_seconds": 0.0, "workers": spark.sparkContext.defaultParallelism, "output": output,
            "rejects": rejects}


def _last_name(path: str) -> str:
    """The last component of a path or URI."""
    return path.rstrip("/").rpartition("/")[2]


def _beside(path: str, name: str) -> str:
    """``name`` in the directory of the path or URI ``path``."""
    head = path.rstrip("/").rpartition("/")[0]
    return f"{head}/{name}" if head else name


class _FileSystem:
    """Existence, identity and rename of paths or URIs through Spark's Hadoop file systems (local, HDFS, S3)."""

    def __init__(self, spark) -> None:
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, path: str):
        hadoop_path = self._jvm.org.apache.hadoop.fs.Path(path)
        return hadoop_path, hadoop_path.getFileSystem(self._conf)

    def exists(self, path: str) -> bool:
        hadoop_path, fs = self._path(path)
        return bool(fs.exists(hadoop_path))

    def same(self, first: str, second: str) -> bool:
        (a, fs_a), (b, fs_b) = self._path(first), self._path(second)
        return fs_a.makeQualified(a).toString() == fs_b.makeQualified(b).toString()

    def delete(self, path: str) -> None:
        hadoop_path, fs = self._path(path)
        if fs.exists(hadoop_path):
            fs.delete(hadoop_path, True)

    def rename(self, source: str, target: str) -> None:
        hadoop_source, fs = self._path(source)
        if not fs.rename(hadoop_source, self._jvm.org.apache.hadoop.fs.Path(target)):
            raise OSError(f"could not rename {source} to {target}")

    def replace(self, source: str, target: str) -> None:
        """Rename ``source`` to ``target``; an existing ``target`` (``--overwrite``) is moved aside first and
        removed only once the new one is in place, or put back if that fails."""
        if not self.exists(target):
            self.rename(source, target)
            return
        aside = _beside(target, staging_name(_last_name(target), ".old"))
        self.rename(target, aside)
        try:
            self.rename(source, target)
        except BaseException:
            self.rename(aside, target)
            raise
        self.delete(aside)
