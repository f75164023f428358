"""The response checks (:func:`estimators.answers.code_parses`, ``hedges``, ``truncated``) against plain Python.

Two kinds of evidence: cases written by reading real RouterBench responses
(what a reader says each check should give), and a reference written
without regular expressions that must agree with the checks on every real
response of the table.
"""

from __future__ import annotations

import ast
import math

import numpy as np
import pandas as pd
import pytest

from estimators.answers import CODE_CHECK_CHARS, code_parses, final_answer, hedges, truncated
from estimators.posthoc import CHECKS, posthoc_feature_names, posthoc_features, read_responses

HEDGE_PHRASES = ("i'm not sure", "im not sure", "i am not sure", "i'm not certain", "im not certain",
                 "i am not certain", "i don't know", "i dont know", "cannot", "can't", "cant", "can not", "unable to",
                 "i apologise", "i apologize", "sorry", "unfortunately", "not enough information", "as an ai")


def _has_word(text: str, phrase: str) -> bool:
    """``phrase`` in ``text`` with no letter, digit or underscore right before or after it."""
    start = text.find(phrase)
    while start >= 0:
        before = text[start - 1] if start > 0 else " "
        end = start + len(phrase)
        after = text[end] if end < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return True
        start = text.find(phrase, start + 1)
    return False


def _starts_word(text: str, prefix: str) -> bool:
    """``prefix`` in ``text`` with no letter, digit or underscore right before it."""
    start = text.find(prefix)
    while start >= 0:
        if start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_"):
            return True
        start = text.find(prefix, start + 1)
    return False


def reference_looks_like_code(text: str) -> bool:
    return ("```" in text or "[PYTHON]" in text or _has_word(text, "return") or _starts_word(text, "def ")
            or _starts_word(text, "import "))


def reference_code(text: str) -> str | None:
    if "[PYTHON]" in text:
        return text.split("[PYTHON]", 1)[1].split("[/PYTHON]", 1)[0]
    if "```" in text:
        blocks = []
        for block in text.split("```")[1::2]:  # odd pieces are inside fences; an open last fence runs to the end
            first_line, newline, rest = block.partition("\n")  # the first line names the language
            if "`" in first_line:  # a language name stops at a backtick, which starts the code
                blocks.append(block[first_line.index("`"):])
            else:
                blocks.append(rest if newline else "")
        defining = [b for b in blocks if "def " in b]
        pool = defining or blocks
        return max(pool, key=len)  # the first longest, as max() keeps the first of equals
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.startswith(("def ", "class ", "import ", "from ", "@")):
            return text[offset:]
        offset += len(line)
    return None


def reference_code_parses(text: str) -> float:
    if not reference_looks_like_code(text):
        return math.nan
    code = reference_code(text)
    if code is None or len(code) > CODE_CHECK_CHARS:
        return math.nan
    try:
        ast.parse(code)
        return 1.0
    except Exception:
        return 0.0


def reference_hedges(text: str) -> float:
    prose = text[:2000]
    for marker in ("```", "[PYTHON]"):
        prose = prose.split(marker, 1)[0]
    prose = prose.lower()
    return 1.0 if any(_has_word(prose, phrase) for phrase in HEDGE_PHRASES) else 0.0


def reference_truncated(text: str) -> float:
    open_fence = text.count("```") % 2 == 1
    open_tag = text.count("[PYTHON]") > text.count("[/PYTHON]")
    return 1.0 if open_fence or open_tag else 0.0


@pytest.fixture(scope="module")
def responses(shared_data) -> pd.DataFrame:
    frame = pd.read_parquet(shared_data / "routerbench_subset" / "routerbench_subset.parquet",
                            columns=["query_id", "task", "model", "response"])
    return frame.set_index(["query_id", "model"])


