"""The router as a service: README example, plan(), threads, the compiled twin, warm-up."""

from __future__ import annotations

import pickle
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from training.artifact import manifest_path
from training.data import read_table
from training.router import Plan, load_router
from training.synthetic import make_benchmark

README = Path(__file__).resolve().parents[1] / "README.md"

#: The README's worked example, verbatim (the test below runs it; if the
#: README holds the block after ``<!-- serving-example -->``, that block must equal this).
EXAMPLE = '''
import zlib

from training.router import load_router

router = load_router("router.joblib")  # strict checks (sha256, versions), then JIT warm-up

PRICE = {model: 1e-4 * (i + 1) for i, model in enumerate(router.models_)}  # fake USD per call


def call_model(model: str, prompt: str) -> tuple[str, float]:
    """Stand-in for your LLM client: the response text and what the call cost."""
    return "ABCD"[zlib.crc32(f"{model}|{prompt}".encode()) % 4], PRICE[model]


def answer(prompt: str, task: str, subtask: str = "") -> tuple[str, list[str], float]:
    """Run one query's cascade: the answer, the models called, the total cost."""
    per_query = {"tasks": [task], "subtasks": [subtask]}
    observed: dict[str, dict] = {}  # model -> {"response": ..., "cost": ...}
    while (model := router.decide([prompt], [observed], **per_query)[0]) is not None:
        response, cost = call_model(model, prompt)
        observed[model] = {"response": response, "cost": cost}
    best = router.select([prompt], [observed], **per_query)[0]
    return observed[best]["response"], list(observed), sum(r["cost"] for r in observed.values())


text, called, cost = answer("Which gas do plants absorb?\\nA) oxygen\\nB) carbon dioxide", "science-mc")
print(f"answer {text!r} from {called} for ${cost:.6f}")
'''


@pytest.fixture(scope="module")
def table(router):
    return read_table(make_benchmark(120, seed=5)).select_models(list(router.models_))


def _cases(table, router, n=48, seed=0):
    """Queries with assorted run sets: logged responses and costs stand in for model calls."""
    rng = np.random.default_rng(seed)
    cases = []
    for q in range(n):
        run = rng.permutation(len(router.models_))[: rng.integers(0, 3)]
        observed = {router.models_[j]: {"response": table.responses[q, j], "cost": float(table.cost[q, j])}
                    for j in run}
        cases.append((table.prompts[q], table.tasks[q], table.subtasks[q], observed))
    return cases


def _decide_one(router, case):
    prompt, task, subtask, observed = case
    return router.decide([prompt], [observed], tasks=[task], subtasks=[subtask])[0]


def test_readme_example_runs_a_full_cascade(artifact, monkeypatch, tmp_path, capsys):
    for path in (artifact, manifest_path(artifact)):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.chdir(tmp_path)
    code = EXAMPLE
    if README.exists() and "<!-- serving-example -->" in README.read_text():
        block = re.search(r"<!-- serving-example -->\s*```python\n(.*?)```", README.read_text(), re.S)
        assert block and block.group(1).strip() == EXAMPLE.strip(), "README example differs from the tested one"
    namespace: dict = {}
    exec(compile(code, "README-example", "exec"), namespace)
    text, called, cost = namespace["answer"]("What is 17 * 3?\n#### ", "math-word", "")
    router = namespace["router"]
    assert called and len(called) == len(set(called)) <= router.policy().max_depth
    assert text in "ABCD"
    assert cost == pytest.approx(sum(namespace["PRICE"][m] for m in called))
    assert "answer" in capsys.readouterr().out


def test_plan_names_the_supermodel_and_decide_is_its_first_field(router, table):
    for case in _cases(table, router, n=24):
        prompt, task, subtask, observed = case
        plan = router.plan([prompt], [observed], tasks=[task], subtasks=[subtask])[0]
        assert isinstance(plan, Plan)
        assert plan.next == _decide_one(router, case)
        assert set(observed) <= set(plan.models)
        assert list(plan.models) == [m for m in router.models_ if m in plan.models], "cheapest first"
        if plan.next is None:
            assert set(plan.models) == set(observed)
        else:
            assert plan.next in plan.models and plan.next not in observed
            assert len(plan.models) <= router.policy().max_depth


