"""Prompt featurizers, answer parsing, post-hoc features and run-set sampling."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimators.answers import final_answer, final_answers
from estimators.featurize import StructuralFeaturizer, TextFeaturizer, make_prompt_featurizer, prompt_frame
from estimators.posthoc import CHECKS, posthoc_feature_names, posthoc_features, read_responses
from estimators.runsets import sample_run_sets

PROMPTS = [
    "What is 12 + 30? Answer with a number.",
    "Which gas do plants absorb?\nA) oxygen\nB) carbon dioxide\nC) helium\nD) neon",
    "Write a function to reverse a list.\n```python\ndef rev(x):\n    return x[::-1]\n```",
    "",
]


def test_text_featurizer_shape_and_determinism():
    X = np.array(PROMPTS * 5, dtype=object)[:, None]
    a = TextFeaturizer(n_components=4).fit(X).transform(X)
    b = TextFeaturizer(n_components=4).fit_transform(X)
    assert a.shape == (20, 4) and a.dtype == np.float64
    np.testing.assert_allclose(a, b)


def test_text_featurizer_reads_only_the_tail():
    head = "shared few-shot preamble " * 100
    X = np.array([[head + "alpha beta"], [head + "gamma delta"], [head + "alpha beta"]], dtype=object)
    F = TextFeaturizer(n_components=2, word_chars=20, char_chars=20).fit_transform(X)
    np.testing.assert_allclose(F[0], F[2])
    assert not np.allclose(F[0], F[1])


def test_text_featurizer_handles_blank_texts():
    X = np.array([[""], [""], [None]], dtype=object)
    F = TextFeaturizer().fit_transform(X)
    assert F.shape[0] == 3 and np.isfinite(F).all()


def test_structural_features_mark_code_math_and_options():
    F = StructuralFeaturizer().fit_transform(np.array(PROMPTS, dtype=object)[:, None])
    names = list(StructuralFeaturizer().fit(np.array(PROMPTS, dtype=object)[:, None]).get_feature_names_out())
    column = {name: F[:, names.index(name)] for name in names}
    assert column["log_code"][2] > 0 and column["log_code"][1] == 0
    assert column["log_options"][1] > 0 and column["log_options"][0] == 0
    assert column["log_digits"][0] > 0
    assert np.all(F[3] == 0)


def test_prompt_featurizer_one_hot_tasks_and_unknown_task():
    frame = prompt_frame(PROMPTS * 10, ["math", "science", "code", "math"] * 10)
    featurizer = make_prompt_featurizer(frame.columns, min_frequency=1).fit(frame)
    unseen = featurizer.transform(prompt_frame(["new question?"], ["never-seen-task"]))
    assert unseen.shape[1] == featurizer.transform(frame).shape[1]
    assert np.isfinite(unseen).all()


def test_prompt_featurizer_without_any_column_is_rejected():
    with pytest.raises(ValueError, match="at least one of the columns"):
        make_prompt_featurizer([])


def test_prompt_frame_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one entry per query"):
        prompt_frame(["a", "b"], ["t"])


@pytest.mark.parametrize(
    "response, answer",
    [
        ("B", "B"), (" C)\n", "C"), ("(d) because", "D"), ("A) west", "A"),
        ("The answer is C.", "C"), ("so she earns 9 * 2 = 18 dollars.\n#### 18", "18"),
        ("#### 1,234", "1234"), ("the total is 42.0", "42"), ("\\boxed{7}", "7"),
        ("Here is a function:\n```python\ndef f(): return 3\n```", ""),
        ("I do", "i do"), ("", ""), ("x" * 200, ""),
    ],
)
def test_final_answer(response, answer):
    assert final_answer(response) == answer


def test_final_answers_keeps_shape_and_treats_non_strings_as_empty():
    out = final_answers(np.array([["B", None], ["#### 5", 3.0]], dtype=object))
    assert out.tolist() == [["B", ""], ["5", ""]]


def _naive_agreement(codes: np.ndarray, run: np.ndarray) -> dict[str, np.ndarray]:
    """Brute-force response columns, one query and model at a time, from their definitions."""
    n, k = codes.shape
    out = {name: np.full((n, k), np.nan) for name in ("answered", "agree", "with_majority")}
    out.update({name: np.full(n, np.nan) for name in ("majority_share", "pair_agreement", "n_distinct_answers")})
    for q in range(n):
        valid = [j for j in range(k) if run[q, j] and codes[q, j] > 0]
        for j in range(k):
            if run[q, j]:
                out["answered"][q, j] = float(j in valid)
        clusters = {j: sum(codes[q, m] == codes[q, j] for m in valid) for j in valid}
        for j in valid:
            others = [m for m in valid if m != j]
            if others:
                out["agree"][q, j] = np.mean([codes[q, m] == codes[q, j] for m in others])
            out["with_majority"][q, j] = float(clusters[j] == max(clusters.values()))
        if valid:
            out["majority_share"][q] = max(clusters.values()) / len(valid)
        combos = list(itertools.permutations(valid, 2))
        if combos:
            out["pair_agreement"][q] = np.mean([codes[q, a] == codes[q, b] for a, b in combos])
        out["n_distinct_answers"][q] = len({codes[q, j] for j in valid})
    return out


@pytest.mark.parametrize("seed", range(4))
def test_agreement_features_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 8))
    responses = rng.choice(np.array(["A", "B", "C", "", "Here is code: def f(): return 1"], dtype=object), (60, k))
    run = rng.random((60, k)) < rng.uniform(0.2, 1.0)
    info = read_responses(responses)
    signal = rng.normal(size=(60, k))
    F = posthoc_features(run, {"logprob": signal}, info)
    models = [f"m{j}" for j in range(k)]
    names = posthoc_feature_names(models, ["logprob"], True)
    assert F.shape == (60, len(names))
    expected = _naive_agreement(np.where(run, info.codes, 0), run)
    for block, values in expected.items():
        columns = [names.index(f"{block}[{m}]") for m in models] if values.ndim == 2 else names.index(block)
        np.testing.assert_allclose(F[:, columns], values, rtol=0, atol=1e-15, err_msg=block)
    np.testing.assert_array_equal(F[:, names.index("n_run")], run.sum(axis=1))
    np.testing.assert_array_equal(F[:, [names.index(f"ran[{m}]") for m in models]], run)
    np.testing.assert_array_equal(F[:, [names.index(f"logprob[{m}]") for m in models]], np.where(run, signal, np.nan))
    lengths = F[:, [names.index(f"log_length[{m}]") for m in models]]
    np.testing.assert_array_equal(lengths, np.where(run, info.log_length, np.nan))
    np.testing.assert_array_equal(F[:, [names.index(f"answer_kind[{m}]") for m in models]],
                                  np.where(run, info.kind, np.nan))
    for c, check in enumerate(CHECKS):  # copied by the compiled pass
        np.testing.assert_array_equal(F[:, [names.index(f"{check}[{m}]") for m in models]],
                                      np.where(run, info.checks[:, :, c], np.nan), err_msg=check)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["", "A", "B", "42", "a", "A ", "é", "def f(): return 1"]), max_size=150))
def test_answer_numbering_equals_pandas_factorize_at_every_size(texts):
    """The dict numbering of short arrays (a service's step) gives pandas' codes and uniques, as long arrays get."""
    from estimators.posthoc import _factorize

    array = np.array(texts, dtype=object)
    inverse, unique = _factorize(array)
    expected_inverse, expected_unique = pd.factorize(array)
    np.testing.assert_array_equal(inverse, expected_inverse)
    assert unique == list(expected_unique)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5), st.integers(1, 11), st.integers(0, 2), st.booleans(), st.integers(0, 2**32 - 1))
def test_posthoc_features_of_queries_that_ran_nothing_are_the_computed_block(n, k, n_signals, with_responses,
                                                                                seed):
    """The ex-ante fast path (one cached row, tiled) equals the block computed from the inputs, whatever signal
    and response values the unrun cells hold (they must not be read)."""
    from estimators.posthoc import _posthoc_block

    rng = np.random.default_rng(seed)
    run = np.zeros((n, k), bool)
    signals = {f"s{i}": rng.normal(size=(n, k)) for i in range(n_signals)}
    responses = rng.choice(np.array(["A", "B", "42", "", "def f(): return 1"], dtype=object), (n, k))
    info = read_responses(responses) if with_responses else None
    fast = posthoc_features(run, signals, info)
    np.testing.assert_array_equal(fast, _posthoc_block(run, signals, info))
    assert fast.flags.writeable and fast.shape[0] == n


def test_posthoc_features_hide_signals_of_models_not_run():
    run = np.array([[True, False], [False, False]])
    signal = np.array([[0.5, 0.7], [0.1, 0.2]])
    F = posthoc_features(run, {"logprob": signal}, None)
    names = posthoc_feature_names(["a", "b"], ["logprob"], False)
    assert F.shape == (2, len(names))
    assert F[0, names.index("logprob[a]")] == 0.5
    assert np.isnan(F[0, names.index("logprob[b]")]) and np.isnan(F[1, names.index("logprob[a]")])


def test_run_sets_all_subsets_for_small_k():
    rows, run = sample_run_sets(3, 3)
    assert len(rows) == 3 * 8
    assert {tuple(r) for r in run[rows == 0]} == set(itertools.product([False, True], repeat=3))


def test_run_sets_sampled_for_large_k_include_empty_and_prefixes():
    rows, run = sample_run_sets(500, 11, per_query=8)
    assert len(rows) == 500 * 8 and run.shape == (4000, 11)
    assert not run[::8].any()  # the empty set opens every query's block
    prefixes = run.reshape(500, 8, 11)[:, 1:4]
    sizes = prefixes.sum(axis=2)
    assert np.array_equal(prefixes, np.arange(11) < sizes[:, :, None])
    assert np.mean(sizes <= 3) > 0.5  # small sets favoured


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(2, 11), share=st.floats(0.05, 1.0), seed=st.integers(0, 10**6))
def test_run_sets_with_partial_logs_hold_only_logged_models(n, k, share, seed):
    """Drawn from each query's logged models; a full log draws exactly the sets of a table without ``logged``."""
    logged = np.random.default_rng(seed).random((n, k)) < share
    rows, run = sample_run_sets(n, k, per_query=8, random_state=seed, logged=logged)
    plain_rows, plain = sample_run_sets(n, k, per_query=8, random_state=seed)
    np.testing.assert_array_equal(rows, plain_rows)
    assert not (run & ~logged[rows]).any()
    full_rows, full = sample_run_sets(n, k, per_query=8, random_state=seed, logged=np.ones((n, k), bool))
    np.testing.assert_array_equal(full, plain)
    if k > 4:  # prefixes: the first logged models in cost order, as many as the size drawn (or all logged)
        prefixes = run.reshape(n, 8, k)[:, 1:4]
        plain_size = plain.reshape(n, 8, k)[:, 1:4].sum(axis=2)
        rank = np.cumsum(logged, axis=1)[:, None, :]
        np.testing.assert_array_equal(prefixes, logged[:, None, :] & (rank <= plain_size[:, :, None]))
        random_sets = run.reshape(n, 8, k)[:, 4:].sum(axis=2)
        drawn = plain.reshape(n, 8, k)[:, 4:].sum(axis=2)
        np.testing.assert_array_equal(random_sets, np.minimum(drawn, logged.sum(axis=1)[:, None]))


_TEXT = st.text(alphabet=st.sampled_from(list("ab Cd_9\t\n\x0b\x1c.,'-xYZ?!()") + ["é", "東", "ß"]), max_size=150)


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(_TEXT, min_size=1, max_size=6), n_features=st.sampled_from([2**6, 2**10, 1000, 97]),
       word_chars=st.integers(1, 120), char_chars=st.integers(1, 60))
def test_compiled_ngram_counts_equal_scikit_learns_hashing(texts, n_features, word_chars, char_chars):
    featurizer = TextFeaturizer(n_features=n_features, word_chars=word_chars, char_chars=char_chars)
    got, expected = featurizer._hashed(texts), featurizer._hashed_by_sklearn(texts)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    expected.sort_indices()
    np.testing.assert_array_equal(got.indptr, expected.indptr)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.data, expected.data)


def test_text_features_are_bit_identical_to_scikit_learns_hashing():
    rng = np.random.default_rng(2)
    words = np.array(["the", "answer", "is", "42", "def", "f(x):", "return", "A)", "B)", "Question:", "café"])
    texts = np.array([[" ".join(rng.choice(words, rng.integers(0, 80)))] for _ in range(300)], dtype=object)
    fast = TextFeaturizer(n_components=16).fit(texts)
    slow = TextFeaturizer(n_components=16)
    slow._hashed = slow._hashed_by_sklearn  # the definition, for fitting and transforming alike
    slow.fit(texts)
    np.testing.assert_array_equal(fast.transform(texts), slow.transform(texts))
