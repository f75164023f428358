"""The one interface the decision kernel and policy fitting call.

:class:`RouterEstimator` fits the prompt featurizer, the quality estimator
(with σ and, optionally, an error correlation per run-set size) and the cost
estimator on a :class:`~estimators.table.RoutingTable`, and answers "given the
query and the models run so far, what are ``q̂``, ``σ`` and ``ĉ`` for every
model" as float64 ``(N, K)`` arrays.

Fit uses scikit-learn and LightGBM as they are; at its end every component
freezes what prediction needs into plain arrays (:class:`~estimators.featurize.FrozenFeaturizer`,
:mod:`estimators.frozen`), and prediction runs on those with compiled
kernels: one implementation, used by training, serving and batch scoring
alike. The libraries' own ``transform``/``predict`` are the reference the
tests compare it with (``tests/reference_estimator.py``).

:class:`Estimator` is the interface the rest of the toolkit relies on
(the router, policy episodes, batch replay).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from .cost import CostEstimator, input_token_counts
from .featurize import FrozenFeaturizer, as_texts, make_prompt_featurizer, prompt_frame
from .inputs import (
    check_observed_cost,
    check_observed_latency,
    check_responses,
    check_run,
    check_signals,
    per_query_inputs,
)
from .kinds import ESTIMATOR_KINDS  # re-exported: estimator families by name (CLI --estimator)
from .peers import PEER_REGRESSORS
from .posthoc import ResponseMemo, read_responses, run_responses
from .prompts import read_prompts
from .quality import PosthocData, QualityEstimator, make_linear_regressor
from .table import RoutingTable

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.compose import ColumnTransformer

__all__ = ["Estimates", "Estimator", "MIN_LOGGED_QUERIES", "PreparedQueries", "RouterEstimator", "ESTIMATOR_KINDS",
           "check_logged", "make_router_estimator"]

#: Fewest training queries a model must be logged on (unless on all of them): below it the per-model
#: quality and cost regressors (LightGBM leaves need 20 rows each) and the
#: cross-validated σ would be fitted on noise.
MIN_LOGGED_QUERIES = 50
#: Queries featurized at once when fitting: the featurizer's intermediates (hashed n-grams, TF-IDF) take
#: several KB per prompt, so a table of months of logs is featurized a slice at a time (issue 33).
FEATURE_CHUNK_ROWS = 16_384


def featurize_in_chunks(featurizer: ColumnTransformer, frame: pd.DataFrame) -> NDArray[np.float64]:
    """``featurizer.transform(frame)``, :data:`FEATURE_CHUNK_ROWS` rows at a time.

    Every block of the default prompt featurizer
    (:func:`~estimators.featurize.make_prompt_featurizer`) maps a row to
    its features alone (hashing, TF-IDF weighting and row normalisation,
    the SVD projection, one-hot and structure counts), so the rows come out
    as the whole frame's transform gives them, while only one slice's
    intermediates are held (at 315,000 prompts the whole transform held
    2 GiB more than its result).
    """
    if len(frame) <= FEATURE_CHUNK_ROWS:
        return featurizer.transform(frame)
    first = featurizer.transform(frame.iloc[:FEATURE_CHUNK_ROWS])
    out = np.empty((len(frame), first.shape[1]), dtype=first.dtype)
    out[:FEATURE_CHUNK_ROWS] = first
    for start in range(FEATURE_CHUNK_ROWS, len(frame), FEATURE_CHUNK_ROWS):
        out[start:start + FEATURE_CHUNK_ROWS] = featurizer.transform(frame.iloc[start:start + FEATURE_CHUNK_ROWS])
    return out


def check_logged(models: Sequence[str], logged: NDArray[np.bool_]) -> None:
    """Refuse to learn a model from fewer than :data:`MIN_LOGGED_QUERIES` logged training queries.

    A model logged on every training query passes whatever their number (a
    small benchmark matrix is the user's choice); the minimum is for a
    model logged on only part of the traffic, such as one added last week.

    Parameters
    ----------
    models : sequence of str
        Model names, in column order.
    logged : ndarray of bool, shape (N, K)
        Which outcomes the training queries hold.

    Raises
    ------
    ValueError
        Naming every model below the minimum with its count.
    """
    counts = logged.sum(axis=0)
    needed = min(MIN_LOGGED_QUERIES, logged.shape[0])
    thin = [f"{model!r} ({int(count)})" for model, count in zip(models, counts, strict=True) if count < needed]
    if thin:
        raise ValueError(f"model(s) {', '.join(thin)} are logged on fewer than {MIN_LOGGED_QUERIES} of the "
                         f"{logged.shape[0]} training queries, too few to learn their quality from; log them on "
                         "more queries, or leave them out (--models / select_models)")


class Estimates(NamedTuple):
    """Per-query, per-model estimates for the decision kernel.

    Attributes
    ----------
    quality : ndarray of float64, shape (N, K)
        ``q̂_i(x | R)`` in [0, 1].
    sigma : ndarray of float64, shape (N, K), or None
        Standard deviation of the quality estimate's error (> 0), and
        ``run_sigma`` (default 0) for the models in ``R``; ``None`` when
        :meth:`RouterEstimator.estimate` was asked for quality only
        (``with_sigma=False``).
    cost : ndarray of float64, shape (N, K)
        ``ĉ_i(x | R)`` in USD; the observed cost for models in ``R``.
    cov : ndarray of float64, shape (N, K, K) or None
        Error covariance across models when the estimator was fitted with
        ``covariance=True``; its diagonal is ``sigma**2``.
    latency : ndarray of float64, shape (N, K) or None
        ``ℓ̂_i(x | R)`` in seconds, the observed latency for models in ``R``
        where it was reported; ``None`` when the estimator was fitted on a
        table without latency.
    """

    quality: NDArray[np.float64]
    sigma: NDArray[np.float64] | None
    cost: NDArray[np.float64]
    cov: NDArray[np.float64] | None = None
    latency: NDArray[np.float64] | None = None


class PreparedQueries(NamedTuple):
    """What estimating a set of queries needs whatever the run set: computed once per query.

    Attributes
    ----------
    features : ndarray of float64, shape (N, F)
        Prompt features.
    ante_cost : ndarray of float64, shape (N, K)
        Cost estimates before any model has run.
    quality_share : ndarray of float64, shape (N, K) or None
        The prompt's share of the quality estimates when the quality model is
        linear (see :meth:`~estimators.quality.QualityEstimator.prompt_share`).
    ante_latency : ndarray of float64, shape (N, K) or None
        Latency estimates before any model has run; ``None`` without a latency model.
    responses : ResponseMemo or None
        The run models' responses parsed so far, for :meth:`RouterEstimator.estimate`
        calls that pass no memo of their own: a cascade's steps on one
        preparation parse each response once, not once per later step
        (the features are those of a fresh parse). Like the memo, a
        preparation serves one caller at a time, as a cascade's steps do.
    """

    features: NDArray[np.float64]
    ante_cost: NDArray[np.float64]
    quality_share: NDArray[np.float64] | None
    ante_latency: NDArray[np.float64] | None = None
    responses: ResponseMemo | None = None


class Estimator(Protocol):
    """What the router, policy episodes and batch replay need from a fitted estimator.

    :class:`RouterEstimator` is the implementation; the protocol names the
    contract so that callers rely on it instead of probing attributes.

    Attributes
    ----------
    models_ : tuple of str
        Model names in column order (cheapest first).
    columns_ : list of str
        Per-query inputs it reads (``prompt``, ``task``, ``subtask``).
    signal_names_ : list of str
        Post-hoc signals it was fitted with.
    uses_responses_ : bool
        Whether response texts are part of its inputs.
    latency_ : object or None
        The fitted latency model; ``None`` when it was fitted on a table
        without latency (its estimates then have ``latency`` ``None``).
    """

    models_: tuple[str, ...]
    columns_: list[str]
    signal_names_: list[str]
    uses_responses_: bool
    latency_: CostEstimator | None

    def __sklearn_is_fitted__(self) -> bool:
        """Whether it was fitted (:func:`sklearn.utils.validation.check_is_fitted` asks this)."""

    @property
    def token_prices(self) -> dict[str, tuple[float, float]]:
        """USD per 1M input and output tokens, per model, as given at fit time (empty when cost was learned)."""

    def predict(
        self,
        prompts: ArrayLike | None = None,
        *,
        tasks: ArrayLike | None = None,
        subtasks: ArrayLike | None = None,
        run: ArrayLike | Sequence[str] | None = None,
        responses: ArrayLike | None = None,
        signals: Mapping[str, ArrayLike] | None = None,
        observed_cost: ArrayLike | None = None,
        input_tokens: ArrayLike | None = None,
        observed_latency: ArrayLike | None = None,
        prepared: PreparedQueries | None = None,
    ) -> Estimates:
        """Estimates of every model on ``N`` queries, given what the run models returned (checked inputs).

        What a service calls per request (:meth:`RouterEstimator.predict`).

        Parameters
        ----------
        prompts, tasks, subtasks : array-like of str, shape (N,), optional
            The per-query inputs in :attr:`columns_`.
        run : (N, K) array-like of bool, or list of model names, optional
            Models already run; default none.
        responses : (N, K) array-like of object, optional
            Response texts of the run models.
        signals : mapping of str to (N, K) array-like of float, optional
            Every signal in :attr:`signal_names_` (NaN only where not run).
        observed_cost : (N, K) array-like of float, optional
            Cost of the run models (required when any model ran).
        input_tokens : (N, K) array-like of float, optional
            Input token counts for price-based cost.
        observed_latency : (N, K) array-like of float, optional
            Seconds the run models took (NaN where not measured).
        prepared : PreparedQueries, optional
            :meth:`prepare` of these queries, when the caller estimates them
            at several steps; the per-query inputs are then not read.

        Returns
        -------
        Estimates
        """

    def known_categories(self) -> dict[str, list[str]]:
        """The tasks and subtasks seen in training, sorted, by column (those the estimator reads)."""

    def unseen_categories(self, tasks: ArrayLike | None = None,
                          subtasks: ArrayLike | None = None) -> dict[str, NDArray[np.bool_]]:
        """Which tasks and subtasks were never seen in training (they are estimated as an unseen category).

        Parameters
        ----------
        tasks, subtasks : array-like of str, shape (N,), optional

        Returns
        -------
        dict of str to ndarray of bool
            ``task`` and ``subtask`` (those given and read by the estimator).
        """

    def prepare(self, prompts: ArrayLike | None = None, tasks: ArrayLike | None = None,
                subtasks: ArrayLike | None = None, *, input_tokens: ArrayLike | None = None,
                parallel: bool = False) -> PreparedQueries:
        """The per-query part of the estimates, computed once for several :meth:`estimate` calls.

        Parameters
        ----------
        prompts, tasks, subtasks : array-like of str, shape (N,), optional
            The per-query inputs in :attr:`columns_`.
        input_tokens : (N, K) array-like of float, optional
            Input token counts for price-based cost.
        parallel : bool, default=False
            Spread the compiled passes over threads (same numbers).

        Returns
        -------
        PreparedQueries
        """

    def estimate(self, prepared: PreparedQueries, rows: NDArray[np.int64], run: NDArray[np.bool_], *,
                 responses: NDArray[np.object_] | None = None, signals: Mapping[str, NDArray[np.float64]],
                 observed_cost: NDArray[np.float64], memo: ResponseMemo | None = None,
                 with_sigma: bool = True, parallel: bool = False,
                 observed_latency: NDArray[np.float64] | None = None) -> Estimates:
        """Estimates of queries ``rows`` of ``prepared`` with run sets ``run``: one step of a cascade.

        The inputs are taken as checked (see :meth:`RouterEstimator.estimate`).

        Parameters
        ----------
        prepared : PreparedQueries
            :meth:`prepare` of the queries.
        rows : ndarray of int, shape (M,)
            Which of them to estimate.
        run : ndarray of bool, shape (M, K)
            Their run sets.
        responses : ndarray of object, shape (M, K), optional
            Response texts (read only where ``run``).
        signals : mapping of str to ndarray of float64, shape (M, K)
            Every signal in :attr:`signal_names_` (read only where ``run``).
        observed_cost : ndarray of float64, shape (M, K)
            Cost of the run models (read only where ``run``).
        memo : ResponseMemo, optional
            Shared by the calls of one job, so each response is parsed once.
        with_sigma : bool, default=True
            ``False`` returns quality and cost only (``sigma`` and ``cov`` ``None``).
        parallel : bool, default=False
            Spread the compiled passes over threads (same numbers).
        observed_latency : ndarray of float64, shape (M, K), optional
            Seconds the run models took (read only where ``run``; NaN keeps the estimate).

        Returns
        -------
        Estimates
        """

    def predict_table(self, table: RoutingTable, run: ArrayLike | Sequence[str] | None = None,
                      rows: ArrayLike | None = None) -> Estimates:
        """Estimates of queries ``rows`` of ``table``, the run models' outcomes read from it (policy episodes).

        Parameters
        ----------
        table : RoutingTable
            Same models, in the same order, as :attr:`models_`.
        run : (M, K) array-like of bool, or list of model names, optional
            Run sets, one row per entry of ``rows``; default none.
        rows : array-like of int, shape (M,), optional
            Queries of ``table`` to estimate; default all.

        Returns
        -------
        Estimates
        """

    def warm_up(self, parallel: bool = False) -> None:
        """Compile every kernel prediction uses, so that the first request is as fast as the next.

        Parameters
        ----------
        parallel : bool, default=False
            Also compile the row-parallel variants.
        """


def _residual_correlation(oof: dict, k: int) -> np.ndarray:
    """Correlation of out-of-fold errors across models, one ``(K, K)`` matrix per ``|R|``.

    Sizes with too few fully labelled rows (or constant errors) fall back to independence.
    """
    residual = oof["target"] - oof["quality"]
    size = oof["run"].sum(axis=1)
    complete = oof["labelled"].all(axis=1)  # a correlation needs every model's error on the same rows
    correlation = np.tile(np.eye(k), (k + 1, 1, 1))
    for t in range(k + 1):
        rows = residual[(size == t) & complete]
        if len(rows) > 2 * k:
            with np.errstate(invalid="ignore", divide="ignore"):
                c = np.corrcoef(rows, rowvar=False)
            c = np.where(np.isfinite(c), c, np.eye(k))
            np.fill_diagonal(c, 1.0)
            correlation[t] = c
    return correlation


def _reveal_sigma(quality, features: np.ndarray, posthoc: PosthocData, logged: np.ndarray, seed: int,
                  n_rows: int = 600) -> np.ndarray:
    """How far a model's quality estimate moves once it runs, per run-set size and model.

    ``E[max]`` in the decision rule is over the estimates the policy will
    *select on* after running the models, so the uncertainty it needs for a
    model not yet run is the spread of ``q̂_i(x | R ∪ {i}) - q̂_i(x | R)``,
    not the error against the 0/1 outcome (which stays large even after
    running the model and would make every extra model look valuable). This
    is the paper's recipe (std of ex-ante minus post-hoc estimate) applied to
    learned estimators: the root mean square of that move over a sample of
    training queries and random run sets of each size ``t`` (for ``t = 0``,
    the move when the model runs together with one other model). Part of
    fitting, so the estimates come from the regressors themselves
    (:meth:`~estimators.quality.QualityEstimator.fitted_quality`).

    With partial logs (``logged``), run sets are drawn from each sampled
    query's logged models and a move is measured only where the model is
    logged too; a (size, model) cell no sampled query can measure (cascade
    logs rarely hold many models per query) takes the largest σ measured at
    that size, or the previous size's: too much σ makes a policy explore, too
    little makes it never try the model.

    Returns
    -------
    ndarray of shape (K + 1, K)
        Row ``t`` holds each model's σ when ``t`` models have run (the last
        row, everything run, is 0).
    """
    rng = np.random.default_rng(seed)
    n, k = logged.shape
    rows = rng.choice(n, size=min(n, n_rows), replace=False)
    data = posthoc.take(rows)
    logged = logged[rows]
    spare = np.random.default_rng([seed, 1])  # only partial logs draw from it, so full ones keep their σ
    sigma = np.full((k + 1, k), np.nan)
    sigma[k] = 0.0
    for size in range(k):
        order = np.argsort(rng.random((rows.size, k)), axis=1)
        order = np.take_along_axis(order, np.argsort(~np.take_along_axis(logged, order, 1), axis=1, kind="stable"), 1)
        run = np.zeros((rows.size, k), dtype=bool)
        np.put_along_axis(run, order[:, :size], True, axis=1)
        run &= logged
        before = quality.fitted_quality(features[rows], run, data)
        for model in range(k):
            going = ~run[:, model]
            after_run = run[going].copy()
            after_run[:, model] = True
            if size == 0 and k > 1:
                # Alone, a model's answer says little about itself; its estimate
                # moves once another answer can agree with it, which is what a
                # plan of two or more models buys at the first step.
                other = (model + 1 + rng.integers(0, k - 1, size=after_run.shape[0])) % k
                others = logged[going].copy()
                others[:, model] = False
                unlogged = ~others[np.arange(other.size), other]
                other[unlogged] = np.argmax(spare.random((int(unlogged.sum()), k)) * others[unlogged], axis=1)
                paired = others[np.arange(other.size), other]
                after_run[np.flatnonzero(paired), other[paired]] = True
            measured = logged[going, model] & (run[going].sum(axis=1) == size)
            if measured.any():
                after = quality.fitted_quality(features[rows][going][measured], after_run[measured],
                                               data.take(np.flatnonzero(going)[measured]))
                moved = after[:, model] - before[going][measured, model]
                sigma[size, model] = np.sqrt(np.mean(moved ** 2))
        unmeasured = np.isnan(sigma[size])
        if unmeasured.any():
            sigma[size, unmeasured] = np.nanmax(sigma[size]) if not unmeasured.all() else sigma[size - 1, unmeasured]
    return sigma


class RouterEstimator(BaseEstimator):
    """Quality, uncertainty and cost estimates for every model and any run set.

    A scikit-learn estimator in what it inherits (``get_params``,
    ``set_params``, ``clone``, the repr; ``__init__`` stores its parameters
    only) and in its fitted check (:func:`~sklearn.utils.validation.check_is_fitted`,
    :class:`~sklearn.exceptions.NotFittedError`). scikit-learn's common
    checks (``check_estimator``) do not apply: ``fit`` learns from a
    :class:`~estimators.table.RoutingTable` (queries × models, with run sets
    and responses), not from an ``(X, y)`` pair, and ``predict`` returns
    :class:`Estimates`; its components (:class:`~estimators.quality.QualityEstimator`,
    :class:`~estimators.sigma.SigmaRegressor`, ...) are the parts that take ``(X, y)``.

    Parameters
    ----------
    quality : QualityEstimator, optional
        Quality model template; default ``QualityEstimator()`` (LightGBM).
        ``QualityEstimator(regressor=make_linear_regressor())`` gives the
        embedding-based linear family with the same interface.
    cost : CostEstimator, optional
        Cost model template; default ``CostEstimator()`` (log-cost regression,
        or prices × tokens when it is given ``prices``).
    text : transformer, optional
        Prompt-text featurizer; default :class:`~estimators.featurize.TextFeaturizer`.
        Pass :class:`~estimators.embedding.EmbeddingFeaturizer` for sentence embeddings.
    use_responses : bool, default=True
        Build agreement and length features from response text when the
        table has any.
    covariance : bool, default=False
        Also return the error covariance across models
        (``σ_i σ_j ρ_{|R|}[i, j]``, ρ fitted on out-of-fold errors per run-set size).
    uncertainty : {"reveal", "error"}, default="reveal"
        What ``sigma`` of a model not yet run means. ``"reveal"``: how far its
        quality estimate will move once it runs (fitted per model and run-set
        size), which is what the decision rule's ``E[max]`` needs.
        ``"error"``: the calibrated error of the estimate against the true
        quality (±1σ covers ~70 %), for reporting and coverage checks.
    random_state : int, default=0
        Seed of the sampling behind the ``"reveal"`` uncertainty.
    run_sigma : float or None, default=0.0
        σ reported for models that already ran. The decision kernel draws
        ``q_i + σ_i·z`` for every member of a supermodel and takes the best
        draw, which models *learning* a model's quality by running it; a
        model in ``R`` has nothing left to reveal (we answer with
        ``argmax q``, not with the best unknown truth), so the paper's
        setting and ours give it σ ≈ 0. ``None`` reports the fitted error σ
        of the post-hoc estimate instead (what the coverage figures in
        ``docs/estimators.md`` measure).

    Attributes
    ----------
    models_ : tuple of str
        Model names, in column order (cheapest first).
    columns_ : list of str
        Per-query inputs the featurizer reads (``prompt``, ``task``, ``subtask``).
    repaired_prompts_ : int
        Training prompts whose lone surrogates were replaced (see :func:`~estimators.prompts.read_prompts`).
    signal_names_ : list of str
        Names of the post-hoc signals, in feature order.
    uses_responses_ : bool
        Whether response features are part of the quality model.
    featurizer_, quality_, cost_ : fitted components
    latency_ : CostEstimator or None
        Per-model log-latency regression on the prompt features (seconds),
        when the training table has latency; ``None`` otherwise.
    frozen_featurizer_ : FrozenFeaturizer
        ``featurizer_`` frozen for prediction.
    reveal_sigma_ : ndarray of shape (K + 1, K) or None
        σ per run-set size and model (``uncertainty="reveal"``).
    correlation_ : ndarray of shape (K + 1, K, K) or None

    Examples
    --------
    >>> est = RouterEstimator().fit(table)                      # doctest: +SKIP
    >>> est.predict(["What is 2 + 2?"], tasks=["gsm8k"])        # doctest: +SKIP
    >>> est.predict_table(table.subset(test), run=step_run_sets)  # doctest: +SKIP
    """

    #: The last table's prepared inputs, keyed by a weak reference to it (:meth:`_table_inputs`).
    _cache: tuple[weakref.ref[RoutingTable], tuple[PreparedQueries, ResponseMemo]] | None

    def __init__(
        self,
        quality: QualityEstimator | None = None,
        cost: CostEstimator | None = None,
        text: BaseEstimator | None = None,
        use_responses: bool = True,
        covariance: bool = False,
        run_sigma: float | None = 0.0,
        uncertainty: str = "reveal",
        random_state: int = 0,
    ) -> None:
        self.quality = quality
        self.cost = cost
        self.text = text
        self.use_responses = use_responses
        self.covariance = covariance
        self.run_sigma = run_sigma
        self.uncertainty = uncertainty
        self.random_state = random_state

    def fit(self, table: RoutingTable, rows: ArrayLike | Sequence[int] | None = None) -> RouterEstimator:
        """Fit the featurizer, quality, σ and cost models on ``table``, then freeze them for prediction.

        Parameters
        ----------
        table : RoutingTable
            Training queries. With partial logs (``table.logged``), each
            model's quality and cost models learn from the queries where it
            was logged, and post-hoc run sets are drawn from the models
            logged for each query; nothing is imputed as a label. With
            ``table.propensity``, the quality and cost regressors weight each
            logged cell by its inverse propensity (σ and the reveal σ stay
            unweighted).
        rows : array-like of int or bool, optional
            Fit on ``table.subset(rows)`` only; default all queries.

        Returns
        -------
        self : RouterEstimator

        Raises
        ------
        ValueError
            If a model is logged on fewer than :data:`MIN_LOGGED_QUERIES` of
            the training queries.
        """
        if not isinstance(table, RoutingTable):
            raise TypeError(f"table must be a RoutingTable; got {type(table).__name__}")
        if rows is not None:
            table = table.subset(rows)
        check_logged(table.models, table.logged)
        self.models_ = tuple(table.models)
        prompts, self.repaired_prompts_ = (None, 0) if table.prompts is None else read_prompts(table.prompts)
        frame = prompt_frame(prompts, table.tasks, table.subtasks, n=table.n_queries)
        self.columns_ = list(frame.columns)
        self.featurizer_ = make_prompt_featurizer(
            self.columns_, text=None if self.text is None else clone(self.text)
        ).fit(frame)
        # a custom text featurizer (sentence embeddings) may batch its rows: featurized whole, as it was fitted
        features = (featurize_in_chunks(self.featurizer_, frame) if self.text is None
                    else self.featurizer_.transform(frame))
        self.frozen_featurizer_ = FrozenFeaturizer(self.featurizer_)
        self.signal_names_ = sorted(table.signals)
        self.uses_responses_ = bool(
            self.use_responses and table.responses is not None and (table.responses != "").any()
        )
        logged = table.logged
        weights = None if table.propensity is None else 1.0 / table.propensity
        info = read_responses(check_responses(table.responses, logged)) if self.uses_responses_ else None
        posthoc = PosthocData(check_signals(table.signals, self.signal_names_, logged), info)
        if self.uncertainty not in ("reveal", "error"):
            raise ValueError(f"uncertainty must be 'reveal' or 'error', got {self.uncertainty!r}")
        self.quality_ = clone(self.quality or QualityEstimator()).fit(
            features, table.quality, posthoc, logged, weights, feature_names=self.featurizer_.get_feature_names_out())
        self.reveal_sigma_ = (_reveal_sigma(self.quality_, features, posthoc, logged, self.random_state)
                              if self.uncertainty == "reveal" else None)
        self.correlation_ = _residual_correlation(self.quality_.oof_, len(self.models_)) if self.covariance else None
        self.cost_ = clone(self.cost or CostEstimator()).fit(self.models_, features, table.cost, table.output_tokens,
                                                            logged=logged, weights=weights)
        # Latency is heavy-tailed and positive like a cost without a price: the same log-scale regression.
        self.latency_ = (None if table.latency is None else
                         CostEstimator().fit(self.models_, features, table.latency, logged=logged, weights=weights))
        self._cache = None
        return self

    def __sklearn_is_fitted__(self) -> bool:
        """Whether :meth:`fit` ran (what :func:`~sklearn.utils.validation.check_is_fitted` asks)."""
        return hasattr(self, "quality_")

    def _check_fitted(self) -> None:
        """Raise :class:`~sklearn.exceptions.NotFittedError` (a ``ValueError``) before :meth:`fit`.

        Asked first directly: it runs at every decision step, and scikit-learn's check (estimator tags
        included) costs more than the rest of a step's checks together.
        """
        if not self.__sklearn_is_fitted__():
            check_is_fitted(self, msg="this %(name)s is not fitted yet; call fit(table) first")

    def prepare(self, prompts: ArrayLike | None = None, tasks: ArrayLike | None = None,
                subtasks: ArrayLike | None = None, *, input_tokens: ArrayLike | None = None,
                parallel: bool = False) -> PreparedQueries:
        """Prompt features, ex-ante costs and the prompt's quality share of ``N`` queries.

        They do not depend on the run set, so a caller that estimates the
        same queries at several steps (a cascade replay, policy episodes)
        computes them once and passes the result to :meth:`estimate`.

        Parameters
        ----------
        prompts, tasks, subtasks : sequence of str, shape (N,)
            The per-query inputs the estimator was fitted with (see ``columns_``).
        input_tokens : (N, K) float array, optional
            Input token counts for price-based cost; default ``ceil(len(prompt)/4)``.
        parallel : bool, default=False
            Spread the compiled passes over threads (same numbers).

        Returns
        -------
        PreparedQueries
        """
        self._check_fitted()
        given, n = per_query_inputs(self.columns_, prompts, tasks, subtasks)
        texts = {**given, "prompt": None if given["prompt"] is None else read_prompts(given["prompt"])[0]}
        features = self.frozen_featurizer_.transform(
            {name: as_texts(texts[name]) for name in self.columns_},  # type: ignore[arg-type]  # none is None: checked
            n, parallel=parallel)
        priced = self.cost_.priced_.size > 0  # only prices per token read the input token counts
        tokens = input_token_counts(given["prompt"] if priced else None, n, len(self.models_), input_tokens)
        latency = self.__dict__.get("latency_")  # artifacts fitted before latency existed have none
        return PreparedQueries(features, self.cost_.predict_ante(features, tokens, parallel=parallel),
                               self.quality_.prompt_share(features),
                               None if latency is None else latency.predict_ante(features, tokens, parallel=parallel),
                               ResponseMemo())

    def known_categories(self) -> dict[str, list[str]]:
        """The tasks and subtasks seen in training, sorted, by column (those the estimator reads).

        Returns
        -------
        dict of str to list of str
        """
        self._check_fitted()
        return {name: self.frozen_featurizer_.categories(name) for name in self.columns_ if name != "prompt"}

    def unseen_categories(self, tasks: ArrayLike | None = None,
                          subtasks: ArrayLike | None = None) -> dict[str, NDArray[np.bool_]]:
        """Which tasks and subtasks were never seen in training (see :meth:`Estimator.unseen_categories`).

        Parameters
        ----------
        tasks, subtasks : array-like of str, shape (N,), optional

        Returns
        -------
        dict of str to ndarray of bool
        """
        self._check_fitted()
        return {name: self.frozen_featurizer_.unseen(name, np.asarray(values, dtype=object).ravel())
                for name, values in (("task", tasks), ("subtask", subtasks))
                if values is not None and name in self.columns_}

    def _check_prepared(self, prepared: PreparedQueries) -> None:
        """Refuse what this estimator's :meth:`prepare` cannot have made (the cheap checks: it runs per step)."""
        self._check_fitted()
        if not isinstance(prepared, PreparedQueries):
            raise TypeError(f"prepared must be the PreparedQueries of this estimator's prepare(), "
                            f"got {type(prepared).__name__}")
        features, ante_cost = prepared.features, prepared.ante_cost
        if (not isinstance(features, np.ndarray) or features.ndim != 2 or not isinstance(ante_cost, np.ndarray)
                or ante_cost.shape != (features.shape[0], len(self.models_))):
            raise ValueError(f"prepared holds features {np.shape(features)} and costs {np.shape(ante_cost)}; "
                             f"this estimator makes (N, F) and (N, {len(self.models_)}): pass what its "
                             "prepare() returned")

    def estimate(self, prepared: PreparedQueries, rows: NDArray[np.int64], run: NDArray[np.bool_], *,
                 responses: NDArray[np.object_] | None = None, signals: Mapping[str, NDArray[np.float64]],
                 observed_cost: NDArray[np.float64], memo: ResponseMemo | None = None,
                 with_sigma: bool = True, parallel: bool = False,
                 observed_latency: NDArray[np.float64] | None = None) -> Estimates:
        """Estimates of the queries ``rows`` of ``prepared`` with run sets ``run``.

        The inputs are taken as checked (:meth:`predict` checks them).

        Parameters
        ----------
        prepared : PreparedQueries
            :meth:`prepare` of the queries.
        rows : ndarray of int, shape (M,)
            Which of them to estimate.
        run : ndarray of bool, shape (M, K)
            Their run sets.
        responses : (M, K) object array, optional
            Response texts (read only where ``run``).
        signals : mapping of str to (M, K) float arrays
            Every signal the estimator was fitted with (read only where ``run``).
        observed_cost : (M, K) float array
            Cost of the run models (read only where ``run``).
        memo : ResponseMemo, optional
            Shared by the calls of one job, so each response is parsed once;
            default the one ``prepared`` holds.
        with_sigma : bool, default=True
            ``False`` skips σ (selecting an answer needs quality only);
            ``sigma`` and ``cov`` are then ``None``.
        parallel : bool, default=False
            Spread the compiled passes over threads (same numbers).
        observed_latency : (M, K) float array, optional
            Seconds the run models took (read where ``run``; NaN keeps the estimate).

        Returns
        -------
        Estimates
            Shape ``(M, K)`` (``cov`` ``(M, K, K)``).
        """
        info = None
        if self.uses_responses_:
            texts = np.full(run.shape, "", dtype=object) if responses is None else responses
            info = run_responses(texts, run, memo if memo is not None else prepared.responses)
        share = None if prepared.quality_share is None else prepared.quality_share[rows]
        quality = self.quality_.predict_quality(prepared.features[rows], run, PosthocData(signals, info),
                                                share=share, parallel=parallel)
        cost = np.where(run, observed_cost, prepared.ante_cost[rows])
        latency = None
        if prepared.ante_latency is not None:
            latency = prepared.ante_latency[rows]
            if observed_latency is not None:
                latency = np.where(run & ~np.isnan(observed_latency), observed_latency, latency)
        if not with_sigma:
            return Estimates(quality, None, cost, None, latency)
        sigma = self._sigma(quality, run)
        cov = None
        if self.correlation_ is not None:
            cov = sigma[:, :, None] * sigma[:, None, :] * self.correlation_[run.sum(axis=1)]
        return Estimates(quality, sigma, cost, cov, latency)

    def _sigma(self, quality: np.ndarray, run: np.ndarray) -> np.ndarray:
        """σ per cell: the reveal σ (or the σ model) for models not run, ``run_sigma`` (or the σ model) for run ones.

        The σ model is evaluated only on the cells that use it.
        """
        if self.reveal_sigma_ is not None:
            sigma = self.reveal_sigma_[run.sum(axis=1)]
            if self.run_sigma is not None:
                return np.where(run, float(self.run_sigma), sigma)
            return np.where(run, self.quality_.predict_sigma(quality, run, cells=run), sigma)
        if self.run_sigma is None:
            return self.quality_.predict_sigma(quality, run)
        return np.where(run, float(self.run_sigma), self.quality_.predict_sigma(quality, run, cells=~run))

    def predict(
        self,
        prompts: ArrayLike | None = None,
        *,
        tasks: ArrayLike | None = None,
        subtasks: ArrayLike | None = None,
        run: ArrayLike | Sequence[str] | None = None,
        responses: ArrayLike | None = None,
        signals: Mapping[str, ArrayLike] | None = None,
        observed_cost: ArrayLike | None = None,
        input_tokens: ArrayLike | None = None,
        observed_latency: ArrayLike | None = None,
        prepared: PreparedQueries | None = None,
    ) -> Estimates:
        """Estimate every model on ``N`` new queries, given what the run models returned.

        Parameters
        ----------
        prompts, tasks, subtasks : sequence of str, shape (N,)
            The per-query inputs the estimator was fitted with (see ``columns_``).
        run : (N, K) bool array or list of model names, optional
            Models already run on each query; default none (ex-ante).
        responses : (N, K) object array, optional
            Response texts of the run models (other cells are ignored).
        signals : mapping of str to (N, K) float arrays, optional
            Every signal the estimator was fitted with; NaN allowed only where
            a model did not run.
        observed_cost : (N, K) float array, optional
            Cost of the run models (required when any model ran).
        input_tokens : (N, K) float array, optional
            Input token counts for price-based cost; default ``ceil(len(prompt)/4)``.
        observed_latency : (N, K) float array, optional
            Seconds the run models took; NaN (or omitted) where not measured keeps the estimate.
        prepared : PreparedQueries, optional
            :meth:`prepare` of the same queries: a cascade estimates one query
            at every step, and featurizing its prompt is most of the cost of a
            step. ``tasks``, ``subtasks`` and ``input_tokens`` are then not
            read, and ``prompts``, if given, only counted.

        Returns
        -------
        Estimates
        """
        if prepared is None:
            prepared = self.prepare(prompts, tasks, subtasks, input_tokens=input_tokens)
        else:
            self._check_prepared(prepared)
        n = prepared.features.shape[0]
        n_prompts = None if prompts is None else len(prompts)  # type: ignore[arg-type]  # a scalar: TypeError, as ever
        if n_prompts is not None and n_prompts != n:
            raise ValueError(f"prepared holds {n} queries but there are {n_prompts} prompts: "
                             "pass prepare() of the same prompts")
        run = check_run(run, n, self.models_)
        return self.estimate(prepared, np.arange(n), run,
                             responses=None if responses is None else check_responses(responses, run),
                             signals=check_signals(signals, self.signal_names_, run),
                             observed_cost=check_observed_cost(observed_cost, run),
                             observed_latency=check_observed_latency(observed_latency, run))

    def predict_table(self, table: RoutingTable, run: ArrayLike | Sequence[str] | None = None,
                      rows: ArrayLike | None = None) -> Estimates:
        """Estimate every model on the queries of ``table``, reading the run models' data from it.

        This is the step a policy evaluation repeats (decide, run, re-estimate):
        responses, signals and costs of the models in ``run`` are taken from
        ``table``. With ``rows``, only those queries are estimated (``run``
        then has one row per entry of ``rows``). The per-query part
        (:meth:`prepare`) and the parsed responses are kept for the last
        table seen, so repeated calls with new run sets cost only the
        regressors.

        Parameters
        ----------
        table : RoutingTable
            Same models, in the same order, as :attr:`models_`.
        run : (M, K) bool array or list of model names, optional
            Run sets, one row per entry of ``rows``; default none.
        rows : array-like of int, shape (M,), optional
            Queries of ``table`` to estimate; default all.

        Returns
        -------
        Estimates
            Shape ``(M, K)``.
        """
        self._check_fitted()
        if not isinstance(table, RoutingTable):
            raise TypeError(f"table must be a RoutingTable; got {type(table).__name__}")
        if tuple(table.models) != self.models_:
            raise ValueError(
                f"table models {list(table.models)} differ from the fitted models {list(self.models_)}; "
                "use table.select_models(...) with the same set"
            )
        rows = np.arange(table.n_queries) if rows is None else np.asarray(rows, dtype=np.intp)
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= table.n_queries)):
            raise ValueError(f"rows must be 1-D indices into the table's {table.n_queries} queries")
        run = check_run(run, rows.size, self.models_)
        prepared, memo = self._table_inputs(table)
        return self.estimate(
            prepared, rows, run, responses=None if table.responses is None else table.responses[rows],
            signals=check_signals({name: value[rows] for name, value in table.signals.items()},
                                  self.signal_names_, run),
            observed_cost=check_observed_cost(table.cost[rows], run), memo=memo,
            observed_latency=None if table.latency is None else check_observed_latency(table.latency[rows], run))

    def _table_inputs(self, table: RoutingTable) -> tuple[PreparedQueries, ResponseMemo]:
        cached = self.__dict__.get("_cache")
        if cached is not None and cached[0]() is table:
            return cached[1]
        prepared = self.prepare(table.prompts, table.tasks, table.subtasks, input_tokens=table.input_tokens)
        inputs = (prepared, ResponseMemo())
        self._cache = (weakref.ref(table), inputs)
        return inputs

    def warm_up(self, parallel: bool = False) -> None:
        """Compile every kernel prediction uses (serial, and the row-parallel ones with ``parallel``).

        The serial kernels are cached on disk after the first process, the
        parallel ones are compiled once per process, so a batch job calls
        this before its clock starts and a service before its first request.

        Parameters
        ----------
        parallel : bool, default=False
            Also compile the row-parallel variants.
        """
        self._check_fitted()
        prompts = ["What is 2 + 2?\nA) 3\nB) 4", "Ünïcödé — 東京?", ""]
        n, k = len(prompts), len(self.models_)
        per_query = {f"{name}s": prompts if name == "prompt" else ["warm-up"] * n for name in self.columns_}
        prepared = self.prepare(**per_query, parallel=parallel)
        run = np.zeros((n, k), bool)
        run[1, 0] = True
        run[2] = True
        for step_run in (np.zeros((n, k), bool), run):
            self.estimate(prepared, np.arange(n), step_run, responses=np.full((n, k), "B", dtype=object),
                          signals={name: np.where(step_run, 0.0, np.nan) for name in self.signal_names_},
                          observed_cost=np.where(step_run, 0.0, np.nan), memo=ResponseMemo(), parallel=parallel)

    @property
    def token_prices(self) -> dict[str, tuple[float, float]]:
        """USD per 1M input and output tokens, per model, as the cost estimator was given them.

        Empty when cost was learned from logged costs alone. A service that
        prices its upstream calls from ``usage`` falls back on these.
        """
        self._check_fitted()
        return {name: (float(price_in), float(price_out))
                for name, (price_in, price_out) in (self.cost_.prices or {}).items()}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_cache", None)  # a weak reference to the last table: neither picklable nor worth keeping
        return state



