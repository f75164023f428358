"""The quality prior's cells: task labels, prompt clusters, or both, with shrinkage chosen out of fold.

The learned estimator boosts from each model's mean quality per cell
(:class:`~estimators.peers.TaskMeanRegressor`), so its trees only learn how a
query departs from its cell's average. A cell used to be a (task, subtask)
label, and users' traffic logs rarely carry one: without it the prior was the
overall mean and the default lost its lead over kNN and ridge. What the task
label carried is mostly visible in the prompt (the benchmark's format, its
preamble, its kind of question), so the cells here may also be k-means
clusters of the prompt features (the TF-IDF/SVD columns, or whatever text
featurizer the estimator uses, beside the structural counts), fitted on the
training prompts. The
number of clusters (none among them), and how strongly each cell's mean is
shrunk toward the model's overall mean, are chosen together by the
out-of-fold log loss of the prior on the training queries: a table whose
prompts tell little keeps no clusters, a log of a few hundred queries keeps
strong shrinkage (the per-model mean, in the limit), a large labelled one
keeps its task means.

Prediction reads frozen arrays (:class:`PromptClusters`): a cluster is one
matrix product with the centres and an ``argmin`` per prompt, computed once
per call with the prompt features (the same as ``KMeans.predict``, which
the tests compare with on real prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from .peers import CATEGORY_PREFIX, TaskMeanRegressor

__all__ = ["CLUSTER_COUNTS", "PRIOR_WEIGHTS", "STRUCTURE_PREFIX", "TEXT_PREFIX", "CellPrior", "PromptClusters",
           "choose_prior", "cluster_space"]

#: Cluster counts the prior chooses among (besides none), by out-of-fold log loss.
CLUSTER_COUNTS = (4, 8, 16, 32, 64)
#: Fewest training queries per cluster on average: more clusters than ``N / 20`` are not tried.
MIN_QUERIES_PER_CLUSTER = 20
#: Shrinkage strengths the prior chooses among: queries' worth of the model's overall mean added to every cell
#: (:class:`~estimators.peers.TaskMeanRegressor` ``prior_weight``). 10 was the fixed value before it was chosen.
PRIOR_WEIGHTS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
#: Prefix of the prompt-text columns the clusters are fitted on (the featurizer's ``text`` block).
TEXT_PREFIX = "text__"
#: Prefix of the structural counts (length, digits, options, code markers) clustered beside the text.
STRUCTURE_PREFIX = "structure__"
#: Probabilities are clipped this far from 0 and 1 in the log loss.
_EPS = 1e-4


class PromptClusters:
    """A fitted :class:`~sklearn.cluster.KMeans` of prompt features, frozen for prediction.

    Parameters
    ----------
    kmeans : KMeans
        Fitted on ``(prompt_features[:, columns] - offset) * scale``; kept as the test oracle.
    columns : sequence of int
        The prompt-feature columns it reads.
    offset, scale : sequence of float, shape (len(columns),), optional
        Per-column shift and scale into the space k-means was fitted in
        (:func:`cluster_space`); default 0 and 1.

    Attributes
    ----------
    centers : ndarray of float64, shape (C, len(columns))
        The cluster centres, C-contiguous.
    center_norms : ndarray of float64, shape (C,)
        Their squared norms.
    """

    def __init__(self, kmeans: KMeans, columns: ArrayLike, offset: ArrayLike | None = None,
                 scale: ArrayLike | None = None) -> None:
        self.kmeans = kmeans
        self.columns = np.asarray(columns, dtype=np.int64)
        self.offset = np.zeros(self.columns.size) if offset is None else np.asarray(offset, dtype=np.float64)
        self.scale = np.ones(self.columns.size) if scale is None else np.asarray(scale, dtype=np.float64)
        self.centers = np.ascontiguousarray(kmeans.cluster_centers_, dtype=np.float64)
        self.center_norms = np.einsum("ij,ij->i", self.centers, self.centers)

    @property
    def n_clusters(self) -> int:
        """Number of clusters ``C``."""
        return int(self.centers.shape[0])

    def space(self, prompt_features: NDArray[np.float64]) -> NDArray[np.float64]:
        """The rows in the space k-means was fitted in: ``(x[columns] - offset) * scale``."""
        return (np.asarray(prompt_features, dtype=np.float64)[:, self.columns] - self.offset) * self.scale

    def predict(self, prompt_features: NDArray[np.float64]) -> NDArray[np.int64]:
        """The nearest centre of every row, as ``KMeans.predict`` of :meth:`space`.

        ``‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖²``; ``‖x‖²`` is the same for every
        centre, so the ``argmin`` of ``‖c‖² − 2 x·c`` is one BLAS product.

        Parameters
        ----------
        prompt_features : ndarray of float64, shape (N, F)

        Returns
        -------
        ndarray of int64, shape (N,)
        """
        X = self.space(prompt_features)
        return np.argmin(self.center_norms - 2.0 * (X @ self.centers.T), axis=1).astype(np.int64)

    def one_hot(self, prompt_features: NDArray[np.float64]) -> NDArray[np.float64]:
        """``(N, C)`` indicator of each row's cluster."""
        labels = self.predict(prompt_features)
        out = np.zeros((labels.size, self.n_clusters))
        out[np.arange(labels.size), labels] = 1.0
        return out


