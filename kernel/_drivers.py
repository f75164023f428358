"""Drivers that loop the single-query worker over many queries.

The work on a block of queries is written once (``_plan_block``,
``_simulate_block``) and driven twice (umap's habit): serially, for
deterministic use inside threaded services, and with ``parallel=True`` for
batch work, where ``prange`` spreads the blocks over threads. The two
drivers are distinct Python functions on purpose: numba's on-disk cache
keys compiled code by function, not by compile options, so one function
compiled both ways would load whichever variant was cached first. Scratch
buffers are allocated once per block, never per query.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._search import new_scratch, plan_query, plan_without_draws, select_best_run
from .config import BLOCK_SIZE, CASCADE, JIT_OPTIONS, STOP, THRESHOLD


@njit(**JIT_OPTIONS)
def _plan_block(block, quality, sigma, chol, use_cov, cost, run, lambdas, strategy, thresholds,
                max_depth, force_order, gamma, u, z, prune, out_next, out_plan):
    n_queries, n_models = quality.shape
    scratch = new_scratch(z.shape[0], n_models, max_depth)
    for n in range(block * BLOCK_SIZE, min(n_queries, (block + 1) * BLOCK_SIZE)):
        row_sigma = sigma[0] if use_cov else sigma[n]
        row_chol = chol[n] if use_cov else chol[0]
        out_next[n], out_plan[n] = plan_query(
            quality[n], row_sigma, row_chol, use_cov, cost[n], run[n], lambdas, strategy,
            thresholds, max_depth, force_order, u[n] < gamma, z, prune, scratch)


@njit(**JIT_OPTIONS)
def _simulate_block(block, ante_quality, ante_sigma, ante_cost, post_quality, post_sigma, post_cost,
                    true_quality, true_cost, lambdas, strategy, thresholds, max_depth,
                    force_order, gamma, u, z, prune, out_order, out_cost, out_quality, out_answer):
    n_queries, n_models = ante_quality.shape
    no_chol = np.zeros((1, 1))
    scratch = new_scratch(z.shape[0], n_models, max_depth)
    quality = np.empty(n_models)
    sigma = np.empty(n_models)
    cost = np.empty(n_models)
    run = np.zeros(n_models, dtype=np.bool_)
    for n in range(block * BLOCK_SIZE, min(n_queries, (block + 1) * BLOCK_SIZE)):
        for i in range(n_models):
            quality[i] = ante_quality[n, i]
            sigma[i] = ante_sigma[n, i]
            cost[i] = ante_cost[n, i]
            run[i] = False
        expensive = u[n] < gamma
        realised_cost = 0.0
        for step in range(max_depth):
            chosen, _ = plan_query(
                quality, sigma, no_chol, False, cost, run, lambdas, strategy, thresholds,
                max_depth, force_order, expensive, z, prune, scratch)
            if chosen == STOP:
                break
            out_order[n, step] = chosen
            run[chosen] = True
            quality[chosen] = post_quality[n, chosen]
            sigma[chosen] = post_sigma[n, chosen]
            cost[chosen] = post_cost[n, chosen]
            realised_cost += true_cost[n, chosen]
        answer = select_best_run(quality, run)
        out_answer[n] = answer
        out_cost[n] = realised_cost
        out_quality[n] = true_quality[n, answer] if answer != STOP else np.nan


@njit(**JIT_OPTIONS)
def _n_blocks(n_queries):
    return (n_queries + BLOCK_SIZE - 1) // BLOCK_SIZE


@njit(**JIT_OPTIONS)
def plan_all_serial(*args):
    """Plan every query, one block after another, in the calling thread.

    Deterministic and GIL-free: the variant for threaded services.

    Parameters
    ----------
    *args
        The arguments of ``_plan_block`` after ``block``, outputs last; the
        first is an ``(N, K)`` array that gives the number of queries.
    """
    for block in range(_n_blocks(args[0].shape[0])):
        _plan_block(block, *args)


@njit(parallel=True, **JIT_OPTIONS)
def plan_all_parallel(*args):
    """Plan every query, blocks spread over threads with ``prange`` (batch work).

    Parameters
    ----------
    *args
        The arguments of ``_plan_block`` after ``block``, outputs last; the
        first is an ``(N, K)`` array that gives the number of queries.
    """
    for block in prange(_n_blocks(args[0].shape[0])):
        _plan_block(block, *args)


@njit(**JIT_OPTIONS)
def simulate_all_serial(*args):
    """Play every query's episode, one block after another, in the calling thread.

    The deterministic twin of :func:`simulate_all_parallel`.

    Parameters
    ----------
    *args
        The arguments of ``_simulate_block`` after ``block``, outputs last; the
        first is an ``(N, K)`` array that gives the number of queries.
    """
    for block in range(_n_blocks(args[0].shape[0])):
        _simulate_block(block, *args)


@njit(parallel=True, **JIT_OPTIONS)
def simulate_all_parallel(*args):
    """Play every query's episode, blocks spread over threads with ``prange`` (policy fitting).

    Parameters
    ----------
    *args
        The arguments of ``_simulate_block`` after ``block``, outputs last; the
        first is an ``(N, K)`` array that gives the number of queries.
    """
    for block in prange(_n_blocks(args[0].shape[0])):
        _simulate_block(block, *args)


@njit(**JIT_OPTIONS)
def _row_is_valid(quality, sigma, cost, run, u, strategy):
    """Whether one query's inputs pass every check :mod:`kernel._validate` makes on a batch row.

    The single-query path checks here, compiled, instead of in NumPy; on
    ``False`` the caller re-runs the batch path, whose checks raise the
    error that names the problem.
    """
    n_models = quality.shape[0]
    for i in range(n_models):
        if not (np.isfinite(quality[i]) and np.isfinite(cost[i]) and np.isfinite(sigma[i])):
            return False
        if cost[i] < 0.0 or sigma[i] < 0.0:
            return False
    if not 0.0 <= u <= 1.0:
        return False
    if strategy == CASCADE or strategy == THRESHOLD:
        n_run = 0
        for i in range(n_models):
            n_run += run[i]
        for i in range(n_models):
            if run[i] != (i < n_run):
                return False
    return True


@njit(**JIT_OPTIONS)
def plan_one(quality, sigma, cost, run, u, lambdas, strategy, thresholds, max_depth, force_order, gamma, z,
             prune):
    """Check and plan one query: ``(valid, next_model, plan_mask)``, as one row of :func:`plan_all_serial`.

    The same :func:`~kernel._search.plan_query` on the same values as the
    batch drivers, so the decision is the batch path's, bit for bit; only
    the checks (:func:`_row_is_valid`) and the call overhead differ.

    Parameters
    ----------
    quality, sigma, cost : ndarray of float64, shape (K,)
        The query's estimates (``sigma`` zeros when exact).
    run : ndarray of bool, shape (K,)
        Models already run.
    u : float
        The query's uniform, compared with ``gamma``.
    lambdas, strategy, thresholds, max_depth, force_order, gamma, z, prune
        Validated policy arguments, as the batch drivers take them.

    Returns
    -------
    (bool, int, int64)
        Whether the inputs are valid (else the other two are meaningless),
        the next model (``STOP`` to stop) and the plan's bit mask.
    """
    if not _row_is_valid(quality, sigma, cost, run, u, strategy):
        return False, STOP, np.int64(0)
    decided, chosen, plan, _, _ = plan_without_draws(quality, cost, run, lambdas, strategy, thresholds, max_depth,
                                                     u < gamma)
    if decided:
        return True, chosen, plan
    scratch = new_scratch(z.shape[0], quality.shape[0], max_depth)
    chosen, plan = plan_query(quality, sigma, np.zeros((1, 1)), False, cost, run, lambdas, strategy, thresholds,
                              max_depth, force_order, u < gamma, z, prune, scratch)
    return True, chosen, plan
