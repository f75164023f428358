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

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from lightgbm import LGBMRegressor
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, clone
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import get_tags

from .clusters import CLUSTER_COUNTS, TEXT_PREFIX, CellPrior, choose_prior
from .frozen import Affine, freeze_regressors
from .peers import CATEGORY_PREFIX, PartialTargets, TaskMeanRegressor
from .posthoc import ResponseInfo, per_model_groups, posthoc_feature_names, posthoc_features
from .runsets import sample_run_sets
from .sigma import SigmaRegressor

__all__ = ["PosthocData", "QualityEstimator", "TREE_COUNTS", "accepted_fit_params", "fit_weighted",
           "make_lightgbm_regressor", "make_linear_regressor"]


class PosthocData(NamedTuple):
    """What the run models returned, for the queries being estimated.

    Attributes
    ----------
    signals : dict of str to ndarray of float64, shape (N, K)
        Named numeric signals (read only where a model ran).
    responses : ResponseInfo or None
        Parsed responses, ``None`` when there is no response text.
    """

    signals: Mapping[str, NDArray[np.float64]]
    responses: ResponseInfo | None

    def take(self, rows: NDArray[np.int64]) -> PosthocData:
        """Return the data of queries ``rows`` (indices, repeats allowed), as training rows repeat queries.

        Parameters
        ----------
        rows : ndarray of int, shape (M,)
            Query indices.

        Returns
        -------
        PosthocData
            Every array restricted to ``rows``, in that order.
        """
        responses = None if self.responses is None else ResponseInfo._make(a[rows] for a in self.responses)
        return PosthocData({name: value[rows] for name, value in self.signals.items()}, responses)


def make_lightgbm_regressor(n_estimators: int = 100, n_jobs: int = 1) -> LGBMRegressor:
    """Default per-model regressor: small, strongly regularised LightGBM.

    The cross-entropy objective accepts labels anywhere in [0, 1] (0/1
    correctness and partial scores alike) and returns probabilities, which is
    what the Brier score and the kernel's ``E[max]`` expect. Every query
    appears once per sampled run set, so leaves need many rows
    (``min_child_samples=200``, 7 leaves) or they memorise single queries.
    A learning rate of 0.05 for 100 trees keeps the fit short of its optimum
    on purpose, which small tables need. ``max_bin=63`` and half the columns
    per tree keep training of 11 models within seconds. ``n_jobs=1``: OpenMP
    threads spin-wait on a shared machine. The measurements behind each
    setting are in ``docs/estimators.md`` (*What was tried*).

    Parameters
    ----------
    n_estimators : int, default=100
        Number of trees.
    n_jobs : int, default=1
        LightGBM threads.

    Returns
    -------
    LGBMRegressor
        Unfitted.
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

    Parameters
    ----------
    alpha : float, default=10.0
        Ridge penalty.

    Returns
    -------
    Pipeline
        Unfitted ``SimpleImputer → StandardScaler → Ridge``; multi-output,
        so one fit serves every model.
    """
    return make_pipeline(
        SimpleImputer(add_indicator=True, keep_empty_features=True), StandardScaler(), Ridge(alpha=alpha)
    )


def accepted_fit_params(regressor: BaseEstimator, **params: Any) -> dict[str, Any]:
    """The entries of ``params`` that ``regressor.fit`` takes as keywords; ``None`` values are left out.

    How a regressor template declares that it uses what only the quality
    estimator knows (the query of each row, the names of the columns):
    by naming it in the signature of its ``fit``, as the peers of
    :mod:`estimators.peers` do; LightGBM and pipelines, which do not, are
    fitted as before.

    Parameters
    ----------
    regressor : regressor
        Its ``fit`` signature is read.
    **params
        Candidate keyword arguments, e.g. ``groups=…, feature_names=…``.

    Returns
    -------
    dict
        Those ``fit`` accepts.
    """
    accepted = inspect.signature(regressor.fit).parameters
    return {name: value for name, value in params.items() if value is not None and name in accepted}