class CellPrior(NamedTuple):
    """The prior's cell definition: which label columns and which clusters key a cell, and the shrinkage.

    Attributes
    ----------
    columns : ndarray of int
        The prompt features' ``category__`` (task/subtask one-hot) columns in the key.
    clusters : PromptClusters or None
        Prompt clusters in the key; ``None``: labels alone.
    prior_weight : float
        Queries' worth of the model's overall mean in every cell.
    """

    columns: NDArray[np.int64]
    clusters: PromptClusters | None
    prior_weight: float

    def keys(self, prompt_features: NDArray[np.float64]) -> NDArray[np.float64]:
        """``(N, len(columns) + C)``: the label columns, then the cluster one-hot; equal rows share a cell.

        Neither labels nor clusters: one constant column, a single cell (the overall mean).
        """
        labels = np.asarray(prompt_features, dtype=np.float64)[:, self.columns]
        if self.clusters is None:
            return labels if labels.shape[1] else np.ones((labels.shape[0], 1))
        return np.hstack([labels, self.clusters.one_hot(prompt_features)])

    def fit(self, prompt_features: NDArray[np.float64], quality: NDArray[np.float64],
            weights: NDArray[np.float64] | None = None) -> TaskMeanRegressor:
        """The shrunk per-cell means of ``quality`` ``(N, K)`` over these cells (predict with :meth:`keys`).

        ``weights`` ``(N, K)``: per (query, model) weights, 0 where not
        logged (partial logs; see :func:`choose_prior`).
        """
        keys = self.keys(prompt_features)
        return TaskMeanRegressor(prior_weight=self.prior_weight).fit(
            keys, quality, feature_names=[f"{CATEGORY_PREFIX}{j}" for j in range(keys.shape[1])],
            sample_weight=weights)


def _log_loss(y: np.ndarray, q: np.ndarray, cells: np.ndarray | None = None) -> float:
    """Summed log loss, each (query, model) term times its weight in ``cells`` when given."""
    q = np.clip(q, _EPS, 1.0 - _EPS)
    terms = -(y * np.log(q) + (1.0 - y) * np.log(1.0 - q))
    return float(terms.sum() if cells is None else (cells * np.where(cells > 0, terms, 0.0)).sum())


def _out_of_fold_loss(keys: np.ndarray, quality: np.ndarray, query_fold: np.ndarray, weights: Sequence[float],
                      cells: np.ndarray | None = None) -> np.ndarray:
    """Log loss of the shrunk cell means, each fold's queries estimated from the others, per prior weight.

    ``cells`` ``(N, K)`` weighs each (query, model) term (0: not logged).
    """
    names = [f"{CATEGORY_PREFIX}{j}" for j in range(keys.shape[1])]
    loss = np.zeros(len(weights))
    for fold in np.unique(query_fold):
        inside = query_fold == fold
        for w, weight in enumerate(weights):
            estimate = TaskMeanRegressor(prior_weight=weight).fit(
                keys[~inside], quality[~inside], feature_names=names,
                sample_weight=None if cells is None else cells[~inside]).predict_cells(keys[inside])
            loss[w] += _log_loss(quality[inside], estimate, None if cells is None else cells[inside])
    return loss


