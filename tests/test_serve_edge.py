"""The service's edge and configuration, attacked on loopback (issue 30), and its timeouts (issue 29).

Each test reproduces one finding of issue 30 against the service as
``training.serve`` configures it (:func:`training.serving.edge.uvicorn_config`)
and shows it now holds. Everything runs on 127.0.0.1, bounded in bytes,
connections and seconds; memory is the test process's resident size, which
holds the service (it runs on a thread here).
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from dataclasses import replace

import httpx
import pytest
from servekit import UPSTREAM_KEY, backends_toml, keyed_backends, serving

from training.serve import _build, _parse
from training.serve import main as serve_main
from training.serving.backends import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    load_backends,
)
from training.serving.edge import EdgeLimits
from training.serving.service import ServiceConfig, create_app

KEY_ENV = "UPSTREAM_EDGE_TEST_KEY"
CALLER_ENV = "EDGE_TEST_CALLER_KEY"
CALLER_KEY = "edge-caller-key-2f6c0d5e9a1b47c8b3e7"
MiB = 1 << 20

pytestmark = pytest.mark.usefixtures("upstreams")


def _rss() -> int:
    """Resident bytes of this process (the service runs on one of its threads)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def backends(tmp_path_factory, upstream_server, serve_router):
    return keyed_backends(tmp_path_factory.mktemp("edge"), upstream_server.url, serve_router.models_,
                          key_env=KEY_ENV, timeout_s=5.0)


@pytest.fixture(scope="module")
def edge(serve_router, backends):
    """The service as training.serve runs it on a loopback address, with short head timeouts for the tests."""
    config = ServiceConfig(allowed_hosts=("127.0.0.1", "localhost", "::1"), max_client_concurrency=2,
                           max_messages=64)
    limits = EdgeLimits(header_timeout_s=2.0, keep_alive_s=2.0, body_timeout_s=2.0)
    with serving(create_app(serve_router, backends, config), limits) as (url, _):
        yield url


def _chat(prompt="What is 2 + 2?", **extra):
    return {"model": "router", "messages": [{"role": "user", "content": prompt}], "metadata": {"task": "math"},
            **extra}


def _address(url):
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


# -- 1. configuration as an exfiltration channel ------------------------------------------------------------

def _serve_args(serve_artifact, backends_path, *extra):
    return _parse(["--artifact", str(serve_artifact), "--backends", str(backends_path), "--port", "0", *extra])


SECRET = "s3cret-" + "x" * 40


@pytest.fixture(scope="module")
def hmac_artifact(serve_router, tmp_path_factory):
    """The service's router signed with a shared HMAC secret, the kind of key a verifier used to hold."""
    import warnings

    from training.artifact import save_artifact

    path = tmp_path_factory.mktemp("hmac") / "router.joblib"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_artifact(serve_router, path, models=list(serve_router.models_),
                      budgets=[p.budget for p in serve_router.policies], key=SECRET)
    return path


@pytest.mark.parametrize("variable, flags", [
    ("ROUTER_SIGNING_KEY", ["--verify-key-env", "ROUTER_SIGNING_KEY"]),  # the artifact key, as in the finding
    ("UPSTREAM_CALLER", ["--api-key-env", "UPSTREAM_CALLER"]),  # the callers' key, even with the prefix
    ("AWS_SECRET_ACCESS_KEY", []),  # any other secret of the environment
])
def test_backends_toml_cannot_send_another_secret_upstream(hmac_artifact, serve_router, upstreams, tmp_path,
                                                           monkeypatch, capsys, variable, flags):
    monkeypatch.setenv(variable, SECRET)
    monkeypatch.setenv("ROUTER_SIGNING_KEY", SECRET)
    path = tmp_path / "backends.toml"
    path.write_text(backends_toml("http://127.0.0.1:9/attacker", serve_router.models_, key_env=variable))
    code = serve_main(["--artifact", str(hmac_artifact), "--backends", str(path), "--port", "0",
                       "--verify-key-env", "ROUTER_SIGNING_KEY", *[f for f in flags if f != "--verify-key-env"
                                                                   and f != "ROUTER_SIGNING_KEY"]])
    error = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning:")]
    assert code == 2 and len(error) == 1 and f"api_key_env '{variable}'" in error[0]  # one error (HMAC: one warning)
    assert "s3cret" not in error[0]
    assert upstreams.calls == []


