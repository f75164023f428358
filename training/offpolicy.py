"""Off-policy evaluation: a candidate router's quality and cost on logged traffic, from the logs alone (issue 34).

The service's log (:mod:`training.traffic_log`) holds, per request, the
logging policy's cascade (rows with propensity 1) and, with probability
``ε``, up to ``m`` uniformly drawn extra models (:mod:`training.explore`).
A candidate artifact is replayed on each logged request with the logged
answers standing in for upstreams (:func:`replay`): where every model its
cascade calls was logged, its path, answer and cost are known exactly;
where it calls a model that was not, the request is *unobserved* for it.
With all potential answers held fixed, the path is observed with
probability ``p = 1`` if it stays in the logging cascade and
``p = ε C(K-j, m-j) / C(K, m)`` if it leaves it at ``j <= m`` models
(:meth:`~training.explore.Exploration.path_probability`); a path
that leaves it at more than ``m`` models is never observed (``p = 0``: the
estimate then lacks support there, and the result counts those requests).

* **IPS**: ``mean(1[observed] y / p)``;
* **doubly robust**: ``mean(d + 1[observed] (y - d) / p)``, with ``d`` the
  candidate's own prior estimate of its value on the request (the highest
  estimated quality, and the summed estimated cost, of the models its
  first plan holds). Unbiased whenever ``p > 0``; ``d`` only lowers the variance.

Both come with a normal interval (``± z`` standard errors of the per-request
terms, requests independent). Every answer the candidate can select must be
labelled (a judge, unit tests): :func:`~training.traffic_log.read_logs` with
the labels, then :func:`estimate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from .explore import Exploration
from .router import Router

__all__ = ["FAILED", "Interval", "OffPolicyEstimate", "Replay", "estimate", "replay"]

#: One query's outcome for a model: {"cost", "response", "quality"}, or None when not available.
Outcome = Callable[[int, str], Mapping[str, Any] | None]

#: The outcome of a model that was called and failed: the cascade excludes it and goes on, as the service
#: does (``Router.decide(excluded=...)``); the call stays on the path.
FAILED: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Replay:
    """A router's cascades replayed on N queries (arrays of length N)."""

    observed: NDArray[np.bool_]      # every model the cascade called was available
    quality: NDArray[np.float64]     # of the selected answer (NaN where not observed)
    cost: NDArray[np.float64]        # summed over the cascade (NaN where not observed)
    paths: list[tuple[str, ...]]     # the models called, in order (up to the first unavailable one)
    selected: list[str | None]


def replay(router: Router, prompts: Sequence[str], outcome: Outcome, *, tasks: Sequence[str] | None = None,
           subtasks: Sequence[str] | None = None, budget: float | None = None) -> Replay:
    """Run ``router``'s cascades on every query at once, ``outcome(query, model)`` standing in for upstreams.

    The same ``Router.decide`` / ``Router.select`` calls the service makes,
    one batch per step. A query stops at the first model ``outcome`` does
    not have (unobserved); a model whose outcome is :data:`FAILED` is
    excluded for that query and its cascade goes on.
    """
    n = len(prompts)

    def pick(values: Sequence[str] | None, rows: Sequence[int]) -> list[str] | None:
        return None if values is None else [values[i] for i in rows]

    policy = router.policy(budget)
    observed: list[dict[str, dict[str, Any]]] = [{} for _ in range(n)]
    excluded: list[set[str]] = [set() for _ in range(n)]
    paths: list[list[str]] = [[] for _ in range(n)]
    ok = np.ones(n, dtype=bool)
    active = list(range(n))
    while active:
        models = router.decide([prompts[i] for i in active], [observed[i] for i in active], policy=policy,
                               tasks=pick(tasks, active), subtasks=pick(subtasks, active),
                               excluded=[excluded[i] for i in active])
        still = []
        for i, model in zip(active, models, strict=True):
            if model is None:
                continue
            paths[i].append(model)
            result = outcome(i, model)
            if result is None:
                ok[i] = False
                continue
            if result is FAILED:
                excluded[i].add(model)
                still.append(i)
                continue
            observed[i][model] = {"cost": float(result["cost"]), "response": result["response"]}
            still.append(i)
        active = still
    quality = np.full(n, np.nan)
    cost = np.full(n, np.nan)
    selected: list[str | None] = [None] * n
    answered = [i for i in range(n) if ok[i] and observed[i]]
    if answered:
        chosen = router.select([prompts[i] for i in answered], [observed[i] for i in answered],
                               tasks=pick(tasks, answered), subtasks=pick(subtasks, answered))
        for i, model in zip(answered, chosen, strict=True):
            selected[i] = model
            result = outcome(i, model)
            assert result is not None
            quality[i] = float(result["quality"])
            cost[i] = sum(float(r["cost"]) for r in observed[i].values())
    return Replay(ok, quality, cost, [tuple(p) for p in paths], selected)


