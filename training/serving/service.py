"""The routing service: a fitted router behind an OpenAI-compatible HTTP endpoint.

:func:`create_app` builds the Starlette (ASGI) application that
``python -m training.serve`` runs with uvicorn:

* ``POST /v1/chat/completions`` runs the cascade for the last user message
  (``metadata.task`` / ``metadata.subtask`` as the task inputs): decide ->
  call that model's upstream -> feed back its answer and cost -> ... ->
  select, and answers with the selected text in the OpenAI schema. Headers
  ``x-router-models`` (every model called, in call order),
  ``x-router-failed``, ``x-router-cost-usd``, ``x-router-latency-ms`` (per
  step, in call order), ``x-router-upstream-ms`` and
  ``x-router-overhead-ms`` (the service's own time: its time minus the
  upstream time) say what happened; the extra ``router`` field of the body
  says it too. ``stream: true`` sends the selected answer as server-sent
  events once it is chosen: the cascade has run by then, so this is not
  token streaming through the cascade.
* ``POST /v1/route``: the decision only, for callers that call models themselves.
* ``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (Prometheus).

A failed upstream (:mod:`training.serving.upstream`: timeout, 5xx, malformed
reply, retried once) is that model failing for this query: the next
decision excludes it (``Router.decide(excluded=...)``), and when no answer
was obtained from any model the reply is a 502 naming each upstream that
failed. A decision step reading little new text runs on the event loop
(cheaper than the trip to a thread), a long one on a small thread pool (the
router is thread-safe; :class:`ServiceConfig` ``inline_decision_chars``);
upstream calls are async and pooled. With a paced
router one controller is shared by every request.

Who may call (issue 18): the caller's key (``api_key``, at least
:data:`MIN_API_KEY_CHARS` characters) is compared in constant time; bodies
above ``max_body_bytes`` get 413 while they are read (a body that does not
arrive in time is the edge's: :mod:`training.serving.edge`); messages above ``max_prompt_chars`` or
``max_messages`` get 400; one client (by address) may have
``max_client_concurrency`` requests in flight, more get 429. Upstream keys
live only in the request headers sent upstream: no response, log line,
metric or exception message carries them.

The edge (issue 30): a POST whose ``Content-Type`` is not
``application/json`` gets 415, so that a web page cannot make a browser
send one without a CORS preflight (``text/plain`` needs none); a request
whose ``Host`` is not in ``allowed_hosts`` gets 421, so that a DNS-rebound
name cannot reach a loopback service; the client address is the peer's
(``X-Forwarded-For`` is read by uvicorn only from ``--trusted-proxies``,
:mod:`training.serving.edge`). A body larger than
``inline_decision_chars`` waits unread until no other long body is being
read or parsed, and is parsed on a decision thread, not on the event loop. The whole
cascade of one request has ``request_timeout_s`` (each upstream call gets
what is left of it), and a 502 names the models that
failed, never their upstream URLs.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from threadpoolctl import threadpool_limits

from estimators.estimator import PreparedQueries

from ..explore import Exploration
from ..policy import Policy
from ..router import PacedRouter, Router
from ..traffic_log import answered_requests
from . import traffic
from .backends import Backend
from .openai_api import (
    OBJECTS_PER_MESSAGE,
    ROUTER_MODEL,
    APIError,
    ChatRequest,
    chat_response,
    parse_chat_request,
    parse_json,
    parse_route_request,
    sse_chunks,
)
from .shadow import Shadow, check_shadow
from .upstream import LOGPROB_SIGNAL, MAX_REPLY_BYTES, Reply, UpstreamFailure, Upstreams

__all__ = ["MIN_API_KEY_CHARS", "ServiceConfig", "create_app"]

MIN_API_KEY_CHARS = 32
"""Shortest caller key accepted: a short one can be found by trying (``secrets.token_urlsafe(32)`` makes one)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceConfig:
    """How the service serves.

    Attributes
    ----------
    budget : float, optional
        The budget ``model: "router"`` means (its fitted policy, see
        :meth:`Router.policy`); default the largest fitted budget.
    pace : bool, default=False
        Pace ``λ`` to ``budget`` (:class:`PacedRouter`), one controller shared by all requests.
    api_key : str, optional
        The key callers must send as ``Authorization: Bearer <key>``; ``None`` lets anyone call.
    max_body_bytes : int, default=1 MiB
        Larger request bodies get 413.
    max_prompt_chars : int, default=100,000
        Most characters the messages of one request may hold together (400 above).
    max_client_concurrency : int, default=32
        Requests one client address may have in flight (429 above).
    decision_threads : int, default=2
        Threads that run the decision steps too long to run on the event loop.
    inline_decision_chars : int, default=32,000
        A decision step whose new text (the prompt at the first step, the
        newest response after it; for ``/v1/route`` all of them) is at most
        this long runs on the event loop: measured at 0.1–0.7 ms, it is
        cheaper than the trip to a thread (about 0.3 ms of CPU, and under load
        tens of milliseconds waiting for the GIL; ``docs/decisions.md`` item 32).
        Longer ones go to the decision threads, so one huge response cannot
        stall every request. 0 sends every step to the threads. A request
        body longer than this is parsed on a decision thread too, and one
        such body is read at a time (the others wait unread in their sockets).
    max_messages : int, default=256
        Most messages one request may hold (400 above).
    request_timeout_s : float, default=60
        Deadline of one request's whole cascade; an upstream call gets what
        is left of it (and at most its ``timeout_s``).
    allowed_hosts : tuple of str, optional
        Host names (without port) a request's ``Host`` header may give;
        others get 421. ``None`` accepts any (``training.serve`` sets the
        loopback names for a loopback bind).
    max_reply_bytes : int, default=8 MiB
        Largest upstream reply read; a larger one fails that model.
    log : LogConfig, optional
        Log every answered request (:mod:`training.serving.traffic`) and
        accept labels at ``/v1/feedback`` (issue 34); ``None`` logs nothing.
    explore : float, default=0
        Probability that a request served by the paced policy also calls
        ``explore_models`` uniformly drawn models (:mod:`training.explore`);
        needs ``pace`` and ``log``.
    explore_models : int, default=1
        Models an exploring request draws.
    feedback_ids : int, default=100,000
        Most recent request ids kept for ``/v1/feedback`` (older ids get 404),
        read back from the log at start-up, so a restart loses none.
    baseline_model : str, optional
        The all-frontier baseline savings are counted against (issue 34);
        default the model with the highest prices (output, then input).
    shadow_budget : float, optional
        The shadow router's budget (``create_app(shadow=...)``); default each request's served budget.
    """

    budget: float | None = None
    pace: bool = False
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_prompt_chars: int = 100_000
    max_client_concurrency: int = 32
    decision_threads: int = 2
    inline_decision_chars: int = 32_000
    max_messages: int = 256
    request_timeout_s: float = 60.0
    allowed_hosts: tuple[str, ...] | None = None
    max_reply_bytes: int = MAX_REPLY_BYTES
    log: traffic.LogConfig | None = None
    explore: float = 0.0
    explore_models: int = 1
    feedback_ids: int = 100_000
    baseline_model: str | None = None
    shadow_budget: float | None = None

    def __post_init__(self) -> None:
        Exploration(self.explore, self.explore_models)  # checks them
        if self.explore and not (self.pace and self.log is not None):
            raise ValueError("exploring spends beyond the policy's budget unless paced, and is useless unlogged; "
                             "add --pace and --log-dir, or drop --explore")
        if self.api_key is not None and len(self.api_key) < MIN_API_KEY_CHARS:
            raise ValueError(f"the callers' key has {len(self.api_key)} characters, fewer than {MIN_API_KEY_CHARS}: "
                             "a short key can be found by trying; make one with python -c \"import secrets; "
                             "print(secrets.token_urlsafe(32))\"")
        if self.allowed_hosts is not None:
            object.__setattr__(self, "allowed_hosts", tuple(host.lower() for host in self.allowed_hosts))


