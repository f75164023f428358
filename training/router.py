"""The fitted router that services load: estimator + one policy per budget.

:func:`load_router` is the strict loader (format, sha256, library versions,
the signature with ``key=``: see :mod:`training.artifact`) and warms the
router up, so the first request does not pay for JIT compilation.
Artifacts are pickles: load only files you trust.

Serving. :meth:`Router.decide`, :meth:`Router.plan`, :meth:`Router.select`
and :meth:`Router.estimates` are safe to call from many threads at once:
the router holds no mutable state after warm-up (the fitted estimator's
``predict`` writes nothing; its ``predict_table`` cache is never used
here), the decision kernel runs serially (deterministic, GIL released), and
ties are broken with a per-prompt uniform. Estimates come from the
estimator's own ``predict``, which runs on the arrays it froze at the end
of fitting (:mod:`estimators.estimator`).

:class:`PacedRouter` wraps a router with a budget controller
(:mod:`training.pacing`).
"""

from __future__ import annotations

import math
import threading
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

import kernel
from estimators.estimator import Estimates, Estimator, PreparedQueries

from .artifact import load_artifact
from .pacing import PaceController, PacingState
from .policy import Policy

__all__ = ["Router", "PacedRouter", "load_router", "load_router_with_sha256", "Excluded", "Observed", "Plan",
           "UnseenCategoryWarning", "prompt_uniforms"]

#: Per query: model name -> what that model returned. Each value is a
#: mapping with ``"cost"`` (required: what the call cost), optionally
#: ``"response"`` (the answer text as ``str``; ``None``, as an SDK gives for an
#: answer without content, is no text), ``"latency_s"`` (seconds the call took)
#: and any numeric post-hoc signal the estimator was trained with (e.g.
#: ``"logprob"``).
Observed = Sequence[Mapping[str, Mapping[str, object]]]

#: Per query: the models that may not be called for it (an upstream that
#: failed on it, say). They have no answer, so they are never in ``observed``.
Excluded = Sequence[Set[str]]


class UnseenCategoryWarning(UserWarning):
    """Some queries name a task or subtask the router was never trained on (a typo, or a new benchmark).

    They are estimated as an unseen category, which is right for a new
    benchmark and wrong for a typo. ``warnings.simplefilter("error",
    UnseenCategoryWarning)`` makes it an error (a strict mode).
    """


class Plan(NamedTuple):
    """What the policy intends for one query.

    Attributes
    ----------
    next : str or None
        Model to call now; ``None`` = stop and answer with :meth:`Router.select`.
    models : tuple of str
        The chosen supermodel ``M*`` (cheapest first): the models this query
        is expected to use in total, those already run included. Equal to the
        run set when stopping. Later steps re-plan with post-hoc estimates, so
        the final run set can differ.
    """

    next: str | None
    models: tuple[str, ...]


