"""The in-memory benchmark table every part of the toolkit exchanges.

A :class:`RoutingTable` is the wide, array form of the long per-(query, model)
tables described in ``../shared/data/README.md``: one row per query, one
column per model, models sorted by mean cost (cheapest first) because the
cascade strategies and ``force_order`` rely on that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["RoutingTable"]

_PER_QUERY = ("query_ids", "prompts", "tasks", "subtasks", "splits")
_PER_CELL = ("quality", "cost", "responses", "input_tokens", "output_tokens")


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
        Ground-truth quality of each model's answer.
    cost : ndarray of float64, shape (N, K)
        Cost in USD of running each model on each query (>= 0).
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
    """

    models: tuple[str, ...]
    query_ids: NDArray[np.object_]
    quality: NDArray[np.float64]
    cost: NDArray[np.float64]
    prompts: NDArray[np.object_] | None = None
    tasks: NDArray[np.object_] | None = None
    subtasks: NDArray[np.object_] | None = None
    splits: NDArray[np.object_] | None = None
    responses: NDArray[np.object_] | None = None
    input_tokens: NDArray[np.float64] | None = None
    output_tokens: NDArray[np.float64] | None = None
    signals: dict[str, NDArray[np.float64]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, k = np.shape(self.quality)
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

    @property
    def n_queries(self) -> int:
        """Number of queries ``N`` (rows)."""
        return int(self.quality.shape[0])

    @property
    def n_models(self) -> int:
        """Number of models ``K`` (columns)."""
        return int(self.quality.shape[1])

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
        columns = columns[np.argsort(self.cost[:, columns].mean(axis=0), kind="stable")]
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
        columns = np.asarray(columns, dtype=np.intp)
        changes = {"models": tuple(self.models[c] for c in columns)}
        for name in _PER_CELL:
            value = getattr(self, name)
            if value is not None:
                changes[name] = value[:, columns]
        changes["signals"] = {name: value[:, columns] for name, value in self.signals.items()}
        return replace(self, **changes)
