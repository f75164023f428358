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
    n_queries: int, n_models: int, *, per_query: int = 8, all_subsets_up_to: int = 4, random_state: int = 0
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

    Returns
    -------
    rows : ndarray of int64, shape (M,)
        Query index of each augmented row.
    run : ndarray of bool, shape (M, K)
        Run set of each augmented row.
    """
    if n_models <= all_subsets_up_to:
        masks = (np.arange(2**n_models)[:, None] >> np.arange(n_models)) & 1
        rows = np.repeat(np.arange(n_queries), len(masks))
        return rows, np.tile(masks.astype(bool), (n_queries, 1))
    rng = np.random.default_rng(random_state)
    n_prefix = (per_query - 1) // 2
    n_random = per_query - 1 - n_prefix
    run = np.zeros((n_queries, per_query, n_models), dtype=bool)
    sizes = np.arange(1, n_models + 1)
    p = (1 / sizes) / (1 / sizes).sum()
    prefix_len = rng.choice(sizes, p=p, size=(n_queries, n_prefix))
    run[:, 1 : 1 + n_prefix] = np.arange(n_models) < prefix_len[:, :, None]
    size = rng.choice(sizes, p=p, size=(n_queries, n_random))
    order = np.argsort(rng.random((n_queries, n_random, n_models)), axis=2)
    run[:, 1 + n_prefix :] = np.argsort(order, axis=2) < size[:, :, None]
    rows = np.repeat(np.arange(n_queries), per_query)
    return rows, run.reshape(-1, n_models)
