"""Fuzzing the service's request parsing: any body is a request or a 400 in OpenAI's format, nothing else.

The properties are plain functions so that ``bench/bench_fuzz_serve.py``
runs them on 10,000+ inputs each; here each runs on a few hundred. Cases
found by fuzzing are kept at the end as regression tests.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servekit import backends_toml, serving

from training.serving.backends import load_backends
from training.serving.openai_api import APIError, ChatRequest, parse_chat_request, parse_json, parse_route_request
from training.serving.service import ServiceConfig, create_app

LIMIT = 2_000
#: Characters of every kind, lone surrogates (invalid text) included.
TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
KEYS = st.sampled_from(["model", "messages", "stream", "stream_options", "metadata", "temperature", "max_tokens",
                        "stop", "n", "tools", "user", "seed", "top_p", "observed", "excluded", "role", "content",
                        "task", "subtask", "include_usage", "cost", "response"]) | TEXT
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
                    max_leaves=20)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "bot"]) | TEXT,
                                 "content": TEXT | st.lists(st.fixed_dictionaries(
                                     {"type": st.sampled_from(["text", "image_url"]), "text": TEXT}), max_size=3)
                                 | JSON})
#: Messages the router accepts, ending with a user message (the query).
VALID_MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                                 "content": TEXT}), max_size=3).map(
    lambda messages: messages + [{"role": "user", "content": "What is 2 + 2?"}])
#: Valid requests, with every optional parameter the router forwards.
GOOD = st.fixed_dictionaries(
    {"model": st.sampled_from(["router", "router@0.001", "router@0.0005"]), "messages": VALID_MESSAGES,
     "metadata": st.fixed_dictionaries({"task": st.sampled_from(["math-word", "t"])}, optional={"subtask": TEXT})},
    optional={"stream": st.booleans(), "temperature": st.floats(0, 2), "max_tokens": st.integers(1, 100),
              "stop": TEXT | st.lists(TEXT, max_size=4), "user": TEXT, "seed": st.integers(),
              "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()})})
#: Bodies near a valid request: one key replaced by anything, or every part drawn loosely.
REQUESTS = GOOD | st.tuples(GOOD, KEYS, JSON).map(lambda t: {**t[0], t[1]: t[2]}) | st.fixed_dictionaries(
    {"model": st.sampled_from(["router", "router@0", "router@-1", "router@1e999", "router@nan", "router@ 0.001",
                               "gpt-4"]) | TEXT,
     "messages": VALID_MESSAGES | st.lists(MESSAGE, max_size=4) | JSON,
     "metadata": st.dictionaries(st.sampled_from(["task", "subtask"]) | TEXT, TEXT | JSON, max_size=3) | JSON},
    optional={"stream": JSON, "stream_options": JSON, "temperature": JSON, "max_tokens": JSON, "stop": JSON,
              "n": JSON, "user": JSON, "excluded": st.lists(TEXT) | JSON, "extra": JSON,
              "observed": st.dictionaries(TEXT, st.dictionaries(st.sampled_from(["cost", "response"]), JSON)) | JSON})


def _check_error(error: APIError) -> None:
    body = error.body()
    assert error.status == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    json.dumps(body)  # serialisable, as the response must be
    assert body["error"]["message"].encode("utf-8")  # no lone surrogate reaches the reply


def check_raw_body(raw: bytes) -> None:
    """Bytes off the wire: a request, or a 400 :class:`APIError`."""
    try:
        value = parse_json(raw)
    except APIError as error:
        _check_error(error)
        return
    check_decoded_body(value)


def check_decoded_body(body: object) -> None:
    """A decoded body for both endpoints: a request, or a 400 :class:`APIError`."""
    for parse in (parse_chat_request, parse_route_request):
        try:
            parsed = parse(body, max_prompt_chars=LIMIT, needs_task=True)
        except APIError as error:
            _check_error(error)
            continue
        request = parsed[0] if isinstance(parsed, tuple) else parsed
        assert isinstance(request, ChatRequest) and isinstance(request.prompt, str) and request.task
        assert sum(len(m["content"]) if isinstance(m["content"], str) else 0 for m in request.messages) <= LIMIT
        assert request.budget is None or request.budget > 0
        json.dumps({**request.forwarded, "messages": request.messages}, allow_nan=False)  # what goes upstream


BYTES = st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")) | \
    REQUESTS.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(BYTES)
def test_any_bytes_parse_to_a_request_or_a_400(raw):
    check_raw_body(raw)


@settings(max_examples=300, deadline=None)
@given(REQUESTS | JSON)
def test_any_json_parses_to_a_request_or_a_400(body):
    check_decoded_body(body)


# -- the same through the HTTP service ---------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("upstreams")  # every test starts with the fake upstreams reset


@pytest.fixture(scope="module")
def service(serve_router, upstream_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "backends.toml"
    path.write_text(backends_toml(upstream_server.url, serve_router.models_))
    backends = load_backends(path, serve_router.models_, {})
    with serving(create_app(serve_router, backends, ServiceConfig(max_prompt_chars=LIMIT))) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(BYTES)
def test_any_body_gets_an_answer_or_an_openai_error_from_the_service(service, raw):
    for path in ("/v1/chat/completions", "/v1/route"):
        reply = service.post(path, content=raw, headers={"content-type": "application/json"})
        assert reply.status_code in (200, 400), reply.text
        if reply.status_code == 400:
            assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert service.get("/healthz").status_code == 200


# -- regression cases found by fuzzing ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "metadata": {"task": "t"}, '
    b'"temperature": 1e999}',  # read as infinity, forwarded upstream as the non-JSON Infinity
    b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "metadata": {"task": "t"}, '
    b'"max_tokens": "10"}',  # a wrong type: the caller's 400, not a 4xx from every upstream and a 502
    b"[" * 100_000,  # nests deeper than the recursion limit
])
def test_found_cases_are_refused_with_400(raw):
    with pytest.raises(APIError) as raised:
        parse_chat_request(parse_json(raw), max_prompt_chars=LIMIT, needs_task=True)
    _check_error(raised.value)


def test_a_prompt_with_a_lone_surrogate_is_served(service):
    raw = b'{"model": "router", "messages": [{"role": "user", "content": "x\\ud800y"}], "metadata": {"task": "t"}}'
    reply = service.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] in "ABCD"
