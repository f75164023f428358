"""Batch scoring on real-shaped logs: batches without an accepted query, shuffled input, partial logs.

Issue 11, points 3 and 4: every :func:`~training.serving.replay.score_batch` result converts to
:func:`~training.serving.replay.output_schema` whatever it holds, and a logged query whose cascade
reaches a model that was not logged is ``unreplayable`` (naming the model), not rejected.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kernel
from estimators.estimator import Estimates
from training.decision import play_cascades
from training.serving.batch import main
from training.serving.replay import (
    STATUS_OK,
    STATUS_REJECTED,
    STATUS_UNREPLAYABLE,
    output_schema,
    rejects_schema,
    score_batch,
)
from training.synthetic import make_benchmark

REPLAY_COLUMNS = ["first_model", "models_run", "n_run", "answer_model", "cost", "quality", "needed_model"]


@pytest.fixture(scope="module")
def logged():
    return make_benchmark(60, seed=4)


def _queries(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop_duplicates("query_id")[["query_id", "prompt", "task", "subtask"]].reset_index(drop=True)


def _run(artifact, frame, tmp_path, *extra, name="traffic"):
    source = tmp_path / f"{name}.parquet"
    frame.to_parquet(source)
    output, rejects = tmp_path / f"{name}.decisions.parquet", tmp_path / f"{name}.rejects.parquet"
    code = main(["--artifact", str(artifact), "--input", str(source), "--output", str(output),
                 "--rejects", str(rejects), "--quiet", *extra])
    return code, output, rejects


def _assert_conforms(router, result: pd.DataFrame, logged: bool) -> None:
    """The declared columns in order, then the reject columns; every part converts to its schema."""
    schema = output_schema(router, logged)
    assert list(result.columns) == [*schema.names, "reason", "model"]
    pa.Table.from_pandas(result[schema.names], schema=schema, preserve_index=False)
    is_rejected = (result["status"] == STATUS_REJECTED).to_numpy()
    pa.Table.from_pandas(result[~is_rejected][schema.names], schema=schema, preserve_index=False)
    pa.Table.from_pandas(result[is_rejected][rejects_schema().names], schema=rejects_schema(), preserve_index=False)
    assert result[is_rejected]["reason"].map(lambda r: isinstance(r, str) and bool(r)).all()
    assert result[~is_rejected]["reason"].isna().all()


def _drop_rows(frame: pd.DataFrame, drops: dict[str, set[str]]) -> pd.DataFrame:
    keep = [m not in drops.get(q, ()) for q, m in zip(frame["query_id"], frame["model"], strict=True)]
    return frame[keep].reset_index(drop=True)


# --------------------------------------------------------------------------- #
# point 3: every result in the declared schema, no crash on any batch
# --------------------------------------------------------------------------- #


def _cases(logged: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, bool]]:
    one = logged[logged["query_id"] == logged["query_id"].iloc[0]].copy()
    one.loc[one.index[2], "cost_usd"] = np.nan
    two = logged.iloc[:16].copy()
    two.loc[3, "quality"] = np.nan
    two.loc[12, "prompt"] = None
    queries = _queries(logged).iloc[:5].copy()
    queries.loc[:, "prompt"] = None
    mixed = logged.iloc[:40].copy()
    mixed.loc[9, "model"] = "gpt-9"
    partial = _drop_rows(logged.iloc[:40], {q: set(logged["model"].unique()) - {logged["model"].iloc[3]}
                                            for q in logged["query_id"].unique()[:5]})
    return {"one query rejected": (one, True), "two queries rejected": (two, True),
            "empty logged frame": (logged.iloc[:0], True), "query rows all rejected": (queries, False),
            "empty query frame": (_queries(logged).iloc[:0], False), "full log": (logged.iloc[:40], True),
            "full log with a reject": (mixed, True), "partial log": (partial, True),
            "query rows": (_queries(logged).iloc[:5], False)}


@pytest.mark.parametrize("case", ["one query rejected", "two queries rejected", "empty logged frame",
                                  "query rows all rejected", "empty query frame", "full log",
                                  "full log with a reject", "partial log", "query rows"])
def test_every_result_conforms_to_the_declared_schema(router, logged, case):
    frame, is_logged = _cases(logged)[case]
    result = score_batch(router, frame)
    _assert_conforms(router, result, is_logged)
    if case.endswith("rejected"):
        assert (result["status"] == STATUS_REJECTED).all() and len(result) == len(frame)
    if case.startswith("empty"):
        assert result.empty


def test_results_have_the_same_columns_and_types_whatever_they_hold(router, logged):
    """So that Spark/Dask partitions (and the pieces of one file) never disagree on a column's type."""
    for is_logged in (True, False):
        dtypes = {name: tuple(score_batch(router, frame).dtypes.map(str).items())
                  for name, (frame, kind) in _cases(logged).items() if kind == is_logged}
        assert len(set(dtypes.values())) == 1, dtypes


