"""Slow, readable twin of :meth:`RouterEstimator.predict <estimators.estimator.RouterEstimator.predict>`.

Why it exists: the product's ``predict`` runs on frozen arrays and compiled
kernels (one fast implementation). This module is the test oracle it is
checked against (``tests/test_estimator_reference.py``), in the way
``tests/naive.py`` is the oracle of the decision kernels: the estimates are
written out from their definitions, with nothing but the fitted library
objects' own ``transform``/``predict`` and plain NumPy/Python.

* Prompt features: the fitted ``ColumnTransformer``'s blocks, one by one, in
  its output order. :class:`~estimators.featurize.TextFeaturizer`: hashed
  word and character n-gram counts as scikit-learn's ``HashingVectorizer``
  defines them (``_hashed_by_sklearn``), then the fitted TF-IDF and SVD,
  zero-padded to ``n_components``; :class:`~estimators.featurize.StructuralFeaturizer`:
  ``log1p`` of the pure-Python counts (``_counts``); anything else (the
  task/subtask ``OneHotEncoder``, an embedding featurizer): its own
  ``transform`` on a frame of its columns.
* Quality: each fitted regressor's own ``predict`` on the prompt features
  followed by the post-hoc block of the run set, clipped to [0, 1] (boosted from
  the per-cell prior, keyed on the task one-hot and ``KMeans.predict`` of the
  prompt-text columns: the regressors' raw score plus the prior's logit, or the
  prior alone for a model not run at a run-set size where ``unrun_trees_`` is
  ``False``); a pooled
  regressor (partial logs) predicts model ``m`` on those features, ``m``
  one-hot and the post-hoc columns named after ``m`` (boosted from the prior
  too, with no prior-alone cells).
* σ: the σ model's fitted regressor on ``(q, ran, |R|, model index)`` per
  cell, ``σ = max(scale · sqrt(max(predicted, floor)) ** power, floor)`` with
  the ``(scale, power)`` of the cell's stratum when it has one; then the
  models not run take ``reveal_sigma_[|R|, i]`` (``uncertainty="reveal"``) and
  the models run take ``run_sigma`` (when it is a float).
* Cost: ``max(exp(regressor(x)) · smearing - offset, 0)`` per model, times the
  output price plus input tokens times the input price (per 1M tokens) for
  priced models; observed costs replace the run cells.
* Covariance: ``σ_i σ_j ρ_{|R|}[i, j]``.

Deliberately not called: ``RouterEstimator.predict``, ``QualityEstimator.predict``,
``SigmaRegressor.predict``, ``CostEstimator.predict`` and the featurizers'
compiled counting (the fast path under test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from estimators.estimator import Estimates
from estimators.featurize import StructuralFeaturizer, TextFeaturizer, _counts, prompt_frame
from estimators.inputs import (
    check_observed_cost,
    check_observed_latency,
    check_responses,
    check_run,
    check_signals,
    per_query_inputs,
)
from estimators.posthoc import posthoc_feature_names, posthoc_features, read_responses
from estimators.sigma import SIGMA_FLOOR

__all__ = ["reference_predict", "reference_prompt_features"]


def _texts(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """One text per row: the cells of ``columns`` joined by spaces (the text transformers' rule)."""
    return [" ".join(str(cell) for cell in row) for row in frame[list(columns)].itertuples(index=False)]


def _text_block(featurizer: TextFeaturizer, texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), featurizer.n_components))
    if featurizer.svd_ is not None:  # fitted on a single text: every column is 0
        counts = featurizer._hashed_by_sklearn(texts)
        projected = featurizer.svd_.transform(featurizer.tfidf_.transform(counts))
        out[:, : projected.shape[1]] = projected
    return out


def _structure_block(texts: list[str]) -> np.ndarray:
    return np.log1p(np.array([_counts(text) for text in texts], dtype=np.float64).reshape(len(texts), -1))


def reference_prompt_features(featurizer, frame: pd.DataFrame) -> np.ndarray:
    """Prompt features ``(N, F)`` of ``frame`` (a :func:`~estimators.featurize.prompt_frame`).

    Iterates the fitted ``ColumnTransformer``'s ``transformers_`` instead of
    calling its ``transform``, so that the text and structure blocks come
    from their definitions (see the module docstring).
    """
    n = len(frame)
    blocks = []
    for name, transformer, columns in featurizer.transformers_:
        columns = list(columns)
        if transformer == "drop" or not columns:
            continue
        if transformer == "passthrough":
            raise TypeError(f"reference_predict does not model passthrough columns ({name!r})")
        if type(transformer) is TextFeaturizer:
            block = _text_block(transformer, _texts(frame, columns))
        elif type(transformer) is StructuralFeaturizer:
            block = _structure_block(_texts(frame, columns))
        else:
            block = np.asarray(transformer.transform(frame[columns]), dtype=np.float64)
        blocks.append(block.reshape(n, -1))
    return np.hstack(blocks)


def _prior_keys(cells, features: np.ndarray) -> np.ndarray:
    keys = [features[:, cells.columns]]
    if cells.clusters is not None:
        kmeans = cells.clusters.kmeans
        space = (features[:, cells.clusters.columns] - cells.clusters.offset) * cells.clusters.scale
        keys.append(np.eye(kmeans.n_clusters)[kmeans.predict(space)])
    keys = np.hstack(keys)
    return keys if keys.shape[1] else np.ones((len(features), 1))  # neither: one cell, the overall mean


def _quality(estimator, features: np.ndarray, run: np.ndarray, signals: dict, info) -> np.ndarray:
    X = np.hstack([features, posthoc_features(run, signals, info)])
    quality_estimator = estimator.quality_
    boosted = quality_estimator.prior_ is not None  # LightGBM from the prior: raw scores, the prior's logit added
    if quality_estimator.pooled_:
        # One regressor for every model: the row of (query, model m) is the query's features, then m one-hot,
        # then the post-hoc columns named after m ("ran[m]", "agree[m]", ...), in the block's order.
        names = posthoc_feature_names(estimator.models_, estimator.signal_names_, info is not None)
        columns = []
        for i, model in enumerate(estimator.models_):
            own = [features.shape[1] + j for j, name in enumerate(names) if name.endswith(f"[{model}]")]
            rows = np.hstack([X, np.eye(len(estimator.models_))[np.full(len(X), i)], X[:, own]])
            regressor = quality_estimator.regressors_[0]
            columns.append(regressor.predict(rows, raw_score=True) if boosted else regressor.predict(rows))
        raw = np.column_stack(columns)
    else:
        raw = np.column_stack([r.predict(X, raw_score=True) if boosted else r.predict(X)
                               for r in quality_estimator.regressors_])
    if not boosted:
        return np.clip(raw, 0.0, 1.0)
    # The prior's own predict of the cell keys: the task/subtask one-hot columns then the one-hot of the k-means
    # cluster (KMeans's own predict).
    prior = np.clip(quality_estimator.prior_.predict(_prior_keys(quality_estimator.cells_, features)),
                    1e-4, 1 - 1e-4)
    if quality_estimator.unrun_trees_ is not None:  # per-model regressors: a model not run is its prior alone
        for row in range(run.shape[0]):  # at the run-set sizes where unrun_trees_ says so
            for i in range(run.shape[1]):
                if not run[row, i] and not quality_estimator.unrun_trees_[run[row].sum(), i]:
                    raw[row, i] = 0.0
    return np.clip(1.0 / (1.0 + np.exp(-(raw + np.log(prior / (1 - prior))))), 0.0, 1.0)


def _model_sigma(sigma_regressor, quality: np.ndarray, run: np.ndarray) -> np.ndarray:
    """σ of every cell from the fitted σ model, its scale/power map and its floor."""
    n, k = quality.shape
    cells = [(row, model) for row in range(n) for model in range(k)]
    X = np.array([[quality[row, model], float(run[row, model]), float(run[row].sum()), float(model)]
                  for row, model in cells], dtype=np.float64).reshape(len(cells), 4)
    predicted = sigma_regressor.estimator_.predict(X)
    sigma = np.empty((n, k))
    for (row, model), features, value in zip(cells, X, predicted, strict=True):
        scale, power = sigma_regressor.scale_, sigma_regressor.power_
        if sigma_regressor.stratify is not None:
            scale, power = sigma_regressor.strata_.get(float(features[sigma_regressor.stratify]), (scale, power))
        raw = math.sqrt(max(float(value), SIGMA_FLOOR))
        sigma[row, model] = max(scale * raw**power, SIGMA_FLOOR)
    return sigma


def _sigma(estimator, quality: np.ndarray, run: np.ndarray) -> np.ndarray:
    """The σ model's value, then the reveal rule (models not run) and ``run_sigma`` (models run)."""
    sigma = _model_sigma(estimator.quality_.sigma_, quality, run)
    size = run.sum(axis=1)
    n, k = run.shape
    for row in range(n):
        for model in range(k):
            if run[row, model] and estimator.run_sigma is not None:
                sigma[row, model] = float(estimator.run_sigma)
            elif not run[row, model] and estimator.reveal_sigma_ is not None:
                sigma[row, model] = estimator.reveal_sigma_[size[row], model]
    return sigma


def _input_tokens(input_tokens, frame: pd.DataFrame, n: int, k: int) -> np.ndarray:
    """Given input tokens, NaN cells filled with ``ceil(len(prompt) / 4)`` when there are prompts.

    ``prompt`` is the text the features read (``prompt_frame``'s: ``None``
    and NaN are ``''``, so 0 tokens).
    """
    tokens = np.full((n, k), np.nan) if input_tokens is None else np.array(input_tokens, dtype=np.float64)
    if tokens.shape != (n, k):
        raise ValueError(f"input_tokens must have shape {(n, k)}; got {tokens.shape}")
    if "prompt" in frame:
        for row, prompt in enumerate(frame["prompt"]):
            guess = float(math.ceil(len(prompt) / 4))
            tokens[row] = [guess if math.isnan(t) else t for t in tokens[row]]
    return tokens


def _cost(cost_estimator, features: np.ndarray, tokens: np.ndarray, run: np.ndarray,
          observed: np.ndarray) -> np.ndarray:
    cost = np.empty(run.shape)
    for i, (model, mode, predictor) in enumerate(zip(cost_estimator.models_, cost_estimator.modes_,
                                                     cost_estimator.predictors_, strict=True)):
        estimate = np.maximum(np.exp(predictor.regressor.predict(features)) * predictor.smearing
                              - predictor.offset, 0.0)
        if mode == "tokens":
            if np.isnan(tokens[:, i]).any():
                raise ValueError(f"input_tokens has NaN for model {model!r}, whose cost is priced per token")
            price_in, price_out = cost_estimator.prices[model]
            estimate = (tokens[:, i] * price_in + estimate * price_out) / 1e6
        cost[:, i] = np.where(run[:, i], observed[:, i], estimate)
    return cost


def reference_predict(
    estimator,
    prompts: Sequence[str] | np.ndarray | None = None,
    *,
    tasks: Sequence[str] | np.ndarray | None = None,
    subtasks: Sequence[str] | np.ndarray | None = None,
    run: np.ndarray | Sequence[str] | None = None,
    responses: np.ndarray | None = None,
    signals: dict[str, np.ndarray] | None = None,
    observed_cost: np.ndarray | None = None,
    input_tokens: np.ndarray | None = None,
    observed_latency: np.ndarray | None = None,
) -> Estimates:
    """What ``estimator.predict(...)`` must return, computed from the definitions.

    The slow twin and test oracle of the fast ``RouterEstimator.predict``:
    same arguments, same result, written for reading (see the module
    docstring for each rule). Inputs are validated with the checks of
    :mod:`estimators.inputs`, as ``predict`` does.

    Parameters
    ----------
    estimator : RouterEstimator
        Fitted.
    prompts, tasks, subtasks : sequence of str, shape (N,)
        The per-query inputs the estimator was fitted with.
    run : (N, K) bool array or list of model names, optional
        Models already run on each query; default none.
    responses : (N, K) object array, optional
        Response texts (read only where a model ran).
    signals : dict of str to (N, K) float arrays, optional
        The post-hoc signals the estimator was fitted with.
    observed_cost : (N, K) float array, optional
        Costs of the run models (required when any model ran).
    input_tokens : (N, K) float array, optional
        Input tokens for priced models; NaN cells default to ``ceil(len(prompt) / 4)``.
    observed_latency : (N, K) float array, optional
        Seconds the run models took; NaN where not measured (the estimate stands).

    Returns
    -------
    Estimates
        ``quality``, ``sigma``, ``cost`` of shape (N, K), ``cov`` of shape
        (N, K, K) or ``None``, and ``latency`` (N, K) when the estimator has a
        latency model: its regression of log latency, the observed latency
        where a model ran and it was measured.
    """
    given, n = per_query_inputs(estimator.columns_, prompts, tasks, subtasks)
    frame = prompt_frame(**{f"{name}s": given[name] for name in estimator.columns_})
    features = reference_prompt_features(estimator.featurizer_, frame)
    k = len(estimator.models_)
    run = check_run(run, n, estimator.models_)
    signals = check_signals(signals, estimator.signal_names_, run)
    info = read_responses(check_responses(responses, run)) if estimator.uses_responses_ else None
    observed = check_observed_cost(observed_cost, run)
    quality = _quality(estimator, features, run, signals, info)
    sigma = _sigma(estimator, quality, run)
    tokens = _input_tokens(input_tokens, frame, n, k)
    cost = _cost(estimator.cost_, features, tokens, run, observed)
    latency = None
    if estimator.latency_ is not None:
        measured = check_observed_latency(observed_latency, run)
        latency = _cost(estimator.latency_, features, tokens, run & ~np.isnan(measured), measured)
    cov = None
    if estimator.correlation_ is not None:
        size = run.sum(axis=1)
        cov = np.array([[[sigma[row, i] * sigma[row, j] * estimator.correlation_[size[row]][i, j]
                          for j in range(k)] for i in range(k)] for row in range(n)]).reshape(n, k, k)
    return Estimates(quality, sigma, cost, cov, latency)
