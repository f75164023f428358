"""Single-query decision worker: scores candidate supermodels and plans the next step.

Everything here is compiled with numba and works on one query at a time, on
arrays and scalars only; the drivers in :mod:`kernel._drivers` loop over
queries. The maths is ALGORITHM.md §2–§5:

* a supermodel ``M`` (a bit mask) scores ``τ(M) = Q(M) - λ·C(M)``, with
  ``Q(M)`` the mean over the shared draws of the per-draw maximum;
* cascade routing enumerates supersets of the run set depth-first, adding
  models in increasing index order and carrying the per-draw running maximum,
  and skips any node whose last addition has a marginal gain below
  ``-tolerance`` (exact, because ``Q`` is submodular);
* ties within ``TIE_RTOL·max(1, |τ*|)`` are broken towards the most expensive
  candidate when the query's ``u < γ`` and the cheapest otherwise; among
  candidates of equal cost the fewer models win for "cheapest" and the more
  models for "most expensive", then the smaller bit mask (lower indices).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .config import (
    CASCADE,
    CASCADE_ROUTING,
    COST_RTOL,
    JIT_OPTIONS,
    ROUTING,
    STOP,
    THRESHOLD,
    TIE_RTOL,
)


@njit(**JIT_OPTIONS)
def fill_draws(quality, sigma, chol, use_cov, z, draws):
    """Write ``draw[s, i] = q_i + s_i z[s, i]`` (or ``q + L z[s]``) into ``draws``."""
    n_samples, n_models = draws.shape
    if use_cov:
        for s in range(n_samples):
            for i in range(n_models):
                acc = quality[i]
                for j in range(i + 1):
                    acc += chol[i, j] * z[s, j]
                draws[s, i] = acc
    else:
        for s in range(n_samples):
            for i in range(n_models):
                draws[s, i] = quality[i] + sigma[i] * z[s, i]


@njit(**JIT_OPTIONS)
def tie_better(cost_a, size_a, mask_a, cost_b, size_b, mask_b, expensive):
    """Whether tied candidate ``a`` beats tied candidate ``b`` (see module docstring)."""
    tol = COST_RTOL * max(1.0, abs(cost_a), abs(cost_b))
    if cost_a > cost_b + tol:
        return expensive
    if cost_a < cost_b - tol:
        return not expensive
    if size_a != size_b:
        return (size_a > size_b) == expensive
    return mask_a < mask_b


@njit(**JIT_OPTIONS)
def _column_mean(draws, i):
    total = 0.0
    for s in range(draws.shape[0]):
        total += draws[s, i]
    return total / draws.shape[0]


@njit(**JIT_OPTIONS)
def _extend_max(runmax_in, draws, i, runmax_out):
    """``runmax_out = max(runmax_in, draws[:, i])``; returns its mean, ``Q``."""
    total = 0.0
    for s in range(draws.shape[0]):
        value = draws[s, i]
        if runmax_in[s] > value:
            value = runmax_in[s]
        runmax_out[s] = value
        total += value
    return total / draws.shape[0]


@njit(**JIT_OPTIONS)
def _pick(taus, costs, sizes, masks, n, expensive):
    """Index of the winning candidate among the first ``n`` listed ones."""
    best = 0
    for k in range(1, n):
        if taus[k] > taus[best]:
            best = k
    floor = taus[best] - TIE_RTOL * max(1.0, abs(taus[best]))
    winner = best
    for k in range(n):
        if k != winner and taus[k] >= floor:
            if tie_better(costs[k], sizes[k], masks[k], costs[winner], sizes[winner], masks[winner], expensive):
                winner = k
    return winner


@njit(**JIT_OPTIONS)
def _list_routing(draws, cost, lam, taus, costs, sizes, masks):
    """Singletons ``{m_i}``; ``Q({i})`` is the column mean of the draws."""
    n_models = draws.shape[1]
    for i in range(n_models):
        taus[i] = _column_mean(draws, i) - lam * cost[i]
        costs[i] = cost[i]
        sizes[i] = 1
        masks[i] = np.int64(1) << i
    return n_models


@njit(**JIT_OPTIONS)
def _list_cascade(draws, cost, n_run, lam, max_depth, runmax, taus, costs, sizes, masks):
    """Prefixes ``{m_0..m_l}`` with ``l >= t - 1`` (the run set is the prefix of length t)."""
    n_samples, n_models = draws.shape
    current = runmax[0]
    for s in range(n_samples):
        current[s] = -np.inf
    q_value = -np.inf
    total_cost = 0.0
    mask = np.int64(0)
    n = 0
    for i in range(min(n_models, max_depth)):
        q_value = _extend_max(current, draws, i, current)
        total_cost += cost[i]
        mask |= np.int64(1) << i
        if i + 1 >= n_run:
            taus[n] = q_value - lam * total_cost
            costs[n] = total_cost
            sizes[n] = i + 1
            masks[n] = mask
            n += 1
    return n


@njit(**JIT_OPTIONS)
def _search_supersets(draws, cost, run, lam, max_depth, min_index, prune, prune_tol,
                      tie_floor, expensive, runmax, level_q, level_cost, level_mask, next_index):
    """Depth-first search over supersets of the run set (cascade routing).

    Returns ``(best_tau, best_mask, near_tie, winner_mask)``. ``near_tie`` says
    whether any two candidates came within ``prune_tol`` of each other at the
    top, i.e. whether a tie-break pass is needed; ``winner_mask`` is the
    tie-break winner among candidates with ``τ >= tie_floor`` (0 if none).
    """
    n_samples, n_models = draws.shape
    base = runmax[0]
    n_run = 0
    base_cost = 0.0
    base_mask = np.int64(0)
    for s in range(n_samples):
        base[s] = -np.inf
    for i in range(n_models):
        if run[i]:
            n_run += 1
            base_cost += cost[i]
            base_mask |= np.int64(1) << i
            for s in range(n_samples):
                if draws[s, i] > base[s]:
                    base[s] = draws[s, i]
    best_tau = -np.inf
    best_mask = np.int64(0)
    near_tie = False
    winner_mask = np.int64(0)
    winner_cost = 0.0
    winner_size = 0
    if n_run > 0:
        base_q = 0.0
        for s in range(n_samples):
            base_q += base[s]
        base_q /= n_samples
        best_tau = base_q - lam * base_cost
        best_mask = base_mask
        if best_tau >= tie_floor:
            winner_mask = base_mask
            winner_cost = base_cost
            winner_size = n_run
    else:
        base_q = -np.inf
    level_q[0] = base_q
    level_cost[0] = base_cost
    level_mask[0] = base_mask
    next_index[0] = min_index
    max_add = max_depth - n_run
    level = 0
    while level >= 0:
        i = next_index[level]
        while i < n_models and run[i]:
            i += 1
        if i >= n_models or level >= max_add:
            level -= 1
            continue
        next_index[level] = i + 1
        q_value = _extend_max(runmax[level], draws, i, runmax[level + 1])
        child_cost = level_cost[level] + cost[i]
        if prune and n_run + level >= 1:
            if q_value - level_q[level] - lam * cost[i] < -prune_tol:
                continue
        tau = q_value - lam * child_cost
        child_mask = level_mask[level] | (np.int64(1) << i)
        child_size = n_run + level + 1
        if tau > best_tau:
            if best_tau >= tau - prune_tol:
                near_tie = True
            best_tau = tau
            best_mask = child_mask
        elif tau >= best_tau - prune_tol:
            near_tie = True
        if tau >= tie_floor:
            if winner_mask == 0 or tie_better(child_cost, child_size, child_mask,
                                              winner_cost, winner_size, winner_mask, expensive):
                winner_mask = child_mask
                winner_cost = child_cost
                winner_size = child_size
        if level + 1 < max_add:
            level += 1
            level_q[level] = q_value
            level_cost[level] = child_cost
            level_mask[level] = child_mask
            next_index[level] = i + 1
    return best_tau, best_mask, near_tie, winner_mask


@njit(**JIT_OPTIONS)
def _next_from_plan(plan_mask, run, cost, lowest_first):
    """The model to run next from plan ``M*``: cheapest of ``M* \\ R``, or lowest index."""
    chosen = STOP
    for i in range(cost.shape[0]):
        if (plan_mask >> i) & 1 and not run[i]:
            if chosen == STOP:
                chosen = i
                if lowest_first:
                    break
            elif cost[i] < cost[chosen]:
                chosen = i
    return chosen


@njit(**JIT_OPTIONS)
def _run_state(run):
    n_run = 0
    mask = np.int64(0)
    highest = -1
    for i in range(run.shape[0]):
        if run[i]:
            n_run += 1
            mask |= np.int64(1) << i
            highest = i
    return n_run, mask, highest


@njit(**JIT_OPTIONS)
def new_scratch(n_samples, n_models, max_depth):
    """Scratch buffers for :func:`plan_query`, allocated once per block of queries."""
    return (
        np.empty((n_samples, n_models)),              # draws
        np.empty((max_depth + 1, n_samples)),         # running maxima per search level
        np.empty(n_models + 1),                       # candidate scores (routing, cascade)
        np.empty(n_models + 1),                       # candidate costs
        np.empty(n_models + 1, dtype=np.int64),       # candidate sizes
        np.empty(n_models + 1, dtype=np.int64),       # candidate masks
        np.empty(max_depth + 1),                      # Q per search level
        np.empty(max_depth + 1),                      # cost per search level
        np.empty(max_depth + 1, dtype=np.int64),      # mask per search level
        np.empty(max_depth + 1, dtype=np.int64),      # next model to try per level
    )


@njit(**JIT_OPTIONS)
def plan_query(quality, sigma, chol, use_cov, cost, run, lambdas, strategy, thresholds,
               max_depth, force_order, expensive, z, prune, scratch):
    """Plan one query: return ``(next_model, plan_mask)``; ``next_model == STOP`` stops.

    ``plan_mask`` is the chosen supermodel ``M*`` (the run set itself when
    stopping). Scratch arrays are supplied by the driver so that nothing is
    allocated per query.
    """
    (scratch_draws, scratch_runmax, taus, costs, sizes, masks,
     level_q, level_cost, level_mask, next_index) = scratch
    n_models = quality.shape[0]
    n_run, run_mask, highest = _run_state(run)
    if strategy == THRESHOLD:
        if n_run == 0:
            return 0, np.int64(1)
        if n_run >= max_depth or n_run >= n_models:
            return STOP, run_mask
        last = n_run - 1
        go_on = quality[last] <= thresholds[last] if expensive else quality[last] < thresholds[last]
        if go_on:
            return n_run, run_mask | (np.int64(1) << n_run)
        return STOP, run_mask
    if n_run >= lambdas.shape[0] or n_run >= max_depth:
        return STOP, run_mask
    if strategy == ROUTING and n_run > 0:
        return STOP, run_mask
    lam = lambdas[n_run]
    fill_draws(quality, sigma, chol, use_cov, z, scratch_draws)
    if strategy == ROUTING:
        n = _list_routing(scratch_draws, cost, lam, taus, costs, sizes, masks)
        plan = masks[_pick(taus, costs, sizes, masks, n, expensive)]
        return _next_from_plan(plan, run, cost, True), plan
    if strategy == CASCADE:
        n = _list_cascade(scratch_draws, cost, n_run, lam, max_depth, scratch_runmax,
                          taus, costs, sizes, masks)
        plan = masks[_pick(taus, costs, sizes, masks, n, expensive)]
        return _next_from_plan(plan, run, cost, True), plan
    # cascade routing
    biggest = 0.0
    for s in range(scratch_draws.shape[0]):
        for i in range(n_models):
            biggest = max(biggest, abs(scratch_draws[s, i]))
    total_cost = 0.0
    for i in range(n_models):
        total_cost += cost[i]
    prune_tol = TIE_RTOL * max(1.0, biggest + lam * total_cost)
    min_index = highest + 1 if force_order else 0
    best_tau, plan, near_tie, _ = _search_supersets(
        scratch_draws, cost, run, lam, max_depth, min_index, prune, prune_tol,
        np.inf, expensive, scratch_runmax, level_q, level_cost, level_mask, next_index)
    if near_tie:
        floor = best_tau - TIE_RTOL * max(1.0, abs(best_tau))
        _, _, _, plan = _search_supersets(
            scratch_draws, cost, run, lam, max_depth, min_index, prune, prune_tol,
            floor, expensive, scratch_runmax, level_q, level_cost, level_mask, next_index)
    return _next_from_plan(plan, run, cost, force_order), plan


@njit(**JIT_OPTIONS)
def select_best_run(quality, run):
    """Index of the run model with the highest quality estimate (lowest index on ties)."""
    best = STOP
    for i in range(quality.shape[0]):
        if run[i] and (best == STOP or quality[i] > quality[best]):
            best = i
    return best