def test_budget_picks_the_policy_and_a_custom_policy_overrides_it(router, table):
    from training.policy import Policy
    prompts, tasks, subtasks = list(table.prompts[:30]), list(table.tasks[:30]), list(table.subtasks[:30])
    cheap = router.plan(prompts, budget=0.0004, tasks=tasks, subtasks=subtasks)
    rich = router.plan(prompts, budget=0.001, tasks=tasks, subtasks=subtasks)
    cost = table.cost[:30].mean(axis=0)
    index = {m: i for i, m in enumerate(router.models_)}
    planned = [sum(cost[index[m]] for m in plan.models) for plan in cheap]
    assert np.mean(planned) <= np.mean([sum(cost[index[m]] for m in p.models) for p in rich]) + 1e-12
    # A λ policy of its own: the fitted budgets may be served by single models (issue 12), which have no λ.
    huge = Policy(strategy="cascade_routing", lambdas=np.full(3, 1e9), thresholds=None, gamma=0.0, max_depth=3,
                  force_order=False, n_samples=64, budget=0.0004)
    nexts = router.decide(prompts, budget=0.001, tasks=tasks, subtasks=subtasks, policy=huge)
    # At this λ a second or a dearer model costs far more than any quality it could add, so the plan is
    # the one model with the lowest estimated cost for the query, and it runs first (not the budget's policy).
    estimates, _ = router.estimates(prompts, tasks=tasks, subtasks=subtasks)
    by_cost = np.sort(estimates.cost, axis=1)
    spread = np.ptp(estimates.quality) + 3 * np.max(estimates.sigma)
    assert np.min(huge.lambdas) * np.min(by_cost[:, 1] - by_cost[:, 0]) > 10 * spread, "cost must dominate"
    assert nexts == [router.models_[j] for j in np.argmin(estimates.cost, axis=1)]


def test_eight_threads_decide_exactly_as_one(router, table):
    cases = _cases(table, router)
    expected = [_decide_one(router, case) for case in cases]
    expected_plans = router.plan([c[0] for c in cases], [c[3] for c in cases],
                                 tasks=[c[1] for c in cases], subtasks=[c[2] for c in cases])
    before = pickle.dumps(router.estimator)
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        try:
            order = np.random.default_rng(seed).permutation(len(cases))
            start.wait()
            got = [None] * len(cases)
            for _ in range(3):
                for i in order:
                    got[i] = _decide_one(router, cases[i])
            batch = router.plan([c[0] for c in cases], [c[3] for c in cases],
                                tasks=[c[1] for c in cases], subtasks=[c[2] for c in cases])
            results[seed] = [got, batch]
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(results) == 8
    for got, batch in results.values():
        assert got == expected
        assert batch == expected_plans
    assert [p.next for p in expected_plans] == expected, "a batch decides as single queries do"
    assert pickle.dumps(router.estimator) == before, "serving wrote to the estimator"


def test_load_router_warms_every_kernel(artifact, table):
    """How fast the first request then is: bench/bench_serving.py (test_first_decide_after_load_router)."""
    from estimators._forest import _quickscore
    from estimators._textkernels import ascii_text_features
    from kernel._drivers import plan_all_serial
    router = load_router(artifact)
    assert plan_all_serial.signatures and ascii_text_features.signatures and _quickscore.signatures
    assert router.decide([table.prompts[7]], tasks=[table.tasks[7]], subtasks=[table.subtasks[7]])[0] in router.models_


def test_bad_observations_are_refused(router):
    model = router.models_[0]
    with pytest.raises(ValueError, match="observed_cost must be finite"):
        router.decide(["hi"], [{model: {"cost": float("nan")}}], tasks=["code"], subtasks=[""])
    with pytest.raises(ValueError, match="tasks required"):
        router.decide(["hi"], subtasks=[""])


@pytest.mark.parametrize("sigma_scale, sigma_power", [(1.0, 1.0), (0.25, 1.0), (3.0, 1.0), (1.0, 2.0)])
def test_router_decides_as_its_policy_including_the_sigma_transform(router, table, sigma_scale, sigma_power):
    from dataclasses import replace

    from training.router import prompt_uniforms
    policy = replace(router.policy(), sigma_scale=sigma_scale, sigma_power=sigma_power)
    cases = _cases(table, router, n=30, seed=2)
    prompts, observed = [c[0] for c in cases], [c[3] for c in cases]
    per_query = {"tasks": [c[1] for c in cases], "subtasks": [c[2] for c in cases]}
    estimates, run = router.estimates(prompts, observed, **per_query)
    expected = policy.decide(estimates.quality, estimates.cost, sigma=estimates.sigma, run=run,
                             u=prompt_uniforms(prompts), parallel=False)
    got = router.decide(prompts, observed, policy=policy, **per_query)
    assert got == [None if i < 0 else router.models_[i] for i in expected]


def test_pickled_router_decides_as_the_loaded_one(router, table):
    copy = pickle.loads(pickle.dumps(router))
    cases = _cases(table, router, n=12)
    assert [_decide_one(copy, case) for case in cases] == [_decide_one(router, case) for case in cases]
