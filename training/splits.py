"""Seeded train / calibration / test splits whose test part holds only fully logged queries.

A policy's test figures must come from real outcomes of every model it
might call (ALGORITHM.md §7), so the test split is drawn from the queries
logged for every model; estimators and policies learn from the rest, partial
or not. On a fully logged table the split is the plain seeded one: the
permutation's first share trains, the next calibrates, the last tests.

The test part is the *last* fully logged queries of the permutation. Hiding
outcomes of non-test queries therefore leaves the split unchanged, which is
what lets a partial-log experiment test every variant on the same queries.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["MIN_SPLIT_QUERIES", "split"]

#: Fewest queries any part of a split may have.
MIN_SPLIT_QUERIES = 20


def split(n_queries: int, fractions: Sequence[float], seed: int,
          fully_logged: NDArray[np.bool_] | None = None) -> tuple[NDArray[np.int_], ...]:
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
        default all. The test part is drawn from these only: its share of
        the table when there are enough, else all of them.

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
    train_end, test_start = np.round(np.cumsum(fractions)[:-1] * n_queries).astype(int)
    wanted = n_queries - test_start
    testable = order if fully_logged is None else order[np.asarray(fully_logged, dtype=bool)[order]]
    test = testable[max(testable.size - wanted, 0):]
    if test.size < min(MIN_SPLIT_QUERIES, wanted):
        raise ValueError(
            f"only {testable.size} of the {n_queries} queries are logged for every model, and the test split "
            f"needs at least {MIN_SPLIT_QUERIES}: policies are scored on real outcomes only. Log every model on "
            "a random sample of queries (an exploration slice) and append those logs")
    rest = order[~np.isin(order, test)]
    parts = (np.sort(rest[:train_end]), np.sort(rest[train_end:]), np.sort(test))
    small = [name for name, part in zip(("train", "calibration", "test"), parts) if len(part) < MIN_SPLIT_QUERIES]
    if small:
        raise ValueError(f"{n_queries} queries are too few: the {', '.join(small)} split(s) would have "
                         f"fewer than {MIN_SPLIT_QUERIES} queries")
    return parts
