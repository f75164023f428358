"""A second router beside the served one: its decisions on live traffic, never its calls (issue 34, ``--shadow``).

Why a replay: a cascade's later steps read the answers of its earlier
ones, so a shadow router's whole cascade is only known where every model it
would call was called anyway. After the served cascade has answered, the
shadow's cascade is replayed on the served cascade's answers
(:func:`training.offpolicy.replay`, the code ``training.evaluate --logged``
runs on the log): where it calls a model the served cascade called, it
reads that answer; a model that failed for the served cascade is excluded,
as the service would have excluded it; at the first model the served
cascade did not call, the shadow's path is known up to there and its
answer is unknown. No upstream is ever called for the shadow.

What is compared, per request: the first step (always known), the whole
path (the models called, in order, and where each stopped) and the selected
answer's model (unknown once the shadow's path leaves the served one). The
counters go to ``/metrics`` (``router_shadow_*``) and, with ``--log-dir``,
to the request's log rows (``shadow_path``, ``shadow_selected``,
``shadow_agrees``). The shadow's *quality and cost* are not measured here
(its answers were never obtained): ``training.evaluate --logged DIR
--artifact SHADOW`` estimates them from the same log.

Why off the request path: the comparison runs on a thread of its own after
the cascade, and the request does not wait for it; at most ``max_pending``
comparisons wait (more are skipped and counted), and an exception is
logged and counted, never a failed request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from ..offpolicy import FAILED, replay
from ..router import Router

__all__ = ["Comparison", "Shadow", "compare", "check_shadow"]

log = logging.getLogger(__name__)

#: The label of a step where a cascade stopped (``router_shadow_divergence``).
STOP = "stop"
#: The label of a shadow selection that cannot be known (its path left the served cascade).
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Comparison:
    """The shadow's decisions on one served request, beside the served cascade's.

    Attributes
    ----------
    path : tuple of str
        The models the shadow would have called, in order, up to and
        including the first one the served cascade did not call.
    selected : str or None
        The model whose answer the shadow would have returned; ``None`` when
        its path left the served cascade (unknown).
    first_agrees, path_agrees : bool
        The first model agrees; the whole path agrees (same models, same
        order, stopping at the same step).
    selected_agrees : bool or None
        ``None`` when the shadow's selection is unknown.
    diverged_at : int or None
        The first step at which the paths differ (``None``: they do not).
    served_step, shadow_step : str or None
        What each did at that step: a model, or :data:`STOP`.
    """

    path: tuple[str, ...]
    selected: str | None
    first_agrees: bool
    path_agrees: bool
    selected_agrees: bool | None
    diverged_at: int | None
    served_step: str | None
    shadow_step: str | None

    @property
    def agrees(self) -> bool:
        """The whole decision agrees: the same path and the same answer returned."""
        return self.path_agrees and bool(self.selected_agrees)


def compare(shadow: Router, prompt: str, steps: Sequence[Any], selected: str, *, budget: float,
            task: str = "", subtask: str = "") -> Comparison:
    """Replay ``shadow``'s cascade on the served cascade's answers and compare (see the module docstring).

    Parameters
    ----------
    shadow : Router
        The shadow router (the served router's models).
    prompt, task, subtask : str
        The request as the router read it (the task inputs are passed only if the shadow reads them).
    steps : sequence
        The served cascade's calls in order, each with ``model`` and ``reply``
        (``None`` when it failed; else with ``cost`` and ``text``).
    selected : str
        The served answer's model.
    budget : float
        Picks the shadow's policy (:meth:`Router.policy`: the largest fitted budget not above it).

    Returns
    -------
    Comparison
    """
    answers: dict[str, Mapping[str, Any]] = {}
    for step in steps:
        reply = step.reply
        answers[step.model] = FAILED if reply is None else {"cost": reply.cost, "response": reply.text,
                                                             "quality": math.nan}
    columns = shadow.estimator.columns_
    result = replay(shadow, [prompt], lambda _, model: answers.get(model), budget=budget,
                    tasks=[task] if "task" in columns else None, subtasks=[subtask] if "subtask" in columns else None)
    path, served = result.paths[0], tuple(step.model for step in steps)
    mine = result.selected[0] if result.observed[0] else None
    diverged = next((j for j in range(max(len(path), len(served)))
                     if j >= len(path) or j >= len(served) or path[j] != served[j]), None)

    def at(sequence: tuple[str, ...]) -> str | None:
        if diverged is None:
            return None
        return sequence[diverged] if diverged < len(sequence) else STOP

    return Comparison(path=path, selected=mine, first_agrees=path[:1] == served[:1], path_agrees=diverged is None,
                      selected_agrees=None if mine is None else mine == selected, diverged_at=diverged,
                      served_step=at(served), shadow_step=at(path))


def check_shadow(shadow: Router, served: Router, budget: float) -> None:
    """Refuse a shadow that cannot stand beside ``served`` at ``budget``, with one line naming the difference.

    Raises
    ------
    ValueError
        If its models are not the served artifact's, it reads post-hoc
        signals, or it has no policy within ``budget``.
    """
    if set(shadow.models_) != set(served.models_):
        only_shadow = sorted(set(shadow.models_) - set(served.models_))
        only_served = sorted(set(served.models_) - set(shadow.models_))
        raise ValueError(f"the --shadow artifact's models differ from the served artifact's (only in the shadow: "
                         f"{only_shadow}; only in the served: {only_served}); a shadow only reads the served "
                         "cascade's answers, so fit it on the same models")
    if shadow.estimator.signal_names_:
        raise ValueError(f"the --shadow artifact's estimator reads post-hoc signals {shadow.estimator.signal_names_} "
                         "that an OpenAI reply does not carry; use one fitted without signal columns")
    try:
        shadow.policy(budget)
    except ValueError:
        raise ValueError(f"the --shadow artifact has no policy within the budget {budget:g} (its budgets: "
                         f"{[round(b, 10) for b in shadow.budgets]}); give --shadow-budget") from None


class _Pending:
    """One request's comparison while it runs, and its log rows if they arrive first."""

    __slots__ = ("comparison", "done", "rows", "submit")

    def __init__(self) -> None:
        self.comparison: Comparison | None = None
        self.done = False
        self.rows: list[dict[str, Any]] | None = None
        self.submit: Callable[[list[dict[str, Any]]], Any] | None = None


class Shadow:
    """The service's shadow router: compares off the request path, counts in ``registry``, fills log rows.

    Parameters
    ----------
    router : Router
        The shadow (checked with :func:`check_shadow` by the service).
    registry : CollectorRegistry
        The service's metrics registry.
    budget : float, optional
        The shadow's budget; default each request's served budget (the paced target when paced).
    max_pending : int, default=1,000
        Comparisons that may wait for the shadow's thread; beyond, a request is skipped and counted.
    """

    def __init__(self, router: Router, registry: CollectorRegistry, *, budget: float | None = None,
                 max_pending: int = 1000) -> None:
        self.router, self.budget, self.max_pending = router, budget, max_pending
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="router-shadow")
        self.tasks: set[asyncio.Task] = set()
        self.pending: dict[str, _Pending] = {}
        r = registry
        self.agreement = Counter("router_shadow_agreement", "Shadow decisions compared with the served ones, by "
                                 "level (first_step, path, selected) and whether they agree (yes, no; unknown: "
                                 "the shadow's selection, once its path left the served cascade).",
                                 ["level", "agree"], registry=r)
        self.first_step = Counter("router_shadow_first_step", "First model called, per (served, shadow) pair.",
                                  ["served", "shadow"], registry=r)
        self.divergence = Counter("router_shadow_divergence", "Where the paths first differ: the step and what "
                                  "each did there (a model or 'stop').", ["step", "served", "shadow"], registry=r)
        self.selected = Counter("router_shadow_selected", "Answer returned, per (served, shadow) pair "
                                "('unknown': the shadow's path left the served cascade).", ["served", "shadow"],
                                registry=r)
        self.errors = Counter("router_shadow_errors", "Requests without a shadow comparison: error (logged), "
                              "skipped (more than max_pending waiting).", ["kind"], registry=r)
        self.seconds = Histogram("router_shadow_seconds", "Time of one shadow comparison (off the request path).",
                                 buckets=(5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 0.1, math.inf), registry=r)

    def start(self, request_id: str, prompt: str, task: str, subtask: str, steps: Sequence[Any], selected: str,
              budget: float, *, logged: bool) -> None:
        """Schedule the comparison of one answered request (returns at once; call on the event loop).

        ``logged``: the request's log rows will come through :meth:`submit`.
        """
        if len(self.tasks) >= self.max_pending:
            self.errors.labels("skipped").inc()
            return
        pending = _Pending()
        if logged:
            self.pending[request_id] = pending
        task_ = asyncio.get_running_loop().create_task(
            self._run(pending, prompt, task, subtask, list(steps), selected,
                      budget if self.budget is None else self.budget))
        self.tasks.add(task_)
        task_.add_done_callback(self.tasks.discard)

    async def _run(self, pending: _Pending, prompt: str, task: str, subtask: str, steps: list[Any], selected: str,
                   budget: float) -> None:
        began = time.perf_counter()
        comparison: Comparison | None = None
        try:
            done = await asyncio.get_running_loop().run_in_executor(
                self.executor, lambda: compare(self.router, prompt, steps, selected, budget=budget, task=task,
                                               subtask=subtask))
        except Exception:  # a shadow never fails a request: count it, log it
            log.exception("the shadow router failed on a request; the served answer is unaffected")
            self.errors.labels("error").inc()
        else:
            self.seconds.observe(time.perf_counter() - began)
            self._count(done, steps, selected)
            comparison = done
        pending.comparison, pending.done = comparison, True
        if pending.rows is not None and pending.submit is not None:
            pending.submit(self._fill(pending.rows, comparison))

    def _count(self, c: Comparison, steps: Sequence[Any], selected: str) -> None:
        yes = {True: "yes", False: "no", None: UNKNOWN}
        self.agreement.labels("first_step", yes[c.first_agrees]).inc()
        self.agreement.labels("path", yes[c.path_agrees]).inc()
        self.agreement.labels("selected", yes[c.selected_agrees]).inc()
        self.first_step.labels(steps[0].model, c.path[0] if c.path else STOP).inc()
        if c.diverged_at is not None:
            self.divergence.labels(str(c.diverged_at), c.served_step, c.shadow_step).inc()
        self.selected.labels(selected, c.selected or UNKNOWN).inc()

    def submit(self, request_id: str, rows: list[dict[str, Any]],
               submit: Callable[[list[dict[str, Any]]], Any]) -> None:
        """``submit(rows)`` with the shadow's columns filled: now if its comparison is done, else when it is."""
        pending = self.pending.pop(request_id, None)
        if pending is None:  # skipped: the columns stay empty
            submit(rows)
        elif pending.done:
            submit(self._fill(rows, pending.comparison))
        else:
            pending.rows, pending.submit = rows, submit

    @staticmethod
    def _fill(rows: list[dict[str, Any]], comparison: Comparison | None) -> list[dict[str, Any]]:
        if comparison is not None:
            for row in rows:
                row.update(shadow_path=list(comparison.path), shadow_selected=comparison.selected,
                           shadow_agrees=comparison.agrees)
        return rows

    async def drain(self) -> None:
        """Wait for the comparisons in flight (their rows submitted), then stop the thread."""
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.executor.shutdown(wait=True)
