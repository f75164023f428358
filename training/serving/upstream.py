"""Calls to the OpenAI-compatible upstreams: pooled, bounded per upstream, retried once.

Each upstream has its own :class:`aiohttp.ClientSession` and a semaphore
of ``max_concurrency`` calls in flight (``backends.toml``); more calls wait
their turn, and the timeout starts when a call goes out. aiohttp rather than httpx: on the load test
(``bench/bench_serve.py``) httpx's connection pool, which checks every
pooled connection on each request, took most of the service's CPU (4.5 ms
per request of two upstream calls, against the 2 ms the service may spend
in all). An attempt fails on a timeout, a transport error, an HTTP 429 or
5xx, or a reply that is not a chat completion with text and ``usage``;
such a failure is retried once, and a second failure is the model failing
for this query (:class:`UpstreamFailure`). Another 4xx is not retried (the
same request would be refused again) and fails the model at once. Failure
messages name the upstream (URL credentials removed) and the status, never
the reply's body or the key, so that nothing an upstream echoes reaches a
caller, a log or a metric.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Mapping

import aiohttp

from .backends import Backend

__all__ = ["Reply", "UpstreamFailure", "Upstreams"]


@dataclass(frozen=True)
class Reply:
    """What one successful upstream call returned.

    Attributes
    ----------
    text : str
        The answer.
    finish_reason : str
    prompt_tokens, completion_tokens : int
        The upstream's ``usage``.
    cost : float
        USD, ``usage × prices``.
    seconds : float
        Time spent on the upstream: both attempts, and any wait for its ``max_concurrency``.
    attempts : int
        1, or 2 after a retry.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    seconds: float
    attempts: int


class UpstreamFailure(Exception):
    """The model failed for this query: both attempts (or one non-retryable) failed.

    Attributes
    ----------
    model : str
    kind : str
        ``timeout``, ``unreachable``, ``http_5xx``, ``http_429``, ``http_4xx`` or ``malformed``: the metric label.
    seconds : float
        Time spent on the upstream.
    attempts : int
    """

    def __init__(self, backend: Backend, kind: str, detail: str, seconds: float, attempts: int) -> None:
        super().__init__(f"upstream {backend.label} failed ({detail}) after {attempts} attempt(s)")
        self.model, self.kind, self.seconds, self.attempts = backend.name, kind, seconds, attempts


class _AttemptFailed(Exception):
    def __init__(self, kind: str, detail: str, retry: bool) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.retry = kind, detail, retry


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _AttemptFailed("malformed", f"usage.{key} is not a count", True)
    return value


def _read_reply(status: int, content: bytes) -> tuple[str, str, int, int]:
    """Text, finish reason and token counts of a chat-completion reply, or :class:`_AttemptFailed`."""
    if status == 429 or status >= 500:
        raise _AttemptFailed("http_429" if status == 429 else "http_5xx", f"HTTP {status}", True)
    if status >= 400:
        raise _AttemptFailed("http_4xx", f"HTTP {status}", False)
    try:
        body = json.loads(content)
        choice = body["choices"][0]
        text, finish = choice["message"]["content"], choice.get("finish_reason") or "stop"
        usage = body["usage"]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise _AttemptFailed("malformed", "the reply is not a chat completion with choices and usage", True) from None
    if not isinstance(text, str) or not isinstance(finish, str) or not isinstance(usage, Mapping):
        raise _AttemptFailed("malformed", "the reply has no text answer or no usage", True)
    return text, finish, _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")


class Upstreams:
    """The pooled clients of every backend of a service; create and close it inside the event loop.

    Parameters
    ----------
    backends : mapping of str to Backend
        One per model.
    """

    def __init__(self, backends: Mapping[str, Backend]) -> None:
        self.backends = dict(backends)
        self._sessions = {name: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=b.max_concurrency, limit_per_host=b.max_concurrency),
            timeout=aiohttp.ClientTimeout(total=b.timeout_s), raise_for_status=False, trust_env=False)
            for name, b in self.backends.items()}
        self._slots = {name: asyncio.Semaphore(b.max_concurrency) for name, b in self.backends.items()}

    async def aclose(self) -> None:
        """Close the pooled connections (after the last request has drained)."""
        for session in self._sessions.values():
            await session.close()

    async def call(self, model: str, messages: list[dict[str, Any]], forwarded: Mapping[str, Any]) -> Reply:
        """One model's answer to ``messages``, retried once on a retryable failure.

        Parameters
        ----------
        model : str
            The artifact's model name.
        messages : list of dict
            The conversation.
        forwarded : mapping
            Sampling parameters sent unchanged.

        Returns
        -------
        Reply

        Raises
        ------
        UpstreamFailure
            When the model failed for this query.
        """
        backend = self.backends[model]
        payload = json.dumps({**forwarded, "model": backend.model, "messages": messages, "stream": False})
        headers = {"Content-Type": "application/json"}
        if backend.api_key:
            headers["Authorization"] = f"Bearer {backend.api_key}"
        began, attempt = time.perf_counter(), 0
        while True:
            attempt += 1
            try:
                async with self._slots[model], self._sessions[model].post(
                        backend.url, data=payload, headers=headers, allow_redirects=False) as response:
                    status, content = response.status, await response.read()
                text, finish, prompt_tokens, completion_tokens = _read_reply(status, content)
            except asyncio.TimeoutError:
                failure = _AttemptFailed("timeout", f"no reply within {backend.timeout_s:g} s", True)
            except aiohttp.ClientError as error:
                failure = _AttemptFailed("unreachable", f"transport error {type(error).__name__}", True)
            except _AttemptFailed as error:
                failure = error
            else:
                return Reply(text, finish, prompt_tokens, completion_tokens,
                             backend.cost(prompt_tokens, completion_tokens), time.perf_counter() - began, attempt)
            if not failure.retry or attempt == 2:
                raise UpstreamFailure(backend, failure.kind, failure.detail, time.perf_counter() - began, attempt)
