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
same request would be refused again) and fails the model at once; so do a
timeout (issue 29: a retry would double the wait, and the next model is
the faster way to an answer), a reply larger than ``max_reply_bytes``
(read no further than that) and the caller's deadline passing. A reply
nested too deeply to parse is malformed, like any other unreadable reply.
Failure messages name the upstream (URL credentials removed) and the
status, never the reply's body or the key, so that nothing an upstream
echoes reaches a caller, a log or a metric; :attr:`UpstreamFailure.public`
names only the model, for the 502 a caller sees.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .backends import Backend

__all__ = ["LOGPROB_SIGNAL", "MAX_REPLY_BYTES", "Reply", "UpstreamFailure", "Upstreams"]

LOGPROB_SIGNAL = "mean_logprob"
"""The one post-hoc signal an upstream can supply: the mean of the answer's token log-probabilities
(``choices[0].logprobs.content[*].logprob``). An artifact fitted with a signal column of this name is served
with ``"logprobs": true`` asked of every call (each backend must say ``logprobs = true``)."""

MAX_REPLY_BYTES = 8 << 20
"""Largest upstream reply read by default: a chat completion of the longest context is a few hundred
kilobytes; a larger one is an upstream gone wrong, and reading it whole would take the service's memory."""


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
    mean_logprob : float or None
        The answer's mean token log-probability, when the call asked for them; else ``None``.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    seconds: float
    attempts: int
    mean_logprob: float | None = None


class UpstreamFailure(Exception):
    """The model failed for this query: both attempts (or one non-retryable) failed.

    Attributes
    ----------
    model : str
    kind : str
        ``timeout``, ``deadline``, ``unreachable``, ``http_5xx``, ``http_429``, ``http_4xx``, ``too_large`` or
        ``malformed``: the metric label.
    seconds : float
        Time spent on the upstream.
    attempts : int
    public : str
        The failure as a caller may see it: the model, not the upstream's URL.
    """

    def __init__(self, backend: Backend, kind: str, detail: str, seconds: float, attempts: int) -> None:
        super().__init__(f"upstream {backend.label} failed ({detail}) after {attempts} attempt(s)")
        self.model, self.kind, self.seconds, self.attempts = backend.name, kind, seconds, attempts
        self.public = f"model {backend.name} failed ({detail}) after {attempts} attempt(s)"


class _AttemptFailed(Exception):
    def __init__(self, kind: str, detail: str, retry: bool) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.retry = kind, detail, retry


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _AttemptFailed("malformed", f"usage.{key} is not a count", True)
    return value


def _mean_logprob(choice: Mapping[str, Any]) -> float:
    """The mean of ``choice.logprobs.content[*].logprob``: finite numbers <= 0, at least one."""
    try:
        tokens = choice["logprobs"]["content"]
        values = [token["logprob"] for token in tokens]
    except (KeyError, TypeError):
        values = []
    if not values or not all(not isinstance(v, bool) and isinstance(v, (int, float)) and -math.inf < v <= 0
                             for v in values):
        raise _AttemptFailed("malformed", "the reply has no token log-probabilities (logprobs were asked)", True)
    return math.fsum(values) / len(values)


def _read_reply(status: int, content: bytes, logprobs: bool = False) -> tuple[str, str, int, int, float | None]:
    """Text, finish reason, token counts and (if asked) mean token log-probability of a reply.

    Raises :class:`_AttemptFailed` on an HTTP error or a reply that is not a chat completion (or has no
    log-probabilities although they were asked).
    """
    if status == 429 or status >= 500:
        raise _AttemptFailed("http_429" if status == 429 else "http_5xx", f"HTTP {status}", True)
    if status >= 400:
        raise _AttemptFailed("http_4xx", f"HTTP {status}", False)
    try:
        body = json.loads(content)
        choice = body["choices"][0]
        text, finish = choice["message"]["content"], choice.get("finish_reason") or "stop"
        usage = body["usage"]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        raise _AttemptFailed("malformed", "the reply is not a chat completion with choices and usage", True) from None
    if not isinstance(text, str) or not isinstance(finish, str) or not isinstance(usage, Mapping):
        raise _AttemptFailed("malformed", "the reply has no text answer or no usage", True)
    mean = _mean_logprob(choice) if logprobs else None
    return text, finish, _count(usage, "prompt_tokens"), _count(usage, "completion_tokens"), mean


