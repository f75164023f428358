"""``score_spark`` in Spark local mode gives the rows ``training.score`` writes, rejects included.

The traffic is the RouterBench subset (``../shared/data``) tiled to about
20,000 queries with new ids, a few rows spoiled so that some are rejected.
``training.score`` reads it sorted by query (its rows contiguous, as it
requires); Spark gets the same rows shuffled, in small Arrow batches that are
no multiple of the 11 models, so queries span partitions and batches before
the adapter groups them. Skipped, with the reason, without pyspark or Java.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

pytestmark = pytest.mark.slow  # a Spark session and a fit on the shared table

pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (pip install \"cascade-router[spark]\")")
if shutil.which("java") is None:
    pytest.skip("Java is not installed: Spark needs a JVM (Java 17)", allow_module_level=True)

from training.score import main as score_main  # noqa: E402
from training.serving.spark import score_spark, split_rejects  # noqa: E402

COPIES = 7  # 7 x 3,150 = 22,050 queries
LIST_COLUMNS = ("models_run", "plan")


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    from training.serving.spark import start_session

    # as training.score --engine spark starts it: loopback only, workers on this interpreter (issues 29, 30)
    session = start_session(SparkSession.builder.appName("cascade-router-tests")
                            .config("spark.sql.shuffle.partitions", "4")
                            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "997"), "local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def artifact(routerbench_subset, tmp_path_factory):
    from training.fit import main as fit_main

    folder = tmp_path_factory.mktemp("spark_artifact")
    out = folder / "router.joblib"
    code = fit_main(["--data", str(routerbench_subset / "routerbench_subset.parquet"), "--estimator", "linear",
                     "--budget", "0.0006", "--out", str(out), "--report", str(folder / "report"), "--quiet"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def traffic(routerbench_subset, tmp_path_factory):
    """``(sorted logged file, sorted query-rows file, logged frame with 'row', query frame with 'row')``."""
    frame = pd.read_parquet(routerbench_subset / "routerbench_subset.parquet",
                            columns=["query_id", "task", "subtask", "prompt", "model", "quality", "cost_usd",
                                     "response"])
    logged = pd.concat([frame.assign(query_id=frame["query_id"].astype(str) + f"#{copy}") for copy in range(COPIES)],
                       ignore_index=True).sort_values(["query_id", "model"], kind="stable", ignore_index=True)
    rng = np.random.default_rng(0)
    spoiled = rng.choice(len(logged), size=12, replace=False)
    logged.loc[spoiled[:6], "cost_usd"] = -1.0           # a negative cost: the row is rejected
    logged.loc[spoiled[6:9], "model"] = "not-a-model"    # an unknown model
    logged.loc[spoiled[9:], "quality"] = np.nan          # a missing outcome
    queries = logged.drop_duplicates("query_id")[["query_id", "task", "subtask", "prompt"]].reset_index(drop=True)
    folder = tmp_path_factory.mktemp("spark_traffic")
    paths = folder / "logged.parquet", folder / "queries.parquet"
    logged.to_parquet(paths[0], index=False)
    queries.to_parquet(paths[1], index=False)
    with_rows = [table.assign(row=np.arange(len(table), dtype=np.int64)) for table in (logged, queries)]
    shuffled = [table.sample(frac=1.0, random_state=1).reset_index(drop=True) for table in with_rows]
    return (*paths, *shuffled)


def _canonical(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for column in LIST_COLUMNS:
        if column in frame.columns:
            frame[column] = [None if v is None else tuple(v) for v in frame[column]]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("kind", ["logged", "queries"])
def test_spark_output_equals_training_score_row_for_row(spark, artifact, traffic, kind, tmp_path):
    path, frame = (traffic[0], traffic[2]) if kind == "logged" else (traffic[1], traffic[3])
    out, rejects = tmp_path / "scored.parquet", tmp_path / "rejects.parquet"
    code = score_main(["--artifact", str(artifact), "--input", str(path), "--output", str(out),
                       "--rejects", str(rejects), "--workers", "1", "--quiet"])
    assert code == 0
    expected = pd.read_parquet(out), pd.read_parquet(rejects)
    scored = score_spark(spark.createDataFrame(frame).repartition(3), artifact)
    got = [part.toPandas() for part in split_rejects(scored)]
    if kind == "logged":
        assert len(expected[1]) >= 12 and set(expected[0]["status"]) >= {"ok"}
    for mine, theirs, keys in zip(got, expected, (["query_id", "row"], ["row"]), strict=True):
        assert list(mine.columns) == list(theirs.columns)
        pd.testing.assert_frame_equal(_canonical(mine, keys), _canonical(theirs, keys), check_dtype=False)


def test_scoring_the_same_partition_twice_gives_identical_rows(spark, artifact, traffic):
    """A retried or speculative task recomputes a partition: the rows must be the same, whatever the batches."""
    from training.artifact import read_manifest
    from training.serving import spark as adapter

    frame = traffic[2][traffic[2]["query_id"].str.endswith("#3")].sort_values(["query_id", "row"])
    sha256 = read_manifest(artifact)["sha256"]
    schema = adapter._result_schema(adapter._executor_router(str(artifact), False, sha256), True)
    records = pa.Table.from_pandas(frame, preserve_index=False)

    def once(batch_rows: int) -> pd.DataFrame:
        parts = adapter._score_partition(iter(records.to_batches(max_chunksize=batch_rows)), artifact=str(artifact),
                                         shipped=False, sha256=sha256, budget=None, logged=True, schema=schema)
        return _canonical(pa.Table.from_batches(list(parts), schema=schema).to_pandas(), ["query_id", "row"])

    first = once(997)
    pd.testing.assert_frame_equal(first, once(997))
    pd.testing.assert_frame_equal(first, once(4096))  # other batch cuts: the same rows
    twice = [score_spark(spark.createDataFrame(frame), artifact).toPandas() for _ in range(2)]
    pd.testing.assert_frame_equal(*(_canonical(t, ["status", "query_id", "row"]) for t in twice))


def test_cli_engine_spark_writes_the_same_datasets(artifact, traffic, tmp_path):
    path = traffic[0]
    single = tmp_path / "single.parquet"
    assert score_main(["--artifact", str(artifact), "--input", str(path), "--output", str(single), "--workers", "1",
                       "--quiet"]) == 0
    out = tmp_path / "spark_out"
    done = subprocess.run([sys.executable, "-m", "training.score", "--engine", "spark", "--master", "local[2]",
                           "--artifact", str(artifact), "--input", str(path), "--output", str(out), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for mine, theirs, keys in ((out, single, ["query_id", "row"]),
                               (out.with_name(out.name + ".rejects"), single.with_name("single.rejects.parquet"),
                                ["row"])):
        pd.testing.assert_frame_equal(_canonical(pd.read_parquet(mine), keys),
                                      _canonical(pd.read_parquet(theirs), keys), check_dtype=False)
    again = subprocess.run([sys.executable, "-m", "training.score", "--engine", "spark", "--artifact", str(artifact),
                            "--input", str(path), "--output", str(out), "--quiet"], capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr and "--overwrite" in again.stderr
    # the same rule as the local engine: --overwrite replaces both datasets once the run completes
    (out / "stale-part.parquet").write_bytes(b"an earlier run's file")
    replaced = subprocess.run([sys.executable, "-m", "training.score", "--engine", "spark", "--master", "local[2]",
                               "--artifact", str(artifact), "--input", str(path), "--output", str(out), "--overwrite",
                               "--quiet"], capture_output=True, text=True)
    assert replaced.returncode == 0, replaced.stderr
    assert not (out / "stale-part.parquet").exists()
    pd.testing.assert_frame_equal(_canonical(pd.read_parquet(out), ["query_id", "row"]),
                                  _canonical(pd.read_parquet(single), ["query_id", "row"]), check_dtype=False)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".old", ".tmp"))]


def test_a_corrupted_artifact_fails_on_the_driver_before_any_task(spark, artifact, traffic, tmp_path):
    from training.artifact import manifest_path

    copy = tmp_path / "router.joblib"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    shutil.copy(manifest_path(artifact), manifest_path(copy))
    with pytest.raises(ValueError, match="sha256"):
        score_spark(spark.createDataFrame(traffic[3].head(50)), copy)


def test_check_grouped_finds_a_query_apart_within_and_across_batches():
    from training.serving.spark import _check_grouped

    state: dict = {}
    _check_grouped(pd.Series(["a", "a", "b", None, "c"]), state)
    _check_grouped(pd.Series(["c", "c", "d"]), state)  # c continues from the last batch: together
    _check_grouped(pd.Series([None, "e"]), state)
    for later in (["d"], ["e", "a"]):
        with pytest.raises(ValueError, match="not together"):
            _check_grouped(pd.Series(later), dict(state, finished=set(state["finished"])))
    with pytest.raises(ValueError, match="'x' are not together"):
        _check_grouped(pd.Series(["x", "y", "x"]), {})
    with pytest.raises(ValueError, match="'x' are not together"):
        _check_grouped(pd.Series(["x", None, "x"]), {})


@pytest.fixture(scope="module")
def grouped_file(traffic, tmp_path_factory):
    """The sorted logged traffic in row groups of 1,000 rows (no multiple of 11): splits cut queries."""
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("grouped") / "logged.parquet"
    pq.write_table(pa.Table.from_pandas(pd.read_parquet(traffic[0]), preserve_index=False), path,
                   row_group_size=1000)
    return path


def test_grouped_and_shuffled_paths_give_identical_rows(spark, artifact, grouped_file):
    from training.serving.spark import _edge_queries, read_parquet_with_rows

    previous = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(256 * 1024))  # many splits, each a few row groups
    try:
        frame = read_parquet_with_rows(spark, str(grouped_file))
        assert frame.rdd.getNumPartitions() > 4 and _edge_queries(frame)
        results = [[_canonical(part.toPandas(), keys) for part, keys in
                    zip(split_rejects(score_spark(frame, artifact, grouped=grouped)), (["query_id", "row"], ["row"]),
                        strict=True)]
                   for grouped in (False, True)]
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", previous)
    assert len(results[0][0]) > 20_000 and len(results[0][1]) >= 12
    for shuffled, in_place in zip(*results, strict=True):
        pd.testing.assert_frame_equal(in_place, shuffled)


def test_grouped_refuses_input_whose_queries_are_apart(spark, artifact, traffic):
    # a slice of the shuffled rows (apart by construction): the whole frame through createDataFrame's
    # pickled rows filled the driver's default 1 GiB heap when the suite ran in one process
    shuffled = spark.createDataFrame(traffic[2].head(3000)).repartition(2)
    with pytest.raises(Exception, match="not together"):
        score_spark(shuffled, artifact, grouped=True).count()


def test_a_local_session_stays_on_loopback_and_runs_this_python(monkeypatch):
    """Issue 30: no UI (it can kill jobs, unauthenticated) and the driver on 127.0.0.1 for a local master;
    issue 29: the workers run this interpreter. A cluster master keeps its own settings."""
    from training.serving.spark import session_settings

    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    for master in ("local[2]", "local", None):
        settings = session_settings(master)
        assert settings["spark.ui.enabled"] == "false" and settings["spark.ui.killEnabled"] == "false"
        assert settings["spark.driver.bindAddress"] == settings["spark.driver.host"] == "127.0.0.1"
        assert settings["spark.pyspark.python"] == sys.executable
    cluster = session_settings("spark://cluster:7077")
    assert cluster["spark.ui.killEnabled"] == "false"
    assert not {"spark.ui.enabled", "spark.driver.bindAddress", "spark.pyspark.python"} & set(cluster)
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1234")  # under spark-submit without --master: not assumed local
    assert "spark.driver.bindAddress" not in session_settings(None)
    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/python")
    assert session_settings("local[1]")["spark.pyspark.python"] == "/opt/python"


def test_cli_engine_spark_from_an_unactivated_virtualenv(artifact, traffic, tmp_path):
    """Issue 29: the virtualenv's Python run by its path, with a PATH whose python3 lacks the project's packages
    (no PYSPARK_PYTHON): the workers must still run this interpreter."""
    import os

    small = tmp_path / "small.parquet"
    pd.read_parquet(traffic[0]).head(60).to_parquet(small, index=False)
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV")}
    environment["PATH"] = "/usr/bin:/bin"
    done = subprocess.run([sys.executable, "-m", "training.score", "--engine", "spark", "--master", "local[1]",
                           "--artifact", str(artifact), "--input", str(small), "--output", str(tmp_path / "out"),
                           "--quiet"], capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_parquet(tmp_path / "out")) > 0
