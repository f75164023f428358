"""The service's HTTP edge: what a connection may cost before the application sees a request (issue 30).

uvicorn's httptools protocol caps none of it: one unauthenticated
connection sending header lines without end grew the service by as much
as it sent, and connections that send nothing (or half a request) were
kept for ever, until the process ran out of file descriptors. The
:class:`EdgeLimits` enforced here, by a subclass of uvicorn's protocol
(:func:`uvicorn_config` installs it):

* the request line and headers of one request: at most
  ``max_header_bytes`` bytes and ``max_headers`` fields (431 and the
  connection closed), counted as they arrive, before they are parsed whole;
* they must arrive within ``header_timeout_s`` of the connection opening
  or of the previous response (the connection is closed otherwise), so a
  connection that sends nothing, or a request a byte at a time, is dropped;
  an idle keep-alive connection is closed after ``keep_alive_s``, and a
  request whose body has not arrived ``body_timeout_s`` after its headers
  is dropped with its connection;
* at most ``max_connections`` connections: a new one beyond it closes the
  connection that has waited longest for its request headers (an idle or
  half-sent one), and is itself closed only when every connection has a
  request in flight. Each connection runs one request at a time, so this
  also bounds the requests in flight.

``X-Forwarded-For`` is believed only from ``trusted_proxies`` (none by
default; uvicorn's own default believes it from 127.0.0.1, which let one
local client pose as many). Request bodies are bounded by the application
(``ServiceConfig.max_body_bytes``, ``body_timeout_s``).
"""

from __future__ import annotations

import asyncio
import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["EdgeLimits", "raise_descriptor_limit", "uvicorn_config"]

_REFUSAL = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: 31\r\nconnection: close\r\n\r\nrequest headers are too large\r\n")
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
         b"content-length: 22\r\nconnection: close\r\n\r\ntoo many connections\r\n")


@dataclass(frozen=True)
class EdgeLimits:
    """Limits on connections and request heads; the defaults suit a service behind nothing.

    Attributes
    ----------
    max_header_bytes : int, default=32 KiB
        Request line and headers of one request (nginx allows 32 KiB in four 8 KiB buffers).
    max_headers : int, default=100
        Header fields of one request.
    header_timeout_s : float, default=10
        Seconds a request's head may take to arrive, from the connection opening or the previous response.
    keep_alive_s : float, default=5
        Seconds an idle keep-alive connection is kept.
    body_timeout_s : float, default=30
        Seconds a request's body may take to arrive after its headers.
    max_connections : int, default=1000
        Open connections; see the module docstring for what happens beyond.
    trusted_proxies : tuple of str, default=()
        Addresses (or CIDR ranges) whose ``X-Forwarded-For`` gives the client address.
    """

    max_header_bytes: int = 32 << 10
    max_headers: int = 100
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000
    trusted_proxies: tuple[str, ...] = ()


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop httptools parsing (it then raises its own parser error)."""


def _protocol(limits: EdgeLimits) -> type:
    """uvicorn's httptools protocol with :class:`EdgeLimits` enforced."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class EdgeProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            if not hasattr(self.server_state, "_edge_idle"):  # connections waiting for a head, oldest first
                self.server_state._edge_idle = OrderedDict()  # type: ignore[attr-defined]  # ours, on uvicorn's
            self._idle: OrderedDict = self.server_state._edge_idle  # type: ignore[attr-defined]  # shared state
            self._await_head()
            if len(self.connections) > limits.max_connections:
                victim = next((p for p in self._idle if p is not self), None)
                if victim is None:  # every other connection has a request in flight
                    self._close(_BUSY)
                else:
                    victim._close(None)

        def _await_head(self) -> None:
            """The connection now waits for a request head: count its bytes, time it, and it may be evicted."""
            self._head_bytes = self._head_fields = self._parsed = 0
            self._awaiting = True
            self._idle[self] = None
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(limits.header_timeout_s, self._close, None)

        def _head_done(self) -> None:
            self._awaiting = False
            self._idle.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _close(self, reply: bytes | None) -> None:
            self._head_done()
            if not self.transport.is_closing():
                if reply is not None:
                    self.transport.write(reply)
                self.transport.close()

        def connection_lost(self, exc) -> None:
            self._head_done()
            self._stop_body_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._awaiting:
                self._head_bytes += len(data)
            super().data_received(data)  # a head found too large in a callback ends in send_400_response
            # still no complete head: httptools buffers a partial header line whole, so count the raw bytes
            if self._awaiting and self._head_bytes > limits.max_header_bytes:
                self._close(_REFUSAL)

        def on_url(self, url: bytes) -> None:
            self._grow(len(url), 0)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._grow(len(name) + len(value) + 4, 1)
            super().on_header(name, value)

        def _grow(self, size: int, fields: int) -> None:
            self._head_fields += fields
            self._parsed += size
            if self._parsed > limits.max_header_bytes or self._head_fields > limits.max_headers:
                self._too_large = True
                raise _HeadTooLarge  # httptools stops parsing and raises a parser error from feed_data

        def send_400_response(self, msg: str) -> None:
            if getattr(self, "_too_large", False):
                self._close(_REFUSAL)
            else:
                super().send_400_response(msg)

        def on_message_begin(self) -> None:
            self._parsed = 0
            self._head_fields = 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head_done()
            super().on_headers_complete()
            self._body_timer: asyncio.TimerHandle | None = self.loop.call_later(limits.body_timeout_s, self._close,
                                                                                None)

        def on_message_complete(self) -> None:
            self._stop_body_timer()
            super().on_message_complete()

        def _stop_body_timer(self) -> None:
            timer = getattr(self, "_body_timer", None)  # unset until a body starts
            if timer is not None:
                timer.cancel()
                self._body_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():  # uvicorn's keep-alive timer runs too; the first to fire closes
                self._await_head()

    return EdgeProtocol


def uvicorn_config(app: Any, limits: EdgeLimits = EdgeLimits(), **options: Any):
    """A :class:`uvicorn.Config` serving ``app`` with ``limits`` enforced.

    Parameters
    ----------
    app : ASGI application
    limits : EdgeLimits
    **options
        Passed to :class:`uvicorn.Config` (``log_level``, ``timeout_graceful_shutdown``, ...).

    Returns
    -------
    uvicorn.Config
    """
    import uvicorn

    return uvicorn.Config(app, http=_protocol(limits),
                          timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]  # used as call_later's float
                          proxy_headers=bool(limits.trusted_proxies),
                          forwarded_allow_ips=list(limits.trusted_proxies) or None, limit_concurrency=None,
                          **options)


def raise_descriptor_limit(needed: int) -> int:
    """Raise the soft limit on open files towards the hard one so that ``needed`` descriptors fit.

    A connection is a descriptor; at the usual soft limit of 1,024 the
    service would stop accepting (and legitimate requests be reset) long
    before ``max_connections``.

    Parameters
    ----------
    needed : int

    Returns
    -------
    int
        The soft limit now in force.

    Raises
    ------
    ValueError
        If the hard limit is below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == resource.RLIM_INFINITY:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise ValueError(f"--max-connections needs about {needed:,} open files, but ulimit -n allows at most "
                         f"{hard:,}; lower --max-connections or raise the hard limit")
    return target
