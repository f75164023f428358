"""The routing service when things go wrong: upstream faults, start-up errors, shutdown, and who may call.

Every upstream here needs the key :data:`servekit.UPSTREAM_KEY`, and the
fake upstreams put it in their error bodies; the leak test greps
everything the service emitted during the fault tests (responses, headers,
logs, metrics, exception messages) for it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import replace

import httpx
import openai
import pytest
from servekit import UPSTREAM_KEY, answer_of, backends_toml, keyed_backends, serving, usage_of

from training.data import read_table
from training.serve import main as serve_main
from training.serving.backends import parse_backends
from training.serving.service import ServiceConfig, create_app
from training.serving.upstream import UpstreamFailure
from training.synthetic import make_benchmark

KEY_ENV = "UPSTREAM_SERVE_TEST_KEY"
CALLER_KEY = "caller-key-0b7d-5c1f9a2e-8d3b-long-enough"


pytestmark = pytest.mark.usefixtures("upstreams")  # every test starts with the fake upstreams reset


@pytest.fixture(scope="module")
def emitted():
    """Everything the service emitted during this module's fault tests, for the leak test at the end."""
    return []


@pytest.fixture(scope="module")
def backends(tmp_path_factory, upstream_server, serve_router):
    return keyed_backends(tmp_path_factory.mktemp("faults"), upstream_server.url, serve_router.models_,
                          key_env=KEY_ENV, timeout_s=0.25)


@pytest.fixture(scope="module")
def service(serve_router, backends):
    with serving(create_app(serve_router, backends)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def queries(serve_router):
    table = read_table(make_benchmark(40, seed=31)).select_models(list(serve_router.models_))
    return list(zip(table.prompts, table.tasks, table.subtasks, strict=True))


@pytest.fixture
def logs(caplog, emitted):
    caplog.set_level(logging.DEBUG)
    yield caplog
    emitted.append(caplog.text)


def _post(url, prompt, task, subtask, emitted, **extra):
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
        "model": "router", "messages": [{"role": "user", "content": prompt}],
        "metadata": {"task": task, "subtask": subtask}, **extra})
    emitted.append(f"{reply.status_code} {dict(reply.headers)} {reply.text}")
    return reply


def _expected(router, backends, prompt, task, subtask, failing, tries=2):
    """The plain router with the failing models excluded once they fail: the attempts the upstreams should see."""
    kw = {"tasks": [task], "subtasks": [subtask]}
    observed, excluded, attempts = {}, set(), []
    while (model := router.decide([prompt], [observed], excluded=[excluded], **kw)[0]) is not None:
        if model in failing:
            attempts += [model] * tries  # tried, retried once unless it timed out, excluded
            excluded.add(model)
        else:
            attempts.append(model)
            observed[model] = {"cost": backends[model].cost(*usage_of(model, prompt)),
                               "response": answer_of(model, prompt)}
    selected = router.select([prompt], [observed], **kw)[0] if observed else None
    return attempts, excluded, selected, sum(r["cost"] for r in observed.values())


