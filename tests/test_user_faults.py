"""Issue 29: the faults a new user still hit. Nothing a user owns is overwritten, no run ends in silence.

One test (at least) per case of the issue, each failing on the code before
it: outputs compared with every input of ``training.fit``, ``training.score``
and ``training.evaluate``; ``--overwrite``; other-format output names; the
writability probe; Parquet dataset folders; one model spelt two ways; the
split by prompt; the Python router's foreign types; and in scoring, rows
that disagree on the prompt, rejections counted and explained with exit
codes, an unknown model's rows, an input that changes while it is read and
a worker killed mid-run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.artifact import manifest_path
from training.cli import OutputError, check_writable
from training.data import read_table
from training.evaluate import main as evaluate_main
from training.fit import _split
from training.fit import main as fit_main
from training.router import UnseenCategoryWarning
from training.serving import batch as score_module
from training.serving.batch import main as score_main
from training.serving.replay import STATUS_REJECTED, score_batch
from training.splits import prompt_groups, shared_groups, split
from training.synthetic import make_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def logged() -> pd.DataFrame:
    """Logged traffic of the shared small router's models (the synthetic benchmark), 200 queries."""
    return make_benchmark(200, seed=5)


@pytest.fixture(scope="module")
def traffic(logged, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("traffic") / "traffic.parquet"
    logged.to_parquet(path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _score(artifact, source, output, *extra) -> list[str]:
    return ["--artifact", str(artifact), "--input", str(source), "--output", str(output), "--quiet", *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# --------------------------------------------------------------------------- #
# data lost: every path a command writes compared with every path it reads
# --------------------------------------------------------------------------- #


def test_fit_refuses_an_output_that_is_one_of_its_inputs(traffic, tmp_path, capsys):
    data = tmp_path / "logs.parquet"
    shutil.copy(traffic, data)
    prices = tmp_path / "models.csv"
    prices.write_text("model,input_usd_per_1m,output_usd_per_1m\n")
    (tmp_path / "link.parquet").symlink_to(data)
    os.link(prices, tmp_path / "prices-hard-link.csv")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    shutil.copy(traffic, dataset / "part-0.parquet")
    digests = {path: _digest(path) for path in (data, prices, dataset / "part-0.parquet")}
    cases = [
        (["--data", data, "--out", data], "--out .*logs.parquet is --data"),
        (["--data", data, "--out", tmp_path / "link.parquet"], "is --data"),
        (["--data", data, "--out", tmp_path / "sub" / ".." / "logs.parquet"], "is --data"),
        (["--data", data, "--prices", prices, "--out", tmp_path / "prices-hard-link.csv"], "is --prices"),
        (["--data", data, "--throughput", prices, "--out", tmp_path / "r.joblib", "--report", prices],
         "--report .* is --throughput"),
        (["--data", tmp_path / "report" / "report.json", "--out", tmp_path / "r.joblib", "--report",
          tmp_path / "report"], r"--report \(report.json\) .* is --data"),
        (["--data", dataset, "--out", dataset / "router.joblib"], "inside the --data folder"),
        (["--data", dataset, "--out", tmp_path / "r.joblib", "--report", dataset], "--report .* is --data"),
    ]
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.json").write_text("{}")
    for arguments, message in cases:
        argv = [str(a) for a in arguments]
        if "--report" not in argv:
            argv += ["--report", str(tmp_path / "report-out")]
        assert fit_main([*argv, "--quiet"]) == 2, argv
        err = _one_line_error(capsys)
        assert re.search(message, err), (message, err)
    assert {path: _digest(path) for path in digests} == digests
    assert not (tmp_path / "report-out").exists() and not (dataset / "router.joblib").exists()


def test_evaluate_refuses_an_output_that_is_its_input(traffic, tmp_path, capsys):
    data = tmp_path / "logs.parquet"
    shutil.copy(traffic, data)
    before = _digest(data)
    assert evaluate_main(["--data", str(data), "--json", str(data), "--quiet"]) == 2
    assert "--json" in _one_line_error(capsys)
    assert _digest(data) == before


@pytest.fixture
def own_artifact(artifact, tmp_path) -> Path:
    """A copy of the shared artifact and its manifest: a test of a fault must not spoil the shared one."""
    folder = tmp_path / "artifact"
    folder.mkdir()
    shutil.copy(artifact, folder / artifact.name)
    shutil.copy(manifest_path(artifact), manifest_path(folder / artifact.name))
    return folder / artifact.name


def test_score_refuses_the_artifact_or_its_manifest_as_an_output(own_artifact, traffic, tmp_path, capsys):
    manifest = manifest_path(own_artifact)
    digests = {path: _digest(path) for path in (own_artifact, manifest)}
    for extra in ([own_artifact], [manifest], [tmp_path / "out.parquet", "--rejects", own_artifact]):
        output, *rest = extra
        assert score_main(_score(own_artifact, traffic, output, *map(str, rest))) == 2
        assert "--artifact" in _one_line_error(capsys)
    assert {path: _digest(path) for path in digests} == digests
    assert not (tmp_path / "out.parquet").exists()


def test_rescoring_into_an_existing_output_needs_overwrite(artifact, traffic, tmp_path, capsys):
    out = tmp_path / "decisions.parquet"
    rejects = tmp_path / "decisions.rejects.parquet"
    assert score_main(_score(artifact, traffic, out)) == 0
    first = pd.read_parquet(out)
    out.write_bytes(b"the user's earlier results")
    capsys.readouterr()
    assert score_main(_score(artifact, traffic, out)) == 2
    assert "exists" in (err := _one_line_error(capsys)) and "--overwrite" in err
    assert out.read_bytes() == b"the user's earlier results"
    out.unlink()
    assert score_main(_score(artifact, traffic, out)) == 2, "an existing rejects file is refused too"
    assert "rejects" in _one_line_error(capsys) and not out.exists()
    assert score_main(_score(artifact, traffic, out, "--overwrite")) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), first)
    assert rejects.exists()
    # Spark: the same rule (tests/test_spark.py::test_cli_engine_spark_writes_the_same_datasets)


def test_an_output_named_for_another_format_is_refused(artifact, traffic, tmp_path, capsys):
    for name in ("decisions.csv", "decisions.CSV.gz", "decisions.json"):
        assert score_main(_score(artifact, traffic, tmp_path / name)) == 2
        assert "written as Parquet" in _one_line_error(capsys)
        assert not (tmp_path / name).exists()
    assert score_main(_score(artifact, traffic, tmp_path / "d.parquet", "--rejects", str(tmp_path / "r.csv"))) == 2
    assert "--rejects" in _one_line_error(capsys)


def test_writability_is_probed_with_a_real_file_before_any_work(monkeypatch, tmp_path, capsys):
    # as root on some FUSE and overlay mounts (and /proc): the mode bits say writable, creating a file fails
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    with pytest.raises(OutputError, match="no file can be created in /proc"):
        check_writable("--out", Path("/proc/router.joblib"))
    with pytest.raises(OutputError, match="no file can be created"):
        check_writable("--report", Path("/proc/report"), directory=True)
    check_writable("--out", tmp_path / "new" / "router.joblib")  # a writable place passes, and is left clean
    assert list(tmp_path.iterdir()) == []
    started = time.perf_counter()
    assert fit_main(["--out", "/proc/router.joblib", "--report", str(tmp_path / "r"), "--quiet"]) == 1
    assert "cannot write --out" in _one_line_error(capsys)
    assert time.perf_counter() - started < 30  # refused before the data was even built


# --------------------------------------------------------------------------- #
# cryptic: folders, spellings
# --------------------------------------------------------------------------- #


def test_a_parquet_dataset_folder_is_read_as_one_table(logged, artifact, tmp_path, capsys):
    folder = tmp_path / "logs"
    folder.mkdir()
    queries = logged["query_id"].unique()
    for index, part in enumerate(np.array_split(queries, 3)):
        logged[logged["query_id"].isin(part)].to_parquet(folder / f"part-{index:05d}.parquet")
    (folder / "_SUCCESS").write_text("")  # as Spark leaves it
    from_folder, from_frame = read_table(folder), read_table(logged)
    assert list(from_folder.query_ids) == list(from_frame.query_ids)
    np.testing.assert_array_equal(from_folder.quality, from_frame.quality)
    np.testing.assert_array_equal(from_folder.cost, from_frame.cost)
    # the local scorer streams one file: a folder is refused with the way out, not "does not exist"
    assert score_main(_score(artifact, folder, tmp_path / "d.parquet")) == 2
    assert "is a folder" in _one_line_error(capsys)


@pytest.mark.parametrize("respelt", [str.upper, lambda name: name + " "], ids=["case", "trailing-space"])
def test_one_model_spelt_two_ways_is_named(logged, respelt):
    frame = logged.copy()
    model = frame["model"].iloc[0]
    rows = frame.index[(frame["model"] == model) & (frame["query_id"].isin(frame["query_id"].unique()[::2]))]
    frame.loc[rows, "model"] = respelt(model)
    with pytest.raises(ValueError, match="differ only in case or spaces") as caught:
        read_table(frame)
    assert repr(model) in str(caught.value) and repr(respelt(model)) in str(caught.value)


# --------------------------------------------------------------------------- #
# silently wrong: train/test leakage through repeated prompts
# --------------------------------------------------------------------------- #


@settings(max_examples=60, deadline=None)
@given(n=st.integers(80, 300), seed=st.integers(0, 2**16), repeats=st.integers(0, 60),
       partial_every=st.integers(0, 9), data=st.data())
def test_split_keeps_each_prompt_in_one_part(n, seed, repeats, partial_every, data):
    prompts = np.array([f"prompt {i}" for i in range(n)], dtype=object)
    pairs = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=repeats))
    for a, b in pairs:
        prompts[b] = prompts[a]
    prompts[data.draw(st.lists(st.integers(0, n - 1), max_size=5))] = ""  # no prompt: groups with nothing
    fully = np.ones(n, dtype=bool)
    if partial_every:
        fully[::partial_every + 1] = False
    fractions = (0.5, 0.25, 0.25)
    try:
        parts = split(n, fractions, seed, fully, groups=prompt_groups(prompts))
    except ValueError:  # a part too small once groups move: the size check still holds
        return
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n)), "each query in exactly one part"
    assert shared_groups(parts, prompt_groups(prompts)) == 0
    assert fully[parts[2]].all()
    if len(set(prompts[prompts != ""])) == (prompts != "").sum():  # no prompt repeated: the split by id alone
        for grouped, plain in zip(parts, split(n, fractions, seed, fully), strict=True):
            np.testing.assert_array_equal(grouped, plain)


