"""The routing service with the official openai client on loopback, fake upstreams on loopback.

The cascade the service runs must be the plain Router's: the same Observed
driven through ``Router.decide`` gives the upstream calls, ``Router.select``
the answer, ``usage × prices`` the cost.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import httpx
import openai
import pytest
from servekit import answer_of, backends_toml, serving, usage_of

from training.data import read_table
from training.serving.backends import load_backends
from training.serving.service import ServiceConfig, create_app
from training.synthetic import make_benchmark

pytestmark = pytest.mark.usefixtures("upstreams")  # every test starts with the fake upstreams reset


@pytest.fixture(scope="module")
def backends_file(tmp_path_factory, upstream_server, serve_router):
    path = tmp_path_factory.mktemp("backends") / "backends.toml"
    path.write_text(backends_toml(upstream_server.url, serve_router.models_))
    return path


@pytest.fixture(scope="module")
def service(serve_router, backends_file):
    backends = load_backends(backends_file, serve_router.models_, serve_router.estimator.token_prices)
    with serving(create_app(serve_router, backends)) as (url, _):
        yield url, backends


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=f"{service[0]}/v1", api_key="not-checked", max_retries=0)


@pytest.fixture(scope="module")
def queries(serve_router):
    table = read_table(make_benchmark(60, seed=21)).select_models(list(serve_router.models_))
    return list(zip(table.prompts, table.tasks, table.subtasks, strict=True))


def expected_cascade(router, backends, prompt, task, subtask, budget=None):
    """The plain router driven with the fake upstreams' answers: (models called, selected, costs)."""
    kw = {"tasks": [task], "subtasks": [subtask]}
    observed = {}
    while (model := router.decide([prompt], [observed], budget, **kw)[0]) is not None:
        observed[model] = {"cost": backends[model].cost(*usage_of(model, prompt)),
                           "response": answer_of(model, prompt)}
    return list(observed), router.select([prompt], [observed], **kw)[0], [r["cost"] for r in observed.values()]


def _messages(prompt):
    return [{"role": "system", "content": "Answer with one letter."}, {"role": "user", "content": prompt}]


@pytest.mark.parametrize("model, budget", [("router", None), ("router@0.0005", 0.0005)])
def test_upstream_calls_follow_router_decide_and_the_answer_is_router_select(
        client, service, upstreams, serve_router, queries, model, budget):
    depths = []
    for prompt, task, subtask in queries[:24]:
        upstreams.calls.clear()
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=_messages(prompt), metadata={"task": task, "subtask": subtask})
        completion = raw.parse()
        called, selected, costs = expected_cascade(serve_router, service[1], prompt, task, subtask, budget)
        assert upstreams.calls == [(m, prompt) for m in called]
        assert raw.headers["x-router-models"] == ",".join(called)
        assert raw.headers["x-router-selected"] == selected == completion.model
        assert completion.choices[0].message.content == answer_of(selected, prompt)
        assert float(raw.headers["x-router-cost-usd"]) == pytest.approx(sum(costs), rel=1e-12)
        steps = [float(ms) for ms in raw.headers["x-router-latency-ms"].split(",")]
        assert len(steps) == len(called) and all(ms > 0 for ms in steps)
        assert sum(steps) == pytest.approx(float(raw.headers["x-router-upstream-ms"]), abs=0.01)
        account = completion.model_extra["router"]
        assert [s["model"] for s in account["steps"]] == called and account["failed"] == []
        assert [s["cost_usd"] for s in account["steps"]] == pytest.approx(costs, rel=1e-12)
        assert account["budget"] == (budget or max(serve_router.budgets))
        tokens = [usage_of(m, prompt) for m in called]
        assert completion.usage.prompt_tokens == sum(t[0] for t in tokens)
        assert completion.usage.completion_tokens == sum(t[1] for t in tokens)
        depths.append(len(called))
    # the cases include cascades whose depth varies by query (the synthetic default cascades at every budget)
    assert max(depths) >= 2 and len(set(depths)) >= 2, f"the cases should include cascades, got depths {depths}"


def test_the_upstream_receives_the_conversation_and_forwarded_parameters(service, upstreams, queries):
    prompt, task, subtask = queries[0]
    reply = httpx.post(f"{service[0]}/v1/chat/completions", json={
        "model": "router", "messages": _messages(prompt), "metadata": {"task": task, "subtask": subtask},
        "temperature": 0.0, "max_tokens": 5, "user": "u1"})
    assert reply.status_code == 200
    called = reply.headers["x-router-models"].split(",")
    assert [body["model"] for body in upstreams.bodies] == [f"up-{m}" for m in called]
    for body in upstreams.bodies:
        assert body == {"model": body["model"], "messages": _messages(prompt), "stream": False,
                        "temperature": 0.0, "max_tokens": 5, "user": "u1"}