#: (query, model): (code_parses, hedges, truncated), read off the responses by hand.
READ_CASES = {
    # JavaScript in a bare fence: looks like code, is not Python
    ("mbpp.dev.10", "meta/llama-2-70b-chat"): (0.0, 0.0, 0.0),
    # the function's block parses; the ">>> pentagon_perimeter(5)" usage block after it does not count
    ("mbpp.dev.101", "WizardLM/WizardLM-13B-V1.2"): (1.0, 0.0, 0.0),
    # cut off after "elif n <= 3:" inside an open fence
    ("mbpp.dev.1", "mistralai/mixtral-8x7b-chat"): (0.0, 0.0, 1.0),
    # "cannot" only in a code comment ("negative numbers cannot be perfect squares"): not a hedge
    ("mbpp.dev.120", "gpt-4-1106-preview"): (1.0, 0.0, 0.0),
    # prose restating the task, no code at all
    ("mbpp.dev.109", "zero-one-ai/Yi-34B-Chat"): (math.nan, 0.0, 0.0),
    # a JavaScript function without a fence: looks like code ("return") but has no Python block to check
    ("mbpp.dev.11", "gpt-3.5-turbo-1106"): (math.nan, 0.0, 0.0),
}


@pytest.mark.parametrize("key", list(READ_CASES), ids=lambda key: f"{key[0]}|{key[1]}")
def test_checks_on_responses_read_by_hand(responses, key):
    text = responses.loc[key, "response"]
    got = (code_parses(text), hedges(text), truncated(text))
    np.testing.assert_array_equal(got, READ_CASES[key])


def test_refusals_hedge_and_short_answers_do_not(responses):
    texts = responses["response"]
    refusals = texts[texts.str.startswith("Unfortunately I")]  # claude-v2 declining ARC / Winogrande questions
    assert len(refusals) > 50  # what reading the table shows: ~100 such refusals
    assert all(hedges(t) == 1.0 for t in refusals)
    short = texts[texts.isin(["A", "B", "A)", "I do"])]
    assert len(short) > 1000 and all(hedges(t) == 0.0 and math.isnan(code_parses(t)) for t in short)


def test_checks_equal_the_plain_python_reference_on_every_real_response(responses):
    texts = responses["response"].drop_duplicates().tolist()
    for check, reference in ((code_parses, reference_code_parses), (hedges, reference_hedges),
                             (truncated, reference_truncated)):
        got = np.array([check(t) for t in texts])
        want = np.array([reference(t) for t in texts])
        mismatched = [texts[i][:200] for i in np.flatnonzero(~((got == want) | (np.isnan(got) & np.isnan(want))))]
        assert not mismatched, (check.__name__, len(mismatched), mismatched[:3])


def test_checks_are_feature_columns_of_the_run_models_only():
    texts = np.array([["```python\ndef f(:\n```", "Sorry, I cannot"], ["B", "```\ndef g():\n    return 1"]],
                     dtype=object)
    run = np.array([[True, False], [True, True]])
    features = posthoc_features(run, {}, read_responses(texts))
    names = posthoc_feature_names(["a", "b"], [], True)
    column = {name: features[:, names.index(name)] for name in names}
    np.testing.assert_array_equal(column["code_parses[a]"], [0.0, np.nan])
    np.testing.assert_array_equal(column["code_parses[b]"], [np.nan, 1.0])
    np.testing.assert_array_equal(column["hedges[b]"], [np.nan, 0.0])  # "Sorry" of a model not run is hidden
    np.testing.assert_array_equal(column["truncated[b]"], [np.nan, 1.0])
    assert set(CHECKS) <= {name.split("[")[0] for name in names}


def test_code_longer_than_the_bound_is_not_parsed():
    text = "```python\n" + "x = 1\n" * (CODE_CHECK_CHARS // 6 + 1) + "```"
    assert math.isnan(code_parses(text))


@pytest.mark.parametrize("seed", range(3))
def test_pair_agreement_columns_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    texts = rng.choice(np.array(["A", "B", "(B)", "", "I do", "def f(): return 1"], dtype=object), (40, k))
    run = rng.random((40, k)) < 0.6
    info = read_responses(texts)
    models = [f"m{j}" for j in range(k)]
    names = posthoc_feature_names(models, [], True)
    features = posthoc_features(run, {}, info)
    assert features.shape[1] == len(names)
    answers = [[final_answer(t) for t in row] for row in texts]
    for a in range(k):
        for b in range(a + 1, k):
            want = [float(answers[q][a] == answers[q][b]) if run[q, a] and run[q, b] and answers[q][a] and answers[q][b]
                    else math.nan for q in range(40)]
            np.testing.assert_array_equal(features[:, names.index(f"agree[m{a}|m{b}]")], want)
