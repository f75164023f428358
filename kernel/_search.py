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
    COST_RTOL,
    JIT_OPTIONS,
    ROUTING,
    STOP,
    THRESHOLD,
    TIE_RTOL,
)


@njit(**JIT_OPTIONS)
def fill_draws(quality, sigma, chol, use_cov, z, draws):
    """Write ``draw[s, i] = q_i + s_i z[s, i]`` (or ``q + L z[s]``) into ``draws``.

    Every supermodel of the query is scored on these draws (common random
    numbers), so they are computed once per decision.

    Parameters
    ----------
    quality, sigma : ndarray of float64, shape (K,)
        The query's quality estimates and their standard deviations.
    chol : ndarray of float64, shape (K, K)
        Cholesky factor of the error covariance; read only if ``use_cov``.
    use_cov : bool
        Correlated draws from ``chol`` instead of independent ones.
    z : ndarray of float64, shape (S, K)
        The shared normal draws.
    draws : ndarray of float64, shape (S, K)
        Output, overwritten.
    """
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
    """Whether tied candidate ``a`` beats tied candidate ``b`` (see module docstring).

    The one tie-break rule shared by routing, cascades and cascade routing,
    so that all strategies resolve ties, and therefore meet budgets, alike.

    Parameters
    ----------
    cost_a, cost_b : float
        Costs of the two supermodels; equal within ``COST_RTOL``.
    size_a, size_b : int
        Their numbers of models.
    mask_a, mask_b : int64
        Their bit masks.
    expensive : bool
        Prefer the most expensive candidate (the query's ``u < γ``) instead
        of the cheapest.

    Returns
    -------
    bool
    """
    tol = COST_RTOL * max(1.0, abs(cost_a), abs(cost_b))
    if cost_a > cost_b + tol:
        return expensive
    if cost_a < cost_b - tol:
        return not expensive
    if size_a != size_b:
        return (size_a > size_b) == expensive
    return mask_a < mask_b


@njit(**JIT_OPTIONS)
def _extend_max(runmax_in, draws, i, runmax_out):
    """``runmax_out = max(runmax_in, draws[:, i])``; returns its mean, ``Q``.

    This is the search's inner loop. Four interleaved partial sums break the
    dependency chain of one running sum (about 4x faster with ``fastmath``
    off); the order is fixed, so results stay deterministic.
    """
    n_samples = draws.shape[0]
    sum0 = sum1 = sum2 = sum3 = 0.0
    head = n_samples - n_samples % 4
    for s in range(0, head, 4):
        a0, b0 = runmax_in[s], draws[s, i]
        a1, b1 = runmax_in[s + 1], draws[s + 1, i]
        a2, b2 = runmax_in[s + 2], draws[s + 2, i]
        a3, b3 = runmax_in[s + 3], draws[s + 3, i]
        v0 = a0 if a0 > b0 else b0
        v1 = a1 if a1 > b1 else b1
        v2 = a2 if a2 > b2 else b2
        v3 = a3 if a3 > b3 else b3
        runmax_out[s] = v0
        runmax_out[s + 1] = v1
        runmax_out[s + 2] = v2
        runmax_out[s + 3] = v3
        sum0 += v0
        sum1 += v1
        sum2 += v2
        sum3 += v3
    for s in range(head, n_samples):
        a, b = runmax_in[s], draws[s, i]
        value = a if a > b else b
        runmax_out[s] = value
        sum0 += value
    return ((sum0 + sum1) + (sum2 + sum3)) / n_samples


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
def _route(quality, cost, lam, expensive):
    """Routing: the model of the winning singleton ``{m_i}``, scored ``q_i - λ c_i``.

    ``Q({i})`` is the mean of model ``i``'s draws, which is ``q_i`` because
    the columns of ``Z`` are centred (:func:`kernel.normal_samples`), so
    routing needs no draws; two passes over the models (best score, then the
    tie-break among those within tolerance) and no scratch.
    """
    best = 0
    best_tau = quality[0] - lam * cost[0]
    for i in range(1, quality.shape[0]):
        tau = quality[i] - lam * cost[i]
        if tau > best_tau:
            best, best_tau = i, tau
    floor = best_tau - TIE_RTOL * max(1.0, abs(best_tau))
    winner = best
    for i in range(quality.shape[0]):
        if i != winner and quality[i] - lam * cost[i] >= floor:
            if tie_better(cost[i], 1, np.int64(1) << i, cost[winner], 1, np.int64(1) << winner, expensive):
                winner = i
    return winner


