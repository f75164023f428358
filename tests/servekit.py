"""What the service tests (and the service load test) share: a cascading router artifact, fake
OpenAI-compatible upstreams that answer deterministically, and uvicorn servers on loopback threads."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

#: The key the fake upstreams expect; the tests grep everything the service emits for it.
UPSTREAM_KEY = "sk-upstream-9f3c1e77-never-show-me"
#: Budgets and λ of the router's two hand-set cascade-routing policies (λ=100 runs one to three models).
POLICIES = {0.0005: 300.0, 0.001: 100.0}


def build_router_artifact(folder: Path, n_models: int = 4, prices: bool = True) -> Path:
    """Fit a small linear estimator on the synthetic benchmark and save a router with cascade-routing policies.

    ``training.fit`` keeps whichever candidate scores best on calibration, and on
    small synthetic tables that is often one model; the service tests need
    cascades of one to three models, so the policies' λ are set by hand.
    """
    from estimators.estimator import make_router_estimator
    from training.artifact import save_artifact
    from training.data import read_table
    from training.policy import Policy
    from training.router import Router
    from training.synthetic import make_benchmark, synthetic_prices

    table = read_table(make_benchmark(400, seed=3))
    table = table.select_models(list(table.models[:n_models]))
    given = {m: p for m, p in synthetic_prices().items() if m in table.models} if prices else None
    estimator = make_router_estimator("linear", prices=given).fit(table)
    policies = tuple(Policy(strategy="cascade_routing", lambdas=np.full(3, lam), thresholds=None, gamma=0.0,
                            max_depth=3, force_order=False, n_samples=64, budget=budget)
                     for budget, lam in POLICIES.items())
    router = Router(estimator, policies, tuple(estimator.models_))
    path = folder / "router.joblib"
    save_artifact(router, path, models=list(router.models_), budgets=list(POLICIES),
                  feature_schema={"per_query": estimator.columns_, "signals": estimator.signal_names_,
                                  "uses_responses": estimator.uses_responses_})
    return path


def answer_of(model: str, prompt: str) -> str:
    """The fake upstream's deterministic answer."""
    return "ABCD"[zlib.crc32(f"{model}|{prompt}".encode("utf-8", "surrogatepass")) % 4]


def usage_of(model: str, prompt: str) -> tuple[int, int]:
    """The fake upstream's deterministic ``usage``: (prompt_tokens, completion_tokens)."""
    return len(prompt.split()) + 7, 3 + zlib.crc32(model.encode()) % 40


@dataclass
class FakeUpstreams:
    """One Starlette app serving every model at ``/<model>/v1/chat/completions``.

    ``modes[model]`` sets what it does: ``ok``; ``slow`` (sleeps ``delay`` s,
    then answers); ``timeout`` (sleeps ``hang`` s, longer than the backend's
    timeout); ``http500``; ``malformed`` (not JSON); ``no_usage``;
    ``flaky`` (HTTP 503 on every first attempt of a prompt, then ok); ``no_logprobs`` (answers, but
    without token log-probabilities even when asked);
    ``huge`` (a reply of ``huge_bytes`` streamed without a length, made as
    it is sent); ``deep`` (JSON nested 100,000 levels deep). While
    ``release`` is clear, every reply waits for it (requests held in flight). Every
    attempt is recorded in ``calls`` as ``(model, prompt)``, its body in
    ``bodies`` and its ``Authorization`` header in ``keys``. A request asking for ``logprobs`` gets one
    entry per character of the answer, each ``logprob[model]`` (default -0.1).
    """

    modes: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: float = 2.0
    huge_bytes: int = 300 << 20
    calls: list[tuple[str, str]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    logprob: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.release.set()

    def app(self) -> Starlette:
        async def complete(request: Request) -> Response:
            model = request.path_params["model"]
            body = await request.json()
            prompt = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
            self.keys.append(request.headers.get("authorization", ""))
            self.bodies.append(body)
            first = (model, prompt) not in self.calls
            self.calls.append((model, prompt))
            mode = self.modes.get(model, "ok")
            while not self.release.is_set():
                await asyncio.sleep(0.005)
            if mode == "slow" or self.delay:
                await asyncio.sleep(self.delay)
            if mode == "timeout":
                await asyncio.sleep(self.hang)
            if mode == "http500" or (mode == "flaky" and first):
                return PlainTextResponse(f"upstream exploded; key was {UPSTREAM_KEY}", status_code=500 if
                                         mode == "http500" else 503)
            if mode == "malformed":
                return PlainTextResponse(f"<html>not json {UPSTREAM_KEY}</html>")
            if mode == "huge":
                block, blocks = b" " * (1 << 20), self.huge_bytes >> 20
                return StreamingResponse((block for _ in range(blocks)), media_type="application/json")
            if mode == "deep":
                return Response(b"[" * 100_000 + b"]" * 100_000, media_type="application/json")
            prompt_tokens, completion_tokens = usage_of(model, prompt)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}
            reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": answer_of(model, prompt)}}]}
            if mode != "no_usage":
                reply["usage"] = usage
            if body.get("logprobs") and mode != "no_logprobs":
                value = self.logprob.get(model, -0.1)
                reply["choices"][0]["logprobs"] = {"content": [
                    {"token": c, "logprob": value, "bytes": list(c.encode()), "top_logprobs": []}
                    for c in answer_of(model, prompt)]}
            return JSONResponse(reply)

        return Starlette(routes=[Route("/{model}/v1/chat/completions", complete, methods=["POST"])])

    def reset(self) -> None:
        """Forget the calls and answer every model normally again (between tests)."""
        for record in (self.calls, self.keys, self.bodies):
            record.clear()
        self.modes.clear()
        self.logprob.clear()
        self.delay = 0.0
        self.huge_bytes = 300 << 20
        self.release.set()

    def attempts(self) -> list[str]:
        """The models called, in order, every attempt counted."""
        return [model for model, _ in self.calls]