def test_secrets_read_at_start_up_leave_the_environment(serve_artifact, serve_router, upstreams, tmp_path,
                                                        monkeypatch):
    monkeypatch.setenv(KEY_ENV, UPSTREAM_KEY)
    monkeypatch.setenv(CALLER_ENV, CALLER_KEY)
    path = tmp_path / "backends.toml"
    path.write_text(backends_toml(upstreams.url, serve_router.models_, key_env=KEY_ENV))
    app, listening, config, _ = _build(_serve_args(serve_artifact, path, "--api-key-env", CALLER_ENV))
    listening.close()
    assert KEY_ENV not in os.environ and CALLER_ENV not in os.environ
    assert config.api_key == CALLER_KEY
    assert app.app.state.service.backends[serve_router.models_[0]].api_key == UPSTREAM_KEY


def test_a_pinned_backends_toml_that_changed_is_refused_at_start(serve_artifact, serve_router, upstreams, tmp_path,
                                                                  monkeypatch, capsys):
    """--backends-sha256: the pinned file starts (upper-case hex too); one changed byte is refused in one line."""
    import hashlib

    monkeypatch.setenv(KEY_ENV, UPSTREAM_KEY)
    path = tmp_path / "backends.toml"
    path.write_text(backends_toml(upstreams.url, serve_router.models_, key_env=KEY_ENV))
    pinned = hashlib.sha256(path.read_bytes()).hexdigest()
    app, listening, _, _ = _build(_serve_args(serve_artifact, path, "--backends-sha256", pinned.upper()))
    listening.close()
    assert app.app.state.service.backends[serve_router.models_[0]].base_url.startswith(upstreams.url)
    path.write_text(backends_toml("http://127.0.0.1:9/attacker", serve_router.models_, key_env=KEY_ENV))
    code = serve_main(["--artifact", str(serve_artifact), "--backends", str(path), "--port", "0",
                       "--backends-sha256", pinned])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and f"not the pinned {pinned}" in error[0]
    assert upstreams.calls == []


def test_a_custom_prefix_is_the_operators_choice(serve_router, upstreams, tmp_path, monkeypatch):
    monkeypatch.setenv("VENDOR_KEY", UPSTREAM_KEY)
    path = tmp_path / "backends.toml"
    path.write_text(backends_toml(upstreams.url, serve_router.models_, key_env="VENDOR_KEY"))
    with pytest.raises(ValueError, match="does not start with 'UPSTREAM_'"):
        load_backends(path, serve_router.models_, {})
    assert load_backends(path, serve_router.models_, {}, key_prefix="VENDOR_")[serve_router.models_[0]].api_key


def test_a_short_caller_key_is_refused(serve_artifact, serve_router, upstreams, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CALLER_ENV, "k")
    path = tmp_path / "backends.toml"
    path.write_text(backends_toml(upstreams.url, serve_router.models_))
    code = serve_main(["--artifact", str(serve_artifact), "--backends", str(path), "--port", "0",
                       "--api-key-env", CALLER_ENV])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "fewer than 32" in error[0]


# -- 2. unbounded request headers ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["many lines", "one endless value"])
def test_a_1_gib_header_stream_is_cut_off_and_costs_no_memory(edge, shape):
    before = _rss()
    line = b"X-Filler: " + b"a" * (64 * 1024 - 12) + b"\r\n" if shape == "many lines" else b"a" * (64 * 1024)
    sent, closed = 0, False
    with socket.create_connection(_address(edge), timeout=10) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (b"X-Endless: " if shape != "many lines"
                                                                        else b""))
        try:
            while sent < 1 << 30:
                raw.sendall(line)
                sent += len(line)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if not closed:  # everything fitted in the socket buffers: the reply must say the head was refused
            closed = raw.recv(100).startswith(b"HTTP/1.1 431")
    assert closed and sent < 64 * MiB, f"{sent:,} bytes sent before the connection was closed"
    assert _rss() - before < 50 * MiB
    assert httpx.get(f"{edge}/healthz").status_code == 200


def test_too_many_header_fields_get_431(edge):
    headers = {f"x-h{i}": "v" for i in range(150)}
    reply = httpx.get(f"{edge}/healthz", headers=headers)
    assert reply.status_code == 431


# -- 3. idle and half-sent connections --------------------------------------------------------------------------

def test_a_silent_or_half_sent_connection_is_closed_after_the_header_timeout(edge):
    with socket.create_connection(_address(edge), timeout=20) as silent, \
            socket.create_connection(_address(edge), timeout=20) as half:
        half.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        assert silent.recv(1) == b"" and half.recv(1) == b"", "the server closes both (header timeout 2 s)"