@dataclass(frozen=True)
class Interval:
    """An estimate and its normal interval."""

    value: float
    low: float
    high: float

    @classmethod
    def of(cls, terms: NDArray[np.float64], z: float) -> Interval:
        mean = float(terms.mean())
        half = z * float(terms.std(ddof=1)) / math.sqrt(len(terms)) if len(terms) > 1 else math.inf
        return cls(mean, mean - half, mean + half)

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class OffPolicyEstimate:
    """IPS and doubly robust estimates of a candidate's mean quality and cost per request."""

    ips_quality: Interval
    ips_cost: Interval
    dr_quality: Interval
    dr_cost: Interval
    n_requests: int
    observed: int        # requests on which the candidate's whole path was logged
    unsupported: int     # requests whose path left the cascade at more models than exploration draws (p = 0)
    differs: float       # share of requests whose path (as far as replayed) differs from the logging cascade

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("ips_quality", "ips_cost", "dr_quality", "dr_cost"):
            interval = getattr(self, name)
            out[name] = {"value": interval.value, "low": interval.low, "high": interval.high}
        out.update(n_requests=self.n_requests, observed=self.observed, unsupported=self.unsupported,
                   differs=self.differs)
        return out


def estimate(candidate: Router, rows: pd.DataFrame, *, budget: float | None = None, z: float = 1.96
             ) -> OffPolicyEstimate:
    """Off-policy estimates of ``candidate`` on the logged requests of ``rows`` (see the module docstring).

    Parameters
    ----------
    candidate : Router
        The artifact to evaluate (its models among the logged ones).
    rows : pandas.DataFrame
        :func:`~training.traffic_log.read_logs` output, every answer labelled.
    budget : float, optional
        The candidate's policy (default its largest budget).
    z : float, default=1.96
        Half-width of the intervals in standard errors (1.96: 95 %).

    Raises
    ------
    ValueError
        If ``rows`` is empty or lacks the exploration columns.
    """
    if rows.empty:
        raise ValueError("no labelled logged request to evaluate on; label the answers (POST /v1/feedback, or "
                         "read_logs(labels=...)) first")
    missing = [c for c in ("explore_epsilon", "explore_models", "n_models", "explored") if c not in rows.columns]
    if missing:
        raise ValueError(f"the logs lack column(s) {missing}: read them with training.traffic_log.read_logs")
    groups = list(rows.groupby("query_id", sort=True))
    first = [group.iloc[0] for _, group in groups]
    outcomes = [{row.model: {"cost": row.cost_usd, "response": row.response, "quality": row.quality}
                 for row in group.itertuples()} for _, group in groups]
    orders = [tuple(group.loc[~group["explored"].astype(bool)].sort_values("step")["model"]) for _, group in groups]
    cascades = [set(order) for order in orders]
    prompts = [str(row["prompt"]) for row in first]
    tasks, subtasks = ([str(row[column] or "") for row in first] if column in candidate.estimator.columns_ else None
                       for column in ("task", "subtask"))
    result = replay(candidate, prompts, lambda i, m: outcomes[i].get(m), budget=budget, tasks=tasks,
                    subtasks=subtasks)
    p = np.array([Exploration(float(row["explore_epsilon"]), max(int(row["explore_models"]), 1)).path_probability(
        len(set(path) - cascade), int(row["n_models"]))
        for row, path, cascade in zip(first, result.paths, cascades, strict=True)])
    # A path is observed only if the candidate stayed where the logs are, and then p > 0.
    seen = result.observed & (p > 0)
    weight = np.where(seen, 1.0 / np.where(p > 0, p, 1.0), 0.0)
    prior = _prior(candidate, prompts, budget, tasks, subtasks)
    terms = {}
    for name, value, direct in (("quality", result.quality, prior[0]), ("cost", result.cost, prior[1])):
        y = np.where(seen, value, 0.0)
        terms[f"ips_{name}"] = weight * y
        terms[f"dr_{name}"] = direct + weight * (y - np.where(seen, direct, 0.0))
    differs = np.mean([path != order for path, order in zip(result.paths, orders, strict=True)])
    # p = 0: the path left the logging cascade at more models than exploration draws (among those replayed)
    unsupported = int((p == 0).sum())
    return OffPolicyEstimate(**{k: Interval.of(v, z) for k, v in terms.items()}, n_requests=len(groups),
                             observed=int(seen.sum()), unsupported=unsupported, differs=float(differs))