def test_streaming_sends_the_selected_answer_as_chunks(client, service, serve_router, queries):
    prompt, task, subtask = queries[3]
    stream = client.chat.completions.create(model="router", messages=_messages(prompt), stream=True,
                                            stream_options={"include_usage": True},
                                            metadata={"task": task, "subtask": subtask})
    chunks = list(stream)
    called, selected, _ = expected_cascade(serve_router, service[1], prompt, task, subtask)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer_of(selected, prompt)
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == sum(usage_of(m, prompt)[0] for m in called)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_route_gives_the_decision_only(service, upstreams, serve_router, queries):
    prompt, task, subtask = queries[5]
    kw = {"tasks": [task], "subtasks": [subtask]}
    first = serve_router.models_[0]
    observed = {first: {"cost": 1e-4, "response": "B"}}
    with httpx.Client(base_url=service[0]) as http:
        ante = http.post("/v1/route", json={"model": "router", "messages": _messages(prompt),
                                            "metadata": {"task": task, "subtask": subtask}}).json()
        post = http.post("/v1/route", json={"model": "router@0.0005", "messages": _messages(prompt),
                                            "metadata": {"task": task, "subtask": subtask}, "observed": observed,
                                            "excluded": [serve_router.models_[1]]}).json()
    plan = serve_router.plan([prompt], **kw)[0]
    assert ante == {"next": plan.next, "models": list(plan.models), "select": None, "budget": 0.001}
    plan = serve_router.plan([prompt], [observed], 0.0005, excluded=[{serve_router.models_[1]}], **kw)[0]
    assert post["next"] == plan.next and post["models"] == list(plan.models)
    assert post["select"] == first and post["budget"] == 0.0005
    assert upstreams.calls == []


def test_models_healthz_and_metrics(client, service, upstreams, serve_router, queries):
    assert [m.id for m in client.models.list()] == ["router", "router@0.0005", "router@0.001"]
    with httpx.Client(base_url=service[0]) as http:
        assert http.get("/healthz").json() == {"status": "ok", "models": list(serve_router.models_)}
        before = http.get("/metrics").text
        prompt, task, subtask = queries[7]
        client.chat.completions.create(model="router", messages=_messages(prompt),
                                       metadata={"task": task, "subtask": subtask})
        after = http.get("/metrics").text
    called, selected, costs = expected_cascade(serve_router, service[1], prompt, task, subtask)

    def value(text, sample):
        lines = [line for line in text.splitlines() if line.startswith(sample + " ")]
        return float(lines[0].split()[-1]) if lines else 0.0

    for model in called:
        sample = f'router_decisions_total{{model="{model}"}}'
        assert value(after, sample) - value(before, sample) == 1
    spent = sum(value(after, f'router_spend_usd_total{{model="{m}"}}')
                - value(before, f'router_spend_usd_total{{model="{m}"}}') for m in serve_router.models_)
    assert spent == pytest.approx(sum(costs), rel=1e-9)
    assert value(after, 'router_budget_usd{budget="0.001"}') == 0.001
    assert value(after, 'router_query_cost_usd_count{budget="0.001"}') - value(
        before, 'router_query_cost_usd_count{budget="0.001"}') == 1
    assert 'router_requests_total{endpoint="/v1/chat/completions",status="200"}' in after
    assert "router_overhead_seconds_bucket" in after and "router_upstream_seconds_bucket" in after


@pytest.mark.parametrize("body, param, code", [
    (b"{not json", None, "invalid_json"),
    (b"\xff\xfe", None, "invalid_json"),
    (b"[1, 2]", None, "invalid_json"),
    (b'{"model": "router"}', "messages", "invalid_value"),
    (b'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}', "model", "model_not_found"),
    (b'{"model": "router@abc", "messages": [{"role": "user", "content": "hi"}]}', "model", "model_not_found"),
    (b'{"model": "router@0.00001", "messages": [{"role": "user", "content": "hi"}], "metadata": {"task": "t"}}',
     "model", "model_not_found"),
    (b'{"model": "router", "messages": [{"role": "system", "content": "hi"}], "metadata": {"task": "t"}}',
     "messages", "invalid_value"),
    (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}]}', "metadata.task", "invalid_value"),
    (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "n": 2}', "n", "unsupported_parameter"),
    (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "tempreature": 1}', "tempreature",
     "unknown_parameter"),
    (b'{"model": "router", "messages": [{"role": "user", "content": 7}], "metadata": {"task": "t"}}',
     "messages[0]", "invalid_value"),
    (b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "stream": "yes", '
     b'"metadata": {"task": "t"}}', "stream", "invalid_value"),
])
def test_a_malformed_request_gets_400_in_openai_error_format(service, upstreams, body, param, code):
    with httpx.Client(base_url=service[0]) as http:
        reply = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert error["message"]
    assert upstreams.calls == []