def _metric(text, sample):
    lines = [line for line in text.splitlines() if line.startswith(sample + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


@pytest.mark.parametrize("mode, kind, tries", [("timeout", "timeout", 1), ("http500", "http_5xx", 2),
                                               ("malformed", "malformed", 2), ("no_usage", "malformed", 2)])
def test_a_failing_upstream_is_retried_once_then_excluded(service, upstreams, serve_router, backends, queries,
                                                          logs, emitted, mode, kind, tries):
    """A timeout is not retried (issue 29): the next model is the caller's faster way to an answer."""
    prompt, task, subtask = queries[0]
    first = serve_router.decide([prompt], tasks=[task], subtasks=[subtask])[0]
    upstreams.modes[first] = mode
    before = httpx.get(f"{service}/metrics").text
    reply = _post(service, prompt, task, subtask, emitted)
    attempts, excluded, selected, cost = _expected(serve_router, backends, prompt, task, subtask, {first}, tries)
    assert reply.status_code == 200
    assert upstreams.attempts() == attempts and attempts[:tries + 1] == [first] * tries + [attempts[tries]]
    assert attempts[tries] != first
    assert reply.headers["x-router-failed"] == first
    assert reply.headers["x-router-models"] == ",".join(dict.fromkeys(attempts))
    assert reply.headers["x-router-selected"] == selected != first
    assert reply.json()["choices"][0]["message"]["content"] == answer_of(selected, prompt)
    assert float(reply.headers["x-router-cost-usd"]) == pytest.approx(cost, rel=1e-12)
    step = reply.json()["router"]["steps"][0]
    assert step == {**step, "model": first, "ok": False, "attempts": tries, "error": kind, "cost_usd": 0.0}
    after = httpx.get(f"{service}/metrics").text
    emitted.append(after)
    sample = f'router_upstream_errors_total{{kind="{kind}",model="{first}"}}'
    assert _metric(after, sample) - _metric(before, sample) == 1
    assert f"upstream {first} at {upstreams.url}/{first}/v1 failed" in logs.text


def test_a_fault_that_clears_on_the_retry_keeps_the_model(service, upstreams, serve_router, backends, queries,
                                                          logs, emitted):
    prompt, task, subtask = queries[1]
    first = serve_router.decide([prompt], tasks=[task], subtasks=[subtask])[0]
    upstreams.modes[first] = "flaky"
    reply = _post(service, prompt, task, subtask, emitted)
    attempts, _, selected, cost = _expected(serve_router, backends, prompt, task, subtask, set())
    assert reply.status_code == 200 and reply.headers["x-router-failed"] == ""
    assert upstreams.attempts() == [first] + attempts
    assert reply.json()["router"]["steps"][0]["attempts"] == 2
    assert float(reply.headers["x-router-cost-usd"]) == pytest.approx(cost, rel=1e-12)


def test_when_every_upstream_fails_the_reply_is_502_naming_them(service, upstreams, serve_router, queries, logs,
                                                                emitted):
    """The 502 names the models, never their upstream URLs (issue 30); the log has the URLs."""
    prompt, task, subtask = queries[2]
    modes = {model: ("http500", "malformed", "timeout", "no_usage")[i % 4]
             for i, model in enumerate(serve_router.models_)}
    upstreams.modes.update(modes)
    client = openai.OpenAI(base_url=f"{service}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="router", messages=[{"role": "user", "content": prompt}],
                                       metadata={"task": task, "subtask": subtask})
    error = raised.value
    emitted.append(f"{error} {error.body} {error.response.headers}")
    assert error.status_code == 502
    assert error.body["type"] == "upstream_error" and error.body["code"] == "upstream_failed"
    for model in serve_router.models_:
        assert f"model {model} failed" in error.body["message"]
        assert f"upstream {model} at {upstreams.url}/{model}/v1 failed" in logs.text
    assert upstreams.url.removeprefix("http://") not in error.body["message"]
    assert sorted(upstreams.attempts()) == sorted(m for m, mode in modes.items()
                                                  for _ in range(1 + (mode != "timeout")))


def test_an_unreachable_upstream_fails_like_a_timeout(serve_router, backends, queries, logs, emitted):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    dead = {name: replace(b, base_url=f"http://127.0.0.1:{port}/v1") for name, b in backends.items()}
    prompt, task, subtask = queries[3]
    with serving(create_app(serve_router, dead)) as (url, _):
        reply = _post(url, prompt, task, subtask, emitted)
    assert reply.status_code == 502 and "transport error" in reply.json()["error"]["message"]


def test_the_routers_own_error_is_a_500_and_the_server_goes_on(serve_router, backends, queries, logs, emitted,
                                                               monkeypatch):
    prompt, task, subtask = queries[4]
    app = create_app(serve_router, backends)
    with serving(app) as (url, _):
        service = app.app.state.service
        monkeypatch.setattr(service.router, "decide_or_select", lambda *args, **kwargs: 1 / 0)
        broken = _post(url, prompt, task, subtask, emitted)
        monkeypatch.undo()
        working = _post(url, prompt, task, subtask, emitted)
    assert broken.status_code == 500
    assert broken.json()["error"]["type"] == "server_error" and "ZeroDivision" not in broken.text
    assert "ZeroDivisionError" in logs.text  # the traceback is in the log, not in the reply
    assert working.status_code == 200


def test_an_upstream_failure_message_names_the_upstream_without_credentials(backends):
    backend = backends[next(iter(backends))]
    secret = replace(backend, base_url="https://user:hunter2@up.example:8443/v1")
    failure = UpstreamFailure(secret, "http_5xx", "HTTP 503", 0.1, 2)
    assert str(failure) == f"upstream {backend.name} at https://up.example:8443/v1 failed (HTTP 503) after 2 attempt(s)"
    assert UPSTREAM_KEY not in repr(secret) and "hunter2" not in secret.label


# -- who may call (issue 18) ---------------------------------------------------------------------------------

def _patient(backends):
    """The backends with a timeout long enough for replies held in flight by the test."""
    return {name: replace(b, timeout_s=30.0) for name, b in backends.items()}


@pytest.fixture(scope="module")
def guarded(serve_router, backends):
    config = ServiceConfig(api_key=CALLER_KEY, max_body_bytes=20_000, max_prompt_chars=1_000,
                           max_client_concurrency=2)
    with serving(create_app(serve_router, _patient(backends), config)) as (url, _):
        yield url


def _chat(prompt="What is 2 + 2?"):
    return {"model": "router", "messages": [{"role": "user", "content": prompt}], "metadata": {"task": "math"}}


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {CALLER_KEY}", f"Bearer {CALLER_KEY}x", ""])
def test_a_missing_or_wrong_bearer_token_gets_401(guarded, upstreams, header, emitted):
    headers = {} if header is None else {"Authorization": header}
    for path, method in (("/v1/chat/completions", "POST"), ("/v1/route", "POST"), ("/metrics", "GET"),
                         ("/v1/models", "GET")):
        reply = httpx.request(method, f"{guarded}{path}", json=_chat(), headers=headers)
        emitted.append(reply.text)
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "invalid_api_key"
    assert upstreams.calls == []


def test_the_right_bearer_token_is_served_and_healthz_needs_none(guarded, emitted):
    client = openai.OpenAI(base_url=f"{guarded}/v1", api_key=CALLER_KEY, max_retries=0)
    completion = client.chat.completions.create(**_chat())
    assert completion.choices[0].message.content in "ABCD"
    assert httpx.get(f"{guarded}/healthz").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{guarded}/v1", api_key="nope", max_retries=0).chat.completions.create(**_chat())


def test_an_oversize_body_gets_413(guarded, upstreams):
    headers = {"Authorization": f"Bearer {CALLER_KEY}"}
    body = _chat("x" * 500) | {"user": "y" * 30_000}
    reply = httpx.post(f"{guarded}/v1/chat/completions", json=body, headers=headers)
    assert reply.status_code == 413 and "20,000 bytes" in reply.json()["error"]["message"]
    assert upstreams.calls == []


def test_an_oversize_chunked_body_gets_413_before_it_is_all_sent(guarded):
    """No Content-Length: the limit is enforced while reading; the reply comes while the body is still open."""
    host, port = guarded.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {CALLER_KEY}\r\n"
                    "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * 8192
        for _ in range(4):  # 32 KiB sent, over the 20,000-byte limit; the terminating chunk is never sent
            raw.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < int(
                reply.lower().partition(b"content-length: ")[2].split(b"\r\n")[0] or 1):
            received = raw.recv(65536)
            assert received, "the connection closed before the reply was complete"
            reply += received
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413")
    assert "request_too_large" in reply


def test_an_oversize_prompt_gets_400_naming_the_limit(guarded, upstreams):
    reply = httpx.post(f"{guarded}/v1/chat/completions", json=_chat("x" * 1_001),
                       headers={"Authorization": f"Bearer {CALLER_KEY}"})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "prompt_too_long" and "1,000 characters" in reply.json()["error"]["message"]
    assert upstreams.calls == []


def _wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def test_a_client_over_its_concurrency_gets_429(guarded, upstreams):
    headers = {"Authorization": f"Bearer {CALLER_KEY}"}
    results = []

    def call(prompt):
        results.append(httpx.post(f"{guarded}/v1/chat/completions", json=_chat(prompt), headers=headers,
                                  timeout=30).status_code)

    upstreams.release.clear()  # the two requests wait at their first upstream call
    threads = [threading.Thread(target=call, args=(f"Question {i}: what is {i} + {i}?",)) for i in range(2)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: len({p for _, p in upstreams.calls}) == 2)
    third = httpx.post(f"{guarded}/v1/chat/completions", json=_chat(), headers=headers)
    upstreams.release.set()
    for thread in threads:
        thread.join()
    assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limit_exceeded"
    assert results == [200, 200]
    assert httpx.post(f"{guarded}/v1/chat/completions", json=_chat(), headers=headers).status_code == 200


def test_calls_beyond_an_upstreams_max_concurrency_wait_their_turn(serve_router, backends, upstreams, queries):
    prompt, task, subtask = queries[7]
    one_at_a_time = {name: replace(b, max_concurrency=1) for name, b in _patient(backends).items()}
    results = []
    upstreams.release.clear()
    with serving(create_app(serve_router, one_at_a_time)) as (url, _):
        threads = [threading.Thread(target=lambda: results.append(_post(url, prompt, task, subtask, [])))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        _wait_for(lambda: upstreams.calls)
        time.sleep(0.3)  # time for the second request to reach the same first model
        assert len(upstreams.calls) == 1, "the second call waits for the first"
        upstreams.release.set()
        for thread in threads:
            thread.join(20)
    assert [r.status_code for r in results] == [200, 200]
    assert results[0].headers["x-router-models"] == results[1].headers["x-router-models"]


def test_no_upstream_key_appears_in_anything_the_service_emitted(service, upstreams, serve_router, queries, logs,
                                                                 emitted):
    """Every fault once more (so the test stands alone), then a grep of all this module's tests emitted."""
    prompt, task, subtask = queries[6]
    first = serve_router.decide([prompt], tasks=[task], subtasks=[subtask])[0]
    for mode in ("ok", "timeout", "http500", "malformed", "no_usage", "flaky"):
        upstreams.modes[first] = mode
        assert _post(service, prompt, task, subtask, emitted).status_code == 200
    upstreams.modes.update({model: "http500" for model in serve_router.models_})
    assert _post(service, prompt, task, subtask, emitted).status_code == 502
    emitted.append(httpx.get(f"{service}/metrics").text)
    assert upstreams.keys and set(upstreams.keys) == {f"Bearer {UPSTREAM_KEY}"}, "the upstreams receive the key"
    emitted.append(logs.text)
    for text in emitted:
        assert UPSTREAM_KEY not in text
        assert UPSTREAM_KEY[:12] not in text


# -- start-up ------------------------------------------------------------------------------------------------

def test_startup_errors_name_the_model_and_the_fix(serve_router, upstreams):
    models = serve_router.models_
    document = {"models": {m: {"base_url": f"{upstreams.url}/v1", "model": m, "price_in": 1.0, "price_out": 2.0}
                           for m in models}}
    missing = {"models": {m: t for m, t in document["models"].items() if m != models[2]}}
    with pytest.raises(ValueError, match=rf"no backend for model\(s\) \['{models[2]}'\]"):
        parse_backends(missing, models, {})
    unknown = {"models": {**document["models"], "gpt-9": document["models"][models[0]]}}
    with pytest.raises(ValueError, match=r"names model\(s\) \['gpt-9'\] that the artifact does not know"):
        parse_backends(unknown, models, {})
    unpriced = {"models": {**document["models"], models[1]: {"base_url": "http://x/v1", "model": "m"}}}
    with pytest.raises(ValueError, match=rf"{models[1]}.*no prices, and the artifact has none"):
        parse_backends(unpriced, models, {})
    keyed = {"models": {**document["models"],
                        models[0]: {**document["models"][models[0]], "api_key_env": "UPSTREAM_NOPE_X"}}}
    with pytest.raises(ValueError, match="environment variable UPSTREAM_NOPE_X"):
        parse_backends(keyed, models, {}, environ={})
    typo = {"models": {**document["models"], models[0]: {**document["models"][models[0]], "timeout": 3}}}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['timeout'\]"):
        parse_backends(typo, models, {})
    assert list(parse_backends(document, models, {})) == list(models)


@pytest.mark.parametrize("contents, message", [
    ("[models.x\n", "is not valid TOML"),
    ('[models."gpt-9"]\nbase_url = "http://a/v1"\nmodel = "m"\n', "the artifact does not know"),
])
def test_the_cli_stops_with_one_line_and_exit_2(serve_artifact, tmp_path, capsys, contents, message):
    backends = tmp_path / "backends.toml"
    backends.write_text(contents)
    code = serve_main(["--artifact", str(serve_artifact), "--backends", str(backends), "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]


@pytest.mark.parametrize("flag, value, message", [
    ("--inline-decision-chars", "-1", "expected a number >= 0, got -1"),
    ("--decision-threads", "0", "expected a number >= 1, got 0"),
    ("--inline-decision-chars", "2k", "expected a whole number, got '2k'"),
])
def test_the_cli_refuses_thread_settings_out_of_range(serve_artifact, tmp_path, capsys, flag, value, message):
    code = serve_main(["--artifact", str(serve_artifact), "--backends", str(tmp_path / "b.toml"), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and message in err


def test_the_cli_refuses_a_budget_below_every_fitted_one_and_a_missing_artifact(serve_artifact, tmp_path, capsys,
                                                                              serve_router, upstreams):
    backends = tmp_path / "backends.toml"
    backends.write_text(backends_toml(upstreams.url, serve_router.models_))
    assert serve_main(["--artifact", str(serve_artifact), "--backends", str(backends), "--budget", "1e-7"]) == 2
    assert "below every fitted budget" in capsys.readouterr().err
    assert serve_main(["--artifact", str(tmp_path / "none.joblib"), "--backends", str(backends)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert serve_main(["--artifact", str(serve_artifact), "--backends", str(backends), "--api-key-env",
                       "SERVE_TEST_UNSET"]) == 2
    assert "SERVE_TEST_UNSET (--api-key-env) is not set" in capsys.readouterr().err


def test_the_cli_refuses_an_unsigned_artifact_when_told_to_verify(serve_artifact, tmp_path, capsys, monkeypatch,
                                                                  serve_router, upstreams):
    backends = tmp_path / "backends.toml"
    backends.write_text(backends_toml(upstreams.url, serve_router.models_))
    monkeypatch.setenv("SERVE_TEST_SIGNING_KEY", "k" * 40)
    code = serve_main(["--artifact", str(serve_artifact), "--backends", str(backends), "--port", "0",
                       "--verify-key-env", "SERVE_TEST_SIGNING_KEY"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not signed" in err[0] and "k" * 40 not in err[0]
    assert serve_main(["--artifact", str(serve_artifact), "--backends", str(backends),
                       "--verify-key-env", "SERVE_TEST_UNSET"]) == 2
    assert "SERVE_TEST_UNSET" in capsys.readouterr().err


# -- shutdown ------------------------------------------------------------------------------------------------

def test_graceful_shutdown_drains_requests_in_flight(serve_router, backends, upstreams, queries):
    prompt, task, subtask = queries[5]
    results = []
    upstreams.release.clear()  # the request is held at its first upstream call
    with serving(create_app(serve_router, _patient(backends)), timeout_graceful_shutdown=10) as (url, server):
        thread = threading.Thread(target=lambda: results.append(_post(url, prompt, task, subtask, [])))
        thread.start()
        _wait_for(lambda: upstreams.calls)
        server.should_exit = True  # what SIGTERM does
        time.sleep(0.3)  # the server is shutting down with the request in flight
        assert thread.is_alive()
        with pytest.raises(httpx.ConnectError):  # no new connections meanwhile
            httpx.get(f"{url}/healthz")
        upstreams.release.set()
        thread.join(20)
    assert results and results[0].status_code == 200
    assert results[0].headers["x-router-models"] == ",".join(m for m, _ in upstreams.calls)
