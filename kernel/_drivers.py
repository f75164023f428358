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

from .config import BLOCK_SIZE, JIT_OPTIONS, STOP
from ._search import new_scratch, plan_query, select_best_run


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
