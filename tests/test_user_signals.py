"""A user's own post-hoc signal (a verifier score) flows from a table column to a served decision.

The documented path: a numeric column named in ``read_table(...,
signal_columns=[...])`` is fitted as a post-hoc feature of the models that
ran, and at serving time ``Router.decide(observed=[{model: {"cost": ...,
"response": ..., <signal>: value}}])`` reads it. Here the cheap model's
verifier score says whether its answer is right; a router fitted with it must
stop after a high score and call the strong model after a low one.
"""

from __future__ import annotations

import functools

import numpy as np

from estimators.estimator import make_router_estimator
from training.data import read_table
from training.policy import Policy
from training.router import Router
from training.synthetic import make_benchmark

SIGNAL = "verifier_score"


@functools.cache
def _router() -> tuple[Router, dict[str, list[str]], list[str], list[str]]:
    """A router fitted on a synthetic table whose cheapest model logs a verifier score; the held-out prompts."""
    frame = make_benchmark(600, seed=5)
    table = read_table(frame)
    cheap, strong = table.models[int(np.argmin(table.cost.mean(axis=0)))], table.models[
        int(np.argmax(table.quality.mean(axis=0)))]
    assert cheap != strong
    frame = frame[frame["model"].isin([cheap, strong])].copy()
    rng = np.random.default_rng(5)
    # the verifier is right 95 % of the time: high (~0.9) on right answers, low (~0.1) on wrong ones
    right = (frame["quality"] > 0.5) ^ (rng.random(len(frame)) < 0.05)
    frame[SIGNAL] = np.clip(np.where(right, 0.9, 0.1) + rng.normal(0, 0.05, len(frame)), 0, 1)
    queries = frame["query_id"].unique()
    train = frame[frame["query_id"].isin(queries[:500])]
    held_out = frame[frame["query_id"].isin(queries[500:]) & (frame["model"] == cheap)]
    table = read_table(train, signal_columns=[SIGNAL])
    estimator = make_router_estimator("learned").fit(table)
    assert estimator.signal_names_ == [SIGNAL]
    # one cascade-routing policy whose λ prices the strong call at 0.3 quality: worth it after a likely-wrong
    # cheap answer (gain ~0.7), not after a likely-right one (gain ~0.05)
    lam = 0.3 / float(train.loc[train["model"] == strong, "cost_usd"].mean())
    policy = Policy(strategy="cascade_routing", lambdas=np.full(2, lam), thresholds=None, gamma=0.0, max_depth=2,
                    force_order=False, n_samples=64, budget=1.0)
    router = Router(estimator, (policy,), tuple(estimator.models_))
    queries = {"prompts": list(held_out["prompt"]), "tasks": list(held_out["task"]),
               "subtasks": list(held_out["subtask"])}
    return router, queries, list(held_out["response"]), [cheap, strong]


def _observed(responses: list[str], cheap: str, score: float) -> list[dict]:
    return [{cheap: {"cost": 1e-4, "response": r, SIGNAL: score}} for r in responses]


def test_verifier_score_moves_the_post_hoc_estimate():
    router, queries, responses, (cheap, _) = _router()
    column = list(router.models_).index(cheap)
    high, _ = router.estimates(observed=_observed(responses, cheap, 0.95), **queries)
    low, _ = router.estimates(observed=_observed(responses, cheap, 0.05), **queries)
    assert (high.quality[:, column] > low.quality[:, column] + 0.3).all()


def test_verifier_score_flows_to_the_served_decision():
    router, queries, responses, (cheap, strong) = _router()
    after_low = router.decide(observed=_observed(responses, cheap, 0.05), **queries)
    after_high = router.decide(observed=_observed(responses, cheap, 0.95), **queries)
    assert after_low.count(strong) > 0.8 * len(responses)  # 85 of 100 with the cluster prior and pair columns
    assert after_high.count(None) > 0.75 * len(responses)  # a few prompts the estimator doubts whatever the score