@njit(**JIT_OPTIONS)
def _list_cascade(draws, cost, n_run, lam, max_depth, current, taus, costs, sizes, masks):
    """Prefixes ``{m_0..m_l}`` with ``l >= t - 1`` (the run set is the prefix of length t)."""
    n_samples, n_models = draws.shape
    for s in range(n_samples):
        current[s] = -np.inf
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
def _consider(tau, cost, size, mask, near_tol, tie_floor, expensive, best, winner):
    """Score one candidate into the running best and tie-break winner.

    ``best = [tau, near_tie]`` and ``winner = [mask, size]`` with cost kept in
    ``best[2]``; arrays so the search can update them in place.
    """
    if tau > best[0]:
        if best[0] >= tau - near_tol:
            best[1] = 1.0
        best[0] = tau
        winner[2] = mask
    elif tau >= best[0] - near_tol:
        best[1] = 1.0
    if tau >= tie_floor:
        if winner[0] == 0 or tie_better(cost, size, mask, best[2], winner[1], winner[0], expensive):
            winner[0] = mask
            winner[1] = size
            best[2] = cost


@njit(**JIT_OPTIONS)
def _top_gain_sum(gains, order, first, last, count):
    """Sum of the ``count`` largest positive gains among ``order[first:last]``.

    ``order`` lists alive children by gain, largest first, so these are
    simply the next ``count`` positive ones.
    """
    total = 0.0
    for p in range(first, min(last, first + count)):
        gain = gains[order[p]]
        if gain <= 0.0:
            break
        total += gain
    return total


@njit(**JIT_OPTIONS)
def _expand(level, parent_max, draws, cost, lam, prune, prune_tol, tie_floor, expensive,
            n_run, cand, n_cand, node_q, node_cost, node_mask, child_q, child_gain, child_max,
            order, n_alive, best, winner):
    """Score every child of the node at ``level``, drop those with a negative gain,
    and list the rest in ``order`` by marginal gain, largest first.

    Visiting promising children first finds a good incumbent early, and makes
    the later siblings' gains, which bound a subtree, the smallest ones. (Under
    an empty run set every singleton's "gain" is infinite; they are ordered by
    score instead and no bound is taken from them.)
    """
    size = n_run + level + 1
    alive = 0
    for k in range(n_cand[level]):
        j = cand[level, k]
        q_value = _extend_max(parent_max, draws, j, child_max[level, k])
        gain = q_value - node_q[level] - lam * cost[j]
        if prune and size >= 2 and gain < -prune_tol:
            continue
        child_cost = node_cost[level] + cost[j]
        tau = q_value - lam * child_cost
        child_q[level, k] = q_value
        child_gain[level, k] = gain if size >= 2 else tau
        _consider(tau, child_cost, size, node_mask[level] | (np.int64(1) << j),
                  prune_tol, tie_floor, expensive, best, winner)
        # insertion into the gain order (stable: equal gains keep index order)
        p = alive
        while p > 0 and child_gain[level, order[level, p - 1]] < child_gain[level, k]:
            order[level, p] = order[level, p - 1]
            p -= 1
        order[level, p] = k
        alive += 1
    n_alive[level] = alive


