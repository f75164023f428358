"""The one interface the decision kernel and policy fitting call.

:class:`RouterEstimator` fits the prompt featurizer, the quality estimator
(with σ and, optionally, an error correlation per run-set size) and the cost
estimator on a :class:`~estimators.table.RoutingTable`, and answers "given the
query and the models run so far, what are ``q̂``, ``σ`` and ``ĉ`` for every
model" as float64 ``(N, K)`` arrays.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple, Sequence

import numpy as np
from sklearn.base import BaseEstimator, clone

from .table import RoutingTable

from .cost import CostEstimator
from .featurize import make_prompt_featurizer, prompt_frame
from .inputs import check_observed_cost, check_responses, check_run, check_signals, per_query_inputs
from .posthoc import read_responses
from .quality import PosthocData, QualityEstimator, make_linear_regressor

__all__ = ["Estimates", "RouterEstimator", "ESTIMATOR_KINDS", "make_router_estimator"]


class Estimates(NamedTuple):
    """Per-query, per-model estimates for the decision kernel.

    Attributes
    ----------
    quality : ndarray of float64, shape (N, K)
        ``q̂_i(x | R)`` in [0, 1].
    sigma : ndarray of float64, shape (N, K)
        Standard deviation of the quality estimate's error (> 0), and
        ``run_sigma`` (default 0) for the models in ``R``.
    cost : ndarray of float64, shape (N, K)
        ``ĉ_i(x | R)`` in USD; the observed cost for models in ``R``.
    cov : ndarray of float64, shape (N, K, K) or None
        Error covariance across models when the estimator was fitted with
        ``covariance=True``; its diagonal is ``sigma**2``.
    """

    quality: np.ndarray
    sigma: np.ndarray
    cost: np.ndarray
    cov: np.ndarray | None = None


def _residual_correlation(oof: dict, k: int) -> np.ndarray:
    """Correlation of out-of-fold errors across models, one ``(K, K)`` matrix per ``|R|``.

    Sizes with too few rows (or constant errors) fall back to independence.
    """
    residual = oof["target"] - oof["quality"]
    size = oof["run"].sum(axis=1)
    correlation = np.tile(np.eye(k), (k + 1, 1, 1))
    for t in range(k + 1):
        rows = residual[size == t]
        if len(rows) > 2 * k:
            with np.errstate(invalid="ignore", divide="ignore"):
                c = np.corrcoef(rows, rowvar=False)
            c = np.where(np.isfinite(c), c, np.eye(k))
            np.fill_diagonal(c, 1.0)
            correlation[t] = c
    return correlation


def _reveal_sigma(quality, features: np.ndarray, posthoc: PosthocData, n_models: int, seed: int,
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
    the move when the model runs together with one other model).

    Returns
    -------
    ndarray of shape (K + 1, K)
        Row ``t`` holds each model's σ when ``t`` models have run (the last
        row, everything run, is 0).
    """
    rng = np.random.default_rng(seed)
    n, k = features.shape[0], n_models
    rows = rng.choice(n, size=min(n, n_rows), replace=False)
    data = posthoc.take(rows)
    sigma = np.zeros((k + 1, k))
    for size in range(k):
        order = np.argsort(rng.random((rows.size, k)), axis=1)
        run = np.zeros((rows.size, k), dtype=bool)
        np.put_along_axis(run, order[:, :size], True, axis=1)
        before, _ = quality.predict(features[rows], run, data)
        for model in range(k):
            going = ~run[:, model]
            after_run = run[going].copy()
            after_run[:, model] = True
            if size == 0 and k > 1:
                # Alone, a model's answer says little about itself; its estimate
                # moves once another answer can agree with it, which is what a
                # plan of two or more models buys at the first step.
                other = (model + 1 + rng.integers(0, k - 1, size=after_run.shape[0])) % k
                after_run[np.arange(after_run.shape[0]), other] = True
            after, _ = quality.predict(features[rows][going], after_run, data.take(np.flatnonzero(going)))
            sigma[size, model] = np.sqrt(np.mean((after[:, model] - before[going, model]) ** 2))
    return sigma


