"""Train / calibration / test splits whose test part holds only fully logged queries.

A policy's test figures must come from real outcomes of every model it
might call (ALGORITHM.md §7), so the test split is drawn from the queries
logged for every model; estimators and policies learn from the rest, partial
or not. :func:`split` is seeded and stratified: the fully logged queries are
split by the fractions (so training and calibration keep their share of
them: a model logged on 10 % of the traffic still has training labels),
the partially logged ones go to training and calibration only. On a fully
logged table it is the plain seeded split: the permutation's first share
trains, the next calibrates, the last tests. :func:`split_from_labels`
takes the split from a ``split`` column instead (a fixed holdout, or the
same test queries for several variants of a table).

Queries are split by id, and ids do not make queries distinct: retries log
one prompt under several ids. Given ``groups`` (:func:`prompt_groups`: one
label per distinct prompt text), :func:`split` keeps each group in one part,
so a test prompt is never also a training prompt (a kNN estimator would
otherwise find its own answer); a table without repeated prompts is split
exactly as without ``groups``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

__all__ = ["MIN_SPLIT_QUERIES", "SPLIT_LABELS", "prompt_groups", "shared_groups", "split", "split_from_labels"]

#: Fewest queries any part of a split may have.
MIN_SPLIT_QUERIES = 20
#: Values of a ``split`` column that :func:`split_from_labels` reads, in part order.
SPLIT_LABELS = ("train", "calibration", "test")


def prompt_groups(prompts: ArrayLike | None) -> NDArray[np.int64] | None:
    """One label per distinct prompt text (``-1`` for an empty prompt, which groups with nothing), or ``None``.

    Parameters
    ----------
    prompts : array-like of str, shape (N,), or None
        :attr:`RoutingTable.prompts`.

    Returns
    -------
    ndarray of int64, shape (N,), or None
        Equal labels for equal texts (compared exactly, by hash then value).
    """
    if prompts is None:
        return None
    values = np.asarray(prompts, dtype=object)
    labels = pd.factorize(values)[0].astype(np.int64)
    labels[values == ""] = -1
    return labels


def shared_groups(parts: Sequence[NDArray[np.int_]], groups: NDArray[np.int64] | None) -> int:
    """How many groups (distinct prompts) have queries in more than one part: the leak a split by id allows.

    Parameters
    ----------
    parts : sequence of ndarray of int
        Query indices of each part.
    groups : ndarray of int64, shape (N,), or None
        :func:`prompt_groups` (``-1``: no group).

    Returns
    -------
    int
    """
    if groups is None:
        return 0
    groups = np.asarray(groups)
    seen = [np.unique(groups[part][groups[part] >= 0]) for part in parts]
    _, counts = np.unique(np.concatenate([np.zeros(0, np.int64), *seen]), return_counts=True)
    return int((counts > 1).sum())


def _keep_together(parts: tuple[NDArray[np.int_], ...], order: NDArray[np.int_], fully: NDArray[np.bool_],
                   groups: NDArray[np.int64]) -> tuple[NDArray[np.int_], ...]:
    """Move every query of a group to the part of the group's leader: its first query (in table order) not fully
    logged, which cannot be tested, else its first query. Groups of one stay where they are.

    The leader is the first in table order, not in the seeded permutation:
    its part is then drawn like any query's, so the parts keep their
    fractions (the permutation's first member of a pair would be in the
    training share three times in four).
    """
    label = np.empty(order.size, np.int64)
    for index, part in enumerate(parts):
        label[part] = index
    grouped = np.flatnonzero(np.asarray(groups) >= 0)
    ranked = grouped[np.lexsort((grouped, fully[grouped], groups[grouped]))]
    starts = np.r_[True, groups[ranked][1:] != groups[ranked][:-1]] if ranked.size else np.zeros(0, bool)
    leaders = ranked[starts][np.cumsum(starts) - 1]
    label[ranked] = label[leaders]
    return tuple(np.flatnonzero(label == index) for index in range(len(parts)))


def split(n_queries: int, fractions: Sequence[float], seed: int,
          fully_logged: NDArray[np.bool_] | None = None,
          groups: NDArray[np.int64] | None = None) -> tuple[NDArray[np.int_], ...]:
    """Seeded train / calibration / test query indices, so that estimators, policies and scores never share a query.

    Parameters
    ----------
    n_queries : int
        Number of queries of the table.
    fractions : sequence of float
        Share of each part (``--fractions``), summing to 1.
    seed : int
        Seed of the permutation.
    fully_logged : ndarray of bool, shape (n_queries,), optional
        Queries logged for every model (:attr:`RoutingTable.fully_logged`);
        default all. They are split by ``fractions`` (in permutation order);
        the others go to train and calibration in the ratio of their
        fractions, never to test.
    groups : ndarray of int64, shape (n_queries,), optional
        :func:`prompt_groups`: queries with one label land in one part (that
        of the group's first query not fully logged, else of its first query,
        in table order); ``-1`` groups with nothing. Without repeated
        labels the split is the same as without ``groups``.

    Returns
    -------
    tuple of ndarray of int
        Sorted train, calibration and test query indices; each query lands
        in exactly one part.

    Raises
    ------
    ValueError
        If a part would have fewer than :data:`MIN_SPLIT_QUERIES` queries,
        naming the fully logged queries when those are what is missing.
    """
    order = np.random.default_rng(seed).permutation(n_queries)
    fully = np.ones(n_queries, dtype=bool) if fully_logged is None else np.asarray(fully_logged, dtype=bool)
    complete, partial = order[fully[order]], order[~fully[order]]
    train_end, test_start = np.round(np.cumsum(fractions)[:-1] * complete.size).astype(int)
    partial_end = int(round(fractions[0] / (fractions[0] + fractions[1]) * partial.size))
    parts: tuple[NDArray[np.int_], ...] = (np.sort(np.concatenate([complete[:train_end], partial[:partial_end]])),
             np.sort(np.concatenate([complete[train_end:test_start], partial[partial_end:]])),
             np.sort(complete[test_start:]))
    if groups is not None:
        parts = _keep_together(parts, order, fully, np.asarray(groups, dtype=np.int64))
    if parts[2].size < MIN_SPLIT_QUERIES and complete.size < n_queries:
        raise ValueError(
            f"only {complete.size} of the {n_queries} queries are logged for every model, which gives the test "
            f"split {parts[2].size} queries; it needs at least {MIN_SPLIT_QUERIES}: policies are scored on real "
            "outcomes only. Log every model on a random sample of queries (an exploration slice) and append "
            "those logs")
    _check_sizes(parts, f"{n_queries} queries are too few")
    return parts


def split_from_labels(labels: NDArray[np.object_], fully_logged: NDArray[np.bool_]) -> tuple[NDArray[np.int_], ...]:
    """Train / calibration / test query indices read from a ``split`` column (``--split-column``).

    Parameters
    ----------
    labels : ndarray of object, shape (N,)
        Per query one of :data:`SPLIT_LABELS` (:attr:`RoutingTable.splits`).
    fully_logged : ndarray of bool, shape (N,)
        :attr:`RoutingTable.fully_logged`.

    Returns
    -------
    tuple of ndarray of int
        Sorted train, calibration and test query indices.

    Raises
    ------
    ValueError
        If a query's label is not one of :data:`SPLIT_LABELS`, a test query
        is not logged for every model, or a part has fewer than
        :data:`MIN_SPLIT_QUERIES` queries.
    """
    labels = np.asarray(labels, dtype=object)
    unknown = sorted({str(v) for v in labels} - set(SPLIT_LABELS))
    if unknown:
        raise ValueError(f"the split column must be one of {list(SPLIT_LABELS)} on every query; found {unknown[:5]}")
    parts = tuple(np.flatnonzero(labels == name) for name in SPLIT_LABELS)
    partial = parts[2][~np.asarray(fully_logged, dtype=bool)[parts[2]]]
    if partial.size:
        raise ValueError(f"{partial.size} test queries of the split column are not logged for every model; "
                         "policies are scored on real outcomes only: label them train or calibration")
    _check_sizes(parts, "the split column is too uneven")
    return parts


def _check_sizes(parts: tuple[NDArray[np.int_], ...], problem: str) -> None:
    small = [name for name, part in zip(SPLIT_LABELS, parts, strict=True) if len(part) < MIN_SPLIT_QUERIES]
    if small:
        raise ValueError(f"{problem}: the {', '.join(small)} split(s) would have fewer than {MIN_SPLIT_QUERIES} "
                         "queries")