def test_a_body_that_stops_arriving_is_dropped_after_the_body_timeout(edge, upstreams):
    with socket.create_connection(_address(edge), timeout=20) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\": ")
        assert slow.recv(1) == b"", "the server closes it (body timeout 2 s)"
    assert upstreams.calls == []
    assert httpx.get(f"{edge}/healthz").status_code == 200


def test_2000_idle_connections_do_not_stop_a_legitimate_request(serve_router, backends):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * 2000 + 512  # both ends of every connection live in this process
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, ulimit -n allows {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    limits = EdgeLimits(max_connections=1000)  # the default; the 2,000 idle connections exceed it
    idle = []
    try:
        with serving(create_app(serve_router, backends), limits) as (url, _):
            for _ in range(2000):
                idle.append(socket.create_connection(_address(url), timeout=10))
            reply = httpx.post(f"{url}/v1/chat/completions", json=_chat(), timeout=30)
            assert reply.status_code == 200
            closed = 0
            for connection in idle:  # the oldest were closed to make room
                connection.setblocking(False)
                try:
                    closed += connection.recv(1) == b""
                except BlockingIOError:
                    pass
            assert closed >= 1000
    finally:
        for connection in idle:
            connection.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- 4. cross-site requests and DNS rebinding ------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_not_declared_json_gets_415_before_any_upstream_is_called(edge, upstreams, content_type):
    import json

    headers = {} if content_type is None else {"content-type": content_type}
    for path in ("/v1/chat/completions", "/v1/route"):
        reply = httpx.post(f"{edge}{path}", content=json.dumps(_chat()), headers=headers)
        assert reply.status_code == 415 and reply.json()["error"]["code"] == "unsupported_media_type"
    assert upstreams.calls == []


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example"])
def test_a_foreign_host_gets_421(edge, upstreams, host):
    reply = httpx.post(f"{edge}/v1/chat/completions", json=_chat(), headers={"host": host})
    assert reply.status_code == 421 and upstreams.calls == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:8000", "LOCALHOST", "[::1]:8000"])
def test_loopback_names_are_allowed(edge, host):
    assert httpx.get(f"{edge}/healthz", headers={"host": host}).status_code == 200


def test_serve_allows_only_loopback_names_on_a_loopback_bind(serve_artifact, serve_router, upstreams, tmp_path):
    path = tmp_path / "backends.toml"
    path.write_text(backends_toml(upstreams.url, serve_router.models_))
    for extra, allowed in (([], ("127.0.0.1", "localhost", "::1")), (["--allowed-hosts", "router.internal"],
                                                                      ("router.internal",))):
        _, listening, config, _ = _build(_serve_args(serve_artifact, path, *extra))
        listening.close()
        assert config.allowed_hosts == allowed


# -- 5. X-Forwarded-For ----------------------------------------------------------------------------------------

def test_a_forged_x_forwarded_for_does_not_lift_the_client_limit(edge, upstreams):
    results = []

    def call(i):
        results.append(httpx.post(f"{edge}/v1/chat/completions", json=_chat(f"Question {i}: {i} + {i}?"),
                                  headers={"x-forwarded-for": f"10.0.0.{i}"}, timeout=30).status_code)

    upstreams.release.clear()  # the requests wait at their first upstream call
    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len({p for _, p in upstreams.calls}) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    third = httpx.post(f"{edge}/v1/chat/completions", json=_chat(), headers={"x-forwarded-for": "10.0.0.99"})
    upstreams.release.set()
    for thread in threads:
        thread.join(30)
    assert third.status_code == 429 and results == [200, 200]


# -- 6. message floods -----------------------------------------------------------------------------------------

def test_a_message_flood_is_refused_by_count(edge, upstreams):
    flood = {"model": "router", "metadata": {"task": "math"},
             "messages": [{"role": "user", "content": "x"}] * 30_000}
    reply = httpx.post(f"{edge}/v1/chat/completions", json=flood, timeout=30)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "too_many_messages"
    assert upstreams.calls == []


def test_a_long_body_is_parsed_off_the_event_loop(serve_router, backends, monkeypatch):
    from training.serving import service as module

    threads = []
    original = module.parse_chat_request

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "parse_chat_request", recording)
    config = ServiceConfig(inline_decision_chars=1_000)
    with serving(create_app(serve_router, backends, config)) as (url, _):
        assert httpx.post(f"{url}/v1/chat/completions", json=_chat("short")).status_code == 200
        assert httpx.post(f"{url}/v1/chat/completions", json=_chat("long " * 400), timeout=30).status_code == 200
    assert not threads[0].startswith("router-decide") and threads[1].startswith("router-decide")


