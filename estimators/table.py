"""The in-memory benchmark table every part of the toolkit exchanges.

A :class:`RoutingTable` is the wide, array form of the long per-(query, model)
tables described in ``../shared/data/README.md``: one row per query, one
column per model, models sorted by mean cost (cheapest first) because the
cascade strategies and ``force_order`` rely on that order.

Traffic logs hold outcomes only for the models that were called, so a cell
may be absent: :attr:`RoutingTable.logged` says which are there, and the
per-cell values of an absent cell are NaN (``''`` for a response), so that
code which forgets to look at ``logged`` produces NaN, not a plausible number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["IGNORABLE_COLUMNS", "RoutingTable"]

_PER_QUERY = ("query_ids", "prompts", "tasks", "subtasks", "splits")
#: Per-query inputs a table can be read without (:meth:`RoutingTable.without`), by their long-format column names.
IGNORABLE_COLUMNS = {"prompt": "prompts", "task": "tasks", "subtask": "subtasks"}
_PER_CELL = ("quality", "cost", "logged", "responses", "input_tokens", "output_tokens", "propensity", "latency")


@dataclass(frozen=True)
class RoutingTable:
    """Per-query, per-model quality and cost, plus what is known of the queries.

    Parameters
    ----------
    models : tuple of str
        Model names, ``K`` of them, sorted by mean cost (cheapest first).
    query_ids : ndarray of object, shape (N,)
        Unique query identifiers.
    quality : ndarray of float64, shape (N, K)
        Ground-truth quality of each model's answer; NaN where not logged.
    cost : ndarray of float64, shape (N, K)
        Cost in USD of running each model on each query (>= 0); NaN where
        not logged.
    logged : ndarray of bool, shape (N, K), optional
        Which (query, model) outcomes the source holds. Default: every cell
        whose quality and cost are both finite (all of them for a benchmark
        matrix).
    prompts, tasks, subtasks, splits : ndarray of object, shape (N,), optional
        Query text, benchmark name, finer category and the source's split;
        ``None`` when the source has none. Missing entries are ``''``.
    responses : ndarray of object, shape (N, K), optional
        Each model's answer text (``''`` when unknown). Post-hoc estimators
        read agreement and length from it.
    input_tokens, output_tokens : ndarray of float64, shape (N, K), optional
        Token counts, NaN when unknown; the cost estimator uses them with a
        price table.
    signals : dict of str to ndarray of float64, shape (N, K)
        Numeric post-hoc signals a user logs per (query, model), such as a
        log-probability or a verifier score.
    propensity : ndarray of float64, shape (N, K), optional
        Probability that the logging policy logged each cell, in (0, 1]
        where logged. Cascade logs reach an expensive model only on the
        queries the cheap ones failed, so its logged outcomes are the hard
        queries; with some random exploration (every model logged on a
        random share of the traffic) weighting each logged cell by
        ``1 / propensity`` makes the training loss that of all queries
        again. ``None``: every logged cell counts once.
    latency : ndarray of float64, shape (N, K), optional
        Seconds each model took on each query (finite, >= 0 where logged;
        NaN where not): the second budget of ALGORITHM.md §7. ``None`` when
        the source has no latency, which refuses latency budgets.
    """

    models: tuple[str, ...]
    query_ids: NDArray[np.object_]
    quality: NDArray[np.float64]
    cost: NDArray[np.float64]
    #: Always an array once constructed: ``None`` (the default) is replaced in ``__post_init__``.
    logged: NDArray[np.bool_] = None  # type: ignore[assignment]  # derived in __post_init__ when not given
    prompts: NDArray[np.object_] | None = None
    tasks: NDArray[np.object_] | None = None
    subtasks: NDArray[np.object_] | None = None
    splits: NDArray[np.object_] | None = None
    responses: NDArray[np.object_] | None = None
    input_tokens: NDArray[np.float64] | None = None
    output_tokens: NDArray[np.float64] | None = None
    signals: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    propensity: NDArray[np.float64] | None = None
    latency: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        n, k = np.shape(self.quality)
        if self.logged is None:  # frozen: set the derived default once, as if it had been passed
            object.__setattr__(self, "logged", np.isfinite(self.quality) & np.isfinite(self.cost))
        if len(self.models) != k:
            raise ValueError(f"models has {len(self.models)} names but quality has {k} columns")
        for name in _PER_QUERY:
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} rows, expected {n}")
        for name in _PER_CELL:
            value = getattr(self, name)
            if value is not None and np.shape(value) != (n, k):
                raise ValueError(f"{name} has shape {np.shape(value)}, expected {(n, k)}")
        for name, value in self.signals.items():
            if np.shape(value) != (n, k):
                raise ValueError(f"signal {name!r} has shape {np.shape(value)}, expected {(n, k)}")
        if self.propensity is not None and not ((self.propensity > 0) & (self.propensity <= 1))[self.logged].all():
            raise ValueError("propensity must lie in (0, 1] on every logged cell")
        if self.logged.dtype != np.bool_:
            raise TypeError(f"logged must be a boolean array, got dtype {self.logged.dtype}")
        if self.latency is not None and not (np.isfinite(self.latency) & (self.latency >= 0))[self.logged].all():
            raise ValueError("latency must be finite and >= 0 (seconds) on every logged cell")
        unknown = self.logged & ~(np.isfinite(self.quality) & np.isfinite(self.cost))
        if unknown.any():
            q, m = np.argwhere(unknown)[0]
            raise ValueError(f"{int(unknown.sum())} logged cell(s) lack a finite quality or cost, e.g. query "
                             f"{self.query_ids[q]!r}, model {self.models[m]!r}; mark them as not logged")

    @property
    def n_queries(self) -> int:
        """Number of queries ``N`` (rows)."""
        return int(self.quality.shape[0])

    @property
    def n_models(self) -> int:
        """Number of models ``K`` (columns)."""
        return int(self.quality.shape[1])

    @property
    def fully_logged(self) -> NDArray[np.bool_]:
        """``(N,)`` mask of the queries logged for every model: the only ones a policy can be scored on exactly."""
        return np.asarray(self.logged.all(axis=1))  # numpy types .all(axis=) as bool | ndarray

    @property
    def is_partial(self) -> bool:
        """Whether any (query, model) outcome is absent."""
        return not bool(self.logged.all())

    def subset(self, rows: ArrayLike | Sequence[int]) -> RoutingTable:
        """Return the table restricted to ``rows`` (indices or a boolean mask), for train/calibration/test splits.

        Parameters
        ----------
        rows : array-like of int or bool
            Query indices (repeats allowed) or an ``(N,)`` mask.

        Returns
        -------
        RoutingTable
            Every per-query and per-cell array and signal indexed by ``rows``.
        """
        rows = np.asarray(rows)
        changes = {}
        for name in _PER_QUERY + _PER_CELL:
            value = getattr(self, name)
            if value is not None:
                changes[name] = value[rows]
        changes["signals"] = {name: value[rows] for name, value in self.signals.items()}
        return replace(self, **changes)

    def without(self, columns: Sequence[str]) -> RoutingTable:
        """Return the table as if its source had no ``columns`` (any of ``prompt``, ``task``, ``subtask``).

        Why: users' traffic logs rarely carry a clean task label, and an
        estimator fitted on a column must be sent it at serving time; fitting
        and evaluating without it measures, and serves, what unlabelled
        traffic gets (the estimator then derives prompt clusters in its
        place, :mod:`estimators.clusters`).

        Parameters
        ----------
        columns : sequence of str
            Long-format column names, each one of :data:`IGNORABLE_COLUMNS`.

        Returns
        -------
        RoutingTable
            The same table with those per-query inputs set to ``None``.

        Raises
        ------
        ValueError
            If a name is not one of :data:`IGNORABLE_COLUMNS`.
        """
        unknown = [name for name in columns if name not in IGNORABLE_COLUMNS]
        if unknown:
            raise ValueError(f"cannot ignore column(s) {unknown}; the per-query inputs that can be ignored are "
                             f"{sorted(IGNORABLE_COLUMNS)}")
        cleared: dict[str, Any] = {IGNORABLE_COLUMNS[name]: None for name in columns}
        return replace(self, **cleared)

    def select_models(self, names: Sequence[str]) -> RoutingTable:
        """Return the table with only ``names``, re-sorted by mean cost (the order the cascades rely on).

        Parameters
        ----------
        names : sequence of str
            Models to keep, in any order.

        Returns
        -------
        RoutingTable

        Raises
        ------
        ValueError
            If a name is not one of :attr:`models` or appears twice, or
            ``names`` is empty.
        """
        names = list(names)
        unknown = [name for name in names if name not in self.models]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known models are {list(self.models)}")
        if len(set(names)) != len(names):
            raise ValueError(f"model list {names} names a model twice")
        if not names:
            raise ValueError("model list is empty; name at least one model")
        columns = np.array([self.models.index(name) for name in names])
        columns = columns[np.argsort(np.nanmean(self.cost[:, columns], axis=0), kind="stable")]
        return self.reorder_models(columns)

    def reorder_models(self, columns: Sequence[int] | NDArray[np.int64]) -> RoutingTable:
        """Return the table with model columns ``columns`` (indices), in that order.

        Parameters
        ----------
        columns : sequence of int
            Column indices; every per-cell array and signal is reindexed.

        Returns
        -------
        RoutingTable
        """
        order = np.asarray(columns, dtype=np.intp)
        changes: dict[str, Any] = {"models": tuple(self.models[c] for c in order)}
        for name in _PER_CELL:
            value = getattr(self, name)
            if value is not None:
                changes[name] = value[:, order]
        changes["signals"] = {name: value[:, order] for name, value in self.signals.items()}
        return replace(self, **changes)