def test_fit_splits_a_prompt_logged_under_two_ids_into_one_part(logged):
    frame = logged.copy()
    ids = frame["query_id"].unique()
    # retries: the second half of the queries repeat the first half's prompts under their own ids
    first_prompt = frame.drop_duplicates("query_id").set_index("query_id")["prompt"]
    retry = dict(zip(ids[len(ids) // 2:], first_prompt[ids[:len(ids) // 2]], strict=True))
    frame["prompt"] = [retry.get(q, p) for q, p in zip(frame["query_id"], frame["prompt"], strict=True)]
    table = read_table(frame)
    parts = _split(table, (0.5, 0.25, 0.25), 0, False)
    groups = prompt_groups(table.prompts)
    assert shared_groups(split(table.n_queries, (0.5, 0.25, 0.25), 0, table.fully_logged), groups) > 0, \
        "the split by id alone leaks (else this test shows nothing)"
    assert shared_groups(parts, groups) == 0
    assert not set(table.prompts[parts[0]]) & set(table.prompts[parts[2]])


# --------------------------------------------------------------------------- #
# the Python router: foreign types are refused or read as what they mean
# --------------------------------------------------------------------------- #


def _per_query(router, n: int) -> dict:
    known = router.known_categories()
    return {f"{name}s": [known[name][0]] * n for name in known}


def test_router_names_prompts_when_given_a_generator(router):
    with pytest.raises(TypeError, match=r"prompts must be a list .* got generator; pass list\(prompts\)"):
        router.decide((p for p in ["a", "b"]), **_per_query(router, 2))
    with pytest.raises(TypeError, match="tasks must be a list"):
        router.decide(["a"], tasks=iter(_per_query(router, 1)["tasks"]), subtasks=_per_query(router, 1)["subtasks"])


def test_router_refuses_a_task_that_is_not_text(router):
    per_query = _per_query(router, 2)
    for bad, name in ((None, "NoneType"), (3, "int"), (b"x", "bytes")):
        with pytest.raises(TypeError, match=rf"tasks\[0\] is {name} .*not str"):
            router.decide(["a", "b"], tasks=[bad, per_query["tasks"][1]], subtasks=per_query["subtasks"])
        with pytest.raises(TypeError, match=rf"subtasks\[1\] is {name}"):
            router.plan(["a", "b"], tasks=per_query["tasks"], subtasks=[per_query["subtasks"][0], bad])


def test_a_task_never_trained_on_is_warned_of_with_the_count(router):
    per_query = _per_query(router, 3)
    tasks = list(per_query["tasks"])
    tasks[1] = tasks[1].upper() + "-typo"
    with pytest.warns(UnseenCategoryWarning, match="1 of 3 queries name a task the router was never trained on"):
        router.decide(["a", "b", "c"], tasks=tasks, subtasks=per_query["subtasks"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenCategoryWarning)  # the strict mode: trained (or empty) names pass
        router.decide(["a", "b", "c"], **per_query)
        router.decide(["a"], tasks=[per_query["tasks"][0]], subtasks=[""])
        with pytest.raises(UnseenCategoryWarning):
            router.prepare(["a", "b", "c"], tasks=tasks, subtasks=per_query["subtasks"])


def test_observed_response_none_is_no_text_and_bytes_are_refused(router, monkeypatch):
    model = router.models_[0]
    seen = []
    predict = router.estimator.predict

    def spy(*args, **kwargs):
        seen.append(kwargs["responses"][0, 0])
        return predict(*args, **kwargs)

    monkeypatch.setattr(router.estimator, "predict", spy)
    per_query = _per_query(router, 1)
    plain = router.estimates(["q"], [{model: {"cost": 0.001, "response": ""}}], **per_query)[0]
    none = router.estimates(["q"], [{model: {"cost": 0.001, "response": None}}], **per_query)[0]
    assert seen == ["", ""], "the SDK's content=None is no answer text, not the text 'None'"
    np.testing.assert_array_equal(plain.quality, none.quality)
    with pytest.raises(TypeError, match=r"\['response'\] is bytes b'B', not str"):
        router.decide(["q"], [{model: {"cost": 0.001, "response": b"B"}}], **per_query)


# --------------------------------------------------------------------------- #
# scoring: disagreeing rows, rejections explained, unknown models, changing input, dead workers
# --------------------------------------------------------------------------- #


def test_rows_that_disagree_on_the_prompt_reject_their_query(router, artifact, logged, tmp_path):
    frame = logged.copy()
    ids = frame["query_id"].unique()
    for query, column in ((ids[0], "prompt"), (ids[5], "prompt"), (ids[9], "task")):
        rows = frame.index[frame["query_id"] == query]
        frame.loc[rows[1 if query != ids[5] else -1], column] = "something else"
    direct = score_batch(router, frame)  # rows as they are (the Spark path)
    source = tmp_path / "traffic.parquet"
    frame.to_parquet(source)
    for batch_size in ("13", "100000"):  # queries cut across reads, and whole
        out = tmp_path / f"d{batch_size}.parquet"
        assert score_main(_score(artifact, source, out, "--batch-size", batch_size)) == 0
        rejects = pd.read_parquet(out.with_name(out.name.removesuffix(".parquet") + ".rejects.parquet"))
        assert set(rejects["query_id"]) == {ids[0], ids[5], ids[9]}
        assert set(rejects["query_id"]) == set(direct.loc[direct["status"] == STATUS_REJECTED, "query_id"])
        reasons = " ".join(rejects["reason"])
        assert "disagree on the prompt" in reasons and "disagree on the task" in reasons
        assert not set(pd.read_parquet(out)["query_id"]) & {ids[0], ids[5], ids[9]}


def test_a_run_that_rejects_every_row_exits_2_with_the_top_reasons(artifact, logged, tmp_path, capsys):
    renamed = logged.assign(model=logged["model"].str.upper())  # the logs of a renamed model set
    source = tmp_path / "renamed.parquet"
    renamed.to_parquet(source)
    out = tmp_path / "d.parquet"
    assert score_main(_score(artifact, source, out)) == 2
    err = _one_line_error(capsys)
    assert f"nothing was scored: all {len(renamed)} input row(s) were rejected" in err
    assert "top reasons: " in err and "spelt differently (case or spaces)" in err
    assert out.exists() and len(pd.read_parquet(out.with_name("d.rejects.parquet"))) == len(renamed)


def test_max_reject_share_turns_too_many_rejects_into_exit_2(artifact, logged, tmp_path, capsys):
    frame = logged.copy()
    frame.loc[3, "cost_usd"] = -1.0  # one query of 200 rejected: 8 of 1,600 rows
    source = tmp_path / "traffic.parquet"
    frame.to_parquet(source)
    assert score_main(_score(artifact, source, tmp_path / "a.parquet", "--max-reject-share", "0.01")) == 0
    err = capsys.readouterr().err
    assert "warning: 8 input row(s) rejected" in err and "1 x cost_usd must be a finite number" in err
    assert "7 more row(s) rejected with their query" in err
    assert score_main(_score(artifact, source, tmp_path / "b.parquet", "--max-reject-share", "0.001")) == 2
    assert "more than --max-reject-share 0.001" in _one_line_error(capsys)
    assert (tmp_path / "b.parquet").exists(), "the results and the rejects are written first"
    assert score_main(_score(artifact, source, tmp_path / "c.parquet", "--max-reject-share", "1")) == 2  # usage


def test_an_unknown_models_row_does_not_reject_a_query_that_replays_without_it(artifact, logged, tmp_path):
    query = logged["query_id"].iloc[0]
    extra = logged[logged["query_id"] == query].iloc[[0]].assign(model="gpt-9")
    frame = pd.concat([extra, logged], ignore_index=True)  # an extra row of a model the router does not know
    clean, noisy = tmp_path / "clean.parquet", tmp_path / "noisy.parquet"
    logged.to_parquet(clean)
    frame.to_parquet(noisy)
    assert score_main(_score(artifact, clean, tmp_path / "c.parquet")) == 0
    assert score_main(_score(artifact, noisy, tmp_path / "n.parquet")) == 0
    expected = pd.read_parquet(tmp_path / "c.parquet").drop(columns="row")
    got = pd.read_parquet(tmp_path / "n.parquet").drop(columns="row")
    pd.testing.assert_frame_equal(got, expected)
    rejects = pd.read_parquet(tmp_path / "n.rejects.parquet")
    assert list(rejects["row"]) == [0] and "unknown model 'gpt-9', left out" in rejects["reason"].iloc[0]


def test_an_input_that_changes_while_it_is_scored_is_refused(artifact, logged, tmp_path, monkeypatch, capsys):
    source = tmp_path / "traffic.csv"
    head = logged.iloc[:800]
    head.to_csv(source, index=False)
    first_pass = score_module.scattered_queries

    def appended_meanwhile(path, batch_size):
        found = first_pass(path, batch_size)
        logged.iloc[800:].to_csv(source, mode="a", header=False, index=False)  # the writer goes on
        return found

    monkeypatch.setattr(score_module, "scattered_queries", appended_meanwhile)
    out = tmp_path / "d.parquet"
    assert score_main(_score(artifact, source, out)) == 2
    assert "changed while it was being scored" in _one_line_error(capsys)
    assert not out.exists()


def _pool_workers(pid: int) -> set[int]:
    """Spawned worker processes whose parent is ``pid`` (not the resource tracker, also a child)."""
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            command = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid) and b"spawn_main" in command:
            found.add(int(status.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes in /proc")
def test_a_killed_worker_ends_the_run_and_resume_completes_it(artifact, logged, tmp_path):
    source = tmp_path / "traffic.parquet"
    # 32,000 rows in batches of 200: the run lasts long after the first batch is done, so the killed worker holds
    # a batch (with 5 batches, as this test once had, the workers could finish them all before the kill, and the
    # run then rightly ended complete, with exit status 0: a CI failure)
    pd.concat([logged.assign(query_id=logged["query_id"] + f"#{copy}") for copy in range(20)],
              ignore_index=True).to_parquet(source)
    out = tmp_path / "d.parquet"
    command = [sys.executable, "-m", "training.score",
               *_score(artifact, source, out, "--workers", "2", "--batch-size", "200")]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = out.with_name(out.name + ".partial") / "progress.json"
    deadline = time.time() + 180
    while time.time() < deadline:  # a batch done: the workers are up and scoring
        assert process.poll() is None, process.communicate()
        try:
            if json.loads(progress.read_text())["done"] >= 1:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    workers = sorted(_pool_workers(process.pid))
    assert workers, "no worker process found"
    os.kill(workers[0], signal.SIGKILL)  # as the out-of-memory killer does
    try:
        _, err = process.communicate(timeout=60)  # it hung forever before
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the run waits forever for the dead worker's batch") from None
    assert process.returncode == 1, (process.returncode, err[-800:])
    assert f"worker process {workers[0]} died (killed by SIGKILL" in err and "--resume" in err
    assert not out.exists() and progress.exists()
    assert score_main(_score(artifact, source, out, "--workers", "2", "--batch-size", "200", "--resume")) == 0
    clean = tmp_path / "clean.parquet"
    assert score_main(_score(artifact, source, clean, "--workers", "1", "--batch-size", "200")) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(clean))


def test_a_bytes_column_of_text_is_refused_not_read_as_its_repr(artifact, logged, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(logged, preserve_index=False)
    responses = pa.array([text.encode() for text in logged["response"]], pa.binary())
    table = table.set_column(table.schema.get_field_index("response"), "response", responses)
    source = tmp_path / "bytes.parquet"
    pq.write_table(table, source)
    assert score_main(_score(artifact, source, tmp_path / "d.parquet")) == 2
    assert "column 'response' holds binary (bytes), not text" in _one_line_error(capsys)
