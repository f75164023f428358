"""The fitted router that services load: estimator + one policy per budget.

:func:`load_router` is the strict loader (format, sha256, library versions:
see :mod:`training.artifact`) and warms the router up, so the first request
does not pay for JIT compilation. Artifacts are pickles: load only files
you trust.

Serving. :meth:`Router.decide`, :meth:`Router.plan`, :meth:`Router.select`
and :meth:`Router.estimates` are safe to call from many threads at once:
the router holds no mutable state after warm-up (the fitted estimator's
``predict`` writes nothing; its ``predict_table`` cache is never used
here), the decision kernel runs serially (deterministic, GIL released), and
ties are broken with a per-prompt uniform. Estimates come from the
estimator's compiled twin (:mod:`estimators.frozen`), verified against the
estimator when the router warms up; it is rebuilt at load time, never
pickled.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, NamedTuple, Sequence

import numpy as np

import kernel

from ..artifact import load_artifact
from ..policy import Policy

if TYPE_CHECKING:
    from estimators.estimator import Estimates

    from .pacing import PacedRouter

__all__ = ["Router", "load_router", "Observed", "Plan"]

#: Per query: model name -> what that model returned. Each value is a
#: mapping with ``"cost"`` (required: what the call cost), optionally
#: ``"response"`` (the answer text) and any numeric post-hoc signal the
#: estimator was trained with (e.g. ``"logprob"``).
Observed = Sequence[Mapping[str, Mapping[str, object]]]

#: Set while a router builds its compiled estimator, so two threads never build it twice.
_COMPILE_LOCK = threading.Lock()


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
    estimator : object
        Fitted estimator with ``predict(prompts, tasks=, subtasks=, run=,
        responses=, signals=, observed_cost=)``.
    policies : tuple of Policy
        One fitted policy per budget, sorted by budget.
    models_ : tuple of str
        Model names in the order of the estimate columns (cheapest first).
    """

    estimator: object
    policies: tuple[Policy, ...]
    models_: tuple[str, ...]

    def __post_init__(self) -> None:
        self.policies = tuple(sorted(self.policies, key=lambda p: p.budget))
        if not self.policies:
            raise ValueError("a router needs at least one fitted policy")

    @property
    def budgets(self) -> list[float]:
        return [p.budget for p in self.policies]

    def policy(self, budget: float | None = None) -> Policy:
        """The policy for ``budget``: the largest fitted budget not above it.

        Never overspending is the safe reading of "a budget": a request for
        0.0012 with policies at 0.001 and 0.002 gets the 0.001 policy. Without
        a budget, the largest fitted one is used.
        """
        if budget is None:
            return self.policies[-1]
        fitting = [p for p in self.policies if p.budget <= budget]
        if not fitting:
            raise ValueError(f"budget {budget!r} is below every fitted budget {self.budgets}; "
                             "refit with a smaller --budget")
        return fitting[-1]

    def _inputs(self, prompts, observed: Observed | None, n: int):
        """Turn ``observed`` into the run matrix and aligned per-model arrays."""
        k = len(self.models_)
        run = np.zeros((n, k), bool)
        responses = np.full((n, k), "", dtype=object)
        cost = np.zeros((n, k))
        names = list(getattr(self.estimator, "signal_names_", []))
        signals = {name: np.full((n, k), np.nan) for name in names}
        if observed is None:
            return run, responses, cost, signals
        if len(observed) != n:
            raise ValueError(f"observed has {len(observed)} entries but there are {n} prompts")
        index = {name: i for i, name in enumerate(self.models_)}
        for row, by_model in enumerate(observed):
            for model, result in by_model.items():
                if model not in index:
                    raise ValueError(f"observed[{row}] names unknown model {model!r}; "
                                     f"known models are {list(self.models_)}")
                if "cost" not in result:
                    raise ValueError(f"observed[{row}][{model!r}] has no 'cost': say what the call cost")
                column = index[model]
                run[row, column] = True
                cost[row, column] = float(result["cost"])
                responses[row, column] = str(result.get("response", ""))
                for name in names:
                    if name in result:
                        signals[name][row, column] = float(result[name])
        return run, responses, cost, signals

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_serving", None)  # compiled twin: rebuilt from the estimator at load time
        return state

    def _predictor(self):
        """The compiled, verified twin of the estimator, or the estimator itself.

        Built on first use (``load_router`` does it while warming up) and then
        only read, so concurrent requests share it safely.
        """
        serving = self.__dict__.get("_serving")
        if serving is None:
            with _COMPILE_LOCK:
                serving = self.__dict__.get("_serving")
                if serving is None:
                    from estimators.frozen import compile_estimator
                    serving = compile_estimator(self.estimator) or self.estimator
                    self.__dict__["_serving"] = serving
        return serving

    @property
    def compiled(self) -> bool:
        """Whether estimates come from the compiled twin (``False``: the estimator's own, slower, predict)."""
        return self._predictor() is not self.estimator

    def estimates(self, prompts: Sequence[str], observed: Observed | None = None, *,
                  tasks: Sequence[str] | None = None, subtasks: Sequence[str] | None = None) -> tuple[Estimates, np.ndarray]:
        """The estimator's ``quality``, ``sigma``, ``cost`` (and ``cov``) for inspection.

        Returns
        -------
        (Estimates, ndarray of bool)
            Estimates of shape ``(N, K)`` (columns in :attr:`models_` order)
            and the run matrix built from ``observed``.
        """
        run, responses, cost, signals = self._inputs(prompts, observed, len(prompts))
        estimates = self._predictor().predict(prompts, tasks=tasks, subtasks=subtasks, run=run,
                                              responses=responses, signals=signals, observed_cost=cost)
        return estimates, run

    def plan(self, prompts: Sequence[str], observed: Observed | None = None,
             budget: float | None = None, *, tasks: Sequence[str] | None = None,
             subtasks: Sequence[str] | None = None, policy: Policy | None = None) -> list[Plan]:
        """Next model and planned supermodel per query (see :class:`Plan`).

        Same arguments as :meth:`decide`; ``decide`` returns the ``next``
        fields of this.
        """
        _, _, next_model, masks = self.plan_arrays(prompts, observed, budget, tasks=tasks, subtasks=subtasks,
                                                   policy=policy)
        names = self.models_
        bits = [1 << i for i in range(len(names))]
        return [Plan(None if c == kernel.STOP else names[c],
                     tuple(name for name, bit in zip(names, bits) if int(mask) & bit))
                for c, mask in zip(next_model.tolist(), masks.tolist())]

    def plan_arrays(self, prompts: Sequence[str], observed: Observed | None = None,
                    budget: float | None = None, *, tasks: Sequence[str] | None = None,
                    subtasks: Sequence[str] | None = None, policy: Policy | None = None,
                    parallel: bool = False) -> tuple[Estimates, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`plan` as arrays, with the estimates it used: for batch jobs.

        Returns
        -------
        (Estimates, ndarray of bool, ndarray of int64, ndarray of int64)
            The estimates and run matrix (as :meth:`estimates`), the next
            model index per query (``kernel.STOP`` to stop) and the planned
            supermodel as a bit mask over :attr:`models_`. ``parallel``
            spreads the kernel over threads (decisions are the same).
        """
        estimates, run = self.estimates(prompts, observed, tasks=tasks, subtasks=subtasks)
        chosen = policy if policy is not None else self.policy(budget)
        spread = kernel_spread(estimates.sigma, getattr(estimates, "cov", None), chosen)
        next_model, masks = kernel.plan(estimates.quality, estimates.cost, run=run,
                                        u=prompt_uniforms(prompts), parallel=parallel, **spread,
                                        **chosen.kernel_options())
        return estimates, run, next_model, masks

    def decide(self, prompts: Sequence[str], observed: Observed | None = None,
               budget: float | None = None, *, tasks: Sequence[str] | None = None,
               subtasks: Sequence[str] | None = None, policy: Policy | None = None) -> list[str | None]:
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
            see :mod:`training.serving.pacing`); ``budget`` is then ignored.
        """
        return [p.next for p in self.plan(prompts, observed, budget, tasks=tasks, subtasks=subtasks,
                                          policy=policy)]

    def select(self, prompts: Sequence[str], observed: Observed, *,
               tasks: Sequence[str] | None = None, subtasks: Sequence[str] | None = None) -> list[str]:
        """Which run model's answer to return: the best by post-hoc quality estimate."""
        estimates, run = self.estimates(prompts, observed, tasks=tasks, subtasks=subtasks)
        empty = np.flatnonzero(~run.any(axis=1))
        if empty.size:
            raise ValueError(f"no model has run for prompt(s) {empty.tolist()}: nothing to select")
        return [self.models_[i] for i in kernel.select_answer(estimates.quality, run)]

    def paced(self, budget: float, **options) -> "PacedRouter":
        """A :class:`~training.serving.pacing.PacedRouter` that keeps mean spend at ``budget``.

        ``options`` go to :class:`~training.serving.pacing.PacedRouter` (``band``,
        ``half_life``, gains, ...).
        """
        from .pacing import PacedRouter
        return PacedRouter(self, budget, **options)

    def warm_up(self) -> None:
        """Build and verify the compiled estimator and compile the serial kernels now.

        Runs one ex-ante and one post-hoc decision and a selection, so the
        first request after :func:`load_router` is as fast as the next.
        """
        self._predictor()
        per_query = {"tasks": ["warm-up"] if "task" in _columns(self.estimator) else None,
                     "subtasks": ["warm-up"] if "subtask" in _columns(self.estimator) else None}
        first = self.decide(["warm-up"], **per_query)[0] or self.models_[0]
        signals = {name: 0.0 for name in getattr(self.estimator, "signal_names_", [])}
        observed = [{first: {"cost": 0.0, "response": "A", **signals}}]
        self.decide(["warm-up"], observed, **per_query)
        self.select(["warm-up"], observed, **per_query)


def kernel_spread(sigma, cov, policy: Policy) -> dict:
    """The uncertainty keyword for the kernel, scaled by the policy's fitted ``sigma_scale``.

    As :meth:`Policy.decide` does: fitting may pick a factor on σ per budget
    (learned σ is not calibrated to what a run reveals), and decisions must
    use the σ the policy was fitted with. Policies pickled before the field
    existed have none (factor 1).
    """
    from ..episodes import scale_uncertainty
    sigma, cov = scale_uncertainty(sigma, cov, float(getattr(policy, "sigma_scale", 1.0)))
    return {"cov": cov} if cov is not None else {"sigma": sigma}


def _columns(estimator) -> list[str]:
    return list(getattr(estimator, "columns_", ["prompt"]))


def prompt_uniforms(prompts: Sequence[str]) -> np.ndarray:
    """A stable uniform in [0, 1) per prompt (CRC32 / 2**32)."""
    return np.array([zlib.crc32(str(p).encode("utf-8")) / 2.0**32 for p in prompts])


def load_router(path: str | Path, *, strict_versions: bool = True) -> Router:
    """Load a router artifact strictly and warm it up.

    Raises ``ValueError`` on a wrong format version, a sha256 mismatch, a
    library-version mismatch (unless ``strict_versions=False``) or a file
    that does not hold a :class:`Router`. joblib is pickle: **only load
    files you trust**.
    """
    router, _ = load_artifact(path, strict_versions=strict_versions)
    if not isinstance(router, Router):
        raise ValueError(f"{path} holds a {type(router).__name__}, not a Router")
    router.warm_up()
    return router
