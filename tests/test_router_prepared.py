"""``Router.prepare``: a cascade featurizes its prompt once, and every step decides exactly as without it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data import read_table
from training.synthetic import make_benchmark


@pytest.fixture(scope="module")
def router(serve_router):
    return serve_router


@pytest.fixture(scope="module")
def table(router):
    return read_table(make_benchmark(60, seed=13)).select_models(list(router.models_))


def _observed(router, table, q, ran):
    return {router.models_[j]: {"response": table.responses[q, j], "cost": float(table.cost[q, j])} for j in ran}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_prepared_queries_give_the_same_estimates_plans_and_selections(router, table, data):
    k = len(router.models_)
    rows = data.draw(st.lists(st.integers(0, table.n_queries - 1), min_size=1, max_size=6), label="rows")
    ran = [data.draw(st.sets(st.integers(0, k - 1), max_size=k), label=f"ran[{i}]") for i in range(len(rows))]
    excluded = [{router.models_[j] for j in data.draw(st.sets(st.integers(0, k - 1), max_size=2))} - set(
        router.models_[j] for j in r) for r in ran]
    budget = data.draw(st.sampled_from(router.budgets), label="budget")
    prompts = [table.prompts[q] for q in rows]
    keywords = {"tasks": [table.tasks[q] for q in rows], "subtasks": [table.subtasks[q] for q in rows]}
    observed = [_observed(router, table, q, r) for q, r in zip(rows, ran, strict=True)]
    prepared = router.prepare(prompts, **keywords)

    plain, _ = router.estimates(prompts, observed, **keywords)
    reused, _ = router.estimates(prompts, observed, prepared=prepared)
    again, _ = router.estimates(prompts, observed, prepared=prepared)  # the responses now from its memo
    for name in ("quality", "sigma", "cost", "latency"):
        np.testing.assert_array_equal(getattr(reused, name), getattr(plain, name), err_msg=name)
        np.testing.assert_array_equal(getattr(again, name), getattr(plain, name), err_msg=name)
    assert (router.plan(prompts, observed, budget, excluded=excluded, prepared=prepared)
            == router.plan(prompts, observed, budget, excluded=excluded, **keywords))
    if all(ran):
        assert router.select(prompts, observed, prepared=prepared) == router.select(prompts, observed, **keywords)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_decide_or_select_is_decide_then_select(router, table, data):
    """One estimate for both (the service's step) gives the next model of :meth:`decide` and, for a query that
    stops with models run, the answer of :meth:`select`; with and without a preparation, paced too."""
    k = len(router.models_)
    rows = data.draw(st.lists(st.integers(0, table.n_queries - 1), min_size=1, max_size=6), label="rows")
    ran = [data.draw(st.sets(st.integers(0, k - 1), max_size=k), label=f"ran[{i}]") for i in range(len(rows))]
    excluded = [{router.models_[j] for j in data.draw(st.sets(st.integers(0, k - 1), max_size=2))} - set(
        router.models_[j] for j in r) for r in ran]
    budget = data.draw(st.sampled_from(router.budgets), label="budget")
    prompts = [table.prompts[q] for q in rows]
    keywords = {"tasks": [table.tasks[q] for q in rows], "subtasks": [table.subtasks[q] for q in rows]}
    observed = [_observed(router, table, q, r) for q, r in zip(rows, ran, strict=True)]
    paced = router.paced(budget)
    for decider, options in ((router, {"budget": budget}), (paced, {})):
        nexts = decider.decide(prompts, observed, excluded=excluded, **options, **keywords)
        expected = [(model, decider.select([p], [o], **{n: [v[i]] for n, v in keywords.items()})[0]
                     if model is None and o else None)
                    for i, (p, o, model) in enumerate(zip(prompts, observed, nexts, strict=True))]
        assert decider.decide_or_select(prompts, observed, excluded=excluded, **options, **keywords) == expected
        prepared = router.prepare(prompts, **keywords)
        assert decider.decide_or_select(prompts, observed, excluded=excluded, prepared=prepared, **options) == expected


def test_a_whole_cascade_on_one_preparation_calls_the_same_models(router, table):
    paced = router.paced(router.budgets[0])
    for q in range(30):
        keywords = {"tasks": [table.tasks[q]], "subtasks": [table.subtasks[q]]}
        prepared = router.prepare([table.prompts[q]], **keywords)
        observed, calls = {}, []
        while (model := paced.decide([table.prompts[q]], [observed], prepared=prepared)[0]) is not None:
            assert model == paced.decide([table.prompts[q]], [observed], **keywords)[0]
            calls.append(model)
            observed.update(_observed(router, table, q, [router.models_.index(model)]))
        assert calls, "a cascade calls at least one model"
        assert (paced.select([table.prompts[q]], [observed], prepared=prepared)
                == paced.select([table.prompts[q]], [observed], **keywords))


def test_a_preparation_of_other_queries_or_another_shape_is_refused(router, table):
    prompts = list(table.prompts[:3])
    keywords = {"tasks": list(table.tasks[:3]), "subtasks": list(table.subtasks[:3])}
    prepared = router.prepare(prompts, **keywords)
    with pytest.raises(ValueError, match="prepared holds 3 queries but there are 2 prompts"):
        router.decide(prompts[:2], prepared=prepared)
    with pytest.raises(TypeError, match="prepared must be the PreparedQueries"):
        router.decide(prompts, prepared=prepared._asdict())
    narrow = prepared._replace(ante_cost=prepared.ante_cost[:, :2])
    with pytest.raises(ValueError, match=r"this estimator makes \(N, F\) and \(N, 4\)"):
        router.decide(prompts, prepared=narrow)