def test_batch_size_1_with_one_bad_prompt_exits_0_with_its_rejects(artifact, logged, tmp_path, capsys):
    """With ``--batch-size 1`` the bad query is a read batch of its own in which nothing is accepted."""
    bad = logged.iloc[: 8 * 6].copy()
    bad.loc[20, "prompt"] = None  # query 2 of 6
    code, output, rejects = _run(artifact, bad, tmp_path, "--batch-size", "1", name="bs1")
    captured = capsys.readouterr()
    assert code == 0 and "warning: 8 input row(s) rejected" in captured.err
    rejected = pd.read_parquet(rejects)
    assert list(rejected["row"]) == list(range(16, 24)) and set(rejected["query_id"]) == {bad["query_id"][16]}
    assert rejected.set_index("row").loc[20, "reason"] == "prompt is missing"
    scored = pd.read_parquet(output)
    assert len(scored) == 5 and (scored["status"] == STATUS_OK).all()
    assert bad["query_id"][16] not in set(scored["query_id"])
    assert "5 queries replayed, 0 could not be replayed" in captured.out and "8 input row(s) rejected" in captured.out


def test_an_input_where_every_query_is_rejected_exits_2_after_writing_an_empty_output(router, artifact, logged,
                                                                                       tmp_path, capsys):
    bad = logged.iloc[: 8 * 4].copy()
    bad["quality"] = np.nan
    code, output, rejects = _run(artifact, bad, tmp_path, "--batch-size", "8", name="all_bad")
    captured = capsys.readouterr()
    assert code == 2 and "nothing was scored: all 32 input row(s) were rejected" in captured.err  # issue 29
    assert "top reasons: 32 x quality must be a number" in captured.err
    assert pd.read_parquet(rejects)["row"].tolist() == list(range(32))
    scored = pq.read_table(output)
    assert scored.num_rows == 0 and scored.schema.equals(output_schema(router, True))
    assert "0 queries replayed" in captured.out and "no query was replayed" in captured.out


def test_query_rows_all_rejected_exit_0(artifact, logged, tmp_path, capsys):
    queries = _queries(logged).iloc[:6].copy()
    queries.loc[[0, 1, 2], "prompt"] = None
    code, output, rejects = _run(artifact, queries, tmp_path, "--batch-size", "3", name="queries_bad")
    assert code == 0
    assert pd.read_parquet(rejects)["row"].tolist() == [0, 1, 2]
    assert pd.read_parquet(output)["row"].tolist() == [3, 4, 5]
    assert "3 input row(s) rejected" in capsys.readouterr().out


def test_shuffled_rows_are_rejected_as_not_contiguous(router, logged):
    shuffled = logged.iloc[: 8 * 10].sample(frac=1.0, random_state=0).reset_index(drop=True)
    result = score_batch(router, shuffled)
    _assert_conforms(router, result, True)
    rejected = result[result["status"] == STATUS_REJECTED]
    assert len(rejected) == len(shuffled) and set(rejected["row"]) == set(range(len(shuffled)))
    assert rejected["reason"].str.contains("not contiguous").all()
    assert rejected["reason"].str.contains("bounded memory needs each query's rows together").all()


@pytest.mark.parametrize("batch_size", ["1000", "7"])
def test_shuffled_input_is_rejected_by_the_cli_without_crashing(artifact, logged, tmp_path, capsys, batch_size):
    shuffled = logged.iloc[: 8 * 10].sample(frac=1.0, random_state=0).reset_index(drop=True)
    code, output, rejects = _run(artifact, shuffled, tmp_path, "--batch-size", batch_size, name="shuffled")
    assert code == 2 and "nothing was scored" in capsys.readouterr().err  # every query is scattered
    rejected = pd.read_parquet(rejects)
    assert rejected["reason"].str.contains("not contiguous|query rejected because").all()
    assert rejected["reason"].str.contains("not contiguous").any()
    assert not set(pd.read_parquet(output)["row"]) & set(rejected["row"])


