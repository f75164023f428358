"""Peer routers as quality regressors: the baselines published routers are measured against.

Each class is a scikit-learn regressor of the quality of every model given
the features :class:`~estimators.quality.QualityEstimator` builds (prompt
features, then the post-hoc block with NaN for models not run), so the peer
is plugged in as ``QualityEstimator(regressor=...)`` and gets the same σ,
cost model, policy fitting and evaluation as our own estimators. That makes
the comparison one of quality models only:

* :class:`KNNQualityRegressor`: RouterBench's kNN router;
* :class:`TaskMeanRegressor`: the per-task average, the routing plateau
  a router must beat to have learned anything from the prompt;
* :class:`MLPQualityRegressor`: RouterBench's MLP router;
* :class:`MatrixFactorizationRegressor`: RouteLLM's matrix-factorisation
  router and EmbedLLM's model embeddings, learning all models at once from
  partial labels.

All are multi-output (one fit serves every model, so ``pooled="auto"`` never
pools them) and accept NaN in ``X`` (the post-hoc cells of models not run);
they refuse infinite values, empty input and a feature count at predict that
differs from fit. :data:`PEER_REGRESSORS` maps the CLI's ``--estimator``
names to the classes.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.model_selection import GroupKFold, KFold
from sklearn.neighbors import KNeighborsRegressor
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_array
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from .kinds import PEER_KINDS

__all__ = ["KNNQualityRegressor", "MLPQualityRegressor", "MatrixFactorizationRegressor", "PEER_REGRESSORS",
           "PartialTargets", "TaskMeanRegressor"]

#: Prefix ``ColumnTransformer.get_feature_names_out`` gives the task/subtask one-hot columns
#: (the ``category`` step of :func:`~estimators.featurize.make_prompt_featurizer`).
CATEGORY_PREFIX = "category__"
#: Up to this many rows, :meth:`TaskMeanRegressor.predict_cells` looks each row up instead of its distinct rows.
_FEW_ROWS = 64


def _imputed_scaled() -> list:
    """Mean imputation with "was missing" indicators, then standardisation.

    NaN post-hoc cells say a model did not run.
    """
    return [SimpleImputer(add_indicator=True, keep_empty_features=True), StandardScaler()]


class _Peer(RegressorMixin, BaseEstimator):
    """Input handling shared by the peers: NaN allowed in ``X``, infinities and empty input refused, multi-output."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.target_tags.multi_output = True
        return tags

    def _check_fit(self, X: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Validated ``(X, Y)`` with ``Y`` 2-D; remembers whether ``y`` was 1-D, so predictions keep its shape."""
        features, target = validate_data(self, X, y, ensure_all_finite="allow-nan", multi_output=True,
                                         y_numeric=True, dtype=np.float64)
        self.single_output_ = target.ndim == 1
        return features, target.reshape(len(target), -1).astype(np.float64)

    def _check_predict(self, X: ArrayLike) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, ensure_all_finite="allow-nan", dtype=np.float64, reset=False)

    def _shaped(self, out: np.ndarray) -> np.ndarray:
        out = np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1)
        return out[:, 0] if self.single_output_ else out


class KNNQualityRegressor(_Peer):
    """RouterBench's kNN router: the distance-weighted mean quality of the nearest training rows.

    Reproduces the router of Hu et al., "RouterBench" (2024): a query's
    quality estimate for each model is the average over its ``k`` nearest
    training queries in feature space. Here the space is our features
    (imputed, with missing indicators, standardised) rather than a sentence
    embedding, neighbours are weighted by inverse distance, and the post-hoc
    block makes the same regressor serve every run set. ``k`` is chosen by
    cross-validation on the training rows: training rows repeat each query
    under several run sets, so an ungrouped split finds a copy of every test
    query among its training rows and picks the smallest ``k`` by leakage;
    with ``groups`` (the query of each row, which
    :class:`~estimators.quality.QualityEstimator` passes) the folds keep a
    query's rows together. Leaves out RouterBench's cost-aware selection
    (the policy does that here) and approximate neighbour search.

    Parameters
    ----------
    k_grid : tuple of int, default=(5, 10, 20, 50, 100, 200)
        Candidate neighbour counts; those above the rows of a training fold
        are dropped (the smallest fold size stands in when all are).
    n_folds : int, default=3
        Folds of the cross-validation.
    random_state : int, default=0
        Seed of the shuffled folds used when no ``groups`` are given.

    Attributes
    ----------
    n_neighbors_ : int
        The ``k`` chosen.
    cv_scores_ : dict of int to float
        Mean squared error of each candidate ``k`` on held-out folds.
    pipeline_ : Pipeline
        ``SimpleImputer → StandardScaler → KNeighborsRegressor`` fitted on every row.
    n_features_in_ : int
        Number of feature columns.
    """

    def __init__(self, k_grid: tuple[int, ...] = (5, 10, 20, 50, 100, 200), n_folds: int = 3,
                 random_state: int = 0) -> None:
        self.k_grid = k_grid
        self.n_folds = n_folds
        self.random_state = random_state

    def _pipeline(self, k: int) -> Pipeline:
        return make_pipeline(*_imputed_scaled(), KNeighborsRegressor(n_neighbors=k, weights="distance"))

    def fit(self, X: ArrayLike, y: ArrayLike, groups: ArrayLike | None = None) -> KNNQualityRegressor:
        """Choose ``k`` by (grouped) cross-validation, then fit on every row.

        Parameters
        ----------
        X : array-like of shape (n, F)
            Features; NaN where a post-hoc cell is missing.
        y : array-like of shape (n,) or (n, K)
            Quality of each model.
        groups : array-like of shape (n,), optional
            Query of each row: folds keep a query's rows together. Without
            it the folds are shuffled rows.

        Returns
        -------
        self : KNNQualityRegressor
        """
        X, Y = self._check_fit(X, y)
        grid = sorted({int(k) for k in self.k_grid})
        if not grid or grid[0] < 1:
            raise ValueError(f"k_grid must hold positive neighbour counts; got {self.k_grid!r}")
        n = X.shape[0]
        if groups is None:
            splits = KFold(min(self.n_folds, n), shuffle=True, random_state=self.random_state).split(X) if n > 1 else []
        else:
            groups = np.asarray(groups)
            if groups.shape != (n,):
                raise ValueError(f"groups must have one entry per row of X ({n}); got shape {groups.shape}")
            n_groups = np.unique(groups).size
            splits = GroupKFold(min(self.n_folds, n_groups)).split(X, groups=groups) if n_groups > 1 else []
        splits = list(splits)
        smallest = min((train.size for train, _ in splits), default=n)
        candidates = [k for k in grid if k <= smallest] or [smallest]
        errors = np.zeros(len(candidates))
        for train, test in splits:
            pipeline = self._pipeline(candidates[-1]).fit(X[train], Y[train])
            for j, k in enumerate(candidates):  # the neighbours are stored once; k is read at predict
                pipeline.set_params(kneighborsregressor__n_neighbors=k)
                errors[j] += np.mean((pipeline.predict(X[test]).reshape(len(test), -1) - Y[test]) ** 2) * test.size
        self.cv_scores_ = {k: float(e / n) for k, e in zip(candidates, errors, strict=True)}
        self.n_neighbors_ = candidates[int(np.argmin(errors))]  # the smallest k on ties
        self.pipeline_ = self._pipeline(min(self.n_neighbors_, n)).fit(X, Y)
        return self

    def predict(self, X: ArrayLike) -> NDArray[np.float64]:
        """Distance-weighted mean quality of the ``n_neighbors_`` nearest training rows.

        Parameters
        ----------
        X : array-like of shape (n, n_features_in_)

        Returns
        -------
        ndarray of shape (n,) or (n, K)
            As ``y`` was at fit.
        """
        X = self._check_predict(X)
        return self._shaped(self.pipeline_.predict(X))


def _cell_weights(sample_weight: ArrayLike | None, X: np.ndarray, Y: np.ndarray) -> NDArray[np.float64]:
    """Checked row weights ``(n,)``, or per-cell weights ``(n, K)``: every model needs a positive total (its mean)."""
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if weight is None or weight.ndim < 2:
        return _check_sample_weight(weight, X)
    if weight.shape != Y.shape or not np.isfinite(weight).all() or (weight < 0).any():
        raise ValueError(f"per-cell sample_weight must be finite, >= 0 and shaped like y {Y.shape}; "
                         f"got shape {weight.shape}")
    if not (weight.sum(axis=0) > 0).all():
        raise ValueError("every column of y needs a positive total weight (a model logged somewhere)")
    return weight


class TaskMeanRegressor(_Peer):
    """The routing plateau: each model's mean quality per (task, subtask), nothing from the prompt.

    Reproduces the per-task average every routing paper compares with:
    routing each benchmark to its best model on average already reaches most
    of the gain of routing (RouterBench's "oracle per task" plateau), so a
    router that does not beat it has learned nothing from the prompt text. A
    cell is one distinct value of the task/subtask one-hot columns (those
    named ``category__…``, found from ``feature_names``); its mean is shrunk
    toward the model's overall mean as an m-estimate,
    ``(Σ_cell y + m · ȳ) / (n_cell + m)`` with ``m = prior_weight`` rows
    (weights replace counts when given), because a subtask with a handful
    of rows would otherwise be routed on noise. Rows, not queries: each
    query counts once per sampled run set, about 8 rows. Ex-ante only: it
    ignores the prompt text and the post-hoc block (a model that ran gets
    the same estimate as before), and without category columns (no task in
    the table, or no ``feature_names``) it predicts the overall means.

    Parameters
    ----------
    prior_weight : float, default=10.0
        Rows' worth of the overall mean added to every cell.

    Attributes
    ----------
    category_columns_ : ndarray of int
        Indices of the one-hot columns (empty without tasks).
    cells_ : ndarray of shape (C, len(category_columns_))
        The distinct one-hot rows seen in training.
    cell_means_ : ndarray of shape (C, K)
        Shrunk mean quality of every model per cell.
    cell_index_ : dict of bytes to int
        Row of each cell (its one-hot row's bytes) in ``cell_means_``.
    table_ : ndarray of shape (C + 1, K)
        ``cell_means_`` and, last, the overall means for cells not seen in training.
    overall_ : ndarray of shape (K,)
        Each model's mean quality over every row; the estimate of a cell never seen.
    n_features_in_ : int
        Number of feature columns.
    """

    def __init__(self, prior_weight: float = 10.0) -> None:
        self.prior_weight = prior_weight

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.regressor_tags.poor_score = True  # without feature names it predicts the mean, by design
        return tags

    def fit(self, X: ArrayLike, y: ArrayLike, feature_names: ArrayLike | None = None,
            sample_weight: ArrayLike | None = None) -> TaskMeanRegressor:
        """Mean quality per task cell, shrunk toward the overall mean.

        Parameters
        ----------
        X : array-like of shape (n, F)
        y : array-like of shape (n,) or (n, K)
        feature_names : array-like of str, shape (F,), optional
            Names of the columns of ``X``; those starting with ``category__``
            define the cells. Default: no cells, the overall means.
        sample_weight : array-like of shape (n,) or (n, K), optional
            Row weights (inverse propensities), or one weight per (row,
            model) cell: partial logs give each model its own logged rows
            (weight 0 leaves a cell out: its ``y``, a number all the same,
            is not read), so that every model's means come from the rows
            where it was logged.

        Returns
        -------
        self : TaskMeanRegressor
        """
        X, Y = self._check_fit(X, y)
        if self.prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0; got {self.prior_weight!r}")
        weight = _cell_weights(sample_weight, X, Y)
        names = np.asarray([] if feature_names is None else feature_names, dtype=object)
        if feature_names is not None and names.shape != (X.shape[1],):
            raise ValueError(f"feature_names must name the {X.shape[1]} columns of X; got {names.size} names")
        self.category_columns_ = np.flatnonzero([str(name).startswith(CATEGORY_PREFIX) for name in names])
        self.overall_ = np.average(Y, axis=0, weights=weight) if weight.ndim == 1 else (
            (weight * Y).sum(axis=0) / weight.sum(axis=0))
        self.cells_, cell = np.unique(X[:, self.category_columns_], axis=0, return_inverse=True)
        cell = cell.ravel()
        columns = weight.reshape(len(weight), -1)
        total = np.zeros((len(self.cells_), Y.shape[1]))
        np.add.at(total, cell, columns * Y)
        count = np.column_stack([np.bincount(cell, weights=w, minlength=len(self.cells_)) for w in columns.T])
        self.cell_means_ = (total + self.prior_weight * self.overall_) / (count + self.prior_weight)
        self.cell_index_ = {np.ascontiguousarray(c, dtype=np.float64).tobytes(): i for i, c in enumerate(self.cells_)}
        self.table_ = np.vstack([self.cell_means_, self.overall_])
        return self

    def predict(self, X: ArrayLike) -> NDArray[np.float64]:
        """The shrunk mean of each row's task cell; the overall mean for a cell not seen in training.

        Parameters
        ----------
        X : array-like of shape (n, n_features_in_)

        Returns
        -------
        ndarray of shape (n,) or (n, K)
        """
        X = self._check_predict(X)
        return self._shaped(self.predict_cells(X[:, self.category_columns_]))

    def predict_cells(self, keys: NDArray[np.float64]) -> NDArray[np.float64]:
        """Every model's shrunk mean for rows given by their ``category__`` columns only, shape ``(n, K)``.

        A dictionary from a cell's bytes to its row of means, over the
        distinct keys of the batch: linear in the rows whatever the number
        of cells (a batch of 65,536 queries over a few hundred subtasks
        would otherwise compare every row with every cell).

        Parameters
        ----------
        keys : ndarray of float64, shape (n, len(category_columns_))
            The category one-hot columns of ``X``.

        Returns
        -------
        ndarray of float64, shape (n, K)
        """
        keys = np.ascontiguousarray(keys, dtype=np.float64)
        if keys.shape[1] == 0:
            return np.tile(self.overall_, (keys.shape[0], 1))
        unseen = len(self.cells_)  # the last row of the table: a cell not seen in training
        if keys.shape[0] <= _FEW_ROWS:  # a service's request: np.unique would cost more than the look-ups
            found = np.array([self.cell_index_.get(row.tobytes(), unseen) for row in keys], dtype=np.int64)
            return self.table_[found]
        distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
        found = np.array([self.cell_index_.get(cell.tobytes(), unseen) for cell in distinct], dtype=np.int64)
        return self.table_[found[inverse.ravel()]]


class MLPQualityRegressor(_Peer):
    """RouterBench's MLP router: a one-hidden-layer network from the features to every model's quality.

    Reproduces the MLP router of RouterBench (Hu et al., 2024) on our
    features (imputed with missing indicators, standardised) with all models
    as outputs of one network, ReLU, Adam and an L2 penalty. Early stopping
    is off and the number of epochs fixed: its validation split would be
    random rows, and rows repeat each query under several run sets, so the
    held-out score would be measured on queries the network trains on.
    Outputs are not squashed (the identity output of ``MLPRegressor``);
    :class:`~estimators.quality.QualityEstimator` clips them to [0, 1].
    Leaves out RouterBench's tuning of width and depth per benchmark.

    Parameters
    ----------
    hidden : int, default=64
        Width of the hidden layer.
    alpha : float, default=1e-2
        L2 penalty: stronger than ``MLPRegressor``'s default, because the
        repeated rows make memorising a query cheap.
    max_iter : int, default=50
        Epochs: about 400 passes over each distinct query at 8 run sets per
        query, enough to fit the per-task structure on the shared data
        without memorising prompts; more did not help and costs time.
    random_state : int, default=0
        Seed of the initial weights and the batch order.

    Attributes
    ----------
    pipeline_ : Pipeline
        ``SimpleImputer → StandardScaler → MLPRegressor``, fitted.
    n_iter_ : int
        Epochs run (``max_iter``).
    n_features_in_ : int
        Number of feature columns.
    """

    def __init__(self, hidden: int = 64, alpha: float = 1e-2, max_iter: int = 50, random_state: int = 0) -> None:
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> MLPQualityRegressor:
        """Fit the network for ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n, F)
        y : array-like of shape (n,) or (n, K)
        sample_weight : array-like of shape (n,), optional
            Row weights (inverse propensities).

        Returns
        -------
        self : MLPQualityRegressor
        """
        X, Y = self._check_fit(X, y)
        network = MLPRegressor(hidden_layer_sizes=(self.hidden,), alpha=self.alpha, max_iter=self.max_iter,
                               early_stopping=False, random_state=self.random_state)
        self.pipeline_ = make_pipeline(*_imputed_scaled(), network)
        target = Y[:, 0] if Y.shape[1] == 1 else Y
        with warnings.catch_warnings():  # the epoch count is fixed on purpose (see the class docstring)
            warnings.simplefilter("ignore", ConvergenceWarning)
            params = {} if sample_weight is None else {"mlpregressor__sample_weight": _check_sample_weight(
                sample_weight, X)}
            self.pipeline_.fit(X, target, **params)
        self.n_iter_ = self.pipeline_[-1].n_iter_
        return self

    def predict(self, X: ArrayLike) -> NDArray[np.float64]:
        """The network's outputs (unclipped).

        Parameters
        ----------
        X : array-like of shape (n, n_features_in_)

        Returns
        -------
        ndarray of shape (n,) or (n, K)
        """
        X = self._check_predict(X)
        return self._shaped(self.pipeline_.predict(X))


class PartialTargets:
    """Marker of regressors that read NaN in ``y`` as "not labelled" and learn every output in one fit.

    :class:`~estimators.quality.QualityEstimator` gives such a regressor the
    full ``(n, K)`` target with NaN where an outcome is not logged (and
    ``(n, K)`` weights), instead of one clone per model on its own rows, so
    on partial logs it learns across models.
    """


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warning for large |z|


class MatrixFactorizationRegressor(PartialTargets, _Peer):
    """RouteLLM's matrix-factorisation router: ``q̂_m(x) = σ(v_m · W z(x) + b_m)`` for every model ``m``.

    Reproduces the MF router of Ong et al., "RouteLLM" (2024), and the model
    embeddings of EmbedLLM (Zhuang et al., 2024): a query is projected to a
    ``d``-dimensional vector ``W z`` (``z``: the features, imputed with
    missing indicators and standardised), each model has a learned embedding
    ``v_m`` and bias ``b_m``, and the score is their dot product through a
    sigmoid, trained on cross-entropy with an L2 penalty by full-batch Adam
    for a fixed number of epochs (seeded, so fits are reproducible). All
    models share ``W``, so a model with few labels borrows what makes a
    query hard from the others: NaN in ``y`` means "not labelled" and is
    left out of the loss (:class:`PartialTargets`). Leaves out RouteLLM's
    pairwise (win/loss) training on preference data, and its element-wise
    product with a final linear layer, which for scoring one model at a
    time is a reweighting of the same dot product.

    Parameters
    ----------
    dim : int, default=16
        Dimension ``d`` of the embeddings.
    alpha : float, default=1e-3
        L2 penalty on ``W`` and the embeddings.
    learning_rate : float, default=0.02
        Adam step size.
    epochs : int, default=300
        Full-batch Adam steps.
    random_state : int, default=0
        Seed of the initial weights.

    Attributes
    ----------
    preprocess_ : Pipeline
        ``SimpleImputer → StandardScaler``, fitted.
    projection_ : ndarray of shape (F', d)
        ``Wᵀ`` over the preprocessed features ``F'``.
    embeddings_ : ndarray of shape (K, d)
        ``v_m``.
    bias_ : ndarray of shape (K,)
        ``b_m``.
    loss_ : float
        Final training loss (cross-entropy plus penalty).
    n_features_in_ : int
        Number of feature columns.
    """

    def __init__(self, dim: int = 16, alpha: float = 1e-3, learning_rate: float = 0.02, epochs: int = 300,
                 random_state: int = 0) -> None:
        self.dim = dim
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.random_state = random_state

    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
            ) -> MatrixFactorizationRegressor:
        """Learn the projection, the model embeddings and biases on the labelled cells.

        Parameters
        ----------
        X : array-like of shape (n, F)
        y : array-like of shape (n,) or (n, K)
            Quality in [0, 1]; NaN where not labelled (every output needs at
            least one label).
        sample_weight : array-like of shape (n,) or (n, K), optional
            Row or cell weights (inverse propensities).

        Returns
        -------
        self : MatrixFactorizationRegressor
        """
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        features = validate_data(self, X, ensure_all_finite="allow-nan", dtype=np.float64)
        given = check_array(y, ensure_all_finite="allow-nan", ensure_2d=False, dtype=np.float64, input_name="y")
        if given.ndim not in (1, 2) or given.shape[0] != features.shape[0]:
            raise ValueError(f"y must have shape (n,) or (n, K) with n = {features.shape[0]} rows of X; "
                             f"got {given.shape}")
        self.single_output_ = given.ndim == 1
        Y = given.reshape(len(given), -1)
        labelled = ~np.isnan(Y)
        if not labelled.any(axis=0).all():
            raise ValueError(f"every output of y needs a label; column(s) {np.flatnonzero(~labelled.any(axis=0))} "
                             "are all NaN")
        weight = np.ones_like(Y) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if weight.ndim == 1:
            weight = np.repeat(_check_sample_weight(weight, features)[:, None], Y.shape[1], axis=1)
        if weight.shape != Y.shape or not np.isfinite(weight).all() or (weight < 0).any():
            raise ValueError(f"sample_weight must be finite, >= 0 and of shape (n,) or {Y.shape}; got {weight.shape}")
        if self.dim < 1 or self.epochs < 1:
            raise ValueError(f"dim and epochs must be >= 1; got dim={self.dim!r}, epochs={self.epochs!r}")
        self.preprocess_ = make_pipeline(*_imputed_scaled()).fit(features)
        Z = self.preprocess_.transform(features)
        weight = np.where(labelled, weight, 0.0)
        weight = weight / max(weight.sum(), np.finfo(float).tiny)
        target = np.where(labelled, Y, 0.0)
        rng = np.random.default_rng(self.random_state)
        params = [rng.normal(0, 1 / np.sqrt(max(Z.shape[1], 1)), (Z.shape[1], self.dim)),
                  rng.normal(0, 0.1, (Y.shape[1], self.dim)),
                  np.zeros(Y.shape[1])]
        moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for step in range(1, self.epochs + 1):
            W, V, b = params
            H = Z @ W
            P = _sigmoid(H @ V.T + b)
            G = weight * (P - target)  # gradient of the weighted mean cross-entropy by the logits
            grads = [Z.T @ (G @ V) + self.alpha * W, G.T @ H + self.alpha * V, G.sum(axis=0)]
            for p, g, (m, v) in zip(params, grads, moments, strict=True):
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * g * g
                p -= self.learning_rate * (m / (1 - beta1 ** step)) / (np.sqrt(v / (1 - beta2 ** step)) + eps)
        self.projection_, self.embeddings_, self.bias_ = params
        P = np.clip(_sigmoid(Z @ self.projection_ @ self.embeddings_.T + self.bias_), 1e-12, 1 - 1e-12)
        cross_entropy = -(weight * (target * np.log(P) + (1 - target) * np.log(1 - P))).sum()
        self.loss_ = float(cross_entropy + self.alpha / 2 * ((self.projection_ ** 2).sum()
                                                             + (self.embeddings_ ** 2).sum()))
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.regressor_tags.poor_score = True  # outputs are probabilities: targets outside [0, 1] cannot be met
        return tags

    def predict(self, X: ArrayLike) -> NDArray[np.float64]:
        """``σ(v_m · W z + b_m)`` for every model.

        Parameters
        ----------
        X : array-like of shape (n, n_features_in_)

        Returns
        -------
        ndarray of shape (n,) or (n, K)
            In (0, 1).
        """
        X = self._check_predict(X)
        Z = self.preprocess_.transform(X)
        return self._shaped(_sigmoid(Z @ self.projection_ @ self.embeddings_.T + self.bias_))


#: The peer kinds of ``--estimator`` and their regressor classes (default parameters).
PEER_REGRESSORS: dict[str, type[_Peer]] = dict(zip(
    PEER_KINDS, (KNNQualityRegressor, TaskMeanRegressor, MLPQualityRegressor, MatrixFactorizationRegressor),
    strict=True))
