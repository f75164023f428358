"""Run sets to train on: which models count as "already run" in each training row.

One regressor per model serves every run set ``R``, so the training rows must
cover the run sets the policies will ask about. A cascade visits the prefixes
``{m0}, {m0, m1}, ...``; cascade routing mostly visits small sets. For a
handful of models every subset is used; beyond that each query gets the empty
set, a few prefixes and a few random small sets.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["sample_run_sets"]


def sample_run_sets(
    n_queries: int, n_models: int, *, per_query: int = 8, all_subsets_up_to: int = 4, random_state: int = 0,
    logged: NDArray[np.bool_] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Draw the (query, run set) pairs of the augmented training rows.

    Parameters
    ----------
    n_queries, n_models : int
        ``N`` and ``K``.
    per_query : int, default=8
        Run sets per query when ``K > all_subsets_up_to``: the empty set,
        then about half prefixes and half random sets, their sizes drawn with
        probability proportional to ``1/size`` (small sets favoured).
    all_subsets_up_to : int, default=4
        Use all ``2**K`` subsets for every query when ``K`` is at most this.
    random_state : int, default=0
        Seed of the sampling.
    logged : ndarray of bool, shape (N, K), optional
        Partial logs: a model can count as run only where its answer was
        logged, so sets are drawn from each query's logged models: a
        prefix is the first logged models in cost order, a random set a
        random subset of the logged ones, and a size beyond the number
        logged takes them all (all subsets: the subsets of the logged
        models, repeated so every query keeps ``2**K`` rows). Without it
        (or when every cell is logged) the draws are exactly as for a full
        table.

    Returns
    -------
    rows : ndarray of int64, shape (M,)
        Query index of each augmented row.
    run : ndarray of bool, shape (M, K)
        Run set of each augmented row.
    """
    logged = np.ones((n_queries, n_models), dtype=bool) if logged is None else np.asarray(logged, dtype=bool)
    if n_models <= all_subsets_up_to:
        masks = (np.arange(2**n_models)[:, None] >> np.arange(n_models)) & 1
        rows = np.repeat(np.arange(n_queries), len(masks))
        return rows, np.tile(masks.astype(bool), (n_queries, 1)) & logged[rows]
    rng = np.random.default_rng(random_state)
    n_prefix = (per_query - 1) // 2
    n_random = per_query - 1 - n_prefix
    run = np.zeros((n_queries, per_query, n_models), dtype=bool)
    sizes = np.arange(1, n_models + 1)
    p = (1 / sizes) / (1 / sizes).sum()
    prefix_len = rng.choice(sizes, p=p, size=(n_queries, n_prefix))
    position = np.cumsum(logged, axis=1)  # 1-based rank of each logged model in cost order
    run[:, 1 : 1 + n_prefix] = logged[:, None, :] & (position[:, None, :] <= prefix_len[:, :, None])
    size = rng.choice(sizes, p=p, size=(n_queries, n_random))
    keys = rng.random((n_queries, n_random, n_models)) + ~logged[:, None, :]  # models not logged sort last
    order = np.argsort(keys, axis=2)
    run[:, 1 + n_prefix :] = logged[:, None, :] & (np.argsort(order, axis=2) < size[:, :, None])
    rows = np.repeat(np.arange(n_queries), per_query)
    return rows, run.reshape(-1, n_models)