def test_the_openai_client_sees_a_bad_model_as_bad_request(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found" and "router@BUDGET" in raised.value.message


def test_prices_come_from_the_artifact_when_backends_toml_has_none(tmp_path, serve_router, upstreams, queries):
    path = tmp_path / "backends.toml"
    path.write_text(backends_toml(upstreams.url, serve_router.models_, prices=False))
    backends = load_backends(path, serve_router.models_, serve_router.estimator.token_prices)
    prices = serve_router.estimator.token_prices
    assert prices and all((b.price_in, b.price_out) == prices[name] for name, b in backends.items())
    prompt, task, subtask = queries[1]
    with serving(create_app(serve_router, backends, ServiceConfig(budget=0.0005))) as (url, _):
        reply = httpx.post(f"{url}/v1/chat/completions", json={
            "model": "router", "messages": _messages(prompt), "metadata": {"task": task, "subtask": subtask}})
    called, _, costs = expected_cascade(serve_router, backends, prompt, task, subtask, 0.0005)
    expected = sum((usage_of(m, prompt)[0] * prices[m][0] + usage_of(m, prompt)[1] * prices[m][1]) / 1e6
                   for m in called)
    assert float(reply.headers["x-router-cost-usd"]) == pytest.approx(expected, rel=1e-12)
    assert reply.json()["router"]["budget"] == 0.0005


def test_pacing_is_shared_across_requests_and_records_each_querys_cost(serve_router, service, queries):
    app = create_app(serve_router, service[1], ServiceConfig(budget=0.001, pace=True))
    paced = app.app.state.service.paced
    costs = []
    with serving(app) as (url, _):
        for prompt, task, subtask in queries[:6]:
            state = paced.state()
            reply = httpx.post(f"{url}/v1/chat/completions", json={
                "model": "router", "messages": _messages(prompt), "metadata": {"task": task, "subtask": subtask}})
            assert reply.json()["router"]["paced"] is True and reply.json()["router"]["budget"] == 0.001
            costs.append(float(reply.headers["x-router-cost-usd"]))
            expected = paced.router.plan([prompt], tasks=[task], subtasks=[subtask],
                                         policy=replace(paced.base, lambdas=state.lambdas))[0].next
            assert reply.headers["x-router-models"].split(",")[0] == expected
        unpaced = httpx.post(f"{url}/v1/chat/completions", json={
            "model": "router@0.001", "messages": _messages(prompt), "metadata": {"task": task, "subtask": subtask}})
        assert unpaced.json()["router"]["paced"] is False
        metrics = httpx.get(f"{url}/metrics").text
    state = paced.state()
    assert state.n_queries == 6 and state.total_cost == pytest.approx(sum(costs), rel=1e-12)
    assert f"router_pacing_factor {state.factor!r}" in metrics


@pytest.mark.parametrize("limit", ["below the prompt", "above the prompt", "zero"])
def test_a_step_runs_on_a_decision_thread_only_when_its_new_text_is_over_the_limit(serve_router, service, queries,
                                                                                   monkeypatch, limit):
    prompt, task, subtask = max(queries[:20], key=lambda query: len(query[0]))
    inline = {"below the prompt": len(prompt) - 1, "above the prompt": len(prompt), "zero": 0}[limit]
    app = create_app(serve_router, service[1], ServiceConfig(inline_decision_chars=inline))
    state = app.app.state.service
    threads = []

    def recording(step):
        def wrapped(*args, **kwargs):
            threads.append(threading.current_thread().name)
            return step(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(state, "_step", recording(state._step))
    monkeypatch.setattr(state.router, "prepare", recording(state.router.prepare))  # /v1/route prepares once
    metadata = {"task": task, "subtask": subtask}
    with serving(app) as (url, _):
        reply = httpx.post(f"{url}/v1/chat/completions", json={
            "model": "router", "messages": _messages(prompt), "metadata": metadata})
        called = reply.headers["x-router-models"].split(",")
        steps = threads[:]  # every _step prepares only at the first step, so: step, prepare, step, step...
        threads.clear()
        routed = httpx.post(f"{url}/v1/route", json={"model": "router", "messages": _messages(prompt),
                                                     "metadata": metadata})
    assert reply.status_code == 200 and routed.status_code == 200
    on_thread = [name.startswith("router-decide") for name in steps]
    assert len(on_thread) == len(called) + 2  # one step per call, one that stops, one prepare inside the first
    # The first step reads the prompt; every later one reads a one-letter answer from the fake upstreams.
    expected_first = limit != "above the prompt"
    assert on_thread[:2] == [expected_first] * 2 and on_thread[2:] == [limit == "zero"] * (len(on_thread) - 2)
    assert [name.startswith("router-decide") for name in threads] == [expected_first]


def test_the_service_process_freezes_its_start_up_objects_and_collects_young_ones_less_often():
    """``training.serve`` settles its heap before serving (decision 165); in a child, not to freeze pytest's."""
    import subprocess
    import sys

    script = ("import gc; from training.serve import YOUNG_GC_OBJECTS, _settle_heap; "
              "before = gc.get_threshold(); assert gc.get_freeze_count() == 0; _settle_heap(); "
              "after = gc.get_threshold(); "
              "print(gc.get_freeze_count(), after[0] == YOUNG_GC_OBJECTS, after[1:] == before[1:])")
    frozen, young, older = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                          check=True).stdout.split()
    assert int(frozen) > 1000 and young == older == "True"