class _Children(dict):
    """A labelled metric's children by label values, each made once.

    ``metric.labels(...)`` checks the values and takes a lock on every call
    (about 4 µs); a request touches a dozen children on its path, always
    the same few per model, endpoint and status, so they are kept here
    (as many as the metric itself keeps, and as long).
    """

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self.metric = metric

    def __missing__(self, values: str | tuple[str, ...]) -> Any:
        child = self[values] = self.metric.labels(*values) if isinstance(values, tuple) else self.metric.labels(values)
        return child


class _Metrics:
    """The service's Prometheus metrics, in a registry of its own (so several apps can live in one process).

    The metrics a request updates on its path are also reached through :class:`_Children`
    (``decisions_of[model]``, ``requests_of[endpoint, status]``, ...).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("router_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"],
                                registry=r)
        self.decisions = Counter("router_decisions", "Upstream calls the router decided, per model.", ["model"],
                                 registry=r)
        self.selected = Counter("router_selected", "Answers returned, per model that wrote them.", ["model"],
                                registry=r)
        self.upstream_errors = Counter("router_upstream_errors", "Upstream models that failed for a query "
                                       "(after the retry), by kind.", ["model", "kind"], registry=r)
        self.retries = Counter("router_upstream_retries", "Upstream attempts retried.", ["model"], registry=r)
        self.spend = Counter("router_spend_usd", "USD spent on upstream calls (usage x prices).", ["model"],
                             registry=r)
        self.budget = Gauge("router_budget_usd", "Target mean cost per query of the policy serving a budget.",
                            ["budget"], registry=r)
        self.query_cost = Histogram("router_query_cost_usd", "Realised cost per answered query, per budget served "
                                    "(sum/count against router_budget_usd: realised vs budget).", ["budget"],
                                    buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, math.inf),
                                    registry=r)
        self.pacing_factor = Gauge("router_pacing_factor", "Current λ factor of the paced policy.", registry=r)
        self.request_seconds = Histogram("router_request_seconds", "Time to answer a request.", ["endpoint"],
                                         registry=r)
        self.upstream_seconds = Histogram("router_upstream_seconds", "Time of one upstream call (retry included).",
                                          ["model"], registry=r)
        self.overhead_seconds = Histogram("router_overhead_seconds", "The service's own time per chat request "
                                          "(its time minus upstream time).",
                                          buckets=(2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 0.1, math.inf),
                                          registry=r)
        self.in_flight = Gauge("router_in_flight", "Requests being served.", registry=r)
        self.explored = Counter("router_explored", "Exploration calls (models the policy did not call).",
                                ["model"], registry=r)
        self.log_rows = Gauge("router_log_rows", "Traffic log rows since start: written, dropped (queue full) "
                              "or refused (disk limit, write error).", ["state"], registry=r)
        self.feedback = Counter("router_feedback", "Labels received at /v1/feedback.", registry=r)
        self.baseline = Counter("router_baseline_cost_usd", "What the answered chat requests would have cost "
                                "on the baseline model alone (its prices x each request's tokens).", registry=r)
        self.saving = Gauge("router_saving_usd", "Baseline cost minus the cascades' realised cost, summed over "
                            "the answered chat requests (exploration spend not included).", registry=r)
        self.decisions_of, self.retries_of = _Children(self.decisions), _Children(self.retries)
        self.upstream_seconds_of, self.spend_of = _Children(self.upstream_seconds), _Children(self.spend)
        self.selected_of, self.query_cost_of = _Children(self.selected), _Children(self.query_cost)
        self.requests_of, self.request_seconds_of = _Children(self.requests), _Children(self.request_seconds)


@dataclass
class _Step:
    model: str
    reply: Reply | None
    failure: UpstreamFailure | None

    @property
    def seconds(self) -> float:
        return self.reply.seconds if self.reply is not None else self._failure().seconds

    def record(self) -> dict[str, Any]:
        entry = {"model": self.model, "ok": self.reply is not None, "latency_ms": round(self.seconds * 1e3, 3)}
        if self.reply is not None:
            entry.update(cost_usd=self.reply.cost, attempts=self.reply.attempts)
        else:
            entry.update(cost_usd=0.0, attempts=self._failure().attempts, error=self._failure().kind)
        return entry

    def _failure(self) -> UpstreamFailure:
        if self.failure is None:
            raise RuntimeError("a step holds a reply or a failure")
        return self.failure


class _Service:
    """The state one app shares across requests: router, pacing, upstreams, metrics, thread pool."""

    def __init__(self, router: Router, backends: Mapping[str, Backend], config: ServiceConfig,
                 shadow: Router | None = None) -> None:
        unservable = [name for name in router.estimator.signal_names_ if name != LOGPROB_SIGNAL]
        if unservable:
            raise ValueError(f"this artifact's estimator reads post-hoc signals {unservable} that an OpenAI reply "
                             f"does not carry (the service supplies only {LOGPROB_SIGNAL!r}); serve an artifact "
                             "fitted without them")
        missing = [name for name in router.models_ if name not in backends]
        if missing:
            raise ValueError(f"no backend for model(s) {missing} of the artifact")
        self.logprobs = LOGPROB_SIGNAL in router.estimator.signal_names_
        lacking = [name for name in router.models_ if self.logprobs and not backends[name].logprobs]
        if lacking:
            raise ValueError(f"this artifact's estimator reads {LOGPROB_SIGNAL!r}, but the backends of {lacking} do "
                             "not say logprobs = true in backends.toml; set it for upstreams that return token "
                             "log-probabilities, or serve an artifact fitted without that signal")
        self.router, self.config = router, config
        self.default_policy = router.policy(config.budget)  # a budget below every fitted one stops here
        self.paced = router.paced(config.budget if config.budget is not None else self.default_policy.budget
                                  ) if config.pace else None
        self.backends = dict(backends)
        self.upstreams: Upstreams | None = None
        self.metrics = _Metrics()
        self.executor: ThreadPoolExecutor | None = None
        self.per_query = [name for name in ("task", "subtask") if name in router.estimator.columns_]
        self.in_flight_by_client: dict[str, int] = {}
        self.exploration = Exploration(config.explore, config.explore_models)
        self.random = random.Random()
        self.traffic: traffic.TrafficLog | None = None
        self.served: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # request id -> selected, other answers
        self.exploring: set[asyncio.Task] = set()
        if config.baseline_model is not None and config.baseline_model not in self.backends:
            raise ValueError(f"the baseline model {config.baseline_model!r} is not a model of the artifact; name one "
                             f"of {list(router.models_)}")
        self.baseline = config.baseline_model or max(
            router.models_, key=lambda m: (self.backends[m].price_out, self.backends[m].price_in, m))
        self.long_bodies = asyncio.Semaphore(1)  # docs/decisions.md item 161
        self.body_limits = {"max_prompt_chars": config.max_prompt_chars, "max_messages": config.max_messages,
                            "needs_task": "task" in self.per_query}
        self.body_objects = OBJECTS_PER_MESSAGE * config.max_messages + 16
        for policy in router.policies:
            self.metrics.budget.labels(_label(policy.budget)).set(policy.budget)
        if self.paced is not None:
            self.metrics.budget.labels("paced").set(self.paced.budget)
            self.metrics.pacing_factor.set(self.paced.state().factor)
        self.shadow: Shadow | None = None
        if shadow is not None:
            served = self.paced.budget if self.paced is not None else self.default_policy.budget
            check_shadow(shadow, router, config.shadow_budget if config.shadow_budget is not None else served)
            self.shadow = Shadow(shadow, self.metrics.registry, budget=config.shadow_budget)

    # -- lifecycle -----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.upstreams = Upstreams(self.backends, self.config.max_reply_bytes)
        self.executor = ThreadPoolExecutor(self.config.decision_threads, thread_name_prefix="router-decide")
        # One query's products are tiny: BLAS threads would only spin beside the decision threads (as in
        # training.score, where they made small products ten times slower).
        blas = threadpool_limits(1, user_api="blas")
        if self.config.log is not None:  # requests served before a restart keep taking feedback
            self.served.update(answered_requests(self.config.log.directory, self.config.feedback_ids))
            self.traffic = self.config.log.open()
        try:
            yield
        finally:  # uvicorn has drained the in-flight requests by now
            await asyncio.gather(*self.exploring, return_exceptions=True)
            if self.shadow is not None:
                await self.shadow.drain()
            if self.traffic is not None:
                self.traffic.close()
            await self.upstreams.aclose()
            self.executor.shutdown(wait=True)
            blas.restore_original_limits()

    async def _run_decision(self, chars: int, function, *args):
        """``function(*args)``: here if it reads at most ``inline_decision_chars`` of new text, else on a thread."""
        if chars <= self.config.inline_decision_chars:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    # -- the cascade ---------------------------------------------------------------------------------------
    def _policy_for(self, request_budget: float | None) -> tuple[Policy | None, str]:
        """The policy a request names (``None``: the paced one) and the metrics label of its budget."""
        if request_budget is None:
            if self.paced is not None:
                return None, "paced"
            return self.default_policy, _label(self.default_policy.budget)
        try:
            policy = self.router.policy(request_budget)
        except ValueError as error:
            raise APIError(400, str(error), param="model", code="model_not_found") from None
        return policy, _label(policy.budget)

    def _pacer(self) -> PacedRouter:
        """The paced router, which serves every request that names no fixed budget (there is one then)."""
        if self.paced is None:
            raise RuntimeError("a request without a budget reached a service that has no paced router")
        return self.paced

    def _keywords(self, parsed: ChatRequest) -> dict[str, list[str]]:
        values = {"task": parsed.task, "subtask": parsed.subtask}
        return {f"{name}s": [values[name]] for name in self.per_query}

    def _step(self, parsed: ChatRequest, policy: Policy | None, observed: dict, excluded: set,
              prepared: PreparedQueries | None) -> tuple[str | None, str | None, PreparedQueries]:
        """The next model, or ``None`` and the selected answer's model (``None`` if nothing answered).

        Deciding and, once the cascade stops, selecting happen in one call (one trip to a decision thread
        when it goes there) on one estimate (:meth:`Router.decide_or_select`). The prompt is featurized at
        the first step and the result passed back, so later steps only re-estimate.
        """
        if prepared is None:
            prepared = self.router.prepare([parsed.prompt], **self._keywords(parsed))
        if policy is None:
            model, selected = self._pacer().decide_or_select([parsed.prompt], [observed], excluded=[excluded],
                                                             prepared=prepared)[0]
        else:
            model, selected = self.router.decide_or_select([parsed.prompt], [observed], policy=policy,
                                                           excluded=[excluded], prepared=prepared)[0]
        return model, selected, prepared

    async def cascade(self, parsed: ChatRequest, pace: bool = True) -> tuple[str, list[_Step], dict[str, Any]]:
        """Run one query's cascade; the selected model, the steps, and the ``router`` account.

        ``pace=False`` leaves recording a paced request's cost to the caller (exploration adds to it).
        """
        policy, label = self._policy_for(parsed.budget)
        observed: dict[str, dict[str, Any]] = {}
        excluded: set[str] = set()
        steps: list[_Step] = []
        prepared, new_text = None, len(parsed.prompt)
        deadline = time.monotonic() + self.config.request_timeout_s
        while True:
            model, selected, prepared = await self._run_decision(new_text, self._step, parsed, policy, observed,
                                                                 excluded, prepared)
            if model is None:
                break
            self.metrics.decisions_of[model].inc()
            try:
                reply = await self.upstreams.call(  # type: ignore[union-attr]  # made at startup (lifespan)
                    model, parsed.messages, parsed.forwarded, deadline, logprobs=self.logprobs)
            except UpstreamFailure as failure:
                log.warning("%s; the router excludes it for this query", failure)
                self.metrics.upstream_errors.labels(model, failure.kind).inc()
                self.metrics.retries_of[model].inc(max(failure.attempts - 1, 0))  # 0 attempts: deadline
                self.metrics.upstream_seconds_of[model].observe(failure.seconds)
                excluded.add(model)
                steps.append(_Step(model, None, failure))
                continue
            self.metrics.retries_of[model].inc(reply.attempts - 1)
            self.metrics.upstream_seconds_of[model].observe(reply.seconds)
            self.metrics.spend_of[model].inc(reply.cost)
            observed[model] = {"cost": reply.cost, "response": reply.text}
            if self.logprobs:
                observed[model][LOGPROB_SIGNAL] = reply.mean_logprob
            new_text = len(reply.text)
            steps.append(_Step(model, reply, None))
        if not observed:
            failed = "; ".join(step._failure().public for step in steps) or "the policy called no model"
            raise APIError(502, f"no upstream answered: {failed}", type="upstream_error", code="upstream_failed")
        cost = sum(result["cost"] for result in observed.values())
        if policy is None and pace:
            self._pacer().record(cost)
            self.metrics.pacing_factor.set(self._pacer().state().factor)
        self.metrics.query_cost_of[label].observe(cost)
        self.metrics.selected_of[selected].inc()
        account = {"models": [step.model for step in steps], "failed": sorted(excluded), "selected": selected,
                   "cost_usd": cost, "budget": self._pacer().budget if policy is None else policy.budget,
                   "paced": policy is None, "steps": [step.record() for step in steps]}
        return selected, steps, account

    # -- handlers ------------------------------------------------------------------------------------------
    async def _body(self, request: Request, parse):
        """``parse(decoded JSON body, ...)``; a long body is read and parsed under :attr:`long_bodies` (issue 30).

        A body declared longer than ``inline_decision_chars`` (or of unknown
        length) waits for the one slot *before* it is read, and is parsed on
        a decision thread. While it waits, its bytes stay in the socket
        (uvicorn pauses reading a connection whose body nobody consumes), so
        32 clients posting 1 MB bodies cost the event loop the reading of one
        at a time, not of 32 interleaved, and one thread, not two, competes
        with the loop for the interpreter lock while it decodes: the loop
        stays free for everyone else (``docs/decisions.md`` items 71, 161).
        """
        _require_json(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) <= self.config.inline_decision_chars:
            raw = await _read_body(request, self.config.max_body_bytes)  # deadline: the edge's body_timeout_s
            return self._parse_body(raw, parse)
        async with self.long_bodies:
            raw = await _read_body(request, self.config.max_body_bytes)
            return await self._run_decision(len(raw), self._parse_body, raw, parse)

    def _parse_body(self, raw: bytes, parse):
        return parse(parse_json(raw, self.body_objects), **self.body_limits)

    async def chat(self, request: Request) -> Response:
        began = time.perf_counter()
        parsed = await self._body(request, parse_chat_request)
        request_id = f"req-{uuid.uuid4().hex}"
        explore = (self.exploration.draw(self.random, self.router.models_)
                   if parsed.budget is None and self.paced is not None else ())
        selected, steps, account = await self.cascade(parsed, pace=not explore)
        account["request_id"] = request_id
        self._savings(steps, account)
        if self.shadow is not None:  # off the request path: it never delays or fails the answer
            self.shadow.start(request_id, parsed.prompt, parsed.task, parsed.subtask, steps, selected,
                              account["budget"], logged=self.traffic is not None)
        if self.traffic is not None:
            self._log(request_id, parsed, steps, selected, account, explore)
        chosen = next(step.reply for step in steps if step.model == selected and step.reply is not None)
        replies = [step.reply for step in steps if step.reply is not None]
        prompt_tokens = sum(r.prompt_tokens for r in replies)
        completion_tokens = sum(r.completion_tokens for r in replies)
        upstream = sum(step.seconds for step in steps)
        overhead = time.perf_counter() - began - upstream
        account["upstream_ms"], account["overhead_ms"] = round(upstream * 1e3, 3), round(overhead * 1e3, 3)
        self.metrics.overhead_seconds.observe(overhead)
        body = chat_response(chosen.text, model=selected, finish_reason=chosen.finish_reason,
                             usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                    "total_tokens": prompt_tokens + completion_tokens}, router=account)
        headers = {"x-router-models": ",".join(account["models"]), "x-router-failed": ",".join(account["failed"]),
                   "x-router-selected": selected, "x-router-cost-usd": repr(account["cost_usd"]),
                   "x-router-latency-ms": ",".join(f"{step.seconds * 1e3:.3f}" for step in steps),
                   "x-router-upstream-ms": f"{upstream * 1e3:.3f}", "x-router-overhead-ms": f"{overhead * 1e3:.3f}",
                   "x-router-request-id": request_id}
        if parsed.stream:
            return StreamingResponse(sse_chunks(body, include_usage=parsed.include_usage),
                                     media_type="text/event-stream", headers=headers)
        return JSONResponse(body, headers=headers)

    # -- the traffic log (issue 34) ------------------------------------------------------------------------
    def _savings(self, steps: list[_Step], account: dict) -> None:
        """The baseline's cost on this request and the saving, in the account and the metrics.

        The baseline never ran, so its cost is its prices times this request's tokens: the prompt tokens
        an upstream counted, and the mean completion tokens of the answers obtained.
        """
        replies = [step.reply for step in steps if step.reply is not None]
        completion = sum(r.completion_tokens for r in replies) / len(replies)
        cost = self.backends[self.baseline].cost(max(r.prompt_tokens for r in replies), round(completion))
        account.update(baseline_model=self.baseline, baseline_cost_usd=cost, saving_usd=cost - account["cost_usd"])
        self.metrics.baseline.inc(cost)
        self.metrics.saving.inc(cost - account["cost_usd"])
    def _log(self, request_id: str, parsed: ChatRequest, steps: list[_Step], selected: str, account: dict,
             explore: tuple[str, ...]) -> None:
        """Queue the request's rows; with exploration draws the cascade skipped, call them first, off the request."""
        self.served[request_id] = (selected, *(s.model for s in steps if s.reply is not None and s.model != selected))
        while len(self.served) > self.config.feedback_ids:
            self.served.popitem(last=False)
        extra = [model for model in explore if model not in account["models"]]
        if extra:
            task = asyncio.get_running_loop().create_task(self._explore(extra, request_id, parsed, steps,
                                                                        selected, account))
            self.exploring.add(task)
            task.add_done_callback(self.exploring.discard)
            return
        if explore:  # drawn, but the cascade called them all: the cascade's cost is the request's
            self._record_paced(account["cost_usd"])
        self._submit(request_id, parsed, steps, selected, account, 0)

    async def _explore(self, models: list[str], request_id: str, parsed: ChatRequest, steps: list[_Step],
                       selected: str, account: dict) -> None:
        upstreams = self.upstreams
        assert upstreams is not None  # the lifespan has opened them
        deadline = time.monotonic() + self.config.request_timeout_s

        async def call(model: str) -> _Step:
            self.metrics.explored.labels(model).inc()
            try:
                reply = await upstreams.call(model, parsed.messages, parsed.forwarded, deadline,
                                             logprobs=self.logprobs)
            except UpstreamFailure as failure:
                log.warning("%s (exploration call)", failure)
                return _Step(model, None, failure)
            self.metrics.spend_of[model].inc(reply.cost)
            return _Step(model, reply, None)

        extra = await asyncio.gather(*(call(model) for model in models))
        cost = account["cost_usd"] + sum(step.reply.cost for step in extra if step.reply is not None)
        self._record_paced(cost)
        self._submit(request_id, parsed, [*steps, *extra], selected, {**account, "cost_usd": cost}, len(extra))
        answered = tuple(step.model for step in extra if step.reply is not None)
        if request_id in self.served:
            self.served[request_id] = (*self.served[request_id], *answered)

    def _record_paced(self, cost: float) -> None:
        assert self.paced is not None  # only paced requests explore
        self.paced.record(cost)
        self.metrics.pacing_factor.set(self.paced.state().factor)

    def _submit(self, request_id: str, parsed: ChatRequest, steps: list[_Step], selected: str, account: dict,
                explored: int) -> None:
        assert self.traffic is not None
        policy = self.paced.policy if self.paced is not None and account["paced"] else \
            self.router.policy(account["budget"])
        rows = traffic.request_rows(request_id, parsed.prompt, parsed.task, parsed.subtask, steps, selected,
                                    budget=account["budget"], lambdas=list(policy.lambdas), paced=account["paced"],
                                    cost=account["cost_usd"], explored=explored,
                                    exploration=self.exploration if account["paced"] else Exploration(0.0),
                                    n_models=len(self.router.models_),
                                    baseline=(account["baseline_model"], account["baseline_cost_usd"]))
        if self.shadow is not None:
            self.shadow.submit(request_id, rows, self.traffic.submit)
        else:
            self.traffic.submit(rows)

    async def feedback(self, request: Request) -> Response:
        """``POST /v1/feedback {"id", "quality", "model"?}``: a label for a served request's answer (202)."""
        _require_json(request)
        raw = await _read_body(request, min(self.config.max_body_bytes, 4096))
        if self.traffic is None:
            raise APIError(404, "this service keeps no traffic log, so it takes no feedback; start it with "
                                "--log-dir", code="feedback_disabled")
        body = parse_json(raw, 16)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise APIError(400, "send {\"id\": the request's x-router-request-id, \"quality\": a number}",
                           param="id")
        quality = body.get("quality")
        if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not math.isfinite(quality):
            raise APIError(400, "quality must be a finite number (the label's scale is the one training.fit reads, "
                                "0 to 1 by default)", param="quality")
        answered = self.served.get(body["id"])
        if answered is None:
            raise APIError(404, f"no recent request has the id {body['id'][:64]!r}: give the x-router-request-id "
                                f"of one of the last {self.config.feedback_ids:,} requests this process served",
                           param="id", code="unknown_request")
        model = body.get("model", answered[0])  # the selected answer's, unless the label names another
        if model not in answered:
            raise APIError(400, f"that request got no answer from {str(model)[:64]!r}; name one of {list(answered)}",
                           param="model")
        if not self.traffic.submit([traffic.feedback_row(body["id"], model, float(quality))],
                                   kind=traffic.FEEDBACK_PREFIX):
            raise APIError(503, "the traffic log is behind; retry the label later", type="server_error",
                           code="log_full")
        self.metrics.feedback.inc()
        return JSONResponse({"id": body["id"], "model": model, "quality": float(quality), "status": "accepted"},
                            status_code=202, headers={"x-router-request-id": body["id"]})

    async def route(self, request: Request) -> Response:
        parsed, observed, excluded = await self._body(request, parse_route_request)
        policy, _ = self._policy_for(parsed.budget)
        keywords = self._keywords(parsed)

        def decide() -> dict[str, Any]:
            try:
                prepared = self.router.prepare([parsed.prompt], **keywords)
                if policy is None:
                    plan = self._pacer().plan([parsed.prompt], [observed], excluded=[excluded], prepared=prepared)[0]
                else:
                    plan = self.router.plan([parsed.prompt], [observed], policy=policy, excluded=[excluded],
                                            prepared=prepared)[0]
                select = self.router.select([parsed.prompt], [observed], prepared=prepared)[0] if observed else None
            except (ValueError, TypeError) as error:  # the router names what is wrong with observed/excluded
                raise APIError(400, str(error), param="observed") from None
            return {"next": plan.next, "models": list(plan.models), "select": select,
                    "budget": self._pacer().budget if policy is None else policy.budget}

        new_text = len(parsed.prompt) + sum(len(str(result.get("response", ""))) for result in observed.values())
        return JSONResponse(await self._run_decision(new_text, decide))

    async def models(self, request: Request) -> Response:
        names = [ROUTER_MODEL] + [f"{ROUTER_MODEL}@{_label(p.budget)}" for p in self.router.policies]
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                          "owned_by": "cascade-router"} for name in names]})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": list(self.router.models_)})

    async def prometheus(self, request: Request) -> Response:
        if self.traffic is not None:
            for state in ("written", "dropped", "refused"):
                self.metrics.log_rows.labels(state).set(getattr(self.traffic, f"{state}_rows"))
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _label(budget: float) -> str:
    return f"{budget:.10g}"