def test_long_bodies_wait_unread_for_a_decision_thread_and_the_loop_stays_free(serve_router, backends, monkeypatch):
    """Finding 6's mechanism (its p99 is bench/bench_serve.py's): with one long body stuck parsing on a decision
    thread, further long bodies are not read at all (they wait in their sockets, though a second decision thread is
    free), while /healthz and a short request are answered."""
    from training.serving import service as module

    threads, parsers = 2, 1
    release, lock = threading.Event(), threading.Lock()
    state = {"parsing": 0, "most": 0, "read": 0}
    parse, read = module.parse_chat_request, module._read_body

    def stuck(*args, **kwargs):
        if threading.current_thread().name.startswith("router-decide"):
            with lock:
                state["parsing"] += 1
                state["most"] = max(state["most"], state["parsing"])
            release.wait(30)
            with lock:
                state["parsing"] -= 1
        return parse(*args, **kwargs)

    async def counted(request, limit):
        state["read"] += 1  # on the event loop: no lock needed
        return await read(request, limit)

    monkeypatch.setattr(module, "parse_chat_request", stuck)
    monkeypatch.setattr(module, "_read_body", counted)
    config = ServiceConfig(inline_decision_chars=1_000, decision_threads=threads)
    statuses: list[int] = []
    with serving(create_app(serve_router, backends, config)) as (url, _):
        def post() -> None:
            statuses.append(httpx.post(f"{url}/v1/chat/completions", json=_chat("long " * 2_000),
                                       timeout=60).status_code)

        posters = [threading.Thread(target=post) for _ in range(3 * threads)]
        for poster in posters:
            poster.start()
        deadline = time.monotonic() + 30
        while state["parsing"] < parsers and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            assert state["parsing"] == parsers, "a long body reached a decision thread"
            time.sleep(0.2)  # give the waiting bodies every chance to be read (they must not be)
            assert state["parsing"] == parsers, "one long body at a time, though a second thread is free"
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
            assert httpx.post(f"{url}/v1/chat/completions", json=_chat("short"), timeout=10).status_code == 200
            assert state["read"] == parsers + 1, "only the body being parsed (and the short one) were read"
        finally:
            release.set()
            for poster in posters:
                poster.join(60)
    assert statuses == [200] * 3 * threads and state["most"] == parsers


@pytest.mark.parametrize("field", ["tool_calls", "function_call", "audio", "x_secret"])
def test_unknown_message_fields_are_refused_not_forwarded(edge, upstreams, field):
    body = _chat()
    body["messages"][0][field] = {"anything": 1}
    reply = httpx.post(f"{edge}/v1/chat/completions", json=body)
    assert reply.status_code == 400 and field in reply.json()["error"]["message"] and upstreams.calls == []


def test_fields_the_sdk_echoes_back_empty_are_dropped(edge, upstreams):
    body = _chat()
    body["messages"] = [{"role": "user", "content": "Hi", "name": "ann"},
                        {"role": "assistant", "content": "Hello", "refusal": None, "tool_calls": None,
                         "function_call": None, "audio": None, "annotations": []},
                        {"role": "user", "content": "What is 2 + 2?"}]
    assert httpx.post(f"{edge}/v1/chat/completions", json=body, timeout=30).status_code == 200
    assert upstreams.bodies[0]["messages"] == [{"role": "user", "content": "Hi", "name": "ann"},
                                              {"role": "assistant", "content": "Hello"},
                                              {"role": "user", "content": "What is 2 + 2?"}]


# -- 7. upstream replies ---------------------------------------------------------------------------------------

def _first(serve_router, prompt="What is 2 + 2?"):
    return serve_router.decide([prompt], tasks=["math"], subtasks=[""])[0]


@pytest.mark.slow
def test_a_300_mb_upstream_reply_fails_over_without_growing_the_service(edge, upstreams, serve_router):
    first = _first(serve_router)
    upstreams.modes[first] = "huge"
    before = _rss()
    reply = httpx.post(f"{edge}/v1/chat/completions", json=_chat(), timeout=60)
    grown = _rss() - before
    assert reply.status_code == 200 and reply.headers["x-router-failed"] == first
    step = reply.json()["router"]["steps"][0]
    assert step["error"] == "too_large" and step["attempts"] == 1
    assert grown < 50 * MiB, f"the service grew by {grown / MiB:.0f} MiB"


