"""scikit-learn's common checks on every sklearn-style estimator of ``estimators``.

Scope: the transformers and regressors that take ``(X, y)``. The table-level
objects (:class:`~estimators.quality.QualityEstimator`,
:class:`~estimators.cost.CostEstimator`,
:class:`~estimators.estimator.RouterEstimator`) are fitted on a RoutingTable's
arrays, not on ``(X, y)``, so the common checks do not apply; they subclass
``BaseEstimator`` only for ``get_params``/``clone`` and are tested directly in
``test_estimators_router.py``.
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from estimators import embedding
from estimators.embedding import EmbeddingFeaturizer
from estimators.featurize import StructuralFeaturizer, TextFeaturizer
from estimators.sigma import SigmaRegressor

SIGMA_EXCEPTIONS = {
    # σ is a standard deviation, not an estimate of y: on the check's data the
    # R² of σ against y is meaningless, so the score threshold cannot be met.
    "check_regressors_train": "predicts the spread of y, not y",
}


@parametrize_with_checks(
    [TextFeaturizer(n_components=3), StructuralFeaturizer(), EmbeddingFeaturizer(text=TextFeaturizer(n_components=3)),
     SigmaRegressor()],
    expected_failed_checks=lambda est: SIGMA_EXCEPTIONS if isinstance(est, SigmaRegressor) else {},
)
def test_sklearn_compatible(estimator, check, monkeypatch):
    if isinstance(estimator, EmbeddingFeaturizer):
        # The checks run on the TF-IDF fallback whether or not the extra is
        # installed: the same code path in CI and here, and seconds instead of
        # minutes of CPU inference. (With MiniLM installed every check passes
        # as well; test_estimators_embedding.py exercises that backend.)
        monkeypatch.setattr(embedding, "load_minilm", _missing_extra)
    check(estimator)


def _missing_extra():
    raise ImportError("simulated: the embeddings extra is not installed")
