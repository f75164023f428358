"""Fuzzing the service's request parsing at scale: ``SERVE_FUZZ_EXAMPLES`` inputs per target (default 10,000).

Run: ``python -m pytest bench/bench_fuzz_serve.py -s`` (a few minutes). The
properties are those of ``tests/test_serve_fuzz.py`` (which runs a few
hundred each in CI): raw bytes, decoded JSON (bodies near a valid request
and arbitrary JSON), each through both endpoints' parsers, and bytes posted
to the running service (a tenth as many: each is two HTTP requests). The
summary says how many inputs ran and how many parsed as requests, so that
a fuzzer stuck on the first check shows.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from test_serve_fuzz import BYTES, JSON, REQUESTS, check_decoded_body, check_raw_body, service  # noqa: F401

from training.serving.openai_api import APIError, parse_chat_request, parse_json

N = int(os.environ.get("SERVE_FUZZ_EXAMPLES", "10000"))
counts: Counter = Counter()


def _accepted(raw: bytes) -> bool:
    try:
        parse_chat_request(parse_json(raw), max_prompt_chars=2_000, needs_task=True)
    except APIError:
        return False
    return True


@settings(max_examples=N, deadline=None, database=None)
@given(BYTES)
def _bytes(raw):
    counts["bytes"] += 1
    counts["bytes accepted"] += _accepted(raw)
    check_raw_body(raw)


@settings(max_examples=N, deadline=None, database=None)
@given(REQUESTS | JSON)
def _json(body):
    counts["json"] += 1
    counts["json accepted"] += _accepted(json.dumps(body).encode("utf-8", "surrogatepass"))
    check_decoded_body(body)


def test_fuzz_request_parsing():
    _bytes()
    _json()
    print(f"\n  inputs: {dict(counts)}")
    assert counts["bytes"] >= N and counts["json"] >= N
    assert counts["bytes accepted"] >= N // 20 and counts["json accepted"] >= N // 20, "the fuzzer should reach "
    "past the first checks"


@pytest.mark.parametrize("n", [max(N // 10, 1)])
def test_fuzz_the_running_service(service, n):  # noqa: F811
    seen = Counter()

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(BYTES)
    def post(raw):
        for path in ("/v1/chat/completions", "/v1/route"):
            reply = service.post(path, content=raw, headers={"content-type": "application/json"})
            seen[reply.status_code] += 1
            assert reply.status_code in (200, 400), reply.text

    post()
    print(f"\n  HTTP statuses over {n} bodies x 2 endpoints: {dict(seen)}")
    assert sum(seen.values()) >= 2 * n