def make_router_estimator(kind: str = "learned", prices: dict[str, tuple[float, float]] | None = None
                          ) -> RouterEstimator:
    """A :class:`RouterEstimator` of the named family: ours (LightGBM, ridge) or a peer router's quality model.

    ``learned`` fits one LightGBM per model on a full table and one for all
    models (:class:`~estimators.quality.QualityEstimator` ``pooled``) on
    partial logs; ``pooled`` fits one for all models whatever the logs;
    ``linear`` is ridge. The peers put a published router's quality model
    in place of ours, with the same σ, cost model and policies, so that a
    comparison measures the quality model only: ``knn`` and ``mlp``
    (RouterBench's kNN and MLP routers), ``task-mean`` (each model's mean
    quality per task, the routing plateau) and ``mf`` (RouteLLM's matrix
    factorisation); see :mod:`estimators.peers`.

    The one mapping from the CLI's ``--estimator`` to an estimator.

    Parameters
    ----------
    kind : str, default="learned"
        One of :data:`ESTIMATOR_KINDS`.
    prices : dict of str to (float, float), optional
        USD per 1M input and output tokens per model, for the cost estimator.

    Returns
    -------
    RouterEstimator
        Unfitted.
    """
    if kind not in ESTIMATOR_KINDS:
        raise ValueError(f"unknown estimator {kind!r}; choose one of {list(ESTIMATOR_KINDS)}")
    if kind in PEER_REGRESSORS:
        quality = QualityEstimator(regressor=PEER_REGRESSORS[kind]())
    elif kind == "linear":
        quality = QualityEstimator(regressor=make_linear_regressor())
    else:
        quality = QualityEstimator(pooled=True if kind == "pooled" else "auto")
    return RouterEstimator(quality=quality, cost=CostEstimator(prices=prices))