def fit_weighted(regressor: BaseEstimator, X: np.ndarray, y: np.ndarray, weights: np.ndarray | None,
                 **fit_params: Any) -> BaseEstimator:
    """``regressor.fit(X, y, **fit_params)`` with per-row ``weights`` given to it, or to a pipeline's last step.

    Parameters
    ----------
    regressor : regressor or Pipeline
        Unfitted; its final estimator must accept ``sample_weight``.
    X, y : ndarray
        Training rows and targets.
    weights : ndarray of shape (len(y),), optional
        Sample weights; ``None`` fits unweighted.
    **fit_params
        Further keywords of ``regressor.fit`` (:func:`accepted_fit_params`).

    Returns
    -------
    regressor
        Fitted (the same object).

    Raises
    ------
    TypeError
        If ``weights`` are given and the regressor's ``fit`` takes no ``sample_weight``.
    """
    if weights is None:
        return regressor.fit(X, y, **fit_params)
    if isinstance(regressor, Pipeline):
        return regressor.fit(X, y, **{f"{regressor.steps[-1][0]}__sample_weight": weights}, **fit_params)
    if "sample_weight" not in inspect.signature(regressor.fit).parameters:
        raise TypeError(f"{type(regressor).__name__}.fit takes no sample_weight, so it cannot learn from weighted "
                        "rows (inverse propensities); drop the propensity column or pick another estimator")
    return regressor.fit(X, y, sample_weight=weights, **fit_params)


#: Tree counts the per-model LightGBM regressors choose among on their out-of-fold rows (``tree_counts``),
#: up to the regressor's own ``n_estimators``.
TREE_COUNTS = (25, 50)
#: Fewest out-of-fold cells (a model not run, at one run-set size) that choose between trees and prior there.
_MIN_CELLS = 100
#: Prior probabilities are kept this far from 0 and 1 before taking their logit.
_PRIOR_EPS = 1e-4


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _PRIOR_EPS, 1.0 - _PRIOR_EPS)
    return np.log(p / (1.0 - p))


def _log_loss(y: np.ndarray, q: np.ndarray) -> float:
    q = np.clip(q, 1e-12, 1.0 - 1e-12)
    return float(-(y * np.log(q) + (1.0 - y) * np.log(1.0 - q)).sum())


def _features(prompt_features: np.ndarray, run: np.ndarray, posthoc: PosthocData) -> np.ndarray:
    return np.hstack([prompt_features, posthoc_features(run, posthoc.signals, posthoc.responses)])


_RUN_SIZE = 2  # column of |R| in the σ features: coverage is matched per run-set size


def _sigma_features(q: np.ndarray, run: np.ndarray, cells: np.ndarray | None = None) -> np.ndarray:
    """Rows (query, model) flattened: estimate, whether the model ran, ``|R|``, model index.

    ``cells`` (flat indices ``query·K + model``) keeps only those rows.
    """
    n, k = q.shape
    cells = np.arange(n * k) if cells is None else cells
    return np.column_stack([
        q.ravel()[cells],
        run.ravel()[cells].astype(np.float64),
        np.repeat(run.sum(axis=1), k)[cells].astype(np.float64),
        (cells % k).astype(np.float64),
    ])