def test_a_deeply_nested_upstream_reply_fails_over_not_500(edge, upstreams, serve_router):
    first = _first(serve_router)
    upstreams.modes[first] = "deep"
    reply = httpx.post(f"{edge}/v1/chat/completions", json=_chat(), timeout=30)
    assert reply.status_code == 200 and reply.headers["x-router-failed"] == first
    assert reply.json()["router"]["steps"][0]["error"] == "malformed"


def test_a_reply_over_the_cap_with_a_content_length_is_not_read(serve_router, backends, upstreams):
    """The declared length alone refuses it: a reply of 2 kB against a 1 kB cap."""
    first = _first(serve_router)
    upstreams.modes[first] = "deep"  # 200 kB with a Content-Length
    with serving(create_app(serve_router, backends, ServiceConfig(max_reply_bytes=1_000))) as (url, _):
        reply = httpx.post(f"{url}/v1/chat/completions", json=_chat(), timeout=30)
    assert reply.json()["router"]["steps"][0]["error"] == "too_large"


# -- issue 29: a hanging upstream --------------------------------------------------------------------------------

def test_default_timeouts_suit_an_interactive_service():
    """The defaults the README states: an attempt of 30 s (3 s to connect), not retried after a timeout, and a
    request deadline of 60 s over the whole cascade."""
    assert (DEFAULT_TIMEOUT_S, DEFAULT_CONNECT_TIMEOUT_S, ServiceConfig().request_timeout_s) == (30.0, 3.0, 60.0)
    args = _parse(["--artifact", "a", "--backends", "b"])
    assert args.request_timeout == ServiceConfig().request_timeout_s


def test_a_hanging_upstream_is_tried_once_and_the_deadline_bounds_the_cascade(serve_router, backends, upstreams):
    """Every model hangs (2 s) longer than its attempt may take (0.5 s); the request's deadline (0.8 s) leaves the
    second model what is left and no model after it is called."""
    hanging = {name: replace(b, timeout_s=0.5) for name, b in backends.items()}
    upstreams.modes.update({model: "timeout" for model in serve_router.models_})
    upstreams.hang = 2.0
    with serving(create_app(serve_router, hanging, ServiceConfig(request_timeout_s=0.8))) as (url, _):
        reply = httpx.post(f"{url}/v1/chat/completions", json=_chat(), timeout=30)
    upstreams.hang = 1.0
    assert reply.status_code == 502
    attempts = upstreams.attempts()
    assert len(attempts) == len(set(attempts)), "a timed-out attempt is not retried"
    message = reply.json()["error"]["message"]
    assert "no reply within 0.5 s" in message and "deadline passed" in message
    assert len(attempts) <= 2


def test_serve_refuses_a_non_positive_timeout(serve_artifact, tmp_path, capsys):
    code = serve_main(["--artifact", str(serve_artifact), "--backends", str(tmp_path / "b.toml"),
                       "--request-timeout", "0"])
    assert code == 2 and "--request-timeout must be a number of seconds > 0" in capsys.readouterr().err


def test_uvicorn_is_told_to_ignore_forwarded_headers_unless_proxies_are_trusted(serve_router, backends):
    from training.serving.edge import uvicorn_config

    app = create_app(serve_router, backends)
    assert uvicorn_config(app).proxy_headers is False
    trusted = uvicorn_config(app, EdgeLimits(trusted_proxies=("10.1.2.3",)))
    assert trusted.proxy_headers is True and trusted.forwarded_allow_ips == ["10.1.2.3"]


def test_the_object_bound_stops_decoding_early_and_spares_ordinary_bodies():
    """parse_json's bound: a body over it is refused before it is decoded whole (the hook raises at object
    limit + 1), one at the limit decodes exactly as json.loads, and braces inside strings do not count."""
    import json

    from training.serving.openai_api import APIError, parse_json

    flood = json.dumps({"messages": [{"role": "user", "content": "x"}] * 30_000}).encode()
    with pytest.raises(APIError, match="more than 1,040 JSON objects") as raised:
        parse_json(flood, 1_040)
    assert raised.value.code == "too_many_messages"
    at_limit = {"messages": [{"role": "user", "content": "{" * 5_000}] * 1_039}  # 1,040 objects, many braces
    assert parse_json(json.dumps(at_limit).encode(), 1_040) == at_limit
