"""Slow, obviously-correct twins of the kernels, written from ALGORITHM.md.

Plain Python over every candidate supermodel: no pruning, no incremental
maxima, no scratch buffers. Tests compare the compiled kernels with these.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

STOP = -1
TIE_RTOL = 1e-9
COST_RTOL = 1e-12


def draws(quality, sigma=None, cov=None, z=None):
    """Draw matrix ``(S, K)``: ``q + s·Z`` or ``q + L·Z`` with ``L = chol(Σ + 1e-12 I)``."""
    if cov is not None:
        chol = np.linalg.cholesky(cov + 1e-12 * np.eye(len(quality)))
        return quality[None, :] + z @ chol.T
    sigma = np.zeros_like(quality) if sigma is None else sigma
    return quality[None, :] + sigma[None, :] * z


def q_of(draw_matrix, members):
    """``Q(M)``: mean over draws of the maximum over the members."""
    total = 0.0
    for row in draw_matrix:
        total += max(row[i] for i in members)
    return total / draw_matrix.shape[0]


def candidates(strategy, n_models, run_set, max_depth, force_order):
    """Every candidate supermodel of ALGORITHM.md §3, as sorted tuples."""
    t = len(run_set)
    if strategy == "routing":
        return [(i,) for i in range(n_models)] if t == 0 else []
    if strategy == "cascade":
        return [tuple(range(depth + 1)) for depth in range(max(t - 1, 0), min(n_models, max_depth))]
    floor = max(run_set) + 1 if (force_order and run_set) else 0
    extra = [i for i in range(n_models) if i not in run_set and i >= floor]
    found = []
    for size in range(0, max_depth - t + 1):
        for added in combinations(extra, size):
            members = tuple(sorted(set(run_set) | set(added)))
            if len(members) >= 1:
                found.append(members)
    return found


def winner(scored, expensive):
    """Tie-break among candidates ``(tau, cost, members)`` as ALGORITHM.md §3 says."""
    best = max(tau for tau, _, _ in scored)
    tied = [(cost, members) for tau, cost, members in scored
            if tau >= best - TIE_RTOL * max(1.0, abs(best))]
    extreme = max(c for c, _ in tied) if expensive else min(c for c, _ in tied)
    tied = [(c, m) for c, m in tied if abs(c - extreme) <= COST_RTOL * max(1.0, abs(c), abs(extreme))]
    size = max(len(m) for _, m in tied) if expensive else min(len(m) for _, m in tied)
    tied = [m for _, m in tied if len(m) == size]
    return min(tied, key=lambda m: sum(1 << i for i in m))


def decide_one(quality, cost, *, sigma=None, cov=None, run=None, lambdas, strategy,
               thresholds=None, max_depth=None, force_order=False, gamma=0.0, u=1.0, z=None):
    """Next model for one query (``-1`` = stop), straight from the contract."""
    n_models = len(quality)
    run = np.zeros(n_models, bool) if run is None else np.asarray(run, bool)
    run_set = tuple(int(i) for i in np.flatnonzero(run))
    t = len(run_set)
    max_depth = n_models if max_depth is None else min(max_depth, n_models)
    expensive = u < gamma
    if strategy == "threshold":
        if t == 0:
            return 0
        if t >= max_depth or t >= n_models:
            return STOP
        last = t - 1
        go_on = quality[last] <= thresholds[last] if expensive else quality[last] < thresholds[last]
        return t if go_on else STOP
    lambdas = np.asarray(lambdas, float)
    if lambdas.ndim == 0:  # a scalar applies to every step
        lambdas = np.full(n_models, float(lambdas))
    if t >= len(lambdas) or t >= max_depth:
        return STOP
    found = candidates(strategy, n_models, run_set, max_depth, force_order)
    if not found:
        return STOP
    lam = lambdas[t]
    draw_matrix = draws(np.asarray(quality, float), sigma, cov, z)
    scored = []
    for members in found:
        members_cost = sum(cost[i] for i in members)
        scored.append((q_of(draw_matrix, members) - lam * members_cost, members_cost, members))
    best = winner(scored, expensive)
    remaining = [i for i in best if i not in run_set]
    if not remaining:
        return STOP
    if strategy == "cascade" or force_order:
        return min(remaining)
    return min(remaining, key=lambda i: (cost[i], i))


def select_one(quality, run):
    best = STOP
    for i in range(len(quality)):
        if run[i] and (best == STOP or quality[i] > quality[best]):
            best = i
    return best


def simulate_one(ante, post, truth, *, policy, z):
    """One episode: ``ante``/``post`` are (quality, sigma, cost) rows, ``truth`` (quality, cost)."""
    quality, sigma, cost = (np.array(a, float) for a in ante)
    run = np.zeros(len(quality), bool)
    order = []
    while True:
        chosen = decide_one(quality, cost, sigma=sigma, run=run, z=z, **policy)
        if chosen == STOP:
            break
        order.append(chosen)
        run[chosen] = True
        quality[chosen], sigma[chosen], cost[chosen] = (p[chosen] for p in post)
    answer = select_one(quality, run)
    return order, sum(truth[1][i] for i in order), truth[0][answer], answer