@pytest.mark.parametrize("batch_size", ["1000", "7"])
def test_shuffled_input_never_scores_a_part_of_a_query(artifact, logged, tmp_path, batch_size):
    shuffled = logged.iloc[: 8 * 10].sample(frac=1.0, random_state=0).reset_index(drop=True)
    code, output, rejects = _run(artifact, shuffled, tmp_path, "--batch-size", batch_size, name="shuffled")
    assert code == 2  # nothing scored (issue 29): the files are written all the same
    scored, rejected = pd.read_parquet(output), pd.read_parquet(rejects)
    assert scored["query_id"].is_unique and not set(scored["query_id"]) & set(rejected["query_id"])


# --------------------------------------------------------------------------- #
# point 4: partial logs
# --------------------------------------------------------------------------- #


def _partial(full: pd.DataFrame, logged: pd.DataFrame, models) -> tuple[pd.DataFrame, dict, dict]:
    """Drop, per query: a model its full replay ran (every 3rd query: the j-th it ran, j cycling), or one it
    never ran (every 3rd + 1), or nothing. Returns the partial log, the drops and the expected needed model."""
    drops, needed = {}, {}
    for i, row in enumerate(full.itertuples()):
        ran = list(row.models_run)
        never = [m for m in models if m not in ran]
        if i % 3 == 0:
            j = (i // 3) % len(ran)
            drops[row.query_id] = {ran[j], *never[:1]}
            needed[row.query_id] = (ran[j], j)
        elif i % 3 == 1 and never:
            drops[row.query_id] = set(never)
    return _drop_rows(logged, drops), drops, needed


@pytest.mark.parametrize("budget", [None, 0.0004])
def test_partial_logs_replay_until_a_model_that_was_not_logged(router, logged, budget):
    full = score_batch(router, logged, budget)
    assert (full["status"] == STATUS_OK).all() and full["needed_model"].isna().all()
    partial, drops, needed = _partial(full, logged, router.models_)
    assert len(partial) < len(logged) and any(j == 0 for _, j in needed.values())
    result = score_batch(router, partial, budget)
    _assert_conforms(router, result, True)
    assert not (result["status"] == STATUS_REJECTED).any(), "a model without a row is no reason to reject"
    assert list(result["query_id"]) == list(full["query_id"])
    costs = logged.set_index(["query_id", "model"])["cost_usd"]
    by_id = full.set_index("query_id")
    for row in result.itertuples():
        before = by_id.loc[row.query_id]
        if row.query_id not in needed:  # never reached a dropped model: exactly the full-log row
            assert row.status == STATUS_OK and pd.isna(row.needed_model)
            assert list(row.models_run) == list(before.models_run)
            assert (row.first_model, row.n_run, row.answer_model) == (before.first_model, before.n_run,
                                                                      before.answer_model)
            assert row.cost == before.cost and row.quality == before.quality
            continue
        model, j = needed[row.query_id]
        ran = list(before.models_run)[:j]
        assert row.status == STATUS_UNREPLAYABLE and row.needed_model == model
        assert list(row.models_run) == ran and row.n_run == j
        assert row.first_model == (ran[0] if ran else model) == before.first_model
        assert row.cost == pytest.approx(sum(costs[(row.query_id, m)] for m in ran), rel=1e-12)
        assert pd.isna(row.answer_model) and np.isnan(row.quality)
    untouched = ~result["query_id"].isin(list(needed))
    rows_ok = result[untouched].reset_index(drop=True)
    rows_full = full[untouched.to_numpy()].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows_ok.drop(columns="row"), rows_full.drop(columns="row"))


