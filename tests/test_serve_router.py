"""Excluded models (a failed upstream): the decision is the policy's over the models that remain."""

from __future__ import annotations

import numpy as np
import pytest

from estimators.estimator import Estimates
from training.data import read_table
from training.policy import Policy, single_model_policy
from training.router import Router
from training.synthetic import make_benchmark


@pytest.fixture(scope="module")
def router(serve_router):
    return serve_router


@pytest.fixture(scope="module")
def table(router):
    return read_table(make_benchmark(80, seed=11)).select_models(list(router.models_))


class _WithoutModel:
    """The same fitted estimator with one model removed: what a router that never had that model would see."""

    def __init__(self, inner, drop: str) -> None:
        self.inner = inner
        self.keep = [i for i, name in enumerate(inner.models_) if name != drop]
        self.models_ = tuple(inner.models_[i] for i in self.keep)
        self.columns_, self.signal_names_ = inner.columns_, inner.signal_names_
        self.uses_responses_ = inner.uses_responses_

    def _widen(self, value, fill):
        if value is None:
            return None
        value = np.asarray(value)
        full = np.full((value.shape[0], len(self.inner.models_)), fill, dtype=value.dtype)
        full[:, self.keep] = value
        return full

    def prepare(self, prompts, tasks=None, subtasks=None, **options):
        return self.inner.prepare(prompts, tasks, subtasks, **options)  # opaque to the router: passed back as is

    def known_categories(self):
        return self.inner.known_categories()

    def unseen_categories(self, tasks=None, subtasks=None):
        return self.inner.unseen_categories(tasks, subtasks)

    def predict(self, prompts, *, tasks=None, subtasks=None, run=None, responses=None, signals=None,
                observed_cost=None, input_tokens=None, observed_latency=None, prepared=None):
        found = self.inner.predict(prompts, tasks=tasks, subtasks=subtasks, run=self._widen(run, False),
                                   responses=self._widen(responses, ""), signals=signals,
                                   observed_cost=self._widen(observed_cost, 0.0),
                                   observed_latency=self._widen(observed_latency, np.nan), prepared=prepared)
        keep = self.keep
        cov = None if found.cov is None else found.cov[:, keep][:, :, keep]
        latency = None if found.latency is None else found.latency[:, keep]
        return Estimates(found.quality[:, keep], found.sigma[:, keep], found.cost[:, keep], cov, latency)


def _cases(router, table, n=40, seed=0):
    """(prompt, task, subtask, observed, excluded): random run sets and one or two excluded models not run."""
    rng = np.random.default_rng(seed)
    k = len(router.models_)
    cases = []
    for q in range(n):
        order = rng.permutation(k)
        ran, banned = order[: rng.integers(0, 3)], order[3: 3 + rng.integers(1, 3)]
        observed = {router.models_[j]: {"response": table.responses[q, j], "cost": float(table.cost[q, j])}
                    for j in ran}
        cases.append((table.prompts[q], table.tasks[q], table.subtasks[q], observed,
                      {router.models_[j] for j in banned}))
    return cases


def _plan(router, case, **options):
    prompt, task, subtask, observed, excluded = case
    return router.plan([prompt], [observed], tasks=[task], subtasks=[subtask], **options)[0]


def test_nothing_excluded_decides_exactly_as_before(router, table):
    for case in _cases(router, table):
        plain = _plan(router, case)
        assert _plan(router, case, excluded=[set()]) == plain
        assert _plan(router, case, excluded=None) == plain


@pytest.mark.parametrize("budget", [0.0005, 0.001])
def test_one_excluded_model_decides_as_a_router_that_never_had_it(router, table, budget):
    compared = 0
    for prompt, task, subtask, observed, excluded in _cases(router, table, n=60, seed=1):
        drop = sorted(excluded)[0]
        without = Router(_WithoutModel(router.estimator, drop), router.policies,
                         tuple(m for m in router.models_ if m != drop))
        case = (prompt, task, subtask, observed, {drop})
        got = _plan(router, case, budget=budget, excluded=[{drop}])
        assert got == _plan(without, case, budget=budget)
        assert got.next != drop and drop not in got.models
        compared += got.next is not None
    assert compared >= 20, "most cases should go on calling a model"


def test_a_batch_decides_each_query_with_its_own_exclusions(router, table):
    cases = _cases(router, table, n=30, seed=2)
    cases[0] = cases[0][:4] + (set(),)  # one query without exclusions in the batch
    prompts, tasks, subtasks, observed, excluded = (list(column) for column in zip(*cases, strict=True))
    batch = router.plan(prompts, observed, tasks=tasks, subtasks=subtasks, excluded=excluded)
    assert batch == [_plan(router, case, excluded=[case[4]]) for case in cases]
    assert any(case[4] and plan.next is not None for case, plan in zip(cases, batch, strict=True))


