"""The traffic log, exploration and feedback of the service (issue 34), against fake upstreams on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from servekit import UPSTREAM_KEY, answer_of, keyed_backends, serving

from training.data import read_table
from training.explore import Exploration
from training.serving.service import ServiceConfig, create_app
from training.serving.traffic import LogConfig, TrafficLog, request_rows
from training.synthetic import make_benchmark
from training.traffic_log import read_logs

pytestmark = pytest.mark.usefixtures("upstreams")

CALLER_KEY = "caller-key-" + "k" * 40
KEY_ENV = "UPSTREAM_TRAFFIC_TEST_KEY"


@pytest.fixture(scope="module")
def backends(serve_router, upstream_server, tmp_path_factory):
    return keyed_backends(tmp_path_factory.mktemp("backends"), upstream_server.url, serve_router.models_,
                          key_env=KEY_ENV, timeout_s=5.0)


@pytest.fixture(scope="module")
def prompts(serve_router):
    table = read_table(make_benchmark(40, seed=5)).select_models(list(serve_router.models_))
    return list(zip(table.prompts, table.tasks, table.subtasks, strict=True))


def _ask(client, prompt, task, subtask, model="router"):
    response = client.post("/v1/chat/completions", json={
        "model": model, "metadata": {"task": task, "subtask": subtask},
        "messages": [{"role": "user", "content": prompt}]})
    assert response.status_code == 200, response.text
    return response


def _app(serve_router, backends, folder, **config):
    log = LogConfig(folder, max_rows=7, max_seconds=0.2)
    return create_app(serve_router, backends, ServiceConfig(api_key=CALLER_KEY, log=log, **config))


def _serve(serve_router, backends, folder, **config):
    return serving(_app(serve_router, backends, folder, **config))


def _client(url):
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {CALLER_KEY}"}, timeout=30)


def test_logged_rows_read_back_with_their_answers_costs_and_labels(serve_router, backends, prompts, tmp_path):
    folder = tmp_path / "log"
    served = {}
    with _serve(serve_router, backends, folder) as (url, _), _client(url) as client:
        for prompt, task, subtask in prompts[:20]:
            response = _ask(client, prompt, task, subtask)
            request_id = response.headers["x-router-request-id"]
            assert response.json()["router"]["request_id"] == request_id
            served[request_id] = (prompt, response.json()["router"])
        for request_id in served:  # label every answer the user got: 1 when it is "A"
            prompt, account = served[request_id]
            label = client.post("/v1/feedback", json={"id": request_id,
                                                      "quality": float(answer_of(account["selected"], prompt) == "A")})
            assert label.status_code == 202, label.text
        metrics_text = client.get("/metrics").text
    assert len(list(folder.glob("traffic-*.parquet"))) > 1  # rolled by rows (7 per file)
    rows = read_logs(folder, keep_unlabelled=True)
    assert sorted(set(rows["query_id"])) == sorted(served)
    for request_id, (prompt, account) in served.items():
        mine = rows[rows["query_id"] == request_id].sort_values("step")
        assert list(mine["model"]) == account["models"]
        assert list(mine["cost_usd"]) == pytest.approx([step["cost_usd"] for step in account["steps"]])
        assert list(mine["response"]) == [answer_of(model, prompt) for model in account["models"]]
        assert (mine["propensity"] == 1.0).all() and not mine["explored"].any()
        picked = mine[mine["selected"]]
        assert list(picked["model"]) == [account["selected"]]
        assert list(picked["quality"]) == [float(answer_of(account["selected"], prompt) == "A")]
        assert mine[~mine["selected"]]["quality"].isna().all()  # only the labelled answer has a quality
    baseline = max(backends, key=lambda m: (backends[m].price_out, backends[m].price_in))
    for request_id, (_, account) in served.items():  # savings against the dearest model at these tokens
        mine = rows[rows["query_id"] == request_id]
        tokens = mine["input_tokens"].max(), round(mine["output_tokens"].mean())
        assert account["baseline_model"] == baseline and set(mine["baseline_model"]) == {baseline}
        assert account["baseline_cost_usd"] == pytest.approx(backends[baseline].cost(*map(int, tokens)))
        assert account["saving_usd"] == pytest.approx(account["baseline_cost_usd"] - account["cost_usd"])
    saved = sum(account["saving_usd"] for _, account in served.values())
    assert float(metrics_text.split("\nrouter_saving_usd ")[1].split()[0]) == pytest.approx(saved, rel=1e-9)
    table = read_table(folder)  # the folder itself, as training.fit --data reads it: the labelled rows
    assert sorted(table.query_ids) == sorted(served)
    assert int(table.logged.sum()) == len(served)
    assert np.all(table.propensity[table.logged] == 1.0)


@pytest.mark.parametrize("draws", [1, 2])
def test_exploration_logs_its_propensity_and_its_spend_is_paced(serve_router, backends, prompts, tmp_path, draws):
    folder, epsilon = tmp_path / "log", 0.6
    app = _app(serve_router, backends, folder, pace=True, explore=epsilon, explore_models=draws)
    service = app.app.state.service
    with serving(app) as (url, _), _client(url) as client:
        for prompt, task, subtask in prompts:
            _ask(client, prompt, task, subtask)
        _ask(client, *prompts[0], model="router@0.001")  # a named budget is never explored
    state = service.paced.state()  # the server has stopped: every exploration call has ended
    rows = read_logs(folder, keep_unlabelled=True)
    extra = rows[rows["explored"]]
    assert len(extra) > 0
    assert np.allclose(extra["propensity"], epsilon * draws / len(serve_router.models_))
    assert extra.groupby("query_id").size().max() <= draws
    for request_id, mine in extra.groupby("query_id"):  # an exploration call is one the cascade did not make
        cascade = rows[(rows["query_id"] == request_id) & ~rows["explored"]]
        assert not set(mine["model"]) & set(cascade["model"])
    named = rows[~rows["paced"]]
    assert len(named) and not named["explored"].any()
    # Exploration spend is paced like any other: the controller saw each paced request once, at its whole cost.
    paced = rows[rows["paced"]].groupby("query_id")["cost_usd"].sum()
    assert state.n_queries == len(paced) == len(prompts)
    assert state.total_cost == pytest.approx(paced.sum(), rel=1e-9)
    assert np.allclose(rows[rows["paced"]].groupby("query_id")["request_cost_usd"].first(), paced)


def test_exploration_needs_pacing_and_a_log(tmp_path):
    with pytest.raises(ValueError, match="--pace and --log-dir"):
        ServiceConfig(explore=0.1, log=LogConfig(tmp_path))
    with pytest.raises(ValueError, match="probability"):
        ServiceConfig(explore=1.5, pace=True, log=LogConfig(tmp_path))


def test_feedback_is_authenticated_checked_and_404_for_an_unknown_id(serve_router, backends, prompts, tmp_path):
    with _serve(serve_router, backends, tmp_path / "log") as (url, _), _client(url) as client:
        request_id = _ask(client, *prompts[0]).headers["x-router-request-id"]
        unknown = client.post("/v1/feedback", json={"id": "req-" + "0" * 32, "quality": 1.0})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_request"
        anonymous = httpx.post(f"{url}/v1/feedback", json={"id": request_id, "quality": 1.0})
        assert anonymous.status_code == 401
        assert client.post("/v1/feedback", content=b'{"id": 1}', headers={"content-type": "text/plain"}
                           ).status_code == 415
        assert client.post("/v1/feedback", json={"id": request_id, "quality": "good"}).status_code == 400
        assert client.post("/v1/feedback", json={"id": request_id, "quality": 1.0, "model": "nobody"}
                           ).status_code == 400
        assert client.post("/v1/feedback", json={"id": request_id, "quality": 0.5}).status_code == 202


def test_feedback_ids_survive_a_restart(serve_router, backends, prompts, tmp_path):
    """A restarted service reads the ids (and answering models) of the last ``feedback_ids`` requests from its log."""
    folder = tmp_path / "log"
    with _serve(serve_router, backends, folder) as (url, _), _client(url) as client:
        answers = {}
        for prompt in prompts[:3]:
            response = _ask(client, *prompt)
            answers[response.headers["x-router-request-id"]] = response.json()["router"]["selected"]
    first, *_, last = answers
    with _serve(serve_router, backends, folder, feedback_ids=2) as (url, _), _client(url) as client:
        label = client.post("/v1/feedback", json={"id": last, "quality": 1.0})
        assert label.status_code == 202 and label.json()["model"] == answers[last], label.text
        assert client.post("/v1/feedback", json={"id": first, "quality": 1.0}).status_code == 404  # beyond 2
    labelled = read_logs(folder)
    assert labelled[["query_id", "model"]].values.tolist() == [[last, answers[last]]]


def test_feedback_without_a_log_is_404(serve_router, backends, prompts):
    app = create_app(serve_router, backends, ServiceConfig(api_key=CALLER_KEY))
    with serving(app) as (url, _), _client(url) as client:
        request_id = _ask(client, *prompts[0]).headers["x-router-request-id"]
        answer = client.post("/v1/feedback", json={"id": request_id, "quality": 1.0})
        assert answer.status_code == 404 and "--log-dir" in answer.json()["error"]["message"]


def test_keys_never_reach_the_log(serve_router, backends, prompts, tmp_path):
    folder = tmp_path / "log"
    with _serve(serve_router, backends, folder, pace=True, explore=1.0) as (url, _), _client(url) as client:
        for prompt, task, subtask in prompts[:10]:
            request_id = _ask(client, prompt, task, subtask).headers["x-router-request-id"]
            client.post("/v1/feedback", json={"id": request_id, "quality": 1.0})
    files = [p for p in folder.iterdir()]
    assert files and all(p.name.endswith(".parquet") and not p.name.startswith(".") for p in files)
    for path in files:
        text = pd.read_parquet(path).to_json(date_format="iso")
        data = path.read_bytes()
        for key in (UPSTREAM_KEY, CALLER_KEY):
            assert key not in text and key.encode() not in data


def test_a_labels_table_is_joined_by_request_id(serve_router, backends, prompts, tmp_path):
    folder = tmp_path / "log"
    with _serve(serve_router, backends, folder) as (url, _), _client(url) as client:
        ids = [_ask(client, *query).headers["x-router-request-id"] for query in prompts[:6]]
    assert read_logs(folder).empty  # nothing labelled yet
    labels = pd.DataFrame({"query_id": ids[:4], "quality": [1.0, 0.0, 1.0, 0.0]})
    rows = read_logs(folder, labels)
    assert list(rows.sort_values("query_id")["quality"]) == list(labels.sort_values("query_id")["quality"])
    assert rows["selected"].all()
    with pytest.raises(ValueError, match="requests the log does not hold"):
        read_logs(folder, pd.DataFrame({"query_id": ["req-nope"], "quality": [1.0]}))


def test_a_full_queue_drops_and_a_full_disk_refuses_without_blocking(tmp_path):
    log = TrafficLog(tmp_path / "a", max_rows=1, max_bytes=1, queue_requests=1)
    try:
        row = _row("q0")
        while log.submit([row]):  # the writer drains; eventually the one-slot queue is full or all is written
            if log.written_files >= 1:
                break
        deadline = time.monotonic() + 10
        while log.written_files < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.written_files == 1
        for i in range(5):
            log.submit([_row(f"q{i + 1}")])
    finally:
        log.close()
    assert log.written_files == 1  # the folder is over max_bytes: later rows are counted, not written
    assert log.refused_rows + log.dropped_rows >= 5
    assert len(list((tmp_path / "a").glob("traffic-*.parquet"))) == 1


def _row(query_id):
    class Reply:
        text, cost, prompt_tokens, completion_tokens = "A", 0.001, 10, 1

    class Step:
        model, reply, failure, seconds = "m", Reply(), None, 0.01

    return request_rows(query_id, "p", "", "", [Step()], "m", budget=1.0, lambdas=[1.0], paced=False, cost=0.001,
                        explored=0, exploration=Exploration(0.0), n_models=1)[0]


@pytest.mark.slow
def test_sigkill_mid_run_leaves_only_complete_files(tmp_path):
    folder = tmp_path / "log"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.getcwd()!r}); sys.path.insert(0, {os.path.join(os.getcwd(), "tests")!r})
        from test_traffic_log import _row
        from training.serving.traffic import TrafficLog
        log = TrafficLog({str(folder)!r}, max_rows=2000, max_seconds=1e9)
        i = 0
        while True:
            log.submit([_row(f"q{{i}}")]); i += 1
            if i % 2000 == 0:
                print(log.written_files, flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        while int(child.stdout.readline() or 0) < 3:  # several files done, more being written
            pass
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finals = sorted(folder.glob("traffic-*.parquet"))
    assert len(finals) >= 3
    rows = read_logs(folder, keep_unlabelled=True)
    assert len(rows) == 2000 * len(finals)  # every final file complete
    assert all(p.name.startswith(("traffic-", ".")) for p in folder.iterdir())
    TrafficLog(folder).close()  # the next log removes a leftover temporary file
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    labelled = pd.DataFrame({"query_id": rows["query_id"][:50], "quality": 1.0})
    assert len(read_table(read_logs(folder, labelled)).query_ids) == 50


@pytest.mark.parametrize("k, m", [(4, 1), (4, 2), (5, 3), (3, 3)])
def test_exploration_probabilities_are_those_of_the_draw(k, m):
    """Exact enumeration of every draw: a row's propensity and a path's probability of being wholly logged."""
    import itertools
    from math import comb

    from training.explore import Exploration

    epsilon, models = 0.3, [f"m{i}" for i in range(k)]
    exploration = Exploration(epsilon, m)
    draws = list(itertools.combinations(models, m))
    assert len(draws) == comb(k, m)
    cascade = {"m0"}
    for outside in range(k):
        path = set(models[1:outside + 1])  # `outside` models the cascade did not call
        seen = sum(path <= cascade | set(draw) for draw in draws) / len(draws)
        expected = 1.0 if not path else epsilon * seen
        assert exploration.path_probability(len(path), k) == pytest.approx(expected)
    assert exploration.propensity(k) == pytest.approx(epsilon * sum("m1" in d for d in draws) / len(draws))
    rng = __import__("random").Random(0)
    picked = [exploration.draw(rng, models) for _ in range(2000)]
    assert all(len(p) in (0, m) and len(set(p)) == len(p) for p in picked)
    assert abs(np.mean([bool(p) for p in picked]) - epsilon) < 0.05