def test_partial_logs_keep_rejecting_malformed_rows(router, logged):
    """Only the absence of a model's row is new: a row with NaN quality still rejects its query."""
    partial = _drop_rows(logged.iloc[:24], {logged["query_id"][0]: {logged["model"][1]},
                                            logged["query_id"][8]: {logged["model"][9]}})
    partial.loc[partial["query_id"] == logged["query_id"][8], "quality"] = [np.nan] + [0.0] * 6
    result = score_batch(router, partial)
    _assert_conforms(router, result, True)
    assert set(result.loc[result["status"] == STATUS_REJECTED, "query_id"]) == {logged["query_id"][8]}
    assert set(result.loc[result["status"] != STATUS_REJECTED, "query_id"]) == {logged["query_id"][0],
                                                                                 logged["query_id"][16]}


def test_query_rows_are_scored_whatever_was_logged(router, logged):
    """Query input carries no outcomes: scoring it is the same with partial logs (the estimates are ex ante)."""
    full = score_batch(router, _queries(logged))
    partial = score_batch(router, _queries(_drop_rows(logged, {q: {logged["model"][0]}
                                                               for q in logged["query_id"].unique()[::2]})))
    pd.testing.assert_frame_equal(full, partial)
    assert (full["status"] == STATUS_OK).all()


def _summary_numbers(out: str) -> dict:
    found = re.search(r"(\d+) queries replayed, (\d+) could not be replayed .*?, (\d+) input row\(s\) rejected", out)
    cost = re.search(r"mean realised cost per replayed query (\S+) vs budget", out)
    quality = re.search(r"mean quality (\S+), (\S+) models per replayed query", out)
    return {"replayed": int(found[1]), "unreplayable": int(found[2]), "rejected": int(found[3]),
            "cost": float(cost[1]), "quality": float(quality[1]), "models": float(quality[2]),
            "only": re.search(r"the totals below cover only the (\d+) replayed queries", out)}


def test_the_cli_writes_unreplayable_rows_and_honest_totals(router, artifact, logged, tmp_path, capsys):
    full = score_batch(router, logged)
    partial, _, needed = _partial(full, logged, router.models_)
    bad_query = partial["query_id"].iloc[-1]
    partial.loc[partial.index[-1], "cost_usd"] = -1.0  # and one rejected query
    n_rejected_rows = int((partial["query_id"] == bad_query).sum())
    results = {}
    for name, extra in (("whole", ("--batch-size", "100000")), ("split", ("--batch-size", "5")),
                        ("workers", ("--batch-size", "40", "--workers", "2"))):
        code, output, rejects = _run(artifact, partial, tmp_path, *extra, name=name)
        assert code == 0
        results[name] = pd.read_parquet(output), pd.read_parquet(rejects), capsys.readouterr().out
    for name in ("split", "workers"):
        pd.testing.assert_frame_equal(results[name][0], results["whole"][0])
        pd.testing.assert_frame_equal(results[name][1], results["whole"][1])
    scored, rejected, out = results["whole"]
    assert set(rejected["query_id"]) == {bad_query} and len(rejected) == n_rejected_rows
    assert set(scored["status"]) == {STATUS_OK, STATUS_UNREPLAYABLE}
    unreplayable = scored[scored["status"] == STATUS_UNREPLAYABLE]
    assert set(unreplayable["query_id"]) == set(needed) - {bad_query}
    assert unreplayable["needed_model"].notna().all() and scored.loc[scored["status"] == STATUS_OK,
                                                                     "needed_model"].isna().all()
    replayed = scored[scored["status"] == STATUS_OK]
    numbers = _summary_numbers(out)
    assert (numbers["replayed"], numbers["unreplayable"], numbers["rejected"]) == (
        len(replayed), len(unreplayable), n_rejected_rows)
    assert numbers["only"] and int(numbers["only"][1]) == len(replayed)
    assert numbers["cost"] == pytest.approx(replayed["cost"].mean(), rel=1e-5)
    assert numbers["quality"] == pytest.approx(replayed["quality"].mean(), abs=5e-5)
    assert numbers["models"] == pytest.approx(replayed["n_run"].mean(), abs=5e-3)
    assert f"{len(replayed) + len(unreplayable)} queries scored" in out


def test_the_summary_of_a_full_log_says_everything_was_replayed(artifact, logged, tmp_path, capsys):
    code, output, _ = _run(artifact, logged, tmp_path, name="full")
    out = capsys.readouterr().out
    assert code == 0 and "60 queries replayed, 0 could not be replayed" in out and "0 input row(s) rejected" in out
    assert "cover only" not in out
    assert pd.read_parquet(output)["needed_model"].isna().all()


