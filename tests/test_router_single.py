"""One prompt per call (the service's case, on :class:`kernel.Decider`) decides as the batch of all prompts.

``training.decision.DecisionRule.plan`` sends a one-query call to the single-query
path; these tests check that the router's decisions do not depend on it:
every prompt of a random batch planned alone gets the batch's plan, for
every strategy, with latency-weighing policies and excluded models.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernel
from estimators.estimator import Estimates
from training.data import read_table
from training.decision import DecisionRule
from training.policy import Policy
from training.synthetic import make_benchmark

STRATEGIES = ("routing", "threshold", "cascade", "cascade_routing")


@pytest.fixture(scope="module")
def router(serve_router):
    return serve_router


@pytest.fixture(scope="module")
def table(router):
    return read_table(make_benchmark(60, seed=13)).select_models(list(router.models_))


@st.composite
def policies(draw, k):
    strategy = draw(st.sampled_from(STRATEGIES))
    lam = draw(st.sampled_from([0.0, 5.0, 50.0, 300.0, 3000.0]))
    return Policy(strategy=strategy, lambdas=np.full(k, lam), thresholds=np.array(
        draw(st.lists(st.sampled_from([0.2, 0.5, 0.8]), min_size=k - 1, max_size=k - 1))),
        gamma=draw(st.sampled_from([0.0, 0.5, 1.0])), max_depth=draw(st.integers(1, k)),
        force_order=draw(st.booleans()), n_samples=64, budget=1.0)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_each_prompt_alone_is_planned_as_in_the_batch(router, table, data):
    k = len(router.models_)
    policy = data.draw(policies(k), label="policy")
    rows = data.draw(st.lists(st.integers(0, table.n_queries - 1), min_size=2, max_size=6), label="rows")
    if policy.strategy in ("cascade", "threshold"):
        ran = [set(range(data.draw(st.integers(0, k)))) for _ in rows]
        excluded = [set() for _ in rows]
    else:
        ran = [data.draw(st.sets(st.integers(0, k - 1), max_size=k), label="ran") for _ in rows]
        excluded = [{router.models_[j] for j in data.draw(st.sets(st.integers(0, k - 1), max_size=2))}
                    - {router.models_[j] for j in r} for r in ran]
    prompts = [table.prompts[q] for q in rows]
    tasks, subtasks = [table.tasks[q] for q in rows], [table.subtasks[q] for q in rows]
    observed = [{router.models_[j]: {"response": table.responses[q, j], "cost": float(table.cost[q, j])}
                 for j in r} for q, r in zip(rows, ran, strict=True)]
    batch = router.plan(prompts, observed, policy=policy, excluded=excluded, tasks=tasks, subtasks=subtasks)
    alone = [router.plan([p], [o], policy=policy, excluded=[e], tasks=[t], subtasks=[s])[0]
             for p, o, e, t, s in zip(prompts, observed, excluded, tasks, subtasks, strict=True)]
    assert alone == batch
    paced = replace(policy, lambdas=policy.lambdas * 1.7)  # a paced λ: a new Decider, same rule
    assert [router.decide([p], [o], policy=paced, excluded=[e], tasks=[t], subtasks=[s])[0]
            for p, o, e, t, s in zip(prompts, observed, excluded, tasks, subtasks, strict=True)] == \
        router.decide(prompts, observed, policy=paced, excluded=excluded, tasks=tasks, subtasks=subtasks)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_rule_plan_on_one_row_equals_the_batch_row_with_a_latency_penalty(data):
    """A latency-weighing policy's kernel cost is ``λ·c + μ·ℓ``; one row gets the batch row's plan."""
    k = data.draw(st.integers(1, 11), label="k")
    n = data.draw(st.integers(1, 5), label="n")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    grid = np.array([0.0, 0.25, 0.5, 0.75, 1.0])  # coarse: ties are common
    quality, cost, latency = grid[rng.integers(0, 5, (n, k))], grid[rng.integers(0, 5, (n, k))], rng.random((n, k))
    sigma = grid[rng.integers(0, 3, (n, k))] if data.draw(st.booleans()) else None
    run = rng.random((n, k)) < 0.3
    u = kernel.default_uniforms(n)
    rule = DecisionRule(data.draw(st.sampled_from(("routing", "cascade_routing"))), np.full(k, 2.0), None, 0.5, k,
                        False, 64, mu=0.5 if data.draw(st.booleans()) else 0.0)
    expected = rule.plan(Estimates(quality, sigma, cost, None, latency), run, u, parallel=False)
    for row in range(n):
        one = slice(row, row + 1)
        alone = rule.plan(Estimates(quality[one], None if sigma is None else sigma[one], cost[one], None,
                                    latency[one]), run[one], u[one], parallel=False)
        assert (alone[0][0], alone[1][0]) == (expected[0][row], expected[1][row])


def test_a_rule_keeps_the_decider_of_its_options_while_it_lives():
    """The single-query path finds a rule's decider by the rule's identity: the one its options key, never another's."""
    import gc

    from training.decision import _RULE_DECIDERS, _decider, _rule_decider
    rule = DecisionRule("routing", np.full(3, 2.0), None, 0.5, 3, False, 64)
    decider = _rule_decider(rule, 3)
    assert decider is _decider(3, rule.kernel_options()) and _rule_decider(rule, 3) is decider
    other = replace(rule, lambdas=np.full(3, 7.0))  # equal fields but λ: its own decider
    assert _rule_decider(other, 3) is _decider(3, other.kernel_options()) is not decider
    assert _rule_decider(rule, 4) is _decider(4, rule.kernel_options())  # another model count
    key = id(rule)
    del rule
    gc.collect()
    assert key not in _RULE_DECIDERS  # a later rule at the same address cannot find it