class QualityEstimator(BaseEstimator):
    """Per-model regressors of quality given the prompt and a run set, with σ.

    Parameters
    ----------
    regressor : regressor, optional
        Template cloned for every model (once for all when it is
        multi-output and every outcome is labelled, or when it reads NaN
        targets as not labelled, :class:`~estimators.peers.PartialTargets`);
        default :func:`make_lightgbm_regressor`. Predictions are clipped to
        [0, 1]. Regressors whose ``fit`` takes ``groups`` receive the query
        of each row, so internal cross-validation is grouped by query;
        those whose ``fit`` takes ``feature_names`` receive the names of the
        columns (see :meth:`fit`); the peers of :mod:`estimators.peers` use both.
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
    pooled : bool or "auto", default="auto"
        Fit one regressor for every model instead of one per model: its row
        for (query, model ``m``) is the features, ``m`` one-hot and ``m``'s
        own post-hoc columns (whether it ran, its signals, its answer's
        agreement), so the model-specific part sits at fixed positions.
        With partial logs each per-model regressor sees only its model's
        logged queries, while a pooled one learns what makes a query hard
        from every model's outcomes (measured in ``docs/partial_logs.md``).
        ``"auto"``: pooled when some outcome is
        not logged and the regressor is single-output (LightGBM).
    boost_from : {"task", None}, default="task"
        ``"task"``: the per-model LightGBM regressors boost from each model's
        shrunk per-task mean (:class:`~estimators.peers.TaskMeanRegressor`,
        out of fold on the training queries, as LightGBM's ``init_score``), so
        their trees only model how a query departs from its task's average:
        the post-hoc agreement departures are large and learned first, while
        prompt-text departures that do not generalise are left out by a short
        schedule (why: ``docs/peers.md``). Used
        when the regressor is LightGBM with the cross-entropy objective, the
        training table is fully logged and not pooled, and the prompt features
        hold task or subtask columns or prompt-text columns; otherwise (and
        with ``None``) LightGBM boosts from its average as usual. A pooled
        regressor (partial logs) boosts from the same prior, each model's
        cell means taken over the queries where it was logged, weighted by
        inverse propensity: starting from the pooled average instead, a few
        hundred labels of a model never moved its estimates far from the
        other models' (on issue 34's feedback loop, the models logged only
        by exploration were off by up to 0.14 on average, which is what the
        direct method then calibrated with; ``docs/feedback_loop.md``); it
        keeps ``n_estimators`` trees and its trees estimate unrun models. A "task"
        is a cell of :func:`~estimators.clusters.choose_prior`: the task and
        subtask labels, k-means clusters of the prompt-text features, or
        both (without labels the clusters stand in for them; users' logs
        rarely carry one), with the number of clusters and the shrinkage
        toward the model's overall mean chosen by out-of-fold log loss, so
        that a log of a few hundred queries boosts from little more than the
        per-model mean (the alternatives tried: ``docs/estimators.md``).
        A model not yet run is estimated by the prior alone at the run-set
        sizes ``|R|`` where its trees do not beat the prior in out-of-fold
        log loss on those cells (``unrun_trees_``): a prompt-text departure
        that does not generalise then moves no decision, and the trees come
        in where the answers of the models run tell something, and always
        once the model itself ran. Per size, so that an estimate does not
        jump from prior to trees when a model runs that tells nothing about
        it, which a cascade would read as a reveal (``docs/peers.md``).
    tree_counts : tuple of int or None, default=TREE_COUNTS
        With ``boost_from="task"``, the numbers of trees each model's regressor
        chooses among, besides its own ``n_estimators`` (the most it may
        keep), by its out-of-fold log loss (the folds σ needs anyway), so a
        table whose prompts tell little keeps few trees; ``None`` keeps
        ``n_estimators``.
    prior_clusters : tuple of int, default=CLUSTER_COUNTS
        With ``boost_from="task"``, the numbers of prompt clusters the
        prior's cells may add to the task labels (or stand for without
        them), chosen out of fold (:func:`~estimators.clusters.choose_prior`);
        ``()`` keys the prior on the labels alone.

    Attributes
    ----------
    regressors_ : list of regressor
        One fitted regressor per model, in column order; a single one when
        the regressor is multi-output (the linear family, the peers) on a
        full table, a :class:`~estimators.peers.PartialTargets` regressor,
        or ``pooled_``.
    pooled_ : bool
        Whether one regressor serves every model (see ``pooled``).
    prior_ : TaskMeanRegressor or None
        The per-cell means the regressors boosted from (``boost_from``),
        fitted on every training query over the keys of ``cells_``; ``None``
        when not used.
    cells_ : CellPrior or None
        Which labels and prompt clusters key the prior's cells, and its
        shrinkage (:func:`~estimators.clusters.choose_prior`); ``None`` when
        not boosted from a prior.
    n_trees_ : ndarray of int, shape (K,) or None
        Trees each model's regressor kept (``tree_counts``).
    unrun_trees_ : ndarray of bool, shape (K + 1, K) or None
        Row ``|R|``, column ``i``: whether model ``i``'s trees estimate it
        while it has not run and ``|R|`` models have; ``False``: the prior
        alone does (``boost_from``). Sizes with fewer than 100 out-of-fold
        cells take the choice of the size below. ``None`` when not boosted
        from the prior.
    self_columns_ : ndarray of int, shape (G, K)
        Per model, its own columns of the feature matrix (prompt features,
        then the post-hoc block), which a pooled regressor's rows repeat.
    sigma_ : SigmaRegressor
        Fitted σ model.
    oof_ : dict
        Out-of-fold ``quality``, ``run`` and ``target`` arrays of the augmented
        rows, kept for diagnostics (error correlations, coverage reports).
    frozen_ : FrozenRegressors
        ``regressors_`` frozen for prediction (:mod:`estimators.frozen`):
        what :meth:`predict` evaluates.
    sigma_table_ : Tabulated or None
        The σ model's forest as a table over the estimate ``q``, one row per
        (ran, ``|R|``, model): its other three features take at most
        ``2·(K+1)·K`` values, so a look-up replaces a hundred tree walks per
        (query, model) and step. Exact; ``None`` when σ is not a LightGBM forest.
    """

    # Fitted attributes that are ``None`` when the regressors do not boost from the prior.
    prior_: TaskMeanRegressor | None
    cells_: CellPrior | None
    n_trees_: NDArray[np.int64] | None
    unrun_trees_: NDArray[np.bool_] | None

    def __setstate__(self, state: dict) -> None:
        """Unpickle, giving a fitted estimator saved before the prior's fields existed their ``None``.

        Format-3 artifacts written before the prior's cells (``cells_``) and the
        per-size tree choice (``unrun_trees_``) existed still load (the artifact
        format did not change); their absence means what ``None`` means.
        """
        if "frozen_" in state:  # fitted: an unfitted estimator must not gain fitted attributes
            state = {"prior_": None, "cells_": None, "n_trees_": None, "unrun_trees_": None, **state}
        super().__setstate__(state)

    def __init__(
        self,
        regressor: BaseEstimator | None = None,
        sigma: SigmaRegressor | None = None,
        n_folds: int = 2,
        runs_per_query: int = 8,
        all_subsets_up_to: int = 4,
        max_rows: int = 200_000,
        random_state: int = 0,
        pooled: bool | str = "auto",
        boost_from: str | None = "task",
        tree_counts: tuple[int, ...] | None = TREE_COUNTS,
        prior_clusters: tuple[int, ...] = CLUSTER_COUNTS,
    ) -> None:
        self.pooled = pooled
        self.prior_clusters = prior_clusters
        self.boost_from = boost_from
        self.tree_counts = tree_counts
        self.regressor = regressor
        self.sigma = sigma
        self.n_folds = n_folds
        self.runs_per_query = runs_per_query
        self.all_subsets_up_to = all_subsets_up_to
        self.max_rows = max_rows
        self.random_state = random_state

    def _fit_regressors(self, X: np.ndarray, Y: np.ndarray, labelled: np.ndarray, weights: np.ndarray | None,
                        groups: np.ndarray, names: list[str], init: np.ndarray | None = None,
                        n_trees: Sequence[int] | NDArray[np.int64] | None = None) -> list[BaseEstimator]:
        """One regressor per model on the rows where its outcome is labelled, or one for all when it can.

        The features are the same for every model, so a multi-output
        regressor (ridge) shares its work (``XᵀX``) across the ``K`` targets;
        that needs every target on every row with the same weight, so with
        partial labels or per-cell weights each model gets its own clone,
        fitted on its own rows, unless the regressor reads NaN targets as
        not labelled (:class:`~estimators.peers.PartialTargets`). ``groups``
        (the query of each row) and ``names`` (of the columns of ``X``) go
        to regressors whose ``fit`` takes them (:func:`accepted_fit_params`).
        ``init`` (logits, one column per model) is each LightGBM regressor's
        ``init_score`` and ``n_trees`` its number of trees (``boost_from``).
        """
        if init is not None and not self.pooled_:
            if n_trees is None:
                raise TypeError("_fit_regressors: init (boosting from the prior) needs n_trees")
            return self._fit_from_prior(X, Y, init, n_trees)
        template = self._template()
        if self.pooled_:
            cells = [np.flatnonzero(labelled[:, i]) for i in range(Y.shape[1])]
            # K times the rows of one model: filled in place as float32 (LightGBM bins float32 as it is), so
            # the stacked matrix is held once, at half the size
            n_groups, k = self.self_columns_.shape
            stacked = np.empty((sum(rows.size for rows in cells), X.shape[1] + k + n_groups), np.float32)
            start = 0
            for i, rows in enumerate(cells):
                stacked[start:start + rows.size] = self._model_rows(X[rows], i)
                start += rows.size
            target = np.concatenate([Y[rows, i] for i, rows in enumerate(cells)])
            weight = None if weights is None else np.concatenate([weights[rows, i] for i, rows in enumerate(cells)])
            pooled_names = (names + [f"model[{i}]" for i in range(k)]
                            + [f"own_{names[column]}" for column in self.self_columns_[:, 0]])
            start_at = {} if init is None else {"init_score": np.concatenate([init[rows, i]
                                                                              for i, rows in enumerate(cells)])}
            return [fit_weighted(clone(template), stacked, target, weight, **start_at, **accepted_fit_params(
                template, groups=np.concatenate([groups[rows] for rows in cells]), feature_names=pooled_names))]
        params = accepted_fit_params(template, groups=groups, feature_names=names)
        if isinstance(template, PartialTargets):
            return [fit_weighted(clone(template), X, np.where(labelled, Y, np.nan),
                                 None if weights is None else np.where(labelled, weights, 0.0), **params)]
        if get_tags(template).target_tags.multi_output and labelled.all() and weights is None:
            return [clone(template).fit(X, Y, **params)]
        return [fit_weighted(clone(template), X[labelled[:, i]], Y[labelled[:, i], i],
                             None if weights is None else weights[labelled[:, i], i],
                             **accepted_fit_params(template, groups=groups[labelled[:, i]], feature_names=names))
                for i in range(Y.shape[1])]

    def _fit_from_prior(self, X: np.ndarray, Y: np.ndarray, init: np.ndarray,
                        n_trees: Sequence[int] | NDArray[np.int64]) -> list[BaseEstimator]:
        """One LightGBM regressor per model starting from the logits ``init`` with ``n_trees[i]`` trees."""
        template = self._template()
        return [fit_weighted(clone(template).set_params(n_estimators=int(n_trees[i])), X, Y[:, i], None,
                             init_score=np.ascontiguousarray(init[:, i]))
                for i in range(Y.shape[1])]

    def _boosts_from_prior(self, names: list[str], labelled: np.ndarray, weights: np.ndarray | None) -> bool:
        """Whether the regressors boost from the per-task prior (see ``boost_from``)."""
        if self.boost_from not in ("task", None):
            raise ValueError(f"boost_from must be 'task' or None, got {self.boost_from!r}")
        template = self._template()
        return (self.boost_from == "task" and type(template).__name__ == "LGBMRegressor"
                and template.get_params()["objective"] == "cross_entropy"
                and (self.pooled_ or (bool(labelled.all()) and weights is None))
                and any(n.startswith((CATEGORY_PREFIX, TEXT_PREFIX)) for n in names))

    def _fit_prior(self, prompt_features: np.ndarray, quality: np.ndarray, rows: np.ndarray, folds: list,
                   names: list[str], cells: np.ndarray | None = None) -> np.ndarray:
        """Choose and fit the per-cell prior (``cells_``, ``prior_``); return the augmented rows' starting logits.

        A training row starts from the prior of the other folds' queries
        (the folds of σ), so that no row starts from a mean that holds its
        own label. ``cells`` ``(N, K)``: partial logs' per-(query, model)
        weights, 0 where not logged, else the inverse propensity (the
        quality there is read only where the weight is positive).
        """
        query_fold = np.zeros(prompt_features.shape[0], dtype=np.int64)
        for fold, (_, test) in enumerate(folds):
            query_fold[rows[test]] = fold
        quality = quality if cells is None else np.where(cells > 0, quality, 0.0)
        self.cells_ = choose_prior(prompt_features, quality, names[:prompt_features.shape[1]], query_fold,
                                   self.random_state, cluster_counts=self.prior_clusters, weights=cells)
        keys = self.cells_.keys(prompt_features)
        prior = np.empty_like(quality)
        for fold in range(len(folds)):
            inside = query_fold == fold
            prior[inside] = self.cells_.fit(prompt_features[~inside], quality[~inside],
                                            None if cells is None else cells[~inside]).predict_cells(keys[inside])
        self.prior_ = self.cells_.fit(prompt_features, quality, cells)
        return _logit(prior)[rows]

    def _boost_from_prior(self, prompt_features: np.ndarray, quality: np.ndarray, rows: np.ndarray, run: np.ndarray,
                          folds: list, features: Callable[[NDArray[np.int64]], np.ndarray], Y: np.ndarray,
                          names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Fit the per-task prior, choose each model's tree count, and return the init logits and out-of-fold estimates.

        The prior of a training row comes from the queries of the other
        folds (out of fold, the folds of σ), so no row starts from a mean
        that holds its own label; the fold regressors grow the largest tree
        count, and each model keeps the count whose out-of-fold log loss is
        lowest (:data:`TREE_COUNTS`), which also gives σ's residuals. The
        same out-of-fold log loss decides, per run-set size, whether the
        trees or the prior alone estimate each model not yet run
        (``unrun_trees_``).
        """
        init = self._fit_prior(prompt_features, quality, rows, folds, names)
        k = Y.shape[1]
        most = int(self._template().get_params()["n_estimators"])
        counts = sorted({int(c) for c in (self.tree_counts or ()) if c < most} | {most})
        raw = np.empty((len(counts),) + Y.shape)
        for train, test in folds:  # ``features(rows)``: the training rows of those run sets
            regressors = self._fit_from_prior(features(train), Y[train], init[train], [counts[-1]] * k)
            held_out = features(test)
            for c, count in enumerate(counts):
                raw[c, test] = np.column_stack([r.predict(held_out, raw_score=True, num_iteration=count)
                                                for r in regressors])
            del held_out
        estimates = _sigmoid(raw + init)
        best = [int(np.argmin([_log_loss(Y[:, i], estimates[c, :, i]) for c in range(len(counts))])) for i in range(k)]
        self.n_trees_ = np.array([counts[c] for c in best], dtype=np.int64)
        oof = estimates[best, :, np.arange(k)].T
        prior_alone = _sigmoid(init)
        size, unrun = run.sum(axis=1), ~run
        self.unrun_trees_ = np.ones((k + 1, k), dtype=bool)
        for s in range(k + 1):
            for i in range(k):
                cells = unrun[:, i] & (size == s)
                if np.count_nonzero(cells) < _MIN_CELLS:  # too few rows to choose: as at the size below
                    self.unrun_trees_[s, i] = self.unrun_trees_[s - 1, i] if s else True
                else:
                    self.unrun_trees_[s, i] = (_log_loss(Y[cells, i], oof[cells, i])
                                               < _log_loss(Y[cells, i], prior_alone[cells, i]))
        return init, self._prior_where_unrun(oof, init, run)

    def _prior_where_unrun(self, quality: np.ndarray, offset: np.ndarray, run: np.ndarray) -> np.ndarray:
        """``quality`` with the prior alone (logits ``offset``) in the not-run cells ``unrun_trees_`` gives to it."""
        trees = self.unrun_trees_
        if trees is None or trees.all():
            return quality
        run = np.asarray(run, dtype=bool)
        cells = ~run & ~trees[run.sum(axis=1)]
        if not cells.any():
            return quality
        return np.where(cells, _sigmoid(offset), quality)

    def _template(self) -> BaseEstimator:
        return self.regressor if self.regressor is not None else make_lightgbm_regressor()

    def _model_rows(self, X: np.ndarray, model: int) -> np.ndarray:
        """The pooled regressor's rows for estimating ``model``.

        The features, its one-hot id and its own post-hoc columns.
        """
        onehot = np.zeros((X.shape[0], self.self_columns_.shape[1]))
        onehot[:, model] = 1.0
        return np.hstack([X, onehot, X[:, self.self_columns_[:, model]]])

    def _predict_regressors(self, regressors: list[BaseEstimator], X: np.ndarray,
                            offset: np.ndarray | None = None) -> np.ndarray:
        if offset is not None:  # boosted from a prior: the trees' raw score starts at its logit
            raw = (np.column_stack([regressors[0].predict(self._model_rows(X, i), raw_score=True)
                                    for i in range(self.self_columns_.shape[1])]) if self.pooled_
                   else np.column_stack([r.predict(X, raw_score=True) for r in regressors]))
            return _sigmoid(raw + offset)
        if self.pooled_:
            return np.clip(np.column_stack([regressors[0].predict(self._model_rows(X, i))
                                            for i in range(self.self_columns_.shape[1])]), 0.0, 1.0)
        return np.clip(np.column_stack([r.predict(X) for r in regressors]), 0.0, 1.0)

    def fit(self, prompt_features: NDArray[np.float64], quality: NDArray[np.float64],
            posthoc: PosthocData, logged: NDArray[np.bool_] | None = None,
            weights: NDArray[np.float64] | None = None,
            feature_names: Sequence[str] | None = None) -> QualityEstimator:
        """Fit the per-model regressors on sampled run sets, and σ on their out-of-fold residuals.

        Parameters
        ----------
        prompt_features : ndarray of float64, shape (N, F)
        quality : ndarray of float64, shape (N, K)
            Observed quality (read only where ``logged``).
        posthoc : PosthocData
            Signals and responses (read only where ``logged``).
        logged : ndarray of bool, shape (N, K), optional
            Which outcomes the logs hold; default all. Run sets are drawn
            from each query's logged models (a model can only count as run
            where its answer is known), and model ``i`` learns from the rows
            where it was logged: nothing is imputed as a label.
        weights : ndarray of float64, shape (N, K), optional
            Per-cell sample weights of the regressors (inverse propensities,
            read where ``logged``); σ is fitted unweighted. Default 1.
        feature_names : sequence of str, shape (F,), optional
            Names of the prompt feature columns (the featurizer's
            ``get_feature_names_out()``); default positional names. Followed
            by :func:`~estimators.posthoc.posthoc_feature_names` (models by
            column index), they go to regressors whose ``fit`` takes
            ``feature_names`` (the task-mean peer finds the task one-hot by them).

        Returns
        -------
        self : QualityEstimator

        Raises
        ------
        ValueError
            If ``feature_names`` does not name every prompt feature column.
        """
        n, k = quality.shape
        if feature_names is None:
            feature_names = [f"prompt{j}" for j in range(prompt_features.shape[1])]
        if len(feature_names) != prompt_features.shape[1]:
            raise ValueError(f"feature_names must name the {prompt_features.shape[1]} prompt feature columns; "
                             f"got {len(feature_names)} names")
        names = [str(name) for name in feature_names] + posthoc_feature_names(
            [str(i) for i in range(k)], list(posthoc.signals), posthoc.responses is not None)
        rows, run = sample_run_sets(
            n, k, per_query=self.runs_per_query, all_subsets_up_to=self.all_subsets_up_to,
            random_state=self.random_state, logged=logged,
        )
        labelled = np.ones((rows.size, k), dtype=bool) if logged is None else logged[rows]
        self.pooled_ = (bool(self.pooled) if self.pooled != "auto"
                        else not labelled.all() and not get_tags(self._template()).target_tags.multi_output)
        n_groups = per_model_groups(len(posthoc.signals), posthoc.responses is not None)
        self.self_columns_ = prompt_features.shape[1] + np.arange(n_groups)[:, None] * k + np.arange(k)
        W = None if weights is None else weights[rows]
        def features(at: NDArray[np.int64] | slice) -> np.ndarray:
            # Training rows of the run sets ``at``, built for each use rather than indexed out of one matrix of
            # every row (issue 33): a fold's fit then holds its own rows, not also the whole matrix beside them.
            return _features(prompt_features[rows[at]], run[at], posthoc.take(rows[at]))

        Y = quality[rows]
        folds = list(GroupKFold(self.n_folds).split(rows, groups=rows))
        self.prior_, self.cells_, self.n_trees_, self.unrun_trees_, init = None, None, None, None, None
        boosted = self._boosts_from_prior(names, labelled, weights)
        if boosted and not self.pooled_:
            init, oof = self._boost_from_prior(prompt_features, quality, rows, run, folds, features, Y, names)
        else:
            if boosted:  # pooled: each model's prior from the queries where it was logged
                cells = None if weights is None else np.asarray(weights, dtype=np.float64)
                if logged is not None:
                    cells = np.where(logged, 1.0 if cells is None else cells, 0.0)
                init = self._fit_prior(prompt_features, quality, rows, folds, names, cells)
            oof = np.empty_like(Y)
            for train, test in folds:
                start = None if init is None else init[train]
                regressors = self._fit_regressors(features(train), Y[train], labelled[train],
                                                  None if W is None else W[train], rows[train], names, start)
                oof[test] = self._predict_regressors(regressors, features(test), None if init is None else init[test])
        self.regressors_ = self._fit_regressors(features(slice(None)), Y, labelled, W, rows, names, init,
                                                self.n_trees_)
        self.oof_ = {"quality": oof, "run": run, "target": Y, "labelled": labelled}
        flat_rows = np.repeat(rows, k)
        keep = np.flatnonzero(labelled.ravel())
        keep = keep[np.random.default_rng(self.random_state).permutation(keep.size)[: self.max_rows]]
        sigma = self.sigma if self.sigma is not None else SigmaRegressor(stratify=_RUN_SIZE)
        self.sigma_ = clone(sigma).fit(
            _sigma_features(oof, run)[keep], (Y - oof).ravel()[keep], groups=flat_rows[keep]
        )
        self.frozen_ = freeze_regressors(self.regressors_)
        self.sigma_table_ = None
        if self.sigma_.n_features_in_ == 4 and self.sigma_.stratify in (None, _RUN_SIZE):
            ran, size, model = np.meshgrid([0.0, 1.0], np.arange(k + 1.0), np.arange(float(k)), indexing="ij")
            grid = np.column_stack([np.zeros(ran.size), ran.ravel(), size.ravel(), model.ravel()])
            self.sigma_table_ = self.sigma_.tabulate(0, grid)
        return self

    def fitted_quality(self, prompt_features: NDArray[np.float64], run: NDArray[np.bool_],
                       posthoc: PosthocData) -> NDArray[np.float64]:
        """Quality estimates from the fitted regressors' own ``predict``, for work done while fitting.

        Fitting computes with the libraries as they are (out-of-fold
        estimates, the reveal σ of :class:`~estimators.estimator.RouterEstimator`);
        :meth:`predict_quality` gives the same numbers (to rounding) from
        the frozen arrays.

        Parameters
        ----------
        prompt_features : ndarray of float64, shape (N, F)
        run : ndarray of bool, shape (N, K)
        posthoc : PosthocData
            What the run models returned.

        Returns
        -------
        ndarray of float64, shape (N, K)
            In [0, 1].
        """
        if self.prior_ is None:
            return self._predict_regressors(self.regressors_, _features(prompt_features, run, posthoc))
        offset = self.prompt_share(prompt_features)
        raw = self._predict_regressors(self.regressors_, _features(prompt_features, run, posthoc), offset)
        return self._prior_where_unrun(raw, offset, run)  # type: ignore[arg-type]  # prior_ is set: offset is an array

    def prompt_share(self, prompt_features: NDArray[np.float64]) -> NDArray[np.float64] | None:
        """The prompt's share of the raw quality estimates when the regressors are one affine map, else ``None``.

        It does not depend on the run set, so a caller estimating the same
        queries at several steps computes it once and passes it as
        ``share`` to :meth:`predict_quality`; the sums are the same either
        way, so results are bit-identical.

        Parameters
        ----------
        prompt_features : ndarray of float64, shape (N, F)

        Returns
        -------
        ndarray of float64, shape (N, K), or None
            Prompt columns' contribution plus the bias, before clipping.
        """
        prior = self.prior_
        if prior is not None:  # the prior reads only its cells' keys of our own features
            cells = self.cells_  # None: the prior's cells are its task columns (fitted before clusters)
            keys = (prompt_features[:, prior.category_columns_] if cells is None
                    else cells.keys(prompt_features))
            return _logit(prior.predict_cells(keys))
        affine = self.frozen_.affine
        return None if affine is None or self.pooled_ else affine.partial(prompt_features) + affine.bias

    def predict_quality(self, prompt_features: NDArray[np.float64], run: NDArray[np.bool_], posthoc: PosthocData, *,
                        share: NDArray[np.float64] | None = None, parallel: bool = False) -> NDArray[np.float64]:
        """Quality estimates ``(N, K)`` in [0, 1] for run sets ``run``.

        Parameters
        ----------
        prompt_features : ndarray of shape (N, F)
        run : ndarray of bool, shape (N, K)
        posthoc : PosthocData
            What the run models returned.
        share : ndarray of shape (N, K), optional
            :meth:`prompt_share` of ``prompt_features``, if already known.
        parallel : bool, default=False
            Spread the forest over threads (same numbers).

        Returns
        -------
        ndarray of float64, shape (N, K)
        """
        block = posthoc_features(run, posthoc.signals, posthoc.responses)
        share = self.prompt_share(prompt_features) if share is None else share
        if self.pooled_:  # boosted from the prior when it has one (share is then its logits)
            X = np.hstack([prompt_features, block])
            start = share if self.prior_ is not None else None
            raw = np.column_stack([self.frozen_.predict(self._model_rows(X, i), parallel,
                                                        offset=None if start is None else start[:, i:i + 1])[:, 0]
                                   for i in range(self.self_columns_.shape[1])])
        elif self.prior_ is not None:  # the forests start from the prior's logit
            started = self.frozen_.predict(np.hstack([prompt_features, block]), parallel, offset=share)
            raw = self._prior_where_unrun(started, share, run)  # type: ignore[arg-type]  # prior_ set: share is an array
        elif share is None:
            raw = self.frozen_.predict(np.hstack([prompt_features, block]), parallel)
        else:  # a share exists only for affine maps; a single query that ran nothing has the constant block
            affine: Affine = self.frozen_.affine  # type: ignore[assignment]
            partial = affine.constant_partial if run.shape[0] == 1 and not run.any() else affine.partial
            raw = share + partial(block, prompt_features.shape[1])
        return np.clip(raw, 0.0, 1.0)

    def predict_sigma(self, quality: NDArray[np.float64], run: NDArray[np.bool_],
                      cells: NDArray[np.bool_] | None = None) -> NDArray[np.float64]:
        """The σ model's standard deviation ``(N, K)`` of the estimates ``quality`` given ``run``.

        Parameters
        ----------
        quality : ndarray of shape (N, K)
            :meth:`predict_quality` for the same run sets.
        run : ndarray of bool, shape (N, K)
        cells : ndarray of bool, shape (N, K), optional
            Evaluate only these (query, model) cells; the others are NaN.
            Default all.

        Returns
        -------
        ndarray of float64, shape (N, K)
            ``> 0`` in the evaluated cells.
        """
        n, k = quality.shape
        flat = np.arange(n * k) if cells is None else np.flatnonzero(np.asarray(cells).ravel())
        sigma_x = _sigma_features(quality, run, flat)
        if self.sigma_table_ is not None:  # group = (ran·(K+1) + |R|)·K + model, as the grid of fit
            groups = ((sigma_x[:, 1] * (k + 1) + sigma_x[:, 2]) * k + sigma_x[:, 3]).astype(np.int64)
            stratum = None if self.sigma_.stratify is None else sigma_x[:, self.sigma_.stratify]
            values = self.sigma_.calibrate(self.sigma_table_.predict(groups, sigma_x[:, 0]), stratum)
        else:
            values = self.sigma_.predict(sigma_x)
        sigma = np.full(n * k, np.nan)
        sigma[flat] = values
        return sigma.reshape(n, k)

    def predict(
        self, prompt_features: NDArray[np.float64], run: NDArray[np.bool_], posthoc: PosthocData
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Return ``(quality, sigma)`` for run sets ``run``: :meth:`predict_quality`, then :meth:`predict_sigma`.

        Parameters
        ----------
        prompt_features : ndarray of float64, shape (N, F)
        run : ndarray of bool, shape (N, K)
        posthoc : PosthocData
            What the run models returned.

        Returns
        -------
        quality, sigma : ndarray of float64, shape (N, K)
        """
        quality = self.predict_quality(prompt_features, run, posthoc)
        return quality, self.predict_sigma(quality, run)