@njit(**JIT_OPTIONS)
def _search_supersets(draws, cost, run, lam, max_depth, min_index, prune, prune_tol, tie_floor,
                      expensive, base, cand, n_cand, pos, node_q, node_cost, node_mask,
                      child_q, child_gain, child_max, order, n_alive, best, winner):
    """Branch-and-bound over supersets of the run set (cascade routing).

    Nodes are expanded level by level: all children of a node are scored
    first, then the search descends into them by marginal gain, largest
    first (each set is still reached once: a child is offered only the
    siblings after it in that order). Two exact
    cuts, both from the submodularity of ``Q`` (ALGORITHM.md §5):

    * a child whose marginal gain is below ``-prune_tol`` is dropped with its
      subtree, and its model is not offered deeper in the sibling subtrees
      either (its gain there can only be smaller);
    * a child's subtree is skipped when ``τ(child)`` plus the largest
      positive sibling gains it could still add cannot reach the best score
      so far minus ``prune_tol``.

    ``prune_tol`` bounds the tie tolerance from above, so nothing within the
    tie tolerance of the optimum is ever cut. Results land in ``best``
    (``[τ*, near_tie, ...]``) and ``winner`` (``[tie-break mask, size, argmax mask]``).
    """
    n_samples, n_models = draws.shape
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
    best[0] = -np.inf
    best[1] = 0.0
    winner[0] = 0
    base_q = -np.inf
    if n_run > 0:
        base_q = 0.0
        for s in range(n_samples):
            base_q += base[s]
        base_q /= n_samples
        _consider(base_q - lam * base_cost, base_cost, n_run, base_mask, prune_tol, tie_floor,
                  expensive, best, winner)
    max_add = max_depth - n_run
    if max_add <= 0:
        return
    n_cand[0] = 0
    for i in range(min_index, n_models):
        if not run[i]:
            cand[0, n_cand[0]] = i
            n_cand[0] += 1
    node_q[0] = base_q
    node_cost[0] = base_cost
    node_mask[0] = base_mask
    _expand(0, base, draws, cost, lam, prune, prune_tol, tie_floor, expensive, n_run, cand,
            n_cand, node_q, node_cost, node_mask, child_q, child_gain, child_max, order, n_alive,
            best, winner)
    pos[0] = 0
    level = 0
    while level >= 0:
        p = pos[level]
        if p >= n_alive[level] or level + 1 >= max_add:
            level -= 1
            continue
        pos[level] = p + 1
        k = order[level, p]
        n_next = n_alive[level] - p - 1
        if n_next == 0:
            continue
        j = cand[level, k]
        child_cost = node_cost[level] + cost[j]
        if prune and n_run + level >= 1:
            bound = (child_q[level, k] - lam * child_cost
                     + _top_gain_sum(child_gain[level], order[level], p + 1, n_alive[level],
                                     max_add - level - 1))
            if bound < best[0] - prune_tol:
                continue
        for later in range(n_next):
            cand[level + 1, later] = cand[level, order[level, p + 1 + later]]
        n_cand[level + 1] = n_next
        node_q[level + 1] = child_q[level, k]
        node_cost[level + 1] = child_cost
        node_mask[level + 1] = node_mask[level] | (np.int64(1) << j)
        _expand(level + 1, child_max[level, k], draws, cost, lam, prune, prune_tol, tie_floor,
                expensive, n_run, cand, n_cand, node_q, node_cost, node_mask, child_q, child_gain,
                child_max, order, n_alive, best, winner)
        pos[level + 1] = 0
        level += 1


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
    """Scratch buffers for :func:`plan_query`, allocated once per block of queries.

    Parameters
    ----------
    n_samples : int
        Number of shared draws ``S``.
    n_models : int
        ``K``.
    max_depth : int
        Most models run per query.

    Returns
    -------
    tuple of ndarray
        The buffers, in the order :func:`plan_query` unpacks them.
    """
    return (
        np.empty((n_samples, n_models)),                          # draws
        np.empty(n_models + 1),                                   # candidate scores (cascade)
        np.empty(n_models + 1),                                   # candidate costs
        np.empty(n_models + 1, dtype=np.int64),                   # candidate sizes
        np.empty(n_models + 1, dtype=np.int64),                   # candidate masks
        np.empty(n_samples),                                      # run set's per-draw maximum
        np.empty((max_depth + 1, n_models), dtype=np.int64),      # models offered per level
        np.empty(max_depth + 1, dtype=np.int64),                  # how many offered per level
        np.empty(max_depth + 1, dtype=np.int64),                  # next child to descend into
        np.empty(max_depth + 1),                                  # Q per level's node
        np.empty(max_depth + 1),                                  # cost per level's node
        np.empty(max_depth + 1, dtype=np.int64),                  # mask per level's node
        np.empty((max_depth, n_models)),                          # children's Q
        np.empty((max_depth, n_models)),                          # children's marginal gains
        np.empty((max_depth, n_models, n_samples)),               # children's per-draw maxima
        np.empty((max_depth, n_models), dtype=np.int64),          # alive children, best gain first
        np.empty(max_depth + 1, dtype=np.int64),                  # alive children per level
        np.empty(3),                                              # best τ, near-tie flag, winner cost
        np.empty(3, dtype=np.int64),                              # winner mask, winner size, argmax mask
    )


@njit(**JIT_OPTIONS)
def plan_without_draws(quality, cost, run, lambdas, strategy, thresholds, max_depth, expensive):
    """The decisions that need no draws: the threshold cascade, routing, and stopping at the depth or ``λ`` limit.

    Split from :func:`plan_query` so that the single-query path can skip
    allocating the scratch space when the decision needs none.

    Parameters
    ----------
    quality, cost, run, lambdas, strategy, thresholds, max_depth, expensive
        As in :func:`plan_query`.

    Returns
    -------
    decided : bool
        Whether the decision is made (else the draws are needed).
    next_model : int
        Model to run next, or ``STOP``; meaningful only when ``decided``.
    plan_mask : int64
        Bit mask of ``M*``; the run set when not ``decided``.
    n_run, highest : int
        Models run, and the highest index among them (-1 for none).
    """
    n_models = quality.shape[0]
    n_run, run_mask, highest = _run_state(run)
    if strategy == THRESHOLD:
        if n_run == 0:
            return True, 0, np.int64(1), n_run, highest
        if n_run >= max_depth or n_run >= n_models:
            return True, STOP, run_mask, n_run, highest
        last = n_run - 1
        go_on = quality[last] <= thresholds[last] if expensive else quality[last] < thresholds[last]
        if go_on:
            return True, n_run, run_mask | (np.int64(1) << n_run), n_run, highest
        return True, STOP, run_mask, n_run, highest
    if n_run >= lambdas.shape[0] or n_run >= max_depth:
        return True, STOP, run_mask, n_run, highest
    if strategy == ROUTING and n_run > 0:
        return True, STOP, run_mask, n_run, highest
    if strategy == ROUTING:
        chosen = _route(quality, cost, lambdas[n_run], expensive)
        return True, chosen, np.int64(1) << chosen, n_run, highest
    return False, STOP, run_mask, n_run, highest