def free_socket() -> socket.socket:
    """A listening socket on a free loopback port."""
    return socket.create_server(("127.0.0.1", 0))


@contextmanager
def serving(app, limits=None, **config) -> Iterator[tuple[str, uvicorn.Server]]:
    """Run ``app`` with uvicorn on a loopback thread; yields ``(base URL, server)`` and stops it on exit.

    With ``limits`` (an :class:`~training.serving.edge.EdgeLimits`), the server is configured as
    ``training.serve`` configures it (:func:`~training.serving.edge.uvicorn_config`).
    """
    listening = free_socket()
    options = dict(log_level="warning", access_log=False, lifespan="on", **config)
    if limits is None:
        server = uvicorn.Server(uvicorn.Config(app, **options))
    else:
        from training.serving.edge import uvicorn_config

        server = uvicorn.Server(uvicorn_config(app, limits, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(30)
        listening.close()


@contextmanager
def running_upstreams(**options) -> Iterator[FakeUpstreams]:
    """:class:`FakeUpstreams` (``options``) served on a loopback thread; its base URL is ``.url``."""
    fake = FakeUpstreams(**options)
    with serving(fake.app()) as (url, _):
        fake.url = url
        yield fake


def keyed_backends(folder: Path, upstream_url: str, models: tuple[str, ...], *, key_env: str,
                   timeout_s: float) -> dict:
    """Load a ``backends.toml`` for the fake upstreams whose key is read from ``key_env`` (set only while loading)."""
    import pytest

    from training.serving.backends import load_backends

    path = folder / "backends.toml"
    path.write_text(backends_toml(upstream_url, models, key_env=key_env, timeout_s=timeout_s))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(key_env, UPSTREAM_KEY)
        return load_backends(path, models, {})


def backends_toml(upstream_url: str, models: tuple[str, ...], *, key_env: str | None = None,
                  timeout_s: float = 1.0, prices: bool = True) -> str:
    """A ``backends.toml`` pointing every model at the fake upstreams."""
    lines = []
    for i, model in enumerate(models):
        lines += [f'[models."{model}"]', f'base_url = "{upstream_url}/{model}/v1"', f'model = "up-{model}"',
                  f"timeout_s = {timeout_s}"]
        if prices:
            lines += [f"price_in = {0.5 * (i + 1)}", f"price_out = {1.5 * (i + 1)}"]
        if key_env:
            lines.append(f'api_key_env = "{key_env}"')
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # ``python tests/servekit.py PORT DELAY``: the fake upstreams in a process of their own
    import sys

    uvicorn.run(FakeUpstreams(delay=float(sys.argv[2])).app(), host="127.0.0.1", port=int(sys.argv[1]),
                log_level="warning", access_log=False)