@dataclass
class Router:
    """Decide which model answers each query, under a fitted cost budget.

    Attributes
    ----------
    estimator : Estimator
        Fitted (:class:`~estimators.estimator.RouterEstimator`).
    policies : tuple of Policy
        One fitted policy per budget (or per (cost, latency) budget pair),
        sorted by budget, then latency budget (none counts as the largest).
    models_ : tuple of str
        Model names in the order of the estimate columns (cheapest first).
    """

    estimator: Estimator
    policies: tuple[Policy, ...]
    models_: tuple[str, ...]

    def __post_init__(self) -> None:
        self.policies = tuple(sorted(self.policies, key=_budget_pair))
        if not self.policies:
            raise ValueError("a router needs at least one fitted policy")

    @property
    def budgets(self) -> list[float]:
        """The fitted cost budgets, ascending (one per policy)."""
        return [p.budget for p in self.policies]

    @property
    def latency_budgets(self) -> list[float | None]:
        """The latency budget of each policy, in :attr:`budgets` order (``None``: fitted without one)."""
        return [p.latency_budget for p in self.policies]

    def policy(self, budget: float | None = None, latency_budget: float | None = None) -> Policy:
        """The policy for ``budget`` (and ``latency_budget``): the largest fitted pair within both.

        Never overspending is the safe reading of "a budget": a request for
        0.0012 with policies at 0.001 and 0.002 gets the 0.001 policy. A
        policy fitted without a latency budget counts as one with an
        unbounded latency, so it serves only requests without a latency
        budget; among the pairs within both, the largest cost budget wins,
        then the largest latency budget. Without budgets, the largest fitted
        pair is used.

        Parameters
        ----------
        budget : float, optional
            Mean cost per query the caller allows.
        latency_budget : float, optional
            Mean latency per query (seconds) the caller allows.

        Returns
        -------
        Policy

        Raises
        ------
        ValueError
            If no fitted pair is within both.
        """
        for name, value in (("budget", budget), ("latency_budget", latency_budget)):
            if value is not None and (isinstance(value, (bool, np.bool_))
                                      or not isinstance(value, (int, float, np.integer, np.floating))):
                raise TypeError(f"{name} must be a number or None, got {type(value).__name__} {value!r}")
        cost_limit = math.inf if budget is None else budget
        latency_limit = math.inf if latency_budget is None else latency_budget
        within_cost = [p for p in self.policies if p.budget <= cost_limit]
        if not within_cost:
            raise ValueError(f"budget {budget!r} is below every fitted budget {self.budgets}; pass one of "
                             "those or more, or fit a policy to a smaller budget (training.fit)")
        fitting = [p for p in within_cost if _budget_pair(p)[1] <= latency_limit]
        if not fitting and all(p.latency_budget is None for p in self.policies):
            raise ValueError(f"latency budget {latency_budget!r}: this router has no policy fitted to a latency "
                             "budget (it was fitted without one); leave the latency budget out, or fit one with "
                             "python -m training.fit --latency-budget")
        if not fitting:
            raise ValueError(f"latency budget {latency_budget!r} is below every latency budget fitted within "
                             f"budget {budget!r}: {sorted({p.latency_budget for p in within_cost}, key=_none_last)}; "
                             "pass one of those or more, or fit a policy to it (training.fit)")
        return fitting[-1]

    def _inputs(self, observed: Observed | None, n: int):
        """Turn ``observed`` into the run matrix and aligned per-model arrays."""
        k = len(self.models_)
        run = np.zeros((n, k), bool)
        if observed is None:  # ex-ante: nothing ran, so there is nothing to pass on
            return run, None, None, None, None
        responses = np.full((n, k), "", dtype=object)
        cost = np.zeros((n, k))
        latency = np.full((n, k), np.nan)
        names = list(self.estimator.signal_names_)
        signals = {name: np.full((n, k), np.nan) for name in names}
        if isinstance(observed, (str, bytes, Mapping)) or not isinstance(observed, Sequence):
            raise TypeError(f"observed must be a list with one mapping per prompt, got {type(observed).__name__}")
        if len(observed) != n:
            raise ValueError(f"observed has {len(observed)} entries but there are {n} prompts")
        index = {name: i for i, name in enumerate(self.models_)}
        for row, by_model in enumerate(observed):
            if not isinstance(by_model, Mapping):
                raise TypeError(f"observed[{row}] must be a mapping {{model: {{'cost': ..., 'response': ...}}}}, "
                                f"got {type(by_model).__name__}")
            for model, result in by_model.items():
                if model not in index:
                    raise ValueError(f"observed[{row}] names unknown model {model!r}; "
                                     f"known models are {list(self.models_)}")
                if not isinstance(result, Mapping):
                    raise TypeError(f"observed[{row}][{model!r}] must be a mapping with 'cost' (and 'response'), "
                                    f"got {type(result).__name__}")
                if "cost" not in result:
                    raise ValueError(f"observed[{row}][{model!r}] has no 'cost': say what the call cost")
                column = index[model]
                run[row, column] = True
                cost[row, column] = _observed_number(result, "cost", "USD", row, model)
                if result.get("latency_s") is not None:
                    latency[row, column] = _observed_number(result, "latency_s", "seconds", row, model)
                responses[row, column] = _observed_text(result, row, model)
                for name in names:
                    if name in result:
                        signals[name][row, column] = float(result[name])  # type: ignore[arg-type]  # else raises
        return run, responses, cost, signals, latency

    def prepare(self, prompts: Sequence[str], *, tasks: Sequence[str] | None = None,
                subtasks: Sequence[str] | None = None) -> PreparedQueries:
        """Featurize the queries once, for a caller that decides them at several steps.

        A cascade decides one query up to once per model and selects at the
        end; featurizing the prompt is most of each step's cost, and it does
        not change between steps. Pass the result as ``prepared=`` to
        :meth:`decide`, :meth:`plan`, :meth:`select` (with the same prompts).

        Parameters
        ----------
        prompts, tasks, subtasks
            As in :meth:`decide`.

        Returns
        -------
        PreparedQueries
        """
        self._check_queries(prompts, tasks, subtasks)
        prepared = self.estimator.prepare(prompts, tasks, subtasks)
        self._warn_unseen(tasks, subtasks)
        return prepared

    def _check_queries(self, prompts: Sequence[str], tasks: Sequence[str] | None,
                       subtasks: Sequence[str] | None) -> None:
        """Refuse per-query inputs that are not lists (the entries are checked by the estimator: each a ``str``).

        A generator has no length and would be consumed by the first look.
        """
        for name, values in (("prompts", prompts), ("tasks", tasks), ("subtasks", subtasks)):
            if values is not None and (isinstance(values, Iterator) or not hasattr(values, "__len__")):
                raise TypeError(f"{name} must be a list (or array) with one entry per query, got "
                                f"{type(values).__name__}; pass list({name})")

    def _warn_unseen(self, tasks: Sequence[str] | None, subtasks: Sequence[str] | None) -> None:
        """Warn, with the count, of checked tasks and subtasks never seen in training (:class:`UnseenCategoryWarning`).

        The message holds counts only, not the names: Python keeps one
        registry entry per distinct message, and a service's callers could
        otherwise grow it without bound.
        """
        for name, unseen in self.estimator.unseen_categories(tasks, subtasks).items():
            count = int(np.count_nonzero(unseen))
            if count:
                warnings.warn(f"{count} of {unseen.size} queries name a {name} the router was never trained on "
                              f"(a typo?); they are estimated as an unseen {name}. Router.known_categories() lists "
                              "the trained ones", UnseenCategoryWarning, stacklevel=2)

    def known_categories(self) -> dict[str, list[str]]:
        """The tasks and subtasks the router was trained on, so a caller can check its own names against them.

        Returns
        -------
        dict of str to list of str
            ``task`` and ``subtask`` (those the estimator reads), sorted.
        """
        return self.estimator.known_categories()

    def estimates(self, prompts: Sequence[str], observed: Observed | None = None, *,
                  tasks: Sequence[str] | None = None, subtasks: Sequence[str] | None = None,
                  prepared: PreparedQueries | None = None) -> tuple[Estimates, NDArray[np.bool_]]:
        """The estimator's ``quality``, ``sigma``, ``cost`` (and ``cov``) for inspection.

        Parameters
        ----------
        prompts : sequence of str
            One per query.
        observed : list of mappings, optional
            Per query, what the models called so far returned (see
            :data:`Observed`); default nothing run.
        tasks, subtasks : sequence of str, optional
            Required when the estimator was fitted with them.
        prepared : PreparedQueries, optional
            :meth:`prepare` of the same prompts; ``tasks`` and ``subtasks`` are then not read.

        Returns
        -------
        (Estimates, ndarray of bool)
            Estimates of shape ``(N, K)`` (columns in :attr:`models_` order)
            and the run matrix built from ``observed``.
        """
        self._check_queries(prompts, *((None, None) if prepared is not None else (tasks, subtasks)))
        run, responses, cost, signals, latency = self._inputs(observed, len(prompts))
        estimates = self.estimator.predict(prompts, tasks=tasks, subtasks=subtasks, run=run,
                                           responses=responses, signals=signals, observed_cost=cost,
                                           observed_latency=latency, prepared=prepared)
        if prepared is None:
            self._warn_unseen(tasks, subtasks)
        return estimates, run

    def plan(self, prompts: Sequence[str], observed: Observed | None = None,
             budget: float | None = None, *, tasks: Sequence[str] | None = None,
             subtasks: Sequence[str] | None = None, policy: Policy | None = None,
             excluded: Excluded | None = None, latency_budget: float | None = None,
             prepared: PreparedQueries | None = None) -> list[Plan]:
        """Next model and planned supermodel per query (see :class:`Plan`), for callers that show the plan.

        ``decide`` returns the ``next`` fields of this.

        Parameters
        ----------
        prompts, observed, budget, tasks, subtasks, policy, excluded, latency_budget, prepared
            As in :meth:`decide`.

        Returns
        -------
        list of Plan
            One per query.
        """
        _, _, next_model, masks = self.plan_arrays(prompts, observed, budget, tasks=tasks, subtasks=subtasks,
                                                   policy=policy, excluded=excluded, latency_budget=latency_budget,
                                                   prepared=prepared)
        names = self.models_
        bits = [1 << i for i in range(len(names))]
        return [Plan(None if c == kernel.STOP else names[c],
                     tuple(name for name, bit in zip(names, bits, strict=True) if int(mask) & bit))
                for c, mask in zip(next_model.tolist(), masks.tolist(), strict=True)]

    def plan_arrays(self, prompts: Sequence[str], observed: Observed | None = None,
                    budget: float | None = None, *, tasks: Sequence[str] | None = None,
                    subtasks: Sequence[str] | None = None, policy: Policy | None = None,
                    parallel: bool = False, excluded: Excluded | None = None,
                    latency_budget: float | None = None, prepared: PreparedQueries | None = None
                    ) -> tuple[Estimates, NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]:
        """:meth:`plan` as arrays, with the estimates it used: for batch jobs.

        Parameters
        ----------
        prompts, observed, budget, tasks, subtasks, policy, excluded, latency_budget, prepared
            As in :meth:`decide`.
        parallel : bool, default=False
            Spread the kernel over threads (decisions are the same).

        Returns
        -------
        (Estimates, ndarray of bool, ndarray of int64, ndarray of int64)
            The estimates and run matrix (as :meth:`estimates`), the next
            model index per query (``kernel.STOP`` to stop) and the planned
            supermodel as a bit mask over :attr:`models_`.
        """
        estimates, run = self.estimates(prompts, observed, tasks=tasks, subtasks=subtasks, prepared=prepared)
        chosen = policy if policy is not None else self.policy(budget, latency_budget)
        banned = None if excluded is None else self._excluded_matrix(excluded, run)
        next_model, masks = chosen.plan(estimates, run, prompt_uniforms(prompts), parallel=parallel, excluded=banned)
        return estimates, run, next_model, masks

    def _excluded_matrix(self, excluded: Excluded, run: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """``excluded`` as an ``(N, K)`` bool matrix, checked against the models and the run sets."""
        n, k = run.shape
        if isinstance(excluded, (str, bytes, Mapping)) or not isinstance(excluded, Sequence):
            raise TypeError(f"excluded must be a list with one set of model names per prompt, "
                            f"got {type(excluded).__name__}")
        if len(excluded) != n:
            raise ValueError(f"excluded has {len(excluded)} entries but there are {n} prompts")
        index = {name: i for i, name in enumerate(self.models_)}
        banned = np.zeros((n, k), bool)
        for row, names in enumerate(excluded):
            if isinstance(names, (str, bytes)) or not isinstance(names, (Set, Sequence)):
                raise TypeError(f"excluded[{row}] must be a set of model names, got {type(names).__name__}")
            for name in names:
                if name not in index:
                    raise ValueError(f"excluded[{row}] names unknown model {name!r}; "
                                     f"known models are {list(self.models_)}")
                if run[row, index[name]]:
                    raise ValueError(f"excluded[{row}] names {name!r}, which observed[{row}] says has run: "
                                     "a model that answered cannot be excluded")
                banned[row, index[name]] = True
        return banned

    def decide(self, prompts: Sequence[str], observed: Observed | None = None,
               budget: float | None = None, *, tasks: Sequence[str] | None = None,
               subtasks: Sequence[str] | None = None, policy: Policy | None = None,
               excluded: Excluded | None = None, latency_budget: float | None = None,
               prepared: PreparedQueries | None = None) -> list[str | None]:
        """Next model to call per query, or ``None`` to stop and answer.

        Uses the serial kernel (deterministic, safe to call from many
        threads). Ties are mixed with a per-prompt uniform derived from the
        prompt's CRC32, so a repeated prompt always gets the same decision.

        Parameters
        ----------
        prompts : sequence of str
            One per query.
        observed : list of mappings, optional
            Per query, what the models called so far returned (see
            :data:`Observed`); default nothing run.
        budget : float, optional
            Picks the fitted policy (see :meth:`policy`); default the largest.
        tasks, subtasks : sequence of str, optional
            Required when the estimator was fitted with them.
        policy : Policy, optional
            Use this policy instead of a fitted one (e.g. a paced ``λ``,
            see :class:`PacedRouter`); the budgets are then ignored.
        latency_budget : float, optional
            Mean latency per query (seconds) the caller allows: with
            ``budget``, picks the largest fitted pair within both (see :meth:`policy`).
        excluded : list of sets of str, optional
            Per query, models that may not be called (see :data:`Excluded`),
            e.g. an upstream that failed on it. The decision is the policy's
            over the models that remain: the same kernel on the other columns,
            with what ran so far (a failed call reveals nothing, so it is not
            part of the run set). A query whose models all ran or are
            excluded stops. A single-model policy whose model is excluded
            stops: it has no other model to offer.
        prepared : PreparedQueries, optional
            :meth:`prepare` of the same prompts, reused across a cascade's
            steps (same decisions, without featurizing again); ``tasks`` and
            ``subtasks`` are then not read.

        Returns
        -------
        list of (str or None)
            Per query, the model to call next, or ``None`` to stop.
        """
        _, _, next_model, _ = self.plan_arrays(prompts, observed, budget, tasks=tasks, subtasks=subtasks,
                                               policy=policy, excluded=excluded, latency_budget=latency_budget,
                                               prepared=prepared)
        names = self.models_
        return [None if c == kernel.STOP else names[c] for c in next_model.tolist()]

    def decide_or_select(self, prompts: Sequence[str], observed: Observed | None = None,
                         budget: float | None = None, *, tasks: Sequence[str] | None = None,
                         subtasks: Sequence[str] | None = None, policy: Policy | None = None,
                         excluded: Excluded | None = None, latency_budget: float | None = None,
                         prepared: PreparedQueries | None = None) -> list[tuple[str | None, str | None]]:
        """One cascade step per query: the next model, or, when it stops, the answer to return, from one estimate.

        :meth:`decide`, then :meth:`select` for the queries that stop with an
        answer, give the same pair; but both estimate the same run set from
        the same inputs, so a service's last step would estimate twice. Here
        the quality estimates the decision used pick the answer.

        Parameters
        ----------
        prompts, observed, budget, tasks, subtasks, policy, excluded, latency_budget, prepared
            As in :meth:`decide`.

        Returns
        -------
        list of (str or None, str or None)
            Per query ``(next, None)`` while the cascade goes on, ``(None, selected)`` when it stops (``selected``
            as :meth:`select` gives it), ``(None, None)`` when it stops with no model run.
        """
        estimates, run, next_model, _ = self.plan_arrays(prompts, observed, budget, tasks=tasks, subtasks=subtasks,
                                                         policy=policy, excluded=excluded,
                                                         latency_budget=latency_budget, prepared=prepared)
        answer: NDArray[np.int64] = np.full(len(next_model), kernel.STOP, dtype=np.int64)
        stops = np.flatnonzero(next_model == kernel.STOP)
        if stops.size:  # most steps go on: select only where the cascade stops
            answer[stops] = kernel.select_answer(estimates.quality[stops], run[stops])
        names = self.models_
        return [(names[c], None) if c != kernel.STOP else (None, None if a == kernel.STOP else names[a])
                for c, a in zip(next_model.tolist(), answer.tolist(), strict=True)]

    def select(self, prompts: Sequence[str], observed: Observed, *,
               tasks: Sequence[str] | None = None, subtasks: Sequence[str] | None = None,
               prepared: PreparedQueries | None = None) -> list[str]:
        """Which run model's answer to return: the best by post-hoc quality estimate.

        Parameters
        ----------
        prompts : sequence of str
            One per query.
        observed : list of mappings
            Per query, what the models called returned (see :data:`Observed`);
            at least one model per query.
        tasks, subtasks : sequence of str, optional
            Required when the estimator was fitted with them.
        prepared : PreparedQueries, optional
            As in :meth:`decide`.

        Returns
        -------
        list of str
            Per query, a model name from its ``observed``.

        Raises
        ------
        ValueError
            If no model has run for some query.
        """
        estimates, run = self.estimates(prompts, observed, tasks=tasks, subtasks=subtasks, prepared=prepared)
        empty = np.flatnonzero(~run.any(axis=1))
        if empty.size:
            raise ValueError(f"no model has run for prompt(s) {empty.tolist()}: nothing to select")
        return [self.models_[i] for i in kernel.select_answer(estimates.quality, run)]

    def paced(self, budget: float, **options: Any) -> PacedRouter:
        """A :class:`PacedRouter` that keeps mean spend at ``budget`` when live traffic drifts.

        Parameters
        ----------
        budget : float
            Target mean cost per query.
        **options
            Passed to :class:`PacedRouter` (``latency_budget``, ``band``,
            ``half_life``, gains, ``policy``).

        Returns
        -------
        PacedRouter
        """
        return PacedRouter(self, budget, **options)

    def warm_up(self, parallel: bool = False) -> None:
        """Compile every kernel now: the estimator's and the decision kernel's.

        Runs one ex-ante and one post-hoc decision and a selection, so the
        first request after :func:`load_router` is as fast as the next.
        ``parallel`` also compiles the row-parallel variants (per process,
        not cached on disk), for batch jobs.

        Parameters
        ----------
        parallel : bool, default=False
            Also compile the row-parallel variants.
        """
        self.estimator.warm_up(parallel)
        known = self.known_categories()  # a trained category, so that warming up warns of nothing
        per_query: dict[str, Any] = {f"{name}s": [(known.get(name) or ["warm-up"])[0]]
                                     for name in self.estimator.columns_ if name != "prompt"}
        first = self.decide(["warm-up"], **per_query)[0] or self.models_[0]
        signals = {name: 0.0 for name in self.estimator.signal_names_}
        observed = [{first: {"cost": 0.0, "response": "A", **signals}}]
        self.decide(["warm-up"], observed, **per_query)
        self.select(["warm-up"], observed, **per_query)
        if parallel:
            self.plan_arrays(["warm-up"], observed, **per_query, parallel=True)


def _paced_gamma(base: Policy, factor: float) -> float:
    """The share of the dearer hull model that spends ``1 / factor`` of what the hull mix ``base`` spends.

    A hull mix is routing on constant estimates whose ``λ`` ties its two
    models, so scaling ``λ`` would switch all traffic to one of them; its
    spend is linear in ``γ`` (``c_a + γ (c_b − c_a)``), which is what pacing
    moves instead.
    """
    quality, cost = base.constant_estimates  # type: ignore[misc]  # a hull mix has constant estimates
    score = quality - float(np.asarray(base.lambdas)[0]) * cost
    tied = np.flatnonzero(score >= score.max() - 1e-12 * max(1.0, abs(score.max())))
    cheap, dear = cost[tied].min(), cost[tied].max()
    if dear <= cheap:
        return base.gamma
    spend = (cheap + base.gamma * (dear - cheap)) / factor
    return float(np.clip((spend - cheap) / (dear - cheap), 0.0, 1.0))


class PacedRouter:
    """A :class:`Router` whose ``λ`` is paced to a budget by a :class:`~training.pacing.PaceController`.

    Parameters
    ----------
    router : Router
        Fitted router; its policies must be λ-based (not ``threshold``).
    budget : float
        Target mean cost per query, in the unit of the logged costs.
    latency_budget : float, optional
        Target mean latency per query (seconds). A second controller, of the
        same kind, then paces the policy's latency multiplier ``μ`` from the
        latencies :meth:`record` is given, while the first paces ``λ`` from
        the costs. A policy whose latency budget bound and cost budget did
        not has ``λ = 0``: the cost controller then only reports spend.
    policy : Policy, optional
        The policy whose ``λ`` (and ``μ``) is paced. Default: the fitted
        policy whose budget is nearest to ``budget`` on a log scale, among
        those with a positive ``λ`` (a ``λ = 0`` policy cannot be scaled);
        with ``latency_budget``, among those with a positive ``μ``, nearest
        to both budgets.
    **controller
        ``band``, ``half_life``, ``gain``, ``integral_gain`` of
        :class:`~training.pacing.PaceController` (both controllers).

    Notes
    -----
    All controller state sits behind one lock: ``decide`` reads a
    consistent policy, ``record`` updates it, from any number of threads.

    Examples
    --------
    >>> paced = router.paced(0.0006)                          # doctest: +SKIP
    >>> nxt = paced.decide([prompt], [observed], tasks=[t])[0]  # doctest: +SKIP
    >>> paced.record(total_cost_of_the_finished_query)          # doctest: +SKIP
    """

    def __init__(self, router: Router, budget: float, *, latency_budget: float | None = None,
                 policy: Policy | None = None, **controller: float) -> None:
        self.router = router
        self.controller = PaceController(budget, **controller)
        self.latency_controller = None if latency_budget is None else PaceController(latency_budget, **controller)
        self.base = policy if policy is not None else self._nearest_policy(router, float(budget), latency_budget)
        if self.base.strategy == "threshold":
            raise ValueError("pacing scales λ; a threshold cascade has none. Fit a λ strategy "
                             "(cascade_routing, cascade or routing)")
        if latency_budget is None and not np.any(np.asarray(self.base.lambdas) > 0):
            raise ValueError("the policy's λ is 0 everywhere, which no factor can move; "
                             "pass a policy fitted to a smaller budget")
        if latency_budget is not None and not self.base.mu > 0:
            raise ValueError("pacing latency scales μ, and this policy's μ is 0; pass a policy fitted to a "
                             "latency budget that binds (training.fit --latency-budget)")
        self._lock = threading.Lock()
        self._policy = self.base

    @staticmethod
    def _nearest_policy(router: Router, budget: float, latency_budget: float | None) -> Policy:
        scalable = [p for p in router.policies if p.strategy != "threshold"
                    and (np.any(np.asarray(p.lambdas) > 0) if latency_budget is None else p.mu > 0)]
        if not scalable:
            wanted = "a positive λ" if latency_budget is None else "a positive μ"
            raise ValueError(f"no fitted policy has {wanted} to pace; refit with smaller budgets "
                             f"(fitted: {list(zip(router.budgets, router.latency_budgets, strict=True))})")

        def distance(p: Policy) -> float:
            far = abs(math.log(max(p.budget, 1e-300) / budget))
            if latency_budget is not None:
                far += abs(math.log(max(p.latency_budget or 0.0, 1e-300) / max(latency_budget, 1e-300)))
            return far
        return min(scalable, key=distance)

    @property
    def budget(self) -> float:
        """The target mean cost per query."""
        return self.controller.budget

    @property
    def policy(self) -> Policy:
        """The policy with the current ``λ`` (an immutable snapshot)."""
        return self._policy

    def state(self) -> PacingState:
        """A consistent snapshot of the controller, taken under the lock.

        Returns
        -------
        PacingState
        """
        with self._lock:
            c, t = self.controller, self.latency_controller
            return PacingState(c.factor, np.asarray(self._policy.lambdas).copy(), c.mean_cost,
                               c.overspend, c.n_queries, c.total_cost, self._policy.mu,
                               1.0 if t is None else t.factor, math.nan if t is None else t.mean_cost)

    def record(self, cost: float | Sequence[float], latency: float | Sequence[float] | None = None) -> None:
        """Report the realised total cost (and latency) of one finished query, or of several in order.

        Call it once per query, when its cascade has stopped, with the sum of
        what every model called for it cost and, when pacing latency, the sum
        of the seconds they took (a cascade runs them one after another).
        Every value is checked before any is applied, so a bad one changes nothing.

        Parameters
        ----------
        cost : float or sequence of float
            Realised total cost per finished query, finite and ``>= 0``.
        latency : float or sequence of float, optional
            Realised total latency per finished query (seconds); required,
            one per cost, when the router paces a latency budget.

        Raises
        ------
        ValueError
            If a value is negative or not finite, or latencies are missing
            (or given without a latency budget) or not one per cost.
        """
        costs = np.atleast_1d(np.asarray(cost, dtype=np.float64))
        seconds = None if latency is None else np.atleast_1d(np.asarray(latency, dtype=np.float64))
        if (seconds is None) != (self.latency_controller is None):
            raise ValueError("pass latency with every cost when pacing a latency budget, and only then"
                             if self.latency_controller is not None else
                             "this router paces cost only; drop latency, or pace with latency_budget=")
        for name, values in (("cost", costs), ("latency", seconds)):
            if values is not None and not (np.isfinite(values) & (values >= 0)).all():
                raise ValueError(f"{name} must be finite numbers >= 0 (the finished queries' totals), "
                                 f"got {values.tolist()}")
        if seconds is not None and seconds.shape != costs.shape:
            raise ValueError(f"give one latency per cost; got {seconds.size} latencies for {costs.size} costs")
        with self._lock:
            for value in costs:
                self.controller.update(value)
            changes: dict[str, Any] = ({"gamma": _paced_gamma(self.base, self.controller.factor)}
                       if self.base.constant_estimates is not None and seconds is None else
                       {"lambdas": np.asarray(self.base.lambdas) * self.controller.factor})
            if seconds is not None:
                for value in seconds:
                    self.latency_controller.update(value)  # type: ignore[union-attr]  # with seconds: checked above
                changes["mu"] = self.base.mu * self.latency_controller.factor  # type: ignore[union-attr]  # as above
            self._policy = replace(self.base, **changes)

    def plan(self, prompts: Sequence[str], observed: Observed | None = None, *,
             tasks: Sequence[str] | None = None, subtasks: Sequence[str] | None = None,
             excluded: Excluded | None = None, prepared: PreparedQueries | None = None) -> list[Plan]:
        """:meth:`Router.plan` with the current paced policy.

        Parameters
        ----------
        prompts, observed, tasks, subtasks, excluded, prepared
            As in :meth:`Router.decide`.

        Returns
        -------
        list of Plan
        """
        return self.router.plan(prompts, observed, tasks=tasks, subtasks=subtasks, policy=self._policy,
                                excluded=excluded, prepared=prepared)

    def decide(self, prompts: Sequence[str], observed: Observed | None = None, *,
               tasks: Sequence[str] | None = None, subtasks: Sequence[str] | None = None,
               excluded: Excluded | None = None, prepared: PreparedQueries | None = None) -> list[str | None]:
        """:meth:`Router.decide` with the current paced policy.

        Parameters
        ----------
        prompts, observed, tasks, subtasks, excluded, prepared
            As in :meth:`Router.decide`.

        Returns
        -------
        list of (str or None)
        """
        return self.router.decide(prompts, observed, tasks=tasks, subtasks=subtasks, policy=self._policy,
                                  excluded=excluded, prepared=prepared)

    def decide_or_select(self, prompts: Sequence[str], observed: Observed | None = None, *,
                         tasks: Sequence[str] | None = None, subtasks: Sequence[str] | None = None,
                         excluded: Excluded | None = None, prepared: PreparedQueries | None = None
                         ) -> list[tuple[str | None, str | None]]:
        """:meth:`Router.decide_or_select` with the current paced policy.

        Parameters
        ----------
        prompts, observed, tasks, subtasks, excluded, prepared
            As in :meth:`Router.decide`.

        Returns
        -------
        list of (str or None, str or None)
        """
        return self.router.decide_or_select(prompts, observed, tasks=tasks, subtasks=subtasks, policy=self._policy,
                                            excluded=excluded, prepared=prepared)

    def select(self, prompts: Sequence[str], observed: Observed, *, tasks: Sequence[str] | None = None,
               subtasks: Sequence[str] | None = None, prepared: PreparedQueries | None = None) -> list[str]:
        """:meth:`Router.select` (pacing does not change which answer is best).

        Parameters
        ----------
        prompts, observed, tasks, subtasks, prepared
            As in :meth:`Router.select`.

        Returns
        -------
        list of str
        """
        return self.router.select(prompts, observed, tasks=tasks, subtasks=subtasks, prepared=prepared)


def _observed_number(result: Mapping[str, object], key: str, unit: str, row: int, model: str) -> float:
    """``result[key]`` as a float, or ``TypeError`` naming the query, the model and the unit."""
    value = result[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"observed[{row}][{model!r}][{key!r}] must be a number ({unit}), "
                        f"got {type(value).__name__} {value!r}")
    return float(value)


def _observed_text(result: Mapping[str, object], row: int, model: str) -> str:
    """``result["response"]`` as text: ``''`` when absent or ``None``; anything but ``str`` refused.

    ``str()`` of ``None`` or ``bytes`` would be the text ``'None'`` or
    ``"b'...'"``, which the post-hoc estimates would read as an answer.
    """
    value = result.get("response")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"observed[{row}][{model!r}]['response'] is {type(value).__name__} {repr(value)[:40]}, "
                        "not str; pass the answer's text (decode bytes first; None means no text)")
    return value