def test_a_cascade_with_failing_models_never_calls_them_again_and_answers_with_a_working_one(router, table):
    for q in range(40):
        failing = {router.models_[q % len(router.models_)], router.models_[(q * 3 + 1) % len(router.models_)]}
        observed, excluded, called = {}, set(), []
        kw = {"tasks": [table.tasks[q]], "subtasks": [table.subtasks[q]]}
        while (model := router.decide([table.prompts[q]], [observed], excluded=[excluded], **kw)[0]) is not None:
            assert model not in called
            called.append(model)
            if model in failing:
                excluded.add(model)
            else:
                j = router.models_.index(model)
                observed[model] = {"response": table.responses[q, j], "cost": float(table.cost[q, j])}
        assert observed, "a kernel policy keeps calling while models remain and none has answered"
        assert router.select([table.prompts[q]], [observed], **kw)[0] in set(observed) - failing


def test_routing_falls_back_to_another_model_when_its_choice_fails(router, table):
    routing = Policy(strategy="routing", lambdas=np.array([100.0]), thresholds=None, gamma=0.0, max_depth=1,
                     force_order=False, n_samples=64, budget=0.001)
    prompt, task, subtask = table.prompts[0], [table.tasks[0]], [table.subtasks[0]]
    excluded: set[str] = set()
    for _ in router.models_:
        chosen = router.decide([prompt], policy=routing, tasks=task, subtasks=subtask, excluded=[excluded])[0]
        assert chosen is not None and chosen not in excluded
        excluded.add(chosen)
    assert router.decide([prompt], policy=routing, tasks=task, subtasks=subtask, excluded=[excluded]) == [None]


def test_threshold_cascade_skips_an_excluded_model(router, table):
    threshold = Policy(strategy="threshold", lambdas=np.zeros(1), thresholds=np.full(len(router.models_) - 1, 2.0),
                       gamma=0.0, max_depth=len(router.models_), force_order=False, n_samples=64, budget=0.001)
    prompt, kw = table.prompts[0], {"tasks": [table.tasks[0]], "subtasks": [table.subtasks[0]]}
    first, second = router.models_[:2]
    assert router.decide([prompt], policy=threshold, **kw) == [first]  # θ = 2: always continue
    assert router.decide([prompt], policy=threshold, excluded=[{first}], **kw) == [second]
    observed = {second: {"cost": 1e-4, "response": "A"}}
    assert router.decide([prompt], [observed], policy=threshold, excluded=[{first}], **kw) == [router.models_[2]]


def test_a_single_model_policy_stops_when_its_model_is_excluded(router, table):
    single = single_model_policy(2, budget=0.001)
    prompt, kw = table.prompts[0], {"tasks": [table.tasks[0]], "subtasks": [table.subtasks[0]]}
    model = router.models_[2]
    assert router.decide([prompt], policy=single, excluded=[{router.models_[0]}], **kw) == [model]
    assert router.plan([prompt], policy=single, excluded=[{model}], **kw)[0].next is None


def test_every_model_run_or_excluded_stops(router, table):
    prompt, kw = table.prompts[0], {"tasks": [table.tasks[0]], "subtasks": [table.subtasks[0]]}
    first, *rest = router.models_
    plan = router.plan([prompt], [{first: {"cost": 1e-4, "response": "A"}}], excluded=[set(rest)], **kw)[0]
    assert plan.next is None and plan.models == (first,)
    assert router.decide([prompt], excluded=[set(router.models_)], **kw) == [None]


def test_paced_router_passes_exclusions_on(router, table):
    paced = router.paced(0.001)
    prompt, kw = table.prompts[0], {"tasks": [table.tasks[0]], "subtasks": [table.subtasks[0]]}
    first = paced.decide([prompt], **kw)[0]
    assert first is not None
    assert paced.decide([prompt], excluded=[{first}], **kw)[0] not in (first, None)


@pytest.mark.parametrize("excluded, error, match", [
    ("gpt", TypeError, "one set of model names per prompt"),
    ([{"nope"}], ValueError, "unknown model 'nope'"),
    ([set(), set()], ValueError, "2 entries but there are 1 prompts"),
    (["abc"], TypeError, r"excluded\[0\] must be a set"),
])
def test_bad_exclusions_are_refused(router, table, excluded, error, match):
    with pytest.raises(error, match=match):
        router.decide([table.prompts[0]], excluded=excluded, tasks=[table.tasks[0]], subtasks=[table.subtasks[0]])


def test_a_model_that_answered_cannot_be_excluded(router, table):
    first = router.models_[0]
    with pytest.raises(ValueError, match="has run"):
        router.decide([table.prompts[0]], [{first: {"cost": 0.0}}], excluded=[{first}], tasks=[table.tasks[0]],
                      subtasks=[table.subtasks[0]])
