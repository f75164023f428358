"""Calls to the OpenAI-compatible upstreams: pooled, bounded per upstream, retried once.

One :class:`httpx.AsyncClient` serves every upstream (connection pooling
per host); a semaphore per upstream bounds the calls in flight to it
(``max_concurrency`` in ``backends.toml``; more wait their turn). An
attempt fails on a timeout, a transport error, an HTTP 429 or 5xx, or a
reply that is not a chat completion with text and ``usage``; such a failure
is retried once, and a second failure is the model failing for this query
(:class:`UpstreamFailure`). Another 4xx is not retried (the same request
would be refused again) and fails the model at once. Failure messages name
the upstream (URL credentials removed) and the status, never the reply's
body or the key, so that nothing an upstream echoes reaches a caller, a log
or a metric.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Mapping

import httpx

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
        Time spent on the upstream, both attempts included.
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


def _read_reply(response: httpx.Response) -> tuple[str, str, int, int]:
    """Text, finish reason and token counts of a chat-completion reply, or :class:`_AttemptFailed`."""
    status = response.status_code
    if status == 429 or status >= 500:
        raise _AttemptFailed("http_429" if status == 429 else "http_5xx", f"HTTP {status}", True)
    if status >= 400:
        raise _AttemptFailed("http_4xx", f"HTTP {status}", False)
    try:
        body = json.loads(response.content)
        choice = body["choices"][0]
        text, finish = choice["message"]["content"], choice.get("finish_reason") or "stop"
        usage = body["usage"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _AttemptFailed("malformed", "the reply is not a chat completion with choices and usage", True) from None
    if not isinstance(text, str) or not isinstance(finish, str) or not isinstance(usage, Mapping):
        raise _AttemptFailed("malformed", "the reply has no text answer or no usage", True)
    return text, finish, _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")


class Upstreams:
    """The pooled client for every backend of a service.

    Parameters
    ----------
    backends : mapping of str to Backend
        One per model.
    transport : httpx.AsyncBaseTransport, optional
        For tests; default the network.
    """

    def __init__(self, backends: Mapping[str, Backend], *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.backends = dict(backends)
        total = sum(b.max_concurrency for b in self.backends.values())
        self._client = httpx.AsyncClient(transport=transport, limits=httpx.Limits(
            max_connections=total, max_keepalive_connections=total), follow_redirects=False)
        self._slots = {name: asyncio.Semaphore(b.max_concurrency) for name, b in self.backends.items()}

    async def aclose(self) -> None:
        """Close the pooled connections (after the last request has drained)."""
        await self._client.aclose()

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
        payload = {**forwarded, "model": backend.model, "messages": messages, "stream": False}
        headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
        began, attempt = time.perf_counter(), 0
        while True:
            attempt += 1
            try:
                async with self._slots[model]:
                    response = await self._client.post(backend.url, json=payload, headers=headers,
                                                       timeout=backend.timeout_s)
                text, finish, prompt_tokens, completion_tokens = _read_reply(response)
            except httpx.TimeoutException:
                failure = _AttemptFailed("timeout", f"no reply within {backend.timeout_s:g} s", True)
            except httpx.TransportError as error:
                failure = _AttemptFailed("unreachable", f"transport error {type(error).__name__}", True)
            except _AttemptFailed as error:
                failure = error
            else:
                return Reply(text, finish, prompt_tokens, completion_tokens,
                             backend.cost(prompt_tokens, completion_tokens), time.perf_counter() - began, attempt)
            if not failure.retry or attempt == 2:
                raise UpstreamFailure(backend, failure.kind, failure.detail, time.perf_counter() - began, attempt)
