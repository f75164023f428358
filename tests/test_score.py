"""``python -m training.score``: replay equals the service loop, batching, rejects, exit codes.

Validation of logged input is :mod:`training.serving.logged`, replay and the per-batch function
:mod:`training.serving.replay`, streaming and the command line :mod:`training.serving.batch`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.serving.batch import main
from training.serving.logged import validate_logged
from training.serving.replay import STATUS_OK, score_batch
from training.synthetic import make_benchmark


@pytest.fixture(scope="module")
def logged():
    return make_benchmark(60, seed=4)


def _score(artifact, frame, tmp_path, *extra, name="traffic"):
    source = tmp_path / f"{name}.parquet"
    frame.to_parquet(source)
    output = tmp_path / f"{name}.decisions.parquet"
    code = main(["--artifact", str(artifact), "--input", str(source), "--output", str(output), "--quiet", *extra])
    return code, output


def _service_loop(router, rows: pd.DataFrame, budget=None):
    """The README loop for one query, with its logged outcomes standing in for model calls."""
    first = rows.iloc[0]
    per_query = {"tasks": [first["task"]], "subtasks": [first["subtask"]]}
    logged = rows.set_index("model")
    observed: dict = {}
    while (model := router.decide([first["prompt"]], [observed], budget, **per_query)[0]) is not None:
        observed[model] = {"response": logged.loc[model, "response"], "cost": float(logged.loc[model, "cost_usd"])}
    answer = router.select([first["prompt"]], [observed], **per_query)[0]
    return list(observed), answer, sum(o["cost"] for o in observed.values()), float(logged.loc[answer, "quality"])


@pytest.mark.parametrize("budget", [None, 0.0004])
def test_replay_equals_the_service_loop_query_by_query(router, logged, budget):
    result = score_batch(router, logged, budget)
    assert (result["status"] == STATUS_OK).all() and len(result) == logged["query_id"].nunique()
    by_query = dict(iter(logged.groupby("query_id", sort=False)))
    for row in result.itertuples():
        models, answer, cost, quality = _service_loop(router, by_query[row.query_id], budget)
        assert list(row.models_run) == models
        assert row.first_model == models[0] and row.n_run == len(models)
        assert row.answer_model == answer
        assert row.cost == pytest.approx(cost, rel=1e-12) and row.quality == quality


def test_batches_that_split_queries_give_the_same_decisions(artifact, logged, tmp_path, capsys):
    code, whole = _score(artifact, logged, tmp_path, "--batch-size", "100000", name="whole")
    assert code == 0
    code, split = _score(artifact, logged, tmp_path, "--batch-size", "13", name="split")  # 13 rows: never a whole query
    assert code == 0
    out = capsys.readouterr().out
    assert "queries scored" in out and "vs budget" in out
    a, b = pd.read_parquet(whole), pd.read_parquet(split)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == logged["query_id"].nunique() and a["row"].is_monotonic_increasing


def test_query_input_gives_first_model_plan_and_ex_ante_estimates(router, artifact, logged, tmp_path):
    queries = logged.drop_duplicates("query_id")[["query_id", "prompt", "task", "subtask"]].reset_index(drop=True)
    code, output = _score(artifact, queries, tmp_path, "--budget", "0.0004", name="queries")
    assert code == 0
    result = pd.read_parquet(output)
    prompts, tasks, subtasks = list(queries["prompt"]), list(queries["task"]), list(queries["subtask"])
    plans = router.plan(prompts, budget=0.0004, tasks=tasks, subtasks=subtasks)
    assert list(result["next_model"]) == [p.next for p in plans]
    assert [list(p) for p in result["plan"]] == [list(p.models) for p in plans]
    estimates, _ = router.estimates(prompts, tasks=tasks, subtasks=subtasks)
    for j, model in enumerate(router.models_):
        np.testing.assert_allclose(result[f"quality[{model}]"], estimates.quality[:, j])
        np.testing.assert_allclose(result[f"cost[{model}]"], estimates.cost[:, j])
    planned_cost = [sum(estimates.cost[i, router.models_.index(m)] for m in p.models) for i, p in enumerate(plans)]
    np.testing.assert_allclose(result["plan_cost"], planned_cost, rtol=1e-12)


def test_malformed_rows_are_written_to_rejects_with_row_numbers(artifact, logged, tmp_path, capsys):
    bad = logged.copy()
    bad.loc[5, "cost_usd"] = np.nan          # query 0
    bad.loc[30, "model"] = "gpt-9"           # query 3: that row alone is left out, the query replayed without it
    bad.loc[100, "prompt"] = None            # query 12
    rejects = tmp_path / "rejected.parquet"
    code, output = _score(artifact, bad, tmp_path, "--batch-size", "50", "--rejects", str(rejects), name="bad")
    assert code == 0
    assert "warning: 17 input row(s) rejected" in capsys.readouterr().err
    rejected = pd.read_parquet(rejects).set_index("row")
    assert sorted(rejected.index) == list(range(0, 8)) + [30] + list(range(96, 104))
    assert "cost_usd must be a finite number >= 0" in rejected.loc[5, "reason"]
    assert "unknown model 'gpt-9', left out" in rejected.loc[30, "reason"] and rejected.loc[30, "model"] == "gpt-9"
    assert rejected.loc[100, "reason"] == "prompt is missing"
    assert rejected.loc[0, "reason"] == "query rejected because of row 5"
    scored = pd.read_parquet(output)
    rows_per_query = bad.groupby("query_id").size()
    assert rows_per_query[scored["query_id"]].sum() + len(rejected) == len(bad) + 1, \
        "every input row is scored or rejected (query 3's gpt-9 row is both: in the rejects, its query scored)"
    assert set(scored["query_id"]) & set(rejected["query_id"]) == {bad.loc[30, "query_id"]}


def test_dictionary_encoded_input_scores_and_rejects_as_plain_strings(artifact, logged, tmp_path):
    """Parquet written from categorical columns reads back as pandas categoricals (another code path)."""
    bad = logged.copy()
    bad.loc[5, "cost_usd"] = np.nan
    bad.loc[30, "model"] = "gpt-9"
    bad.loc[41, "model"] = None
    bad.loc[100, "prompt"] = None
    bad.loc[130, "response"] = None
    encoded = bad.astype({c: "category" for c in ("model", "prompt", "response", "task", "subtask")})
    results = {}
    for name, frame, extra in (("plain", bad, ()), ("dictionary", encoded, ()),
                               ("dictionary2", encoded, ("--workers", "2"))):
        rejects = tmp_path / f"{name}.rejects.parquet"
        code, output = _score(artifact, frame, tmp_path, "--batch-size", "29", "--rejects", str(rejects), *extra,
                              name=name)
        assert code == 0
        results[name] = pd.read_parquet(output), pd.read_parquet(rejects)
    assert isinstance(pd.read_parquet(tmp_path / "dictionary.parquet")["model"].dtype, pd.CategoricalDtype)
    for name in ("dictionary", "dictionary2"):
        pd.testing.assert_frame_equal(results[name][0], results["plain"][0])
        pd.testing.assert_frame_equal(results[name][1], results["plain"][1])
    rejected = results["plain"][1].set_index("row")
    assert rejected.loc[41, "reason"] == "model is missing"
    assert 130 not in rejected.index, "a missing response is an empty answer, not a malformed row"


def test_rows_of_a_query_that_are_not_contiguous_are_rejected(router, logged):
    frame = logged.iloc[:40].copy()
    frame = pd.concat([frame.iloc[:3], frame.iloc[8:16], frame.iloc[3:8], frame.iloc[16:]], ignore_index=True)
    result = score_batch(router, frame)
    rejected = result[result["status"] != STATUS_OK]
    assert set(rejected["query_id"]) == {logged["query_id"].iloc[0]}
    assert rejected["reason"].str.contains("not contiguous").all()


def test_score_batch_is_pure(router, logged):
    frame = logged.iloc[: 11 * 8].copy()
    before = frame.copy()
    first, second = score_batch(router, frame), score_batch(router, frame)
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(frame, before)


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns=["cost_usd"]), "lacks column(s) ['cost_usd']"),
    (lambda f: f.drop(columns=["prompt"]), "lacks column(s) ['prompt']"),
])
def test_unusable_input_exits_2_with_one_line(artifact, logged, tmp_path, capsys, change, message):
    code, _ = _score(artifact, change(logged), tmp_path)
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("error:") and message in error[0]


def test_logged_rows_become_grids_in_the_router_model_order(router, logged):
    """Rows of a query may come in any model order; the grids follow ``router.models_``."""
    shuffled = (logged.iloc[: 11 * 8].sample(frac=1.0, random_state=3)
                .sort_values("query_id", kind="stable").reset_index(drop=True))
    batch = validate_logged(router, shuffled)
    ids = list(dict.fromkeys(shuffled["query_id"]))
    assert list(batch.query_ids) == ids and batch.rejected.empty
    wide = shuffled.pivot(index="query_id", columns="model").loc[ids]
    np.testing.assert_array_equal(batch.cost, wide["cost_usd"][list(router.models_)].to_numpy())
    np.testing.assert_array_equal(batch.quality, wide["quality"][list(router.models_)].to_numpy())
    assert list(batch.first_rows) == [int(np.flatnonzero(shuffled["query_id"] == q)[0]) for q in ids]
    assert list(batch.values["prompt"]) == list(wide["prompt"][router.models_[0]])


def test_help_lists_the_exit_codes_and_returns_0(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--quiet" in text and "exit status: 0" in text and "2 on bad input" in text
    assert "1 if an output cannot be written" in " ".join(text.split())


@pytest.mark.parametrize("argv", [[], ["--artifact", "a", "--input", "i"],
                                  ["--artifact", "a", "--input", "i", "--output", "o", "--batch-size", "0"],
                                  ["--artifact", "a", "--input", "i", "--output", "o", "--no-such-flag"]])
def test_usage_errors_return_2_without_raising(argv, capsys):
    assert main(argv) == 2  # a SystemExit escaping main would fail the test
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["--output", "--rejects"])
def test_an_output_that_cannot_be_written_exits_1(artifact, logged, tmp_path, capsys, which):
    blocker = tmp_path / "some_file"
    blocker.write_text("a regular file, not a directory")
    bad = logged.copy()
    bad.loc[5, "cost_usd"] = np.nan  # one rejected query, so that there is something for --rejects
    source = tmp_path / "traffic.parquet"
    bad.to_parquet(source)
    paths = {"--output": tmp_path / "decisions.parquet", "--rejects": tmp_path / "rejects.parquet",
             which: blocker / "out.parquet"}
    code = main(["--artifact", str(artifact), "--input", str(source), "--quiet",
                 *[str(part) for flag, path in paths.items() for part in (flag, path)]])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(error) == 1 and error[0].startswith(f"error: cannot write {which} {blocker / 'out.parquet'}")


def test_missing_input_file_exits_2(artifact, tmp_path, capsys):
    code = main(["--artifact", str(artifact), "--input", str(tmp_path / "nope.parquet"),
                 "--output", str(tmp_path / "o.parquet"), "--quiet"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_two_worker_processes_write_the_same_decisions(artifact, logged, tmp_path):
    code, one = _score(artifact, logged, tmp_path, "--batch-size", "40", name="one")
    assert code == 0
    code, two = _score(artifact, logged, tmp_path, "--batch-size", "40", "--workers", "2", name="two")
    assert code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(one), pd.read_parquet(two))


def test_default_workers_start_processes_only_for_large_inputs(monkeypatch):
    from training.serving import batch as score
    monkeypatch.setattr(score.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert score.auto_workers(score.AUTO_WORKERS_FROM_ROWS - 1) == 1
    assert score.auto_workers(score.AUTO_WORKERS_FROM_ROWS) == score.MAX_AUTO_WORKERS
    monkeypatch.setattr(score.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert score.auto_workers(10**9) == 1


def test_reading_holds_about_one_batch_not_the_file(tmp_path):
    """Streaming: Arrow memory while iterating stays far below the file's size (pyarrow's default
    pre-buffering kept every column chunk read so far)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.serving.batch import iter_tables
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", np.uint8)
    n = 8000  # rows of ~1 KB of incompressible text: 8 MB in 40 row groups
    texts = [letters[rng.integers(0, letters.size, 1000)].tobytes().decode() for _ in range(n)]
    table = pa.table({"query_id": [f"q{i // 4:05d}" for i in range(n)], "prompt": texts})
    path = tmp_path / "big.parquet"
    pq.write_table(table, path, row_group_size=200, compression="zstd")
    size = path.stat().st_size
    assert size > 4_000_000
    before, peak, rows = pa.total_allocated_bytes(), 0, 0
    for batch in iter_tables(path, ["query_id", "prompt"], 200, logged=True):
        rows += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - before)
        del batch
    assert rows == n
    assert peak < size / 4, f"{peak / 1e6:.1f} MB held while reading a {size / 1e6:.1f} MB file"
