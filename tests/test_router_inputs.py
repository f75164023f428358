"""Issue 12: every ``Router`` method checks prompts, ``observed`` and ``budget`` before any work,
handles lone surrogates, answers an empty batch with an empty result, and speaks Python in its errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from training.policy import Policy

PER_QUERY = {"tasks": ["code"], "subtasks": [""]}
#: A λ policy to pace (the shared router's fitted budgets may be served by single models, which have no λ).
ROUTING = Policy(strategy="routing", lambdas=np.array([100.0]), thresholds=None, gamma=0.0, max_depth=1,
                 force_order=False, n_samples=64, budget=0.001)


def _calls(router, prompts, observed=None, **extra):
    per_query = {name: values * len(prompts) for name, values in PER_QUERY.items()}
    first = router.models_[0]
    seen = observed if observed is not None else [{first: {"cost": 0.001, "response": "A"}}] * len(prompts)
    return {
        "decide": lambda: router.decide(prompts, observed, **per_query, **extra),
        "plan": lambda: router.plan(prompts, observed, **per_query, **extra),
        "estimates": lambda: router.estimates(prompts, observed, **per_query),
        "select": lambda: router.select(prompts, seen, **per_query),
        "paced": lambda: router.paced(router.budgets[0], policy=ROUTING).decide(prompts, observed, **per_query),
    }


@pytest.mark.parametrize("method", ["decide", "plan", "estimates", "select", "paced"])
@pytest.mark.parametrize("bad", [None, 3, b"bytes"], ids=["None", "int", "bytes"])
def test_prompts_must_be_strings_in_every_method(router, method, bad):
    with pytest.raises(TypeError, match=rf"prompts\[1\] is {type(bad).__name__} .*not str"):
        _calls(router, ["fine", bad])[method]()


@pytest.mark.parametrize("method", ["decide", "plan", "estimates"])
def test_observed_must_be_a_list_of_mappings(router, method):
    with pytest.raises(TypeError, match=r"observed\[0\] must be a mapping"):
        _calls(router, ["hi"], [[router.models_[0], 0.001]])[method]()
    with pytest.raises(TypeError, match="observed must be a list"):
        _calls(router, ["hi"], {router.models_[0]: {"cost": 0.001}})[method]()
    with pytest.raises(TypeError, match=r"observed\[0\]\['.*'\] must be a mapping"):
        _calls(router, ["hi"], [{router.models_[0]: 0.001}])[method]()
    with pytest.raises(TypeError, match=r"\['cost'\] must be a number"):
        _calls(router, ["hi"], [{router.models_[0]: {"cost": "0.001"}}])[method]()


@pytest.mark.parametrize("method", ["decide", "plan"])
def test_budget_must_be_a_number_and_errors_speak_python(router, method):
    with pytest.raises(TypeError, match="budget must be a number.*str '0.001'"):
        _calls(router, ["hi"], budget="0.001")[method]()
    with pytest.raises(ValueError, match="below every fitted budget") as caught:
        _calls(router, ["hi"], budget=1e-12)[method]()
    assert "--" not in str(caught.value)


def test_lone_surrogates_are_replaced_and_counted(router):
    broken, repaired = ["a\ud800b", "ok", "\udfff"], ["a\ufffdb", "ok", "\ufffd"]
    per_query = {"tasks": [router.known_categories()["task"][0]] * 3, "subtasks": [""] * 3}  # no other warning
    with pytest.warns(UserWarning, match="2 of 3 prompts held lone surrogate"):
        estimates, _ = router.estimates(broken, **per_query)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected, _ = router.estimates(repaired, **per_query)
    np.testing.assert_array_equal(estimates.quality, expected.quality)
    np.testing.assert_array_equal(estimates.cost, expected.cost)
    with pytest.warns(UserWarning, match="lone surrogate"):
        decided = router.decide(broken, **per_query)
    assert all(name is None or name in router.models_ for name in decided)


def test_an_empty_batch_gets_an_empty_result(router):
    empty = {"tasks": [], "subtasks": []}
    assert router.decide([], **empty) == []
    assert router.plan([], **empty) == []
    assert router.select([], [], **empty) == []
    estimates, run = router.estimates([], **empty)
    assert estimates.quality.shape == (0, len(router.models_)) and run.shape == (0, len(router.models_))


def test_score_and_evaluate_refuse_prompts_that_are_not_strings(artifact, tmp_path, capsys):
    from training.evaluate import main as evaluate
    from training.score import main as score
    from training.synthetic import make_benchmark

    queries = make_benchmark(20, seed=1).drop_duplicates("query_id")[["query_id", "prompt", "task", "subtask"]]
    numbers = queries.assign(prompt=range(len(queries)))
    numbers.to_parquet(tmp_path / "numbers.parquet")
    assert score(["--artifact", str(artifact), "--input", str(tmp_path / "numbers.parquet"),
                  "--output", str(tmp_path / "out.parquet"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "column 'prompt' holds int64, not text" in err and not (tmp_path / "out.parquet").exists()
    logged = make_benchmark(20, seed=1)
    logged["prompt"] = logged["prompt"].astype(object)
    logged.loc[logged["query_id"] == logged["query_id"].iloc[0], "prompt"] = None
    logged.to_parquet(tmp_path / "logged.parquet")
    assert evaluate(["--data", str(tmp_path / "logged.parquet"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "prompt must be a string" in err and "row 0" in err