def cluster_space(prompt_features: NDArray[np.float64], names: Sequence[str]
                  ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Columns, offset and scale of the space the prompts are clustered in: text block and structural counts.

    The TF-IDF/SVD block as it is; the structural counts (log-lengths,
    digits, answer options…) standardised and scaled so that together they
    weigh as much as a typical text row (their root-mean-square norm equals
    the mean norm of the text block): formats that share words but not shape
    (a multiple-choice question and an open one) then fall apart. Measured
    on half of each shared table, the out-of-fold log loss of the cluster
    prior fell from 0.5617 to 0.5436 on llmrouter and from 0.5794 to 0.5771
    on RouterBench against the text block alone (``docs/estimators.md``).

    Parameters
    ----------
    prompt_features : ndarray of float64, shape (N, F)
        Training queries' prompt features.
    names : sequence of str, shape (F,)

    Returns
    -------
    columns : ndarray of int
    offset, scale : ndarray of float64, shape (len(columns),)
        Empty when there is no text block.
    """
    names = [str(name) for name in names]
    text = np.flatnonzero([name.startswith(TEXT_PREFIX) for name in names])
    if not text.size:
        return text.astype(np.int64), np.zeros(0), np.zeros(0)
    structure = np.flatnonzero([name.startswith(STRUCTURE_PREFIX) for name in names])
    columns = np.concatenate([text, structure]).astype(np.int64)
    offset, scale = np.zeros(columns.size), np.ones(columns.size)
    if structure.size:
        values = prompt_features[:, structure]
        spread = values.std(axis=0)
        weight = np.linalg.norm(prompt_features[:, text], axis=1).mean() / np.sqrt(structure.size)
        offset[text.size:] = values.mean(axis=0)
        scale[text.size:] = np.where(spread > 0, weight / np.where(spread > 0, spread, 1.0), 0.0)
    return columns, offset, scale


def choose_prior(prompt_features: NDArray[np.float64], quality: NDArray[np.float64], names: Sequence[str],
                 query_fold: NDArray[np.int64], random_state: int = 0,
                 cluster_counts: Sequence[int] = CLUSTER_COUNTS,
                 prior_weights: Sequence[float] = PRIOR_WEIGHTS,
                 weights: NDArray[np.float64] | None = None) -> CellPrior:
    """The cells and shrinkage whose per-cell means predict held-out queries best.

    Candidates: the task/subtask columns alone (none without labels: the
    model's overall mean), or with k-means clusters of the prompt-text
    columns for every count in ``cluster_counts`` up to ``N / 20``; each
    with every shrinkage in ``prior_weights``. The clusters are fitted on
    every training prompt (they see no quality label, so nothing leaks); the
    cell means of each fold's queries come from the other folds' queries.
    Ties keep the earlier candidate: fewer clusters, weaker shrinkage.

    Parameters
    ----------
    prompt_features : ndarray of float64, shape (N, F)
        Training queries' prompt features.
    quality : ndarray of float64, shape (N, K)
        Their quality, every cell labelled (read only where ``weights`` > 0).
    names : sequence of str, shape (F,)
        Feature names: ``category__…`` columns are labels, ``text__…`` and
        ``structure__…`` columns are clustered (:func:`cluster_space`).
    query_fold : ndarray of int, shape (N,)
        Fold of each query (those of the quality estimator's σ).
    random_state : int, default=0
        Seed of k-means.
    cluster_counts, prior_weights : sequence
        Candidates (:data:`CLUSTER_COUNTS`, :data:`PRIOR_WEIGHTS`).
    weights : ndarray of float64, shape (N, K), optional
        Partial logs: each (query, model) cell's weight, 0 where not logged,
        else its inverse propensity, so that the cell means and the
        out-of-fold loss are those of every query (inverse-propensity
        weighting); default 1 everywhere.

    Returns
    -------
    CellPrior
    """
    names = [str(name) for name in names]
    labels = np.flatnonzero([name.startswith(CATEGORY_PREFIX) for name in names]).astype(np.int64)
    columns, offset, scale = cluster_space(prompt_features, names)
    space = (prompt_features[:, columns] - offset) * scale
    n = prompt_features.shape[0]
    candidates: list[PromptClusters | None] = [None]
    usable = columns.size and np.ptp(space, axis=0).any()  # constant prompt features have no clusters
    for count in cluster_counts if usable else ():
        if count * MIN_QUERIES_PER_CLUSTER <= n:
            # One thread: OpenMP threads spin-wait, and on a shared 2-core machine they made it 4 times slower.
            with threadpool_limits(1):
                kmeans = KMeans(n_clusters=count, n_init=3, random_state=random_state).fit(space)
            candidates.append(PromptClusters(kmeans, columns, offset, scale))
    best, best_loss = None, np.inf
    for clusters in candidates:
        base = CellPrior(labels, clusters, 0.0)
        loss = _out_of_fold_loss(base.keys(prompt_features), quality, query_fold, prior_weights, weights)
        w = int(np.argmin(loss))
        if loss[w] < best_loss:
            best, best_loss = base._replace(prior_weight=float(prior_weights[w])), loss[w]
    assert best is not None
    return best
