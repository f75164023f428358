"""The fitted router that services load: estimator + one policy per budget.

:func:`load_router` is the strict loader (format, sha256, library versions:
see :mod:`training.artifact`). Artifacts are pickles: load only files you
trust.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

import kernel

from .artifact import load_artifact
from .policy import Policy

__all__ = ["Router", "load_router", "Observed"]

#: Per query: model name -> what that model returned. Each value is a
#: mapping with ``"cost"`` (required: what the call cost), optionally
#: ``"response"`` (the answer text) and any numeric post-hoc signal the
#: estimator was trained with (e.g. ``"logprob"``).
Observed = Sequence[Mapping[str, Mapping[str, object]]]


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

    def estimates(self, prompts: Sequence[str], observed: Observed | None = None, *,
                  tasks: Sequence[str] | None = None, subtasks: Sequence[str] | None = None):
        """The estimator's ``quality``, ``sigma``, ``cost`` (and ``cov``) for inspection."""
        run, responses, cost, signals = self._inputs(prompts, observed, len(prompts))
        estimates = self.estimator.predict(prompts, tasks=tasks, subtasks=subtasks, run=run,
                                           responses=responses, signals=signals, observed_cost=cost)
        return estimates, run

    def decide(self, prompts: Sequence[str], observed: Observed | None = None,
               budget: float | None = None, *, tasks: Sequence[str] | None = None,
               subtasks: Sequence[str] | None = None) -> list[str | None]:
        """Next model to call per query, or ``None`` to stop and answer.

        Uses the serial kernel (deterministic, safe to call from many
        threads). Ties are mixed with a per-prompt uniform derived from the
        prompt's CRC32, so a repeated prompt always gets the same decision.
        """
        estimates, run = self.estimates(prompts, observed, tasks=tasks, subtasks=subtasks)
        spread = {"cov": estimates.cov} if getattr(estimates, "cov", None) is not None \
            else {"sigma": estimates.sigma}
        chosen = self.policy(budget).decide(estimates.quality, estimates.cost, run=run,
                                            u=prompt_uniforms(prompts), parallel=False, **spread)
        return [None if c == kernel.STOP else self.models_[c] for c in chosen]

    def select(self, prompts: Sequence[str], observed: Observed, *,
               tasks: Sequence[str] | None = None, subtasks: Sequence[str] | None = None) -> list[str]:
        """Which run model's answer to return: the best by post-hoc quality estimate."""
        estimates, run = self.estimates(prompts, observed, tasks=tasks, subtasks=subtasks)
        empty = np.flatnonzero(~run.any(axis=1))
        if empty.size:
            raise ValueError(f"no model has run for prompt(s) {empty.tolist()}: nothing to select")
        return [self.models_[i] for i in kernel.select_answer(estimates.quality, run)]

    def warm_up(self) -> None:
        """Compile the serial kernels now, so that the first request is fast."""
        self.decide(["warm-up"], tasks=["warm-up"] if "task" in _columns(self.estimator) else None,
                    subtasks=["warm-up"] if "subtask" in _columns(self.estimator) else None)


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