def _prior(router: Router, prompts: Sequence[str], budget: float | None, tasks: Sequence[str] | None,
           subtasks: Sequence[str] | None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The router's prior value of each query: the best estimated quality and summed estimated cost of its plan."""
    policy = router.policy(budget)
    estimates, _ = router.estimates(list(prompts), tasks=tasks, subtasks=subtasks)
    plans = router.plan(list(prompts), policy=policy, tasks=tasks, subtasks=subtasks)
    index = {name: j for j, name in enumerate(router.models_)}
    quality = np.asarray(estimates.quality, dtype=float)
    cost = np.asarray(estimates.cost, dtype=float)
    best = np.array([max((quality[i, index[m]] for m in plan.models), default=np.nan)
                     for i, plan in enumerate(plans)])
    spend = np.array([sum(cost[i, index[m]] for m in plan.models) for i, plan in enumerate(plans)])
    return np.nan_to_num(best), np.nan_to_num(spend)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.evaluate --logged DIR --artifact A``: the estimates of A on a service's logs.

    Returns
    -------
    int
        0 on success, 2 on a bad argument or unreadable logs, 1 if ``--json`` cannot be written.
    """
    import json

    from .cli import (
        CANNOT_WRITE,
        OutputError,
        fail,
        logged_parser,
        parse_or_exit_code,
        refuse_inputs_as_outputs,
        verification_key,
        writing,
    )
    from .files import write_atomically
    from .router import load_router
    from .traffic_log import read_logs

    args = parse_or_exit_code(logged_parser().parse_args, argv)
    if isinstance(args, int):
        return args
    try:
        if args.json is not None:
            refuse_inputs_as_outputs([("--json", args.json)], [("--artifact", args.artifact),
                                                                ("--labels", args.labels), ("--logged", args.logged)])
        key = verification_key(args)
        labels = None
        if args.labels is not None:
            labels = (pd.read_csv(args.labels) if args.labels.suffix.lower() == ".csv"
                      else pd.read_parquet(args.labels))
        candidate = load_router(args.artifact, key=key)
        rows = read_logs(args.logged, labels)
        result = estimate(candidate, rows, budget=args.budget)
    except (ValueError, TypeError, FileNotFoundError, OSError) as error:
        return fail(f"{args.logged}: {error}")
    print(f"{result.n_requests} labelled requests; the candidate's whole path was logged on {result.observed}, "
          f"differs from the logging cascade on {100 * result.differs:.1f} %, lacks support on "
          f"{result.unsupported} (its path leaves the cascade at more models than exploration draws)")
    for name in ("ips_quality", "dr_quality", "ips_cost", "dr_cost"):
        interval = getattr(result, name)
        print(f"  {name:12s} {interval.value:.6g}  [{interval.low:.6g}, {interval.high:.6g}]")
    if args.json is not None:
        try:
            with writing("--json", args.json):
                text = json.dumps(result.as_dict(), indent=1)
                write_atomically(args.json, (text + "\n").encode("utf-8"))
        except OutputError as error:
            return fail(str(error), code=CANNOT_WRITE)
    return 0
