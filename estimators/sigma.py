"""A per-prediction standard deviation learned from out-of-fold residuals.

With 0/1 quality the residual ``y - q̂`` takes only two values per query
(``1 - q̂`` or ``-q̂``), so a Gaussian σ can never describe it exactly.
What the decision kernel needs is a σ that ranks queries by how wrong the
estimate tends to be and whose ``±1σ``/``±2σ`` intervals cover about as
often as a Gaussian's would. :class:`SigmaRegressor` therefore (1) regresses
the *squared* residual on a few features (a conditional variance, whose
square root is the RMS error), and (2) multiplies by one scale chosen on
cross-fitted predictions so that ``|residual| <= σ`` holds for a target share
(``coverage``) of rows. ``±2σ`` coverage is then measured, not forced.
"""

from __future__ import annotations

import numpy as np
from lightgbm import LGBMRegressor
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.model_selection import GroupKFold, KFold, cross_val_predict
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["SigmaRegressor"]

_FLOOR = 1e-6


class SigmaRegressor(RegressorMixin, BaseEstimator):
    """Predict the standard deviation of an estimate's error.

    Parameters
    ----------
    estimator : regressor, optional
        Model of the squared residual; default a small LightGBM
        (100 trees, 15 leaves, at least 50 rows per leaf).
    coverage : float, default=0.7
        Target share of rows with ``|residual| <= σ`` on cross-fitted
        predictions: the middle of the 0.6-0.8 band a Gaussian's 0.683 sits in.
    n_splits : int, default=3
        Folds of the cross-fitting that chooses the scale.

    Attributes
    ----------
    estimator_ : regressor
        ``estimator`` fitted on all rows.
    scale_ : float
        Multiplier applied to ``sqrt(predicted squared residual)``.
    n_features_in_ : int
        Number of features.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 2)); residual = rng.normal(size=400) * np.exp(X[:, 0])
    >>> sigma = SigmaRegressor().fit(X, residual).predict(X)
    >>> bool(0.6 < np.mean(np.abs(residual) <= sigma) < 0.8)
    True
    """

    def __init__(self, estimator: BaseEstimator | None = None, coverage: float = 0.7, n_splits: int = 3) -> None:
        self.estimator = estimator
        self.coverage = coverage
        self.n_splits = n_splits

    def _estimator(self) -> BaseEstimator:
        if self.estimator is not None:
            return clone(self.estimator)
        return LGBMRegressor(
            n_estimators=100, num_leaves=15, min_child_samples=50, learning_rate=0.05, verbose=-1, n_jobs=1
        )

    def fit(self, X, y, groups=None) -> "SigmaRegressor":
        """Fit on features ``X`` and residuals ``y`` (rows of one group share a query)."""
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", y_numeric=True, dtype=np.float64)
        if not 0.0 < self.coverage < 1.0:
            raise ValueError(f"coverage must be in (0, 1); got {self.coverage}")
        squared = y**2
        n_splits = min(self.n_splits, len(y))
        if n_splits >= 2:
            if groups is not None:
                n_splits = min(n_splits, len(np.unique(groups)))
            cv = GroupKFold(n_splits) if groups is not None else KFold(n_splits, shuffle=True, random_state=0)
            raw = cross_val_predict(self._estimator(), X, squared, cv=cv, groups=groups)
        else:  # one row: nothing to cross-fit on
            raw = squared
        raw = np.sqrt(np.maximum(raw, _FLOOR))
        self.scale_ = float(np.quantile(np.abs(y) / raw, self.coverage))
        self.estimator_ = self._estimator().fit(X, squared)
        return self

    def predict(self, X) -> np.ndarray:
        """Return σ, shape (n,), all entries > 0."""
        check_is_fitted(self, "scale_")
        X = validate_data(self, X, ensure_all_finite="allow-nan", dtype=np.float64, reset=False)
        raw = np.sqrt(np.maximum(self.estimator_.predict(X), _FLOOR))
        return np.maximum(self.scale_ * raw, _FLOOR)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags
