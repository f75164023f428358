"""Cost estimator ``ĉ_i(x | R)``: prices × tokens when known, else learned log cost.

A model that already ran on ``x`` has an observed cost, which replaces the
estimate exactly. For the others, the estimate is

* ``input_tokens × in_price + predicted output_tokens × out_price`` (prices
  in USD per 1M tokens) when the model has a price and the training table has
  its output token counts; input tokens come from the caller or, failing
  that, from ``ceil(len(prompt) / 4)``;
* otherwise a regression of ``log(cost)`` on the prompt features.

Both regressions work on a log scale (costs and lengths are heavy-tailed)
and undo it with Duan's smearing factor, the mean of ``exp(residual)``, so the
estimate is of the *mean* cost the budget is about, not the median.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from lightgbm import LGBMRegressor
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, clone

from .frozen import freeze_regressors
from .quality import fit_weighted

__all__ = ["CostEstimator", "input_token_counts"]


def input_token_counts(prompts: Iterable[object] | None, n: int, k: int,
                       input_tokens: ArrayLike | None = None) -> NDArray[np.float64]:
    """Input tokens per (query, model): the given counts, else ``ceil(len(prompt) / 4)``.

    The one guess of the toolkit for a prompt's token count when the caller
    does not know it (about four characters per token for English text).

    Parameters
    ----------
    prompts : iterable of str, or None
        One per query (``n`` of them); ``None`` leaves unknown counts as NaN.
    n, k : int
        Queries and models.
    input_tokens : array-like of shape (n, k), optional
        Known counts; NaN cells are guessed.

    Returns
    -------
    ndarray of float64, shape (n, k)
    """
    tokens = np.full((n, k), np.nan) if input_tokens is None else np.asarray(input_tokens, dtype=np.float64)
    if tokens.shape != (n, k):
        raise ValueError(f"input_tokens must have shape {(n, k)}; got {tokens.shape}")
    if prompts is not None:
        guess = np.ceil(np.fromiter((len(str(p)) for p in prompts), dtype=np.float64, count=n) / 4.0)
        tokens = np.where(np.isnan(tokens), guess[:, None], tokens)
    return tokens


def _default_regressor() -> LGBMRegressor:
    return LGBMRegressor(
        n_estimators=50, learning_rate=0.2, num_leaves=15, min_child_samples=20, max_bin=63,
        verbose=-1, n_jobs=1, random_state=0,
    )


class _LogTarget:
    """A regressor of ``log(target + offset)`` with its smearing factor."""

    def __init__(self, regressor: BaseEstimator, offset: float) -> None:
        self.offset = offset
        self.regressor = regressor

    def fit(self, X: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> _LogTarget:
        log_target = np.log(target + self.offset)
        fit_weighted(self.regressor, X, log_target, weights)
        self.smearing = float(np.average(np.exp(log_target - self.regressor.predict(X)), weights=weights))
        return self


class CostEstimator(BaseEstimator):
    """Per-model cost estimates from prices and tokens, or from a log-cost regression.

    Parameters
    ----------
    prices : dict of str to (float, float), optional
        USD per 1M input and output tokens, per model name.
    regressor : regressor, optional
        Template of the log-scale regressions; default a small LightGBM.

    Attributes
    ----------
    models_ : tuple of str
        Model names in column order.
    modes_ : list of str
        ``"tokens"`` or ``"log_cost"`` per model: which estimate it uses.
    predictors_ : list of _LogTarget
        Per model, the regression of output tokens (token mode) or cost.
    frozen_ : FrozenRegressors
        The predictors' regressors frozen for prediction (all models at once).
    offsets_, smearing_ : ndarray of shape (K,)
        Per model, the log offset and Duan's smearing factor.
    priced_ : ndarray of intp
        Columns of the models priced per token (mode ``"tokens"``).
    token_prices_ : ndarray of shape (len(priced_), 2)
        Their USD per 1M input and output tokens.
    """

    def __init__(self, prices: dict[str, tuple[float, float]] | None = None,
                 regressor: BaseEstimator | None = None) -> None:
        self.prices = prices
        self.regressor = regressor

    def fit(self, models: Iterable[str], prompt_features: NDArray[np.float64], cost: NDArray[np.float64],
            output_tokens: NDArray[np.float64] | None = None, *,
            logged: NDArray[np.bool_] | None = None,
            weights: NDArray[np.float64] | None = None) -> CostEstimator:
        """Fit on ``N`` queries of ``K`` models: per model, prices × predicted tokens or a log-cost regression.

        Parameters
        ----------
        models : iterable of str
            The ``K`` model names, in column order (keys of ``prices``).
        prompt_features : ndarray of float64, shape (N, F)
        cost : ndarray of float64, shape (N, K)
            Observed cost (read only where ``logged``).
        output_tokens : ndarray of float64, shape (N, K), optional
            Output token counts; a priced model whose logged cells are all
            finite is estimated in token mode.
        logged : ndarray of bool, shape (N, K), optional
            Which outcomes the logs hold; each model learns from its own
            logged queries. Default all.
        weights : ndarray of float64, shape (N, K), optional
            Per-cell sample weights (inverse propensities, read where
            ``logged``); default 1.

        Returns
        -------
        self : CostEstimator
        """
        self.models_ = tuple(models)
        prices = self.prices or {}
        unknown = sorted(set(prices) - set(self.models_))
        if unknown:
            raise ValueError(f"prices names unknown model(s) {unknown}; known models are {list(self.models_)}")
        template = self.regressor if self.regressor is not None else _default_regressor()
        self.modes_, self.predictors_ = [], []
        logged = np.ones(cost.shape, dtype=bool) if logged is None else logged
        for i, model in enumerate(self.models_):
            rows = logged[:, i]
            features, spent = prompt_features[rows], cost[rows, i]
            weight = None if weights is None else weights[rows, i]
            tokens = None if output_tokens is None else output_tokens[rows, i]
            if model in prices and tokens is not None and np.isfinite(tokens).all():
                self.modes_.append("tokens")
                self.predictors_.append(_LogTarget(clone(template), 1.0).fit(features, tokens, weight))
            else:
                self.modes_.append("log_cost")
                offset = max(float(np.min(spent[spent > 0], initial=1e-9)) * 1e-3, 1e-12)
                self.predictors_.append(_LogTarget(clone(template), offset).fit(features, spent, weight))
        self.frozen_ = freeze_regressors([p.regressor for p in self.predictors_])
        self.offsets_ = np.array([p.offset for p in self.predictors_], dtype=np.float64)
        self.smearing_ = np.array([p.smearing for p in self.predictors_], dtype=np.float64)
        self.priced_ = np.array([i for i, mode in enumerate(self.modes_) if mode == "tokens"], dtype=np.intp)
        self.token_prices_ = np.array([prices[self.models_[i]] for i in self.priced_], dtype=np.float64).reshape(-1, 2)
        return self

    def predict_ante(self, prompt_features: NDArray[np.float64], input_tokens: NDArray[np.float64], *,
                     parallel: bool = False) -> NDArray[np.float64]:
        """Cost estimates before any model has run; they do not depend on the run set, so callers compute them once.

        Parameters
        ----------
        prompt_features : ndarray of float64, shape (N, F)
        input_tokens : ndarray of float64, shape (N, K)
            See :func:`input_token_counts`; NaN cells are not used by
            log-cost models (and refused for token-priced ones).
        parallel : bool, default=False
            Spread the forest over threads (same numbers).

        Returns
        -------
        ndarray of float64, shape (N, K)
            Estimated USD per query and model, ``>= 0``.
        """
        estimate = np.maximum(np.exp(self.frozen_.predict(prompt_features, parallel)) * self.smearing_
                              - self.offsets_, 0.0)
        if self.priced_.size:
            tokens = input_tokens[:, self.priced_]
            unknown = np.isnan(tokens).any(axis=0)
            if unknown.any():
                model = self.models_[self.priced_[np.flatnonzero(unknown)[0]]]
                raise ValueError(
                    f"input_tokens has NaN for model {model!r}, whose cost is priced per token; "
                    "pass input_tokens or the prompts (their length / 4 is used)"
                )
            estimate[:, self.priced_] = (tokens * self.token_prices_[:, 0]
                                         + estimate[:, self.priced_] * self.token_prices_[:, 1]) / 1e6
        return estimate

    def predict(self, prompt_features: NDArray[np.float64], input_tokens: NDArray[np.float64],
                run: NDArray[np.bool_] | None = None,
                observed_cost: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """Cost per query and model, the observed one where a model ran: a known bill is not estimated.

        Parameters
        ----------
        prompt_features : ndarray of float64, shape (N, F)
        input_tokens : ndarray of float64, shape (N, K)
            NaN cells are not used by log-cost models.
        run : ndarray of bool, shape (N, K), optional
            Models already run; default none.
        observed_cost : ndarray of float64, shape (N, K), optional
            Their costs (read where ``run``; required with ``run``).

        Returns
        -------
        ndarray of float64, shape (N, K)
            :meth:`predict_ante`, with ``observed_cost`` in the run cells.
        """
        estimate = self.predict_ante(prompt_features, input_tokens)
        if run is not None:
            if observed_cost is None:  # np.where would fill the run cells with None: an object array
                raise ValueError("observed_cost is required with run: pass the cost of the models that ran")
            estimate = np.where(run, observed_cost, estimate)
        return estimate
