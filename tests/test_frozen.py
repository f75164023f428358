"""The frozen parts of the estimators against the libraries' own transform/predict, piece by piece.

``tests/test_estimator_reference.py`` compares whole estimates; these
tests pin each frozen piece on inputs chosen to reach its edge cases.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimators.featurize import (
    _TALLIES,
    FrozenFeaturizer,
    _counts,
    make_prompt_featurizer,
    prompt_frame,
    structure_counts_of,
)
from estimators.frozen import Affine, Called, freeze_regressors
from estimators.posthoc import ResponseMemo, posthoc_features, read_responses, run_responses


@pytest.fixture(scope="module")
def featurizer():
    rng = np.random.default_rng(0)
    words = ["apple", "Which", "gas", "def", "return", "x", "42", "#### 7", "A)", "B)", "\n", "?", "plants"]
    prompts = [" ".join(rng.choice(words, size=rng.integers(1, 40))) for _ in range(300)]
    tasks = rng.choice(["math", "code", "science", "rare"], size=300, p=[0.4, 0.3, 0.28, 0.02])
    frame = prompt_frame(prompts, tasks, np.full(300, "", dtype=object))
    return make_prompt_featurizer(list(frame.columns)).fit(frame)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=40))
def test_compiled_murmurhash_equals_sklearn(text):
    from sklearn.utils import murmurhash3_32

    from estimators._textkernels import murmurhash3_32 as compiled
    data = np.frombuffer(text.encode("ascii") or b"\0", np.uint8)
    assert compiled(data, 0, len(text)) == murmurhash3_32(text, seed=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("ab Cd_9\t\n.,'-x\x1cé東")), max_size=700), min_size=1,
                max_size=4),
       st.lists(st.sampled_from(["math", "code", "science", "rare", "never seen", ""]), min_size=4, max_size=4))
@pytest.mark.slow
def test_frozen_featurizer_equals_the_column_transformer(featurizer, texts, tasks):
    tasks = np.array(tasks[: len(texts)], dtype=object)
    subtasks = np.full(len(texts), "", dtype=object)
    frame = prompt_frame(texts, tasks, subtasks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unknown categories
        expected = featurizer.transform(frame)
    frozen = FrozenFeaturizer(featurizer)
    got = frozen.transform({c: frame[c].to_numpy(dtype=object) for c in frozen.columns}, len(texts))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(frozen.transform({c: frame[c].to_numpy(dtype=object) for c in frozen.columns},
                                                len(texts), parallel=True), got, rtol=0, atol=0)
    for i in range(len(texts)):  # one text alone (all-ASCII: the direct pass) == its row of a mixed batch, bit for bit
        alone = frozen.transform({c: frame[c].to_numpy(dtype=object)[i:i + 1] for c in frozen.columns}, 1)
        np.testing.assert_array_equal(alone[0], got[i])
    # the counting table this thread's calls share is left zero (a stale count would enter the next call's features)
    assert _TALLIES.tables and not any(table.any() for table in _TALLIES.tables.values())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("`def return[PYTHON]\nA)B(.{};?=+-1 \t") + ["é"]), max_size=200),
                min_size=1, max_size=4))
def test_compiled_structure_counts_equal_the_python_definition(texts):
    np.testing.assert_array_equal(structure_counts_of(texts), np.array([_counts(t) for t in texts], dtype=float))


def test_a_response_memo_shared_by_calls_gives_the_features_of_a_fresh_parse():
    k = 5
    rng = np.random.default_rng(5)
    pool = np.array(["B", "The answer is B.", "#### 42", "42", "", "C", "i do not know", "#### 7.5"], dtype=object)
    memo = ResponseMemo()
    for step in range(4):  # later calls see texts parsed by earlier ones, in other combinations
        responses = pool[rng.integers(0, pool.size, (30, k))]
        run = rng.random((30, k)) < 0.2 * (step + 1)
        expected = posthoc_features(run, {}, read_responses(np.where(run, responses, "")))
        got = posthoc_features(run, {}, run_responses(responses, run, memo))
        np.testing.assert_array_equal(got, expected)


def _ridge_pipelines(rng, X):
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    return [make_pipeline(SimpleImputer(add_indicator=True, keep_empty_features=True), StandardScaler(),
                          Ridge(alpha=a)).fit(X, rng.normal(size=len(X))) for a in (0.1, 1.0, 10.0)]


def test_ridge_pipelines_fold_into_one_affine_map_with_a_separable_prompt_part():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 9))
    X[rng.random(X.shape) < 0.3] = np.nan
    X[:, 4] = np.nan  # a column never seen (kept as zeros)
    pipelines = _ridge_pipelines(rng, X)
    frozen = freeze_regressors(pipelines)
    assert frozen.affine is not None
    probe = rng.normal(size=(50, 9))
    probe[rng.random(probe.shape) < 0.4] = np.nan
    expected = np.column_stack([p.predict(probe) for p in pipelines])
    np.testing.assert_allclose(frozen.predict(probe), expected, rtol=1e-12, atol=1e-12)
    affine = frozen.affine
    split = affine.partial(probe[:, :5]) + affine.bias + affine.partial(probe[:, 5:], 5)
    np.testing.assert_allclose(split, expected, rtol=1e-12, atol=1e-12)
    for _ in range(3):  # a recurring row's kept product is the computed one, per row value and start
        for row in probe[:12, 5:]:
            for start in (4, 5):
                got = affine.constant_partial(row[None, :4], start)
                np.testing.assert_array_equal(got, affine.partial(row[None, :4], start))


def test_regressors_it_cannot_freeze_are_called_and_mixed_lists_keep_their_order():
    from lightgbm import LGBMRegressor
    from sklearn.neighbors import KNeighborsRegressor
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 4))
    y = X[:, 0] + rng.normal(size=200) * 0.1
    regressors = [KNeighborsRegressor(5).fit(X, y), _ridge_pipelines(rng, X)[0],
                  LGBMRegressor(n_estimators=5, verbose=-1).fit(X, y)]
    frozen = freeze_regressors(regressors)
    assert isinstance(frozen.parts[0], Called) and isinstance(frozen.parts[1], Affine)
    assert frozen.affine is None
    expected = np.column_stack([r.predict(X) for r in regressors])
    np.testing.assert_allclose(frozen.predict(X), expected, rtol=1e-12, atol=1e-12)