@njit(**JIT_OPTIONS)
def plan_query(quality, sigma, chol, use_cov, cost, run, lambdas, strategy, thresholds,
               max_depth, force_order, expensive, z, prune, scratch):
    """Plan one query: return ``(next_model, plan_mask)``; ``next_model == STOP`` stops.

    ``plan_mask`` is the chosen supermodel ``M*`` (the run set itself when
    stopping). Scratch arrays are supplied by the driver so that nothing is
    allocated per query.

    Parameters
    ----------
    quality, sigma, cost : ndarray of float64, shape (K,)
        The query's current estimates.
    chol : ndarray of float64, shape (K, K)
        Cholesky factor of the error covariance; read only if ``use_cov``.
    use_cov : bool
        Whether to draw from ``chol`` instead of ``sigma``.
    run : ndarray of bool, shape (K,)
        Models already run.
    lambdas : ndarray of float64, shape (T,)
        Cost multiplier per step.
    strategy : int
        Strategy code from :data:`kernel.config.STRATEGIES`.
    thresholds : ndarray of float64, shape (K - 1,)
        ``θ_j`` of the threshold cascade (empty otherwise).
    max_depth : int
        Most models run per query.
    force_order : bool
        Only add models above every run model's index.
    expensive : bool
        Break ties towards the most expensive candidate (``u < γ``).
    z : ndarray of float64, shape (S, K)
        The shared normal draws.
    prune : bool
        Use the exact submodular cuts.
    scratch : tuple of ndarray
        From :func:`new_scratch`.

    Returns
    -------
    next_model : int
        Model to run next, or ``STOP``.
    plan_mask : int64
        Bit mask of ``M*``.
    """
    (draws, taus, costs, sizes, masks, base, cand, n_cand, pos, node_q, node_cost, node_mask,
     child_q, child_gain, child_max, order, n_alive, best, winner) = scratch
    n_models = quality.shape[0]
    decided, chosen, plan, n_run, highest = plan_without_draws(quality, cost, run, lambdas, strategy, thresholds,
                                                               max_depth, expensive)
    if decided:
        return chosen, plan
    lam = lambdas[n_run]
    fill_draws(quality, sigma, chol, use_cov, z, draws)
    if strategy == CASCADE:
        n = _list_cascade(draws, cost, n_run, lam, max_depth, base, taus, costs, sizes, masks)
        plan = masks[_pick(taus, costs, sizes, masks, n, expensive)]
        return _next_from_plan(plan, run, cost, True), plan
    # cascade routing: a first pass finds τ*; a second, only when some other
    # candidate came close, applies the tie-break among those within tolerance.
    biggest = 0.0
    for s in range(draws.shape[0]):
        for i in range(n_models):
            biggest = max(biggest, abs(draws[s, i]))
    total_cost = 0.0
    for i in range(n_models):
        total_cost += cost[i]
    prune_tol = TIE_RTOL * max(1.0, biggest + lam * total_cost)
    min_index = highest + 1 if force_order else 0
    tie_floor = np.inf
    for _ in range(2):
        _search_supersets(draws, cost, run, lam, max_depth, min_index, prune, prune_tol, tie_floor,
                          expensive, base, cand, n_cand, pos, node_q, node_cost, node_mask,
                          child_q, child_gain, child_max, order, n_alive, best, winner)
        if best[1] == 0.0 or tie_floor != np.inf:
            break
        tie_floor = best[0] - TIE_RTOL * max(1.0, abs(best[0]))
    plan = winner[0] if tie_floor != np.inf else winner[2]
    return _next_from_plan(plan, run, cost, force_order), plan


@njit(**JIT_OPTIONS)
def select_best_run(quality, run):
    """Index of the run model with the highest quality estimate (lowest index on ties).

    The answer a finished episode returns, as :func:`kernel.select_answer`
    picks it outside the kernel.

    Parameters
    ----------
    quality : ndarray of float64, shape (K,)
        Current (post-hoc for run models) quality estimates.
    run : ndarray of bool, shape (K,)
        Models run.

    Returns
    -------
    int
        The model index, or ``STOP`` when none has run.
    """
    best = STOP
    for i in range(quality.shape[0]):
        if run[i] and (best == STOP or quality[i] > quality[best]):
            best = i
    return best