def _require_json(request: Request) -> None:
    """415 unless the body is declared JSON: the content types a web page may send without a CORS preflight
    (``text/plain``, forms) never reach the cascade."""
    declared = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if declared != "application/json":
        raise APIError(415, "send the body as JSON with Content-Type: application/json",
                       code="unsupported_media_type")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes (declared or read so far)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise APIError(413 if declared.isdigit() else 400,
                       f"the request body exceeds the service's limit of {limit:,} bytes (--max-body-bytes)"
                       if declared.isdigit() else "Content-Length is not a number", code="request_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"the request body exceeds the service's limit of {limit:,} bytes "
                                    "(--max-body-bytes)", code="request_too_large")
            chunks.append(chunk)
    except ClientDisconnect:  # the client went, or the edge closed a body too slow (nobody reads a reply)
        raise APIError(400, "the client disconnected before the body was complete", code="client_disconnected"
                       ) from None
    return b"".join(chunks)


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


_INTERNAL = APIError(500, "the router failed on this request; the service logged the error", type="server_error",
                     code="internal_error")


class _Guard:
    """ASGI middleware: the caller's key, per-client concurrency, metrics and error bodies for every request.

    A refused or failed request gets OpenAI's error body; an exception a
    handler did not expect becomes a 500 with a generic message (logged
    with its traceback), so the server never goes down with a request.
    """

    def __init__(self, app: ASGIApp, service: _Service) -> None:
        self.app, self.service = app, service
        key = service.config.api_key
        self.expected = None if key is None else f"Bearer {key}".encode()
        hosts = service.config.allowed_hosts
        self.allowed = None if hosts is None else frozenset(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, metrics = scope["path"], self.service.metrics
        endpoint = path if path in _ENDPOINTS else "other"
        began, status = time.perf_counter(), [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        client = scope.get("client")
        host = client[0] if client else "unknown"
        counts = self.service.in_flight_by_client
        try:
            if self.allowed is not None and _host(scope) not in self.allowed:
                raise APIError(421, "this service does not answer for that Host (a DNS-rebound name?); call it by "
                                    "an allowed name (--allowed-hosts)", code="misdirected_request")
            if self.expected is not None and path != "/healthz" and not self._authorised(scope, self.expected):
                raise APIError(401, "missing or wrong API key: send Authorization: Bearer <key>",
                               type="invalid_request_error", code="invalid_api_key")
            if counts.get(host, 0) >= self.service.config.max_client_concurrency:
                raise APIError(429, f"this client already has {self.service.config.max_client_concurrency} requests "
                                    "in flight, the service's limit (--max-client-concurrency); retry when one ends",
                               type="rate_limit_error", code="rate_limit_exceeded")
            counts[host] = counts.get(host, 0) + 1
            metrics.in_flight.inc()
            try:
                await self._serve(scope, receive, sending)
            finally:
                metrics.in_flight.dec()
                counts[host] -= 1
                if not counts[host]:
                    del counts[host]
        except APIError as error:
            await _error_response(error)(scope, receive, sending)
        finally:
            metrics.requests_of[endpoint, str(status[0])].inc()
            metrics.request_seconds_of[endpoint].observe(time.perf_counter() - began)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = [False]

        async def sending(message: Message) -> None:
            started[0] = started[0] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:  # Starlette has answered with _internal_error's body; it re-raises for the log
            log.exception("unexpected error serving %s", scope["path"])
            if not started[0]:
                await _error_response(_INTERNAL)(scope, receive, send)

    def _authorised(self, scope: Scope, expected: bytes) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
        return hmac.compare_digest(given, expected)


def _host(scope: Scope) -> str:
    """The request's ``Host`` without its port, lower case (``[::1]:8000`` -> ``::1``)."""
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                return host[1:].partition("]")[0]
            return host.rpartition(":")[0] if host.count(":") == 1 else host
    return ""


_ENDPOINTS = ("/v1/chat/completions", "/v1/route", "/v1/feedback", "/v1/models", "/healthz", "/metrics")


def create_app(router: Router, backends: Mapping[str, Backend], config: ServiceConfig = ServiceConfig(),
               shadow: Router | None = None) -> ASGIApp:
    """The routing service as an ASGI application (see the module docstring).

    Parameters
    ----------
    router : Router
        Loaded with :func:`~training.router.load_router` (warmed up).
    backends : mapping of str to Backend
        One per model of the router (:func:`~training.serving.backends.load_backends`).
    config : ServiceConfig, optional
    shadow : Router, optional
        A second router whose decisions are compared with the served ones,
        never calling a model for it (:mod:`training.serving.shadow`).

    Returns
    -------
    ASGI application
        Run it with uvicorn; its lifespan opens and closes the upstream connections.

    Raises
    ------
    ValueError
        If a model has no backend, the artifact reads post-hoc signals, or
        ``config.budget`` is below every fitted budget (or, with ``pace``,
        no policy can be paced), or ``shadow`` has other models (or no policy within the budget).
    """
    service = _Service(router, backends, config, shadow)

    async def json_errors(request: Request, error: APIError) -> Response:
        return _error_response(error)

    async def internal_error(request: Request, error: Exception) -> Response:
        return _error_response(_INTERNAL)

    app = Starlette(routes=[Route("/v1/chat/completions", service.chat, methods=["POST"]),
                            Route("/v1/route", service.route, methods=["POST"]),
                            Route("/v1/feedback", service.feedback, methods=["POST"]),
                            Route("/v1/models", service.models, methods=["GET"]),
                            Route("/healthz", service.healthz, methods=["GET"]),
                            Route("/metrics", service.prometheus, methods=["GET"])],
                    exception_handlers={APIError: json_errors,  # type: ignore[dict-item]  # called with APIErrors only
                                        Exception: internal_error}, lifespan=service.lifespan)
    app.state.service = service
    return _Guard(app, service)