def _none_last(value: float | None) -> float:
    return math.inf if value is None else value


def _budget_pair(policy: Policy) -> tuple[float, float]:
    """``(cost budget, latency budget)`` with no latency budget as ``inf``: the order policies are chosen in."""
    return (policy.budget, _none_last(policy.latency_budget))


def prompt_uniforms(prompts: Iterable[object]) -> NDArray[np.float64]:
    """A stable uniform in [0, 1) per prompt (CRC32 / 2**32), so that a repeated prompt breaks ties the same way.

    Parameters
    ----------
    prompts : sequence of str
        Other values are converted with ``str``.

    Returns
    -------
    ndarray of float64, shape (N,)
    """
    return np.array([zlib.crc32(str(p).encode("utf-8", "surrogatepass")) / 2.0**32 for p in prompts])


def load_router(path: str | Path, *, strict_versions: bool = True, warm_up: bool = True,
                key: Any = None, expected_sha256: str | None = None) -> Router:
    """Load a router artifact strictly and warm it up.

    Raises ``ValueError`` on a wrong format version, a sha256 mismatch, a
    library-version mismatch (unless ``strict_versions=False``), a missing
    or wrong signature when ``key`` is given
    (:class:`~training.artifact.ArtifactSignatureError`, before anything is
    unpickled) or a file that does not hold a :class:`Router`. joblib is
    pickle: **only load files you trust**; ``key`` is how a service makes
    sure it loads only what was signed with its key.

    Parameters
    ----------
    path : str or Path
        The artifact; its manifest sits beside it.
    strict_versions : bool, default=True
        Refuse an artifact written with other library versions.
    key : Ed25519PublicKey, its PEM, or a (deprecated) HMAC secret, optional
        Verify the artifact's signature with this key
        (:func:`training.artifact.load_artifact`). Without it the artifact
        loads unverified, with a warning once per process and path.
    expected_sha256 : str, optional
        The payload's sha256 must be this (pins one artifact: refuses a
        replaced or older one).
    warm_up : bool, default=True
        Run every kernel once now (:meth:`Router.warm_up`), so that the first
        request costs what the next does. ``False`` for a process that only
        reads the router's models and policies (it saves the compiled code's
        memory and load time); kernels then load on first use.

    Returns
    -------
    Router
        Warmed up unless ``warm_up=False``.
    """
    return load_router_with_sha256(path, strict_versions=strict_versions, warm_up=warm_up, key=key,
                                   expected_sha256=expected_sha256)[0]


def load_router_with_sha256(path: str | Path, *, strict_versions: bool = True, warm_up: bool = True,
                            key: Any = None, expected_sha256: str | None = None
                            ) -> tuple[Router, str]:
    """:func:`load_router`, and the sha256 of the payload it verified and loaded.

    For a process that has other processes load the same file (``training.score``'s
    workers, Spark executors): they pass the digest as ``expected_sha256``,
    so they load exactly what this process verified, with the key or not,
    without being given the key. Reading the digest from the manifest
    after loading would not do: the manifest may have been replaced since.

    Parameters
    ----------
    path, strict_versions, warm_up, key, expected_sha256
        As for :func:`load_router`.

    Returns
    -------
    (Router, str)
        The router and its payload's hex sha256.
    """
    router, manifest = load_artifact(path, strict_versions=strict_versions, key=key, expected_sha256=expected_sha256)
    if not isinstance(router, Router):
        raise ValueError(f"{path} holds a {type(router).__name__}, not a Router")
    if warm_up:
        router.warm_up()
    return router, manifest["sha256"].lower()
