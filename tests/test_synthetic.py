"""The built-in synthetic benchmark (training/synthetic.py)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from training.data import read_table
from training.synthetic import (
    SYNTHETIC_MODELS,
    TASKS,
    default_table,
    make_benchmark,
    synthetic_prices,
)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_benchmark(4000, seed=0)


@pytest.fixture(scope="module")
def table(frame):
    return read_table(frame)


DOUBT = ("I'm not sure, but the answer is ", "I'm not sure, but: ")


def without_doubt(response: str) -> str:
    """The answer without the doubt some responses voice first."""
    return next((response[len(p):] for p in DOUBT if response.startswith(p)), response)


def final_answer(response: str) -> str:
    """What an agreement estimator would compare: the '#### ' value, else the stripped text."""
    response = without_doubt(response)
    found = re.search(r"^#### (.+)$", response, flags=re.MULTILINE)
    return found.group(1).strip() if found else response.strip()


def test_same_seed_same_frame_other_seed_other_frame():
    first = make_benchmark(300, seed=7)
    pd.testing.assert_frame_equal(first, make_benchmark(300, seed=7))
    other = make_benchmark(300, seed=8)
    assert not first["quality"].equals(other["quality"])
    assert not first["prompt"].equals(other["prompt"])


def test_passes_validation_with_every_column(frame, table):
    assert frame.shape == (4000 * len(SYNTHETIC_MODELS), 12)
    assert table.quality.shape == (4000, len(SYNTHETIC_MODELS))
    assert table.models == tuple(m.name for m in SYNTHETIC_MODELS)  # listed cheapest first
    assert all(name.startswith("synthetic-") for name in table.models)
    assert set(np.unique(table.quality)) == {0.0, 1.0}
    assert set(table.tasks) == set(TASKS)
    assert table.splits is None  # the synthetic split column is empty: read as absent
    assert (table.prompts != "").all() and (table.responses != "").all()
    assert (table.input_tokens >= 1).all() and (table.output_tokens >= 1).all()
    assert read_table(frame, prices=synthetic_prices()).models == table.models


def test_cost_is_tokens_times_prices(table):
    prices = synthetic_prices()
    price_in = np.array([prices[m][0] for m in table.models])
    price_out = np.array([prices[m][1] for m in table.models])
    expected = (table.input_tokens * price_in + table.output_tokens * price_out) / 1e6
    np.testing.assert_allclose(table.cost, expected, rtol=1e-12)


def test_means_match_routerbench_targets(table):
    accuracy = np.array([m.accuracy for m in SYNTHETIC_MODELS])
    cost = np.array([m.cost_usd for m in SYNTHETIC_MODELS])
    np.testing.assert_allclose(table.quality.mean(axis=0), accuracy, atol=0.05)
    np.testing.assert_allclose(table.cost.mean(axis=0), cost, rtol=0.15)


def test_routing_has_something_to_gain(table):
    quality = table.quality
    best = int(np.argmax(quality.mean(axis=0)))
    assert table.models[best] == "synthetic-frontier"
    beaten = (quality[:, best] == 0) & (quality.max(axis=1) == 1)
    assert beaten.mean() > 0.05  # the best model is not the best on every query
    assert quality.max(axis=1).mean() > quality[:, best].mean() + 0.05
    # specialisation: which model is better depends on the task (as Yi-34B vs
    # GPT-3.5 on ARC vs MBPP in RouterBench)
    chat, turbo = table.models.index("synthetic-chat-34b"), table.models.index("synthetic-turbo")
    science = quality[table.tasks == "science-mc"].mean(axis=0)
    code = quality[table.tasks == "code-python"].mean(axis=0)
    assert science[chat] > science[turbo] + 0.05
    assert code[turbo] > code[chat] + 0.15


@pytest.mark.parametrize("pair", [(0, 1), (0, 7), (2, 5), (5, 7)])
def test_agreement_is_informative(table, pair):
    a, b = pair
    answers = np.vectorize(final_answer, otypes=[object])(table.responses[:, [a, b]])
    agree = answers[:, 0] == answers[:, 1]
    assert 0.2 < agree.mean() < 0.95
    gain = [table.quality[agree, m].mean() - table.quality[~agree, m].mean() for m in (a, b)]
    assert gain[0] > 0.2  # the cheaper model: a disagreement is a strong hint it is wrong
    assert gain[1] > 0.05  # the dearer one: usually right either way, still right more often


def test_answer_formats(table):
    letters = {"science-mc": set("ABCD"), "commonsense-2way": set("AB")}
    for task, allowed in letters.items():
        assert {without_doubt(r) for r in table.responses[table.tasks == task].ravel()} <= allowed
    math = np.array([without_doubt(r) for r in table.responses[table.tasks == "math-word"].ravel()])
    with_line = np.array(["\n#### " in r or r.startswith("#### ") for r in math])
    assert 0.85 < with_line.mean() < 1.0  # a few wrong answers lack the answer line
    code = table.responses[table.tasks == "code-python"].ravel()
    assert all(without_doubt(r).startswith("```python\ndef ") for r in code)


def test_doubt_is_voiced_mostly_by_wrong_answers_and_read_by_the_response_check(table):
    """Cheap models' answers carry a post-hoc signal (issue 32): the hedge check the estimators read fires far
    more often on a wrong answer than on a right one, for every model, most for the cheapest."""
    from estimators.answers import hedges

    flagged = np.vectorize(hedges, otypes=[float])(table.responses) == 1.0
    right = table.quality == 1.0
    wrong_rate = [flagged[~right[:, j], j].mean() for j in range(len(table.models))]
    right_rate = [flagged[right[:, j], j].mean() for j in range(len(table.models))]
    for model, low, high in zip(table.models, right_rate, wrong_rate, strict=True):
        assert high > 4 * low and high > 0.2, (model, low, high)
    assert wrong_rate[0] > wrong_rate[-1]  # sorted by cost: the cheapest doubts its errors most


def test_prompt_predicts_correctness_beyond_task(table):
    y = table.quality[:, 0]  # the cheapest model
    order = np.random.default_rng(0).permutation(table.n_queries)
    train, test = order[:3000], order[3000:]
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2)
    model = LogisticRegression(max_iter=1000).fit(vectorizer.fit_transform(table.prompts[train]), y[train])
    auroc = roc_auc_score(y[test], model.predict_proba(vectorizer.transform(table.prompts[test]))[:, 1])
    task_rate = pd.Series(y[train]).groupby(table.tasks[train]).mean()
    task_only = roc_auc_score(y[test], task_rate[table.tasks[test]].to_numpy())
    assert auroc > 0.6
    assert auroc > task_only + 0.02  # the words carry difficulty, not only the task


def test_harder_prompts_are_longer_within_each_task(table):
    length = np.array([len(p) for p in table.prompts])
    for task in TASKS:
        rows = table.tasks == task
        assert np.corrcoef(length[rows], table.quality[rows].mean(axis=1))[0, 1] < -0.15, task


def test_default_table_and_bad_arguments():
    small = default_table(100, seed=2, models=["synthetic-frontier", "synthetic-tiny-7b"])
    assert small.models == ("synthetic-tiny-7b", "synthetic-frontier")
    assert small.n_queries == 100
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="n_queries"):
            make_benchmark(bad)
    with pytest.raises(ValueError, match="seed"):
        make_benchmark(10, seed=-1)


def test_latency_is_time_to_first_token_plus_generation_at_the_assumed_speed(table):
    from training.synthetic import ASSUMED_THROUGHPUT

    ttft, speed = np.array([ASSUMED_THROUGHPUT[m.imitates] for m in SYNTHETIC_MODELS]).T
    expected = ttft + table.output_tokens / speed  # the noise-free latency
    ratio = table.latency / expected
    assert (table.latency > 0).all()
    assert 0.85 < np.median(ratio) < 1.15  # the two noise terms are centred on the assumed figures
    for model in range(table.n_models):  # longer answers take longer, model by model
        assert np.corrcoef(table.output_tokens[:, model], table.latency[:, model])[0, 1] > 0.3
