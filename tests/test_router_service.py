"""The router as a service: README example, plan(), threads, the compiled twin, warm-up."""

from __future__ import annotations

import pickle
import re
import shutil
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimators import frozen as serving
from training.artifact import manifest_path
from training.data import read_table
from training.serving.router import Plan, load_router
from estimators.frozen import compile_estimator
from training.synthetic import make_benchmark

README = Path(__file__).resolve().parents[1] / "README.md"

#: The README's worked example, verbatim (the test below runs it; if the
#: README holds the block after ``<!-- serving-example -->``, that block must equal this).
EXAMPLE = '''
import zlib

from training.serving.router import load_router

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
    from dataclasses import replace
    prompts, tasks, subtasks = list(table.prompts[:30]), list(table.tasks[:30]), list(table.subtasks[:30])
    cheap = router.plan(prompts, budget=0.0004, tasks=tasks, subtasks=subtasks)
    rich = router.plan(prompts, budget=0.001, tasks=tasks, subtasks=subtasks)
    cost = table.cost[:30].mean(axis=0)
    index = {m: i for i, m in enumerate(router.models_)}
    planned = [sum(cost[index[m]] for m in plan.models) for plan in cheap]
    assert np.mean(planned) <= np.mean([sum(cost[index[m]] for m in p.models) for p in rich]) + 1e-12
    huge = replace(router.policy(0.0004), lambdas=router.policy(0.0004).lambdas * 1e6)
    nexts = router.decide(prompts, budget=0.001, tasks=tasks, subtasks=subtasks, policy=huge)
    assert set(nexts) <= {router.models_[0], None} | set(router.models_[:2])


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


def test_compiled_twin_matches_the_estimator(router, table):
    assert router.compiled
    twin = router._predictor()
    k = len(router.models_)
    rng = np.random.default_rng(3)
    run = rng.random((table.n_queries, k)) < 0.3
    prompts = list(table.prompts)
    prompts[0] = "Ünïcödé — naïve café? 東京"  # the non-ASCII path
    prompts[1] = ""
    inputs = dict(tasks=table.tasks, subtasks=table.subtasks, run=run, responses=table.responses,
                  observed_cost=np.where(run, table.cost, np.nan))
    inputs["tasks"] = np.array([*table.tasks[:-1], "a task never seen"], dtype=object)
    got, expected = twin.predict(prompts, **inputs), router.estimator.predict(prompts, **inputs)
    for name in ("quality", "sigma", "cost"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-9, atol=1e-12)


def test_a_twin_that_disagrees_is_refused_with_a_warning(router, monkeypatch):
    monkeypatch.setattr(serving, "VERIFY_RTOL", -1.0)
    with pytest.warns(RuntimeWarning, match="falls back to the estimator's own predict"):
        assert compile_estimator(router.estimator) is None


def test_router_falls_back_and_decides_the_same(artifact, table):
    fresh = load_router(artifact)
    cases = _cases(table, fresh, n=12)
    expected = [_decide_one(fresh, case) for case in cases]
    fresh.__dict__["_serving"] = fresh.estimator  # what a failed compile leaves
    assert not fresh.compiled
    assert [_decide_one(fresh, case) for case in cases] == expected


def test_pickling_drops_the_compiled_twin(router):
    state = pickle.loads(pickle.dumps(router))
    assert "_serving" not in state.__dict__
    assert state.models_ == router.models_


def test_load_router_warms_every_kernel_so_the_first_request_is_fast(artifact, table):
    from kernel._drivers import plan_all_serial
    from estimators._textkernels import ascii_text_features
    from estimators._forest import _quickscore
    router = load_router(artifact)
    assert router.compiled
    assert plan_all_serial.signatures and ascii_text_features.signatures and _quickscore.signatures
    started = time.perf_counter()
    router.decide([table.prompts[7]], tasks=[table.tasks[7]], subtasks=[table.subtasks[7]])
    assert time.perf_counter() - started < 0.25  # ~0.3 ms warm; compiling would take seconds


def test_bad_observations_are_refused_by_the_twin_too(router):
    model = router.models_[0]
    with pytest.raises(ValueError, match="observed_cost must be finite"):
        router.decide(["hi"], [{model: {"cost": float("nan")}}], tasks=["code"], subtasks=[""])
    with pytest.raises(ValueError, match="tasks required"):
        router.decide(["hi"], subtasks=[""])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_compiled_murmurhash_equals_sklearn(text):
    from sklearn.utils import murmurhash3_32
    from estimators._textkernels import murmurhash3_32 as compiled
    data = np.frombuffer(text.encode("ascii") or b"\0", np.uint8)
    assert compiled(data, 0, len(text)) == murmurhash3_32(text, seed=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("ab Cd_9\t\n.,'-x\x1c")), max_size=120), min_size=1, max_size=4))
def test_compiled_text_features_equal_the_featurizer(router, texts):
    featurizer = router.estimator.featurizer_.named_transformers_["text"]
    block = serving._TextBlock(featurizer, "prompt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = featurizer.transform(np.array(texts, dtype=object)[:, None])
    got = block(serving._Columns({"prompt": np.array(texts, dtype=object)}), len(texts))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("`def return[PYTHON]\nA)B(.{};?=+-1 \t") + ["é"]), max_size=200),
                min_size=1, max_size=4))
def test_compiled_structure_counts_equal_the_python_definition(texts):
    from estimators.featurize import _counts, structure_counts_of
    np.testing.assert_array_equal(structure_counts_of(texts), np.array([_counts(t) for t in texts], dtype=float))


@pytest.mark.parametrize("sigma_scale", [1.0, 0.25, 3.0])
def test_router_decides_as_its_policy_including_the_sigma_scale(router, table, sigma_scale):
    from dataclasses import replace
    from training.serving.router import prompt_uniforms
    policy = replace(router.policy(), sigma_scale=sigma_scale)
    cases = _cases(table, router, n=30, seed=2)
    prompts, observed = [c[0] for c in cases], [c[3] for c in cases]
    per_query = {"tasks": [c[1] for c in cases], "subtasks": [c[2] for c in cases]}
    estimates, run = router.estimates(prompts, observed, **per_query)
    expected = policy.decide(estimates.quality, estimates.cost, sigma=estimates.sigma, run=run,
                             u=prompt_uniforms(prompts), parallel=False)
    got = router.decide(prompts, observed, policy=policy, **per_query)
    assert got == [None if i < 0 else router.models_[i] for i in expected]


def test_a_response_memo_shared_by_calls_gives_the_features_of_a_fresh_parse(router):
    from estimators.posthoc import posthoc_features, read_responses
    twin = router._predictor()
    k = len(router.models_)
    rng = np.random.default_rng(5)
    pool = np.array(["B", "The answer is B.", "#### 42", "42", "", "C", "i do not know", "#### 7.5"], dtype=object)
    memo = serving.ResponseMemo()
    for step in range(4):  # later calls see texts parsed by earlier ones, in other combinations
        responses = pool[rng.integers(0, pool.size, (30, k))]
        run = rng.random((30, k)) < 0.2 * (step + 1)
        expected = posthoc_features(run, {}, read_responses(np.where(run, responses, "")))
        got = posthoc_features(run, {}, twin.responses_info(responses, run, memo))
        np.testing.assert_array_equal(got, expected)


def test_ridge_pipelines_fold_into_one_affine_map_with_a_separable_prompt_part():
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 9))
    X[rng.random(X.shape) < 0.3] = np.nan
    X[:, 4] = np.nan  # a column never seen (kept as zeros)
    pipelines = [make_pipeline(SimpleImputer(add_indicator=True, keep_empty_features=True), StandardScaler(),
                               Ridge(alpha=a)).fit(X, rng.normal(size=300)) for a in (0.1, 1.0, 10.0)]
    affine = serving._Affine(pipelines)
    probe = rng.normal(size=(50, 9))
    probe[rng.random(probe.shape) < 0.4] = np.nan
    expected = np.column_stack([p.predict(probe) for p in pipelines])
    np.testing.assert_allclose(affine.predict(probe), expected, rtol=1e-12, atol=1e-12)
    split = affine.partial(probe[:, :5]) + affine.bias + affine.partial(probe[:, 5:], 5)
    np.testing.assert_allclose(split, expected, rtol=1e-12, atol=1e-12)