class RouterEstimator:
    """Quality, uncertainty and cost estimates for every model and any run set.

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
    signal_names_ : list of str
        Names of the post-hoc signals, in feature order.
    uses_responses_ : bool
        Whether response features are part of the quality model.
    featurizer_, quality_, cost_ : fitted components
    correlation_ : ndarray of shape (K + 1, K, K) or None

    Examples
    --------
    >>> est = RouterEstimator().fit(table)                      # doctest: +SKIP
    >>> est.predict(["What is 2 + 2?"], tasks=["gsm8k"])        # doctest: +SKIP
    >>> est.predict_table(table.subset(test), run=step_run_sets)  # doctest: +SKIP
    """

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

    def fit(self, table: RoutingTable, rows: Sequence[int] | np.ndarray | None = None) -> "RouterEstimator":
        """Fit on ``table`` (restricted to ``rows`` when given); returns ``self``."""
        if not isinstance(table, RoutingTable):
            raise TypeError(f"table must be a RoutingTable; got {type(table).__name__}")
        if rows is not None:
            table = table.subset(rows)
        if not np.isfinite(table.quality).all() or not np.isfinite(table.cost).all():
            raise ValueError("table.quality and table.cost must be finite; drop or fill the missing cells first")
        self.models_ = tuple(table.models)
        frame = prompt_frame(table.prompts, table.tasks, table.subtasks, n=table.n_queries)
        self.columns_ = list(frame.columns)
        self.featurizer_ = make_prompt_featurizer(
            self.columns_, text=None if self.text is None else clone(self.text)
        ).fit(frame)
        features = self.featurizer_.transform(frame)
        self.signal_names_ = sorted(table.signals)
        self.uses_responses_ = bool(
            self.use_responses and table.responses is not None and (table.responses != "").any()
        )
        run = np.ones(table.quality.shape, dtype=bool)
        posthoc = self._posthoc(run, table.responses, table.signals)
        if self.uncertainty not in ("reveal", "error"):
            raise ValueError(f"uncertainty must be 'reveal' or 'error', got {self.uncertainty!r}")
        self.quality_ = clone(self.quality or QualityEstimator()).fit(features, table.quality, posthoc)
        self.reveal_sigma_ = (_reveal_sigma(self.quality_, features, posthoc, len(self.models_),
                                             self.random_state)
                              if self.uncertainty == "reveal" else None)
        self.correlation_ = _residual_correlation(self.quality_.oof_, len(self.models_)) if self.covariance else None
        self.cost_ = clone(self.cost or CostEstimator()).fit(self.models_, features, table.cost, table.output_tokens)
        self._cache = None
        return self

    def _posthoc(self, run: np.ndarray, responses, signals) -> PosthocData:
        signals = check_signals(signals, self.signal_names_, run)
        info = read_responses(check_responses(responses, run)) if self.uses_responses_ else None
        return PosthocData(signals, info)

    def _check_fitted(self) -> None:
        if not hasattr(self, "quality_"):
            raise ValueError("this RouterEstimator is not fitted yet; call fit(table) first")

    def _features(self, prompts, tasks, subtasks) -> tuple[np.ndarray, int]:
        given, n = per_query_inputs(self.columns_, prompts, tasks, subtasks)
        frame = prompt_frame(**{f"{name}s": given[name] for name in self.columns_})
        return self.featurizer_.transform(frame), n

    def predict(
        self,
        prompts: Sequence[str] | np.ndarray | None = None,
        *,
        tasks: Sequence[str] | np.ndarray | None = None,
        subtasks: Sequence[str] | np.ndarray | None = None,
        run: np.ndarray | Sequence[str] | None = None,
        responses: np.ndarray | None = None,
        signals: dict[str, np.ndarray] | None = None,
        observed_cost: np.ndarray | None = None,
        input_tokens: np.ndarray | None = None,
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
        signals : dict of str to (N, K) float arrays, optional
            Every signal the estimator was fitted with; NaN allowed only where
            a model did not run.
        observed_cost : (N, K) float array, optional
            Cost of the run models (required when any model ran).
        input_tokens : (N, K) float array, optional
            Input token counts for price-based cost; default ``ceil(len(prompt)/4)``.

        Returns
        -------
        Estimates
        """
        self._check_fitted()
        features, n = self._features(prompts, tasks, subtasks)
        run = check_run(run, n, self.models_)
        posthoc = self._posthoc(run, responses, signals)
        return self._estimate(features, run, posthoc, check_observed_cost(observed_cost, run),
                              self._input_tokens(input_tokens, prompts, n))

    def _input_tokens(self, input_tokens, prompts, n: int) -> np.ndarray:
        k = len(self.models_)
        tokens = np.full((n, k), np.nan) if input_tokens is None else np.asarray(input_tokens, dtype=np.float64)
        if tokens.shape != (n, k):
            raise ValueError(f"input_tokens must have shape {(n, k)}; got {tokens.shape}")
        if prompts is not None:
            guess = np.ceil(np.array([len(str(p)) for p in prompts], dtype=np.float64) / 4.0)
            tokens = np.where(np.isnan(tokens), guess[:, None], tokens)
        return tokens

    def _estimate(self, features, run, posthoc, observed_cost, input_tokens) -> Estimates:
        quality, sigma = self.quality_.predict(features, run, posthoc)
        if self.reveal_sigma_ is not None:
            sigma = np.where(run, sigma, self.reveal_sigma_[run.sum(axis=1)])
        if self.run_sigma is not None:
            sigma = np.where(run, float(self.run_sigma), sigma)
        cost = self.cost_.predict(features, input_tokens, run, observed_cost)
        cov = None
        if self.correlation_ is not None:
            cov = sigma[:, :, None] * sigma[:, None, :] * self.correlation_[run.sum(axis=1)]
        return Estimates(quality, sigma, cost, cov)

    def predict_table(self, table: RoutingTable, run: np.ndarray | Sequence[str] | None = None,
                      rows: np.ndarray | None = None) -> Estimates:
        """Estimate every model on the queries of ``table``, reading the run models' data from it.

        This is the step a policy evaluation repeats (decide, run, re-estimate):
        responses, signals and costs of the models in ``run`` are taken from
        ``table``. With ``rows``, only those queries are estimated (``run``
        then has one row per entry of ``rows``); prompt features and parsed responses are cached for the
        last table seen, so repeated calls with new run sets cost only the
        regressors.
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
        features, info, tokens = self._table_inputs(table)
        posthoc = PosthocData(table.signals, info).take(rows)
        signals = check_signals(posthoc.signals, self.signal_names_, run)
        return self._estimate(features[rows], run, PosthocData(signals, posthoc.responses),
                              check_observed_cost(table.cost[rows], run), tokens[rows])

    def _table_inputs(self, table: RoutingTable):
        cached = getattr(self, "_cache", None)
        if cached is not None and cached[0]() is table:
            return cached[1]
        features, n = self._features(table.prompts, table.tasks, table.subtasks)
        info = read_responses(table.responses) if self.uses_responses_ and table.responses is not None else None
        if self.uses_responses_ and info is None:
            info = read_responses(np.full(table.quality.shape, "", dtype=object))
        tokens = self._input_tokens(table.input_tokens, table.prompts, n)
        self._cache = (weakref.ref(table), (features, info, tokens))
        return self._cache[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_cache", None)  # a weak reference to the last table: neither picklable nor worth keeping
        return state


#: Estimator families a user can pick by name (CLI ``--estimator``).
ESTIMATOR_KINDS = ("learned", "linear")


def make_router_estimator(kind: str = "learned", prices: dict[str, tuple[float, float]] | None = None
                          ) -> RouterEstimator:
    """A :class:`RouterEstimator` of the named family: LightGBM (``learned``) or ridge (``linear``)."""
    if kind not in ESTIMATOR_KINDS:
        raise ValueError(f"unknown estimator {kind!r}; choose one of {list(ESTIMATOR_KINDS)}")
    quality = QualityEstimator(regressor=make_linear_regressor()) if kind == "linear" else QualityEstimator()
    return RouterEstimator(quality=quality, cost=CostEstimator(prices=prices))
