"""Quality estimator ``q̂_i(x | R)`` with its standard deviation ``σ_i(x | R)``.

One regressor per model ``i`` serves every run set ``R``: its features are
the prompt features of ``x`` followed by the post-hoc block of ``R``
(:mod:`estimators.posthoc`), identical for all targets. Training rows are the
queries repeated with the run sets of :mod:`estimators.runsets`; the
out-of-fold predictions of a :class:`~sklearn.model_selection.GroupKFold` by
query train the σ model (:class:`~estimators.sigma.SigmaRegressor`) on
residuals the regressors did not see.

The regressor is a template (cloned once per model, or once for all models
when it is multi-output), so the same code runs LightGBM (the default,
NaN-native) and the embedding-based linear family (:func:`make_linear_regressor`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from lightgbm import LGBMRegressor
from sklearn.base import BaseEstimator, clone
from sklearn.utils import get_tags
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .posthoc import ResponseInfo, posthoc_features
from .runsets import sample_run_sets
from .sigma import SigmaRegressor

__all__ = ["PosthocData", "QualityEstimator", "make_lightgbm_regressor", "make_linear_regressor"]


class PosthocData(NamedTuple):
    """What the run models returned, for the queries being estimated.

    Attributes
    ----------
    signals : dict of str to ndarray of float64, shape (N, K)
        Named numeric signals (read only where a model ran).
    responses : ResponseInfo or None
        Parsed responses, ``None`` when there is no response text.
    """

    signals: dict[str, np.ndarray]
    responses: ResponseInfo | None

    def take(self, rows: np.ndarray) -> "PosthocData":
        """Return the data of queries ``rows`` (indices, repeats allowed)."""
        responses = None if self.responses is None else ResponseInfo(*(a[rows] for a in self.responses))
        return PosthocData({name: value[rows] for name, value in self.signals.items()}, responses)


def make_lightgbm_regressor(n_estimators: int = 100, n_jobs: int = 1) -> LGBMRegressor:
    """Default per-model regressor: small, strongly regularised LightGBM.

    The cross-entropy objective accepts labels anywhere in [0, 1] (0/1
    correctness and partial scores alike) and returns probabilities, which is
    what the Brier score and the kernel's ``E[max]`` expect. Every query
    appears once per sampled run set, so leaves need many rows
    (``min_child_samples=200``, 7 leaves) or they memorise single queries:
    with 31 leaves and 20 rows the RouterBench ex-ante Brier score was worse
    than the per-model mean. A learning rate of 0.05 for 100 trees keeps the
    fit short of its optimum on purpose: on GSM8K alone (923 training
    queries) 0.1 lost to the per-model mean, 0.05 beats it, and on the large
    tables it is as good or better. ``max_bin=63`` and half the columns per
    tree keep training of 11 models within seconds. ``n_jobs=1``: OpenMP
    threads spin-wait, and on a shared 2-core machine multi-threaded fits of
    small tables ran up to 100 times slower.
    """
    return LGBMRegressor(
        objective="cross_entropy", n_estimators=n_estimators, learning_rate=0.05, num_leaves=7,
        min_child_samples=200, max_bin=63, subsample=0.8, subsample_freq=1, colsample_bytree=0.5,
        verbose=-1, n_jobs=n_jobs, random_state=0,
    )


def make_linear_regressor(alpha: float = 10.0) -> Pipeline:
    """Embedding-based alternative: ridge regression over the same features.

    Missing post-hoc cells are imputed with the column mean plus a
    "was missing" indicator, so the linear model knows which models ran.
    """
    return make_pipeline(
        SimpleImputer(add_indicator=True, keep_empty_features=True), StandardScaler(), Ridge(alpha=alpha)
    )


def _features(prompt_features: np.ndarray, run: np.ndarray, posthoc: PosthocData) -> np.ndarray:
    return np.hstack([prompt_features, posthoc_features(run, posthoc.signals, posthoc.responses)])


_RUN_SIZE = 2  # column of |R| in the σ features: coverage is matched per run-set size


def _sigma_features(q: np.ndarray, run: np.ndarray) -> np.ndarray:
    """Rows (query, model) flattened: estimate, whether the model ran, ``|R|``, model index."""
    n, k = q.shape
    return np.column_stack([
        q.ravel(),
        run.ravel().astype(np.float64),
        np.repeat(run.sum(axis=1), k).astype(np.float64),
        np.tile(np.arange(k), n).astype(np.float64),
    ])


class QualityEstimator(BaseEstimator):
    """Per-model regressors of quality given the prompt and a run set, with σ.

    Parameters
    ----------
    regressor : regressor, optional
        Template cloned for every model; default
        :func:`make_lightgbm_regressor`. Predictions are clipped to [0, 1].
    sigma : SigmaRegressor, optional
        Template of the σ model; default ``SigmaRegressor(stratify=2)``:
        coverage matched separately for every run-set size ``|R|``, because
        errors shrink as models run and one pooled scale would over-cover
        late cascade steps and under-cover the first.
    n_folds : int, default=2
        Folds (grouped by query) of the out-of-fold predictions that train σ.
        Two folds cost one extra full fit; their regressors see half the
        data, so σ errs on the wide side, which the held-out coverage
        (``docs/estimators.md``) accepts.
    runs_per_query : int, default=8
        Sampled run sets per training query when ``K > all_subsets_up_to``.
    all_subsets_up_to : int, default=4
        Use every subset of models as a run set up to this many models.
    max_rows : int, default=200000
        Cap on the (query, model) rows the σ model is trained on (subsampled).
    random_state : int, default=0
        Seed of the run-set sampling and the subsampling.

    Attributes
    ----------
    regressors_ : list of regressor
        One fitted regressor per model, in column order; a single one when
        the regressor is multi-output (the linear family).
    sigma_ : SigmaRegressor
        Fitted σ model.
    oof_ : dict
        Out-of-fold ``quality``, ``run`` and ``target`` arrays of the augmented
        rows, kept for diagnostics (error correlations, coverage reports).
    """

    def __init__(
        self,
        regressor: BaseEstimator | None = None,
        sigma: SigmaRegressor | None = None,
        n_folds: int = 2,
        runs_per_query: int = 8,
        all_subsets_up_to: int = 4,
        max_rows: int = 200_000,
        random_state: int = 0,
    ) -> None:
        self.regressor = regressor
        self.sigma = sigma
        self.n_folds = n_folds
        self.runs_per_query = runs_per_query
        self.all_subsets_up_to = all_subsets_up_to
        self.max_rows = max_rows
        self.random_state = random_state

    def _fit_regressors(self, X: np.ndarray, Y: np.ndarray) -> list[BaseEstimator]:
        """One regressor per model, or a single one for all when it handles several targets.

        The features are the same for every model, so a multi-output
        regressor (ridge) shares its work (``XᵀX``) across the ``K`` targets.
        """
        template = self.regressor if self.regressor is not None else make_lightgbm_regressor()
        if get_tags(template).target_tags.multi_output:
            return [clone(template).fit(X, Y)]
        return [clone(template).fit(X, Y[:, i]) for i in range(Y.shape[1])]

    @staticmethod
    def _predict_regressors(regressors: list[BaseEstimator], X: np.ndarray) -> np.ndarray:
        return np.clip(np.column_stack([r.predict(X) for r in regressors]), 0.0, 1.0)

    def fit(self, prompt_features: np.ndarray, quality: np.ndarray, posthoc: PosthocData) -> "QualityEstimator":
        """Fit on ``N`` queries.

        Parameters
        ----------
        prompt_features : ndarray of float64, shape (N, F)
        quality : ndarray of float64, shape (N, K)
            Observed quality of every model on every query.
        posthoc : PosthocData
            Signals and responses of every model on every query.
        """
        n, k = quality.shape
        rows, run = sample_run_sets(
            n, k, per_query=self.runs_per_query, all_subsets_up_to=self.all_subsets_up_to,
            random_state=self.random_state,
        )
        X = _features(prompt_features[rows], run, posthoc.take(rows))
        Y = quality[rows]
        oof = np.empty_like(Y)
        for train, test in GroupKFold(self.n_folds).split(X, groups=rows):
            oof[test] = self._predict_regressors(self._fit_regressors(X[train], Y[train]), X[test])
        self.regressors_ = self._fit_regressors(X, Y)
        self.oof_ = {"quality": oof, "run": run, "target": Y}
        flat_rows = np.repeat(rows, k)
        keep = np.random.default_rng(self.random_state).permutation(len(flat_rows))[: self.max_rows]
        sigma = self.sigma if self.sigma is not None else SigmaRegressor(stratify=_RUN_SIZE)
        self.sigma_ = clone(sigma).fit(
            _sigma_features(oof, run)[keep], (Y - oof).ravel()[keep], groups=flat_rows[keep]
        )
        return self

    def predict(
        self, prompt_features: np.ndarray, run: np.ndarray, posthoc: PosthocData
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(quality, sigma)``, each of shape (N, K), for run sets ``run``."""
        q = self._predict_regressors(self.regressors_, _features(prompt_features, run, posthoc))
        sigma = self.sigma_.predict(_sigma_features(q, run)).reshape(q.shape)
        return q, sigma