# --------------------------------------------------------------------------- #
# play_cascades with an availability mask
# --------------------------------------------------------------------------- #


def _table_step(n: int, k: int, seed: int):
    """An ``estimate`` step from fixed tables: ex-ante estimates for models not run, post-hoc ones for those run."""
    rng = np.random.default_rng(seed)
    ante_q, post_q = rng.uniform(0.2, 0.9, (n, k)), rng.uniform(0.0, 1.0, (n, k))
    ante_s = rng.uniform(0.05, 0.3, (n, k))
    cost = np.tile(np.geomspace(1e-5, 1e-3, k), (n, 1)) * rng.uniform(0.8, 1.2, (n, k))
    calls = []

    def estimate(rows, run, with_sigma):
        calls.append((rows.copy(), run.copy(), with_sigma))
        quality = np.where(run, post_q[rows], ante_q[rows] + 0.02 * run.sum(axis=1, keepdims=True))
        sigma = np.where(run, 0.01, ante_s[rows]) if with_sigma else None
        return Estimates(quality, sigma, cost[rows], None)

    return estimate, calls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_play_cascades_with_a_mask_stops_at_the_first_model_not_available(router, seed):
    n, k = 300, len(router.models_)
    rule = router.policy(None)
    u = kernel.default_uniforms(n)
    estimate, calls = _table_step(n, k, seed)
    order, run, answer = play_cascades(rule, estimate, n, k, u=u)
    default_calls = len(calls)
    everything = play_cascades(rule, estimate, n, k, u=u, available=np.ones((n, k), bool))
    assert len(everything) == 4 and (everything[3] == kernel.STOP).all()
    for a, b in zip((order, run, answer), everything[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(calls) == 2 * default_calls, "the same estimate calls"
    for (rows_a, run_a, sigma_a), (rows_b, run_b, sigma_b) in zip(calls[:default_calls], calls[default_calls:],
                                                                  strict=True):
        np.testing.assert_array_equal(rows_a, rows_b)
        np.testing.assert_array_equal(run_a, run_b)
        assert sigma_a == sigma_b
    available = np.random.default_rng(seed).random((n, k)) < 0.6
    p_order, p_run, p_answer, needed = play_cascades(rule, estimate, n, k, u=u, available=available)
    assert (needed >= 0).any() and (needed < 0).any()
    for i in range(n):
        ran = [m for m in order[i] if m >= 0]
        missing = [j for j, m in enumerate(ran) if not available[i, m]]
        if not missing:
            assert needed[i] == kernel.STOP and answer[i] == p_answer[i]
            np.testing.assert_array_equal(p_order[i], order[i])
            continue
        j = missing[0]
        assert needed[i] == ran[j] and p_answer[i] == kernel.STOP
        assert [m for m in p_order[i] if m >= 0] == ran[:j]
        assert set(np.flatnonzero(p_run[i])) == set(ran[:j])


def test_play_cascades_rejects_a_mask_of_the_wrong_shape(router):
    estimate, _ = _table_step(4, len(router.models_), 0)
    with pytest.raises(ValueError, match="available must have shape"):
        play_cascades(router.policy(None), estimate, 4, len(router.models_), u=kernel.default_uniforms(4),
                      available=np.ones((4, 2), bool))


@pytest.mark.parametrize("layout", ["logged", "query rows"])
@pytest.mark.parametrize("value", [42, b"What is 2+2?", 3.5])
def test_a_prompt_that_is_not_text_raises_a_type_error_naming_its_row(router, logged, layout, value):
    """As every Router method: a number or bytes would be featurized as its str(), not as the logged prompt."""
    frame = logged if layout == "logged" else logged.drop_duplicates("query_id").drop(columns=["model"])
    frame = frame.reset_index(drop=True).astype({"prompt": object})
    frame.loc[7, "prompt"] = value
    with pytest.raises(TypeError, match=rf"prompt of row 7 is {type(value).__name__} .*not str"):
        score_batch(router, frame)
    as_category = frame.astype({"prompt": "category"})
    with pytest.raises(TypeError, match=r"prompt of row 7 is"):
        score_batch(router, as_category)
    frame.loc[7, "prompt"] = None  # missing is not a type error: its query is rejected with a reason
    assert (score_batch(router, frame)["status"] == "rejected").any()