class Upstreams:
    """The pooled clients of every backend of a service; create and close it inside the event loop.

    Parameters
    ----------
    backends : mapping of str to Backend
        One per model.
    max_reply_bytes : int, default=:data:`MAX_REPLY_BYTES`
        A longer reply fails that attempt (``too_large``, not retried) after reading this much.
    """

    def __init__(self, backends: Mapping[str, Backend], max_reply_bytes: int = MAX_REPLY_BYTES) -> None:
        self.backends = dict(backends)
        self.max_reply_bytes = max_reply_bytes
        self._sessions = {name: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=b.max_concurrency, limit_per_host=b.max_concurrency),
            raise_for_status=False, trust_env=False)
            for name, b in self.backends.items()}
        self._slots = {name: asyncio.Semaphore(b.max_concurrency) for name, b in self.backends.items()}

    async def aclose(self) -> None:
        """Close the pooled connections (after the last request has drained)."""
        for session in self._sessions.values():
            await session.close()

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The reply's body, or ``too_large`` as soon as it is known to exceed ``max_reply_bytes``."""
        limit = self.max_reply_bytes
        if response.content_length is not None and response.content_length > limit:
            raise _AttemptFailed("too_large", f"reply of {response.content_length:,} bytes, over the "
                                 f"{limit:,}-byte limit", False)
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise _AttemptFailed("too_large", f"reply over the {limit:,}-byte limit", False)
            chunks.append(chunk)
        return b"".join(chunks)

    async def call(self, model: str, messages: list[dict[str, Any]], forwarded: Mapping[str, Any],
                   deadline: float | None = None, *, logprobs: bool = False) -> Reply:
        """One model's answer to ``messages``, retried once on a retryable failure.

        Parameters
        ----------
        model : str
            The artifact's model name.
        messages : list of dict
            The conversation.
        forwarded : mapping
            Sampling parameters sent unchanged.
        deadline : float, optional
            :func:`time.monotonic` time by which the call must be over, whatever ``timeout_s`` allows;
            once it has passed the model fails (``deadline``) without being called.
        logprobs : bool, default=False
            Ask for token log-probabilities (``Reply.mean_logprob``); a reply without them is malformed.

        Returns
        -------
        Reply

        Raises
        ------
        UpstreamFailure
            When the model failed for this query.
        """
        backend = self.backends[model]
        asked = {"logprobs": True} if logprobs else {}
        payload = json.dumps({**forwarded, "model": backend.model, "messages": messages, "stream": False, **asked})
        headers = {"Content-Type": "application/json"}
        if backend.api_key:
            headers["Authorization"] = f"Bearer {backend.api_key}"
        began, attempt = time.perf_counter(), 0
        while True:
            seconds = backend.timeout_s if deadline is None else min(backend.timeout_s, deadline - time.monotonic())
            if seconds <= 0:
                raise UpstreamFailure(backend, "deadline", "the request's deadline passed (--request-timeout)",
                                      time.perf_counter() - began, attempt)
            attempt += 1
            timeout = aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds, backend.connect_timeout_s))
            try:
                async with self._slots[model], self._sessions[model].post(
                        backend.url, data=payload, headers=headers, allow_redirects=False,
                        timeout=timeout) as response:
                    status, content = response.status, await self._read(response)
                text, finish, prompt_tokens, completion_tokens, mean = _read_reply(status, content, logprobs)
            except asyncio.TimeoutError:
                limited = seconds < backend.timeout_s
                failure = _AttemptFailed("deadline" if limited else "timeout",
                                         "the request's deadline passed (--request-timeout)" if limited else
                                         f"no reply within {backend.timeout_s:g} s", False)
            except aiohttp.ClientError as error:
                failure = _AttemptFailed("unreachable", f"transport error {type(error).__name__}", True)
            except _AttemptFailed as error:
                failure = error
            else:
                return Reply(text, finish, prompt_tokens, completion_tokens,
                             backend.cost(prompt_tokens, completion_tokens), time.perf_counter() - began, attempt,
                             mean)
            if not failure.retry or attempt == 2:
                raise UpstreamFailure(backend, failure.kind, failure.detail, time.perf_counter() - began, attempt)
