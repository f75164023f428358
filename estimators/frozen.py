"""A fast, verified inference twin of a fitted :class:`~estimators.estimator.RouterEstimator`.

Why: ``RouterEstimator.predict`` is written for clarity and for tables. On
one prompt it spends about 13 ms in scikit-learn's per-call validation,
pandas indexing, a 16 MB copy of the SVD components and forty-odd
LightGBM calls, which is ten times the latency budget of a routing
decision, and on a million logged queries the pure-Python n-gram analyzers
alone would take longer than the whole scoring budget.
:class:`CompiledEstimator` reads the fitted parameters once and computes the
same numbers with a handful of array operations and compiled loops:

* prompt text: :mod:`estimators._textkernels` (hashed n-grams, TF-IDF and the SVD
  projection in one compiled pass per ASCII prompt);
* structural counts: the featurizer's own counting function (compiled for ASCII);
* task / subtask one-hot: a dictionary from category to output row;
* ridge pipelines (imputer → scaler → ridge) folded into one affine map;
* LightGBM regressors (quality, σ, cost): :class:`estimators._forest.Forest`.

Any component it does not recognise (an embedding featurizer, another
regressor) is called through its own ``transform``/``predict``, so the twin
is never wrong, only less fast. :func:`compile_estimator` checks the twin
against ``estimator.predict`` on probe queries (several run sets, responses,
signals and costs) and returns ``None`` with a warning when they differ by
more than ``1e-9``, so a change in the estimators that this module does not
mirror degrades speed, never decisions.

Everything here is read-only after construction (no caches), so one
instance serves many threads. It is never pickled: the router builds it at
load time from the pickled estimator.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from estimators.inputs import check_observed_cost, check_run, check_signals, per_query_inputs
from estimators.posthoc import ResponseInfo, parse_responses, posthoc_features
from estimators.estimator import Estimates

from estimators._textkernels import ascii_text_features, ascii_text_features_parallel, encode_texts, project_counts
from estimators.featurize import CHAR_NGRAMS, structure_counts_of
from ._forest import Forest, Tabulated

__all__ = ["CompiledEstimator", "compile_estimator", "VERIFY_RTOL"]

#: Largest relative difference (with an absolute floor of 1e-12) allowed
#: between the twin and ``estimator.predict`` on the probe queries.
VERIFY_RTOL = 1e-9


# --------------------------------------------------------------------------- #
# prompt featurizer blocks
# --------------------------------------------------------------------------- #


class _Columns:
    """The per-query columns of one call, with each text column's UTF-8 bytes built once on demand.

    The text and structure blocks both read the prompt's bytes; encoding
    and joining a batch of prompts costs about as much as counting them, so
    it is done once per call (one object per call: nothing shared between
    threads).
    """

    def __init__(self, values: dict[str, np.ndarray]) -> None:
        self.values = values
        self._encoded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def encoded(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(bytes, offsets, ascii)``: text ``r`` is ``bytes[offsets[r]:offsets[r + 1]]``; ``ascii[r]`` tells
        whether it is plain ASCII (bytes = characters), the only texts the compiled blocks read."""
        if name not in self._encoded:
            self._encoded[name] = encode_texts(self.values[name])
        return self._encoded[name]


class _CallBlock:
    """Fallback: the fitted transformer's own ``transform`` on its columns."""

    def __init__(self, transformer, columns: list[str]) -> None:
        self.transformer, self.columns = transformer, columns

    def __call__(self, frame: _Columns, n: int, parallel: bool = False) -> np.ndarray:
        data = pd.DataFrame({c: frame[c] for c in self.columns})
        return np.asarray(self.transformer.transform(data), dtype=np.float64).reshape(n, -1)


class _TextBlock:
    """``TextFeaturizer`` in one compiled pass per ASCII prompt (see :mod:`estimators._textkernels`)."""

    def __init__(self, featurizer, column: str) -> None:
        self.featurizer, self.column = featurizer, column
        self.word_chars, self.char_chars = int(featurizer.word_chars), int(featurizer.char_chars)
        self.n_features = int(featurizer.n_features)
        self.n_components = int(featurizer.n_components)
        self.idf = np.ascontiguousarray(featurizer.tfidf_.idf_, dtype=np.float64)
        svd = featurizer.svd_
        self.projection = (None if svd is None
                           else np.ascontiguousarray(svd.components_.T, dtype=np.float64))

    @classmethod
    def supports(cls, featurizer) -> bool:
        from estimators.featurize import TextFeaturizer
        return (type(featurizer) is TextFeaturizer and featurizer.word_chars > 0
                and featurizer.char_chars > 0 and getattr(featurizer.tfidf_, "sublinear_tf", False)
                and featurizer.tfidf_.norm == "l2" and featurizer.tfidf_.use_idf)

    def __call__(self, frame: _Columns, n: int, parallel: bool = False) -> np.ndarray:
        out = np.zeros((n, self.n_components))
        if self.projection is None:
            return out
        width = self.projection.shape[1]
        texts = frame[self.column]
        text, offsets, plain = frame.encoded(self.column)
        rows = np.flatnonzero(plain)
        if rows.size:
            block = np.empty((rows.size, width))
            (ascii_text_features_parallel if parallel else ascii_text_features)(
                text, offsets, rows, self.word_chars, self.char_chars, self.n_features, np.array(CHAR_NGRAMS),
                self.idf, self.projection, block)
            out[rows, :width] = block
        others = np.flatnonzero(~plain)
        if others.size:  # Unicode: the featurizer's own analyzers, our projection
            counts = self.featurizer._hashed_by_sklearn([texts[r] for r in others])
            counts.sum_duplicates()
            row = np.empty(width)
            for j, r in enumerate(others):
                cells = slice(counts.indptr[j], counts.indptr[j + 1])
                project_counts(counts.indices[cells].astype(np.int64), counts.data[cells].astype(np.float64),
                               self.idf, self.projection, row)
                out[r, :width] = row
        return out


class _StructureBlock:
    """``StructuralFeaturizer`` without scikit-learn's per-call validation, on the call's encoded texts."""

    def __init__(self, featurizer, column: str) -> None:
        self.column = column

    @classmethod
    def supports(cls, featurizer) -> bool:
        from estimators.featurize import StructuralFeaturizer
        return type(featurizer) is StructuralFeaturizer

    def __call__(self, frame: _Columns, n: int, parallel: bool = False) -> np.ndarray:
        return np.log1p(structure_counts_of(frame[self.column], frame.encoded(self.column)))


class _OneHotBlock:
    """``OneHotEncoder`` as one dictionary look-up per column and query.

    The output row of every known category is computed once with the
    encoder itself (so infrequent pooling is exactly the encoder's); an
    unseen value takes the row of a value that cannot be a category.
    """

    _UNSEEN = "\x00unseen category\x00"

    def __init__(self, encoder, columns: list[str]) -> None:
        self.columns = columns
        widths = list(encoder._n_features_outs)
        starts = np.concatenate([[0], np.cumsum(widths)])
        self.width = int(starts[-1])
        self.slices = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        self.tables: list[dict[str, np.ndarray]] = []
        self.unseen: list[np.ndarray] = []
        for i, categories in enumerate(encoder.categories_):
            values = [str(c) for c in categories] + [self._UNSEEN]
            probe = pd.DataFrame({c: [str(encoder.categories_[j][0])] * len(values)
                                  for j, c in enumerate(columns)})
            probe[columns[i]] = values
            rows = np.asarray(encoder.transform(probe), dtype=np.float64)[:, self.slices[i]]
            self.tables.append({v: rows[k] for k, v in enumerate(values[:-1])})
            self.unseen.append(rows[-1])

    @classmethod
    def supports(cls, encoder) -> bool:
        from sklearn.preprocessing import OneHotEncoder
        return (type(encoder) is OneHotEncoder and hasattr(encoder, "_n_features_outs")
                and encoder.handle_unknown in ("ignore", "infrequent_if_exist") and encoder.drop is None
                and all(np.asarray(c).dtype == object for c in encoder.categories_))

    def __call__(self, frame: _Columns, n: int, parallel: bool = False) -> np.ndarray:
        out = np.empty((n, self.width))
        for i, column in enumerate(self.columns):
            table, unseen = self.tables[i], self.unseen[i]
            out[:, self.slices[i]] = [table.get(v, unseen) for v in frame[column]] if n else unseen[:0]
        return out


def _prompt_blocks(featurizer) -> list:
    """One fast block per fitted transformer of the ``ColumnTransformer``, in output order."""
    from sklearn.compose import ColumnTransformer
    if type(featurizer) is not ColumnTransformer or featurizer.sparse_threshold != 0.0:
        raise TypeError("unsupported featurizer")
    blocks = []
    for name, transformer, columns in featurizer.transformers_:
        if name == "remainder" and (transformer == "drop" or not len(columns)):
            continue
        if transformer == "drop":
            continue
        if transformer == "passthrough":
            raise TypeError("passthrough columns are not supported")
        columns = list(columns)
        if len(columns) == 1 and _TextBlock.supports(transformer):
            blocks.append(_TextBlock(transformer, columns[0]))
        elif len(columns) == 1 and _StructureBlock.supports(transformer):
            blocks.append(_StructureBlock(transformer, columns[0]))
        elif _OneHotBlock.supports(transformer):
            blocks.append(_OneHotBlock(transformer, columns))
        else:
            blocks.append(_CallBlock(transformer, columns))
    return blocks


# --------------------------------------------------------------------------- #
# regressors
# --------------------------------------------------------------------------- #


class _Affine:
    """Ridge pipelines (``SimpleImputer(add_indicator) → StandardScaler → Ridge``) of several models as one map.

    For one pipeline with imputer fill ``f``, scaler ``(μ, s)`` over
    ``z = [filled x, missing indicators]`` and ridge ``(w, b)``, the output
    ``(z - μ)/s · w + b`` regroups into ``x⁰ · W + m · M + b'`` with ``x⁰``
    the input with NaN as 0, ``m`` its missing mask, ``W = w/s`` on the
    input columns, ``M = f·W`` plus the indicator weights of the same
    column, and ``b' = b - μ/s · w``. Stacking the columns of every
    pipeline evaluates all models with two products instead of one
    imputation, concatenation and product per model; and since the map is
    a sum over input columns, :meth:`partial` lets a caller evaluate the
    prompt's columns once per query and only the post-hoc ones per step.
    """

    def __init__(self, pipelines: Sequence) -> None:
        weights, missing_weights, bias = [], [], []
        for pipeline in pipelines:
            imputer, scaler, ridge = (step for _, step in pipeline.steps)
            fill = np.asarray(imputer.statistics_, dtype=np.float64)
            indicator = getattr(imputer, "indicator_", None)
            indicator = np.zeros(0, np.int64) if indicator is None else np.asarray(indicator.features_, np.int64)
            coef = np.atleast_2d(np.asarray(ridge.coef_, dtype=np.float64))
            mean = scaler.mean_ if scaler.with_mean else 0.0
            scale = scaler.scale_ if scaler.with_std else 1.0
            scaled = (coef / scale).T  # (inputs + indicators, outputs)
            n_inputs = fill.size
            direct = scaled[:n_inputs]
            when_missing = fill[:, None] * direct
            np.add.at(when_missing, indicator, scaled[n_inputs:])
            weights.append(direct)
            missing_weights.append(when_missing)
            bias.append(np.atleast_1d(np.asarray(ridge.intercept_, dtype=np.float64))
                        - ((mean / scale) * coef).sum(axis=1))
        self.weights = np.ascontiguousarray(np.hstack(weights))
        self.missing_weights = np.ascontiguousarray(np.hstack(missing_weights))
        self.bias = np.concatenate(bias)

    @classmethod
    def supports(cls, regressor) -> bool:
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler
        if type(regressor) is not Pipeline or len(regressor.steps) != 3:
            return False
        imputer, scaler, ridge = (step for _, step in regressor.steps)
        if not (type(imputer) is SimpleImputer and type(scaler) is StandardScaler and type(ridge) is Ridge):
            return False
        nan_missing = isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)
        indicator = getattr(imputer, "indicator_", None)
        return (nan_missing and (imputer.keep_empty_features or np.isfinite(imputer.statistics_).all())
                and (indicator is None or indicator.features == "missing-only"))

    def partial(self, X: np.ndarray, start: int = 0) -> np.ndarray:
        """Contribution (without the bias) of input columns ``start … start + X.shape[1] - 1`` given as ``X``."""
        columns = slice(start, start + X.shape[1])
        missing = np.isnan(X)
        if not missing.any():  # adding the zero product would change nothing
            return X @ self.weights[columns]
        return np.where(missing, 0.0, X) @ self.weights[columns] + missing @ self.missing_weights[columns]

    def predict(self, X: np.ndarray, parallel: bool = False) -> np.ndarray:
        return self.partial(X) + self.bias


class _Called:
    """Fallback: the regressor's own ``predict``, as columns."""

    def __init__(self, regressor) -> None:
        self.regressor = regressor

    def predict(self, X: np.ndarray, parallel: bool = False) -> np.ndarray:
        out = np.asarray(self.regressor.predict(X), dtype=np.float64)
        return out.reshape(len(X), -1)


def _regressors(regressors: Sequence) -> list:
    """Fast stand-ins: one :class:`Forest` for all LightGBM ones, affine maps for ridge pipelines."""
    regressors = list(regressors)
    if regressors and all(type(r).__name__ == "LGBMRegressor" for r in regressors):
        forest = Forest.from_regressors(regressors)
        if forest is not None:
            return [forest]
    if regressors and all(_Affine.supports(r) for r in regressors):
        return [_Affine(regressors)]
    return [_Affine([r]) if _Affine.supports(r) else _Called(r) for r in regressors]


def _predict_columns(parts: list, X: np.ndarray, parallel: bool = False) -> np.ndarray:
    if len(parts) == 1:
        return parts[0].predict(X, parallel)
    return np.hstack([p.predict(X, parallel) for p in parts])


# --------------------------------------------------------------------------- #
# the twin
# --------------------------------------------------------------------------- #


class CompiledEstimator:
    """Read-only, fast twin of a fitted ``RouterEstimator`` (same ``predict``).

    Build it with :func:`compile_estimator`, which also verifies it.
    """

    def __init__(self, estimator) -> None:
        self.estimator = estimator
        self.models_ = tuple(estimator.models_)
        self.columns_ = list(estimator.columns_)
        self.signal_names_ = list(estimator.signal_names_)
        self.uses_responses_ = bool(estimator.uses_responses_)
        self.blocks = _prompt_blocks(estimator.featurizer_)
        quality = estimator.quality_
        self.quality_parts = _regressors(quality.regressors_)
        sigma = quality.sigma_
        self.sigma_stratify = sigma.stratify
        self.sigma_scale, self.sigma_power = float(sigma.scale_), float(sigma.power_)
        self.sigma_strata = dict(sigma.strata_)
        self.sigma_part = _regressors([sigma.estimator_])
        self.sigma_table = self._tabulate_sigma(sigma, len(self.models_))
        from estimators import sigma as sigma_module
        self.sigma_floor = float(getattr(sigma_module, "_FLOOR", 1e-6))
        cost = estimator.cost_
        self.cost_modes = list(cost.modes_)
        self.cost_prices = dict(cost.prices or {})
        self.cost_offsets = np.array([p.offset for p in cost.predictors_], dtype=np.float64)
        self.cost_smearing = np.array([p.smearing for p in cost.predictors_], dtype=np.float64)
        self.cost_parts = _regressors([p.regressor for p in cost.predictors_])
        self.correlation_ = getattr(estimator, "correlation_", None)
        #: σ reported for models already run (``RouterEstimator.run_sigma``); ``None`` keeps the fitted σ.
        self.run_sigma = getattr(estimator, "run_sigma", None)
        #: σ per run-set size and model (``RouterEstimator.reveal_sigma_``), replacing the σ model when set.
        self.reveal_sigma = getattr(estimator, "reveal_sigma_", None)

    @staticmethod
    def _tabulate_sigma(sigma, k: int) -> Tabulated | None:
        """The σ forest as a table over the estimate ``q``, one row per (ran, ``|R|``, model).

        Its features are ``(q, ran, |R|, model index)``: all but ``q`` take
        at most ``2·(K+1)·K`` value combinations, so a look-up replaces a
        hundred tree walks per (query, model) and step, which were half the
        time of a batch replay. Exact (see :class:`~estimators._forest.Tabulated`).
        """
        forest = Forest.from_regressors([sigma.estimator_]) if type(sigma.estimator_).__name__ == "LGBMRegressor" else None
        if forest is None or getattr(sigma, "n_features_in_", None) != 4:
            return None
        ran, size, model = np.meshgrid([0.0, 1.0], np.arange(k + 1.0), np.arange(float(k)), indexing="ij")
        grid = np.column_stack([np.zeros(ran.size), ran.ravel(), size.ravel(), model.ravel()])
        return Tabulated.from_forest(forest, 0, grid)

    def warm_up_batch(self) -> None:
        """Compile the row-parallel kernels (not cached on disk) before a batch job's clock starts."""
        probe = _probe_inputs(self.estimator)
        n = len(probe["run"])
        per_query = {k: probe[k] for k in ("prompts", "tasks", "subtasks") if k in probe}
        features, _ = self.prompt_features(per_query.get("prompts"), per_query.get("tasks"),
                                           per_query.get("subtasks"), parallel=True)
        self.ante_cost(features, self.input_tokens(per_query.get("prompts"), n), parallel=True)
        signals = check_signals(probe["signals"], self.signal_names_, probe["run"])
        info = self.responses_info(probe["responses"], probe["run"])
        self.quality_sigma(features, probe["run"], signals, info, parallel=True)

    # ----- prompt features ------------------------------------------------- #

    def prompt_features(self, prompts=None, tasks=None, subtasks=None, *,
                        parallel: bool = False) -> tuple[np.ndarray, int]:
        """Prompt features ``(N, F)`` and ``N``, as ``estimator.featurizer_.transform``."""
        given, n = per_query_inputs(self.columns_, prompts, tasks, subtasks)
        frame = _Columns({name: _as_text(given[name]) for name in self.columns_})
        blocks = [block(frame, n, parallel) for block in self.blocks]
        return (np.hstack(blocks) if len(blocks) > 1 else blocks[0]), n

    # ----- estimates ------------------------------------------------------- #

    def input_tokens(self, prompts, n: int, input_tokens=None) -> np.ndarray:
        """Input tokens per cell: given ones, else ``ceil(len(prompt) / 4)`` (as the estimator)."""
        k = len(self.models_)
        tokens = np.full((n, k), np.nan) if input_tokens is None else np.asarray(input_tokens, dtype=np.float64)
        if tokens.shape != (n, k):
            raise ValueError(f"input_tokens must have shape {(n, k)}; got {tokens.shape}")
        if prompts is not None:
            guess = np.ceil(np.fromiter((len(str(p)) for p in prompts), dtype=np.float64, count=n) / 4.0)
            tokens = np.where(np.isnan(tokens), guess[:, None], tokens)
        return tokens

    def ante_cost(self, features: np.ndarray, input_tokens: np.ndarray, *, parallel: bool = False) -> np.ndarray:
        """Cost estimates before any model has run, ``(N, K)``; they do not depend on the run set."""
        raw = _predict_columns(self.cost_parts, features, parallel)
        estimate = np.maximum(np.exp(raw) * self.cost_smearing - self.cost_offsets, 0.0)
        for i, (model, mode) in enumerate(zip(self.models_, self.cost_modes)):
            if mode == "tokens":
                if np.isnan(input_tokens[:, i]).any():
                    raise ValueError(
                        f"input_tokens has NaN for model {model!r}, whose cost is priced per token; "
                        "pass input_tokens or the prompts (their length / 4 is used)")
                price_in, price_out = self.cost_prices[model]
                estimate[:, i] = (input_tokens[:, i] * price_in + estimate[:, i] * price_out) / 1e6
        return estimate

    def quality_base(self, features: np.ndarray) -> np.ndarray | None:
        """The prompt's share of the quality estimates, when the quality models are linear; else ``None``.

        It does not depend on the run set, so a caller estimating the same
        queries at several steps computes it once (``base`` of
        :meth:`quality_sigma`).
        """
        if len(self.quality_parts) != 1 or not isinstance(self.quality_parts[0], _Affine):
            return None
        affine = self.quality_parts[0]
        return affine.partial(features) + affine.bias

    def quality_sigma(self, features: np.ndarray, run: np.ndarray, signals: dict[str, np.ndarray],
                      responses, *, with_sigma: bool = True, parallel: bool = False,
                      base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(quality, sigma)`` for prompt ``features`` and run sets ``run`` (checked inputs).

        ``responses`` is what :meth:`responses_info` returns. σ of models
        already run is the estimator's ``run_sigma`` when it has one (then
        the σ model is evaluated only for the others); ``with_sigma=False``
        skips σ altogether (selecting an answer needs quality only).
        ``base`` is :meth:`quality_base` of ``features``, if already known;
        the sums are the same either way, so results are bit-identical.
        """
        posthoc = posthoc_features(run, signals, responses)
        base = self.quality_base(features) if base is None else base
        if base is None:
            raw = _predict_columns(self.quality_parts, np.hstack([features, posthoc]), parallel)
        else:
            raw = base + self.quality_parts[0].partial(posthoc, features.shape[1])
        q = np.clip(raw, 0.0, 1.0)
        if not with_sigma:
            return q, None
        n, k = q.shape
        if self.reveal_sigma is not None:
            sigma = np.asarray(self.reveal_sigma, dtype=np.float64)[run.sum(axis=1)]
            if self.run_sigma is not None:
                sigma = np.where(run, float(self.run_sigma), sigma)
            return q, sigma
        size = np.repeat(run.sum(axis=1), k).astype(np.float64)
        cells = np.arange(n * k) if self.run_sigma is None else np.flatnonzero(~run.ravel())
        sigma_x = np.column_stack([q.ravel()[cells], run.ravel()[cells].astype(np.float64), size[cells],
                                   (cells % k).astype(np.float64)])
        if self.sigma_table is not None:  # group = (ran·(K+1) + |R|)·K + model, as in _tabulate_sigma
            groups = ((sigma_x[:, 1] * (k + 1) + sigma_x[:, 2]) * k + sigma_x[:, 3]).astype(np.int64)
            predicted = self.sigma_table.predict(groups, sigma_x[:, 0])
        else:
            predicted = _predict_columns(self.sigma_part, sigma_x, parallel)[:, 0]
        raw = np.sqrt(np.maximum(predicted, self.sigma_floor))
        scale = np.full(raw.shape, self.sigma_scale)
        power = np.full(raw.shape, self.sigma_power)
        if self.sigma_strata:
            stratum = sigma_x[:, self.sigma_stratify]
            for value, (stratum_scale, stratum_power) in self.sigma_strata.items():
                rows = stratum == value
                scale[rows], power[rows] = stratum_scale, stratum_power
        sigma = np.full(n * k, np.nan if self.run_sigma is None else float(self.run_sigma))
        sigma[cells] = np.maximum(scale * raw**power, self.sigma_floor)
        return q, sigma.reshape(n, k)

    def responses_info(self, responses, run: np.ndarray, memo: "ResponseMemo | None" = None):
        """Parsed responses of the run models, or ``None`` when the estimator ignores text.

        Equal, as features, to ``read_responses(np.where(run, responses, ""))``
        (answer ids may differ but are equal exactly where answers are), but
        only the run cells are parsed: the others are ``''``, which parses to
        "no answer" (code 0, length 0, kind 0). A ``memo`` shared by several
        calls parses each text once.
        """
        if not self.uses_responses_:
            return None
        if responses is None:
            responses = np.full(run.shape, "", dtype=object)
        responses = np.asarray(responses, dtype=object)
        if responses.shape != run.shape:
            raise ValueError(f"responses must have shape {run.shape}; got {responses.shape}")
        cells = np.flatnonzero(run.ravel())
        codes = np.zeros(run.size, np.int64)
        log_length = np.zeros(run.size)
        kind = np.zeros(run.size)
        if cells.size:
            texts = np.array([t if isinstance(t, str) else "" for t in responses.ravel()[cells]], dtype=object)
            codes[cells], log_length[cells], kind[cells] = (memo or ResponseMemo()).lookup(texts)
        return ResponseInfo(codes.reshape(run.shape), log_length.reshape(run.shape), kind.reshape(run.shape))

    def covariance(self, sigma: np.ndarray, run: np.ndarray) -> np.ndarray | None:
        if self.correlation_ is None:
            return None
        return sigma[:, :, None] * sigma[:, None, :] * self.correlation_[run.sum(axis=1)]

    def predict(self, prompts=None, *, tasks=None, subtasks=None, run=None, responses=None, signals=None,
                observed_cost=None, input_tokens=None) -> Estimates:
        """Same arguments and result as ``RouterEstimator.predict``."""
        features, n = self.prompt_features(prompts, tasks, subtasks)
        run = check_run(run, n, self.models_)
        signals = check_signals(signals, self.signal_names_, run)
        info = self.responses_info(responses, run)
        observed = check_observed_cost(observed_cost, run)
        quality, sigma = self.quality_sigma(features, run, signals, info)
        cost = self.ante_cost(features, self.input_tokens(prompts, n, input_tokens))
        cost = np.where(run, observed, cost)
        return Estimates(quality, sigma, cost, self.covariance(sigma, run))


class ResponseMemo:
    """Parsed response texts and one id per distinct final answer, kept across calls.

    A cascade replay estimates a query once per step, each time with the
    responses of every model run so far; through a memo each text is parsed
    once. Ids are consistent across calls (equal ids exactly for equal
    answers, 0 for no answer), which is all the agreement features read.
    Not thread-safe: one memo per job.
    """

    def __init__(self) -> None:
        self.parsed: dict[str, tuple[int, float, float]] = {}
        self.answer_ids: dict[str, int] = {"": 0}

    def lookup(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(answer id, log1p length, answer kind)`` per text (a 1-D object array of str)."""
        inverse, unique = pd.factorize(texts)
        new = [t for t in unique if t not in self.parsed]
        if new:  # each distinct text once: short answers ("A", "B") repeat a lot
            answers, log_length, kind = parse_responses(np.array(new, dtype=object))
            for text, answer, length, answer_kind in zip(new, answers, log_length, kind):
                self.parsed[text] = (self.answer_ids.setdefault(answer, len(self.answer_ids)), length, answer_kind)
        found = [self.parsed[t] for t in unique]
        return (np.array([f[0] for f in found], np.int64)[inverse], np.array([f[1] for f in found])[inverse],
                np.array([f[2] for f in found])[inverse])


def _as_text(values: np.ndarray) -> np.ndarray:
    """Strings as ``prompt_frame`` makes them: ``None``/NaN become ``''``."""
    return np.array([v if isinstance(v, str) else "" if pd.isna(v) else str(v) for v in values], dtype=object)


# --------------------------------------------------------------------------- #
# compile and verify
# --------------------------------------------------------------------------- #

_PROBE_PROMPTS = (
    "What is 2 + 2?",
    "Question: Which gas do plants absorb?\nA) oxygen\nB) carbon dioxide\nC) helium\nAnswer:",
    "def add(a, b):\n    return a + b  # complete the function " * 12,
    "",
    "Ünïcödé prompt — naïve café, 東京 12 apples?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. " * 20,
)
_PROBE_RESPONSES = ("B", "#### 42", "The answer is C.", "def f(x):\n    return x", "", "i do")


def _probe_inputs(estimator) -> dict:
    """A few queries with empty, small and large run sets, responses, signals and costs."""
    n, k = len(_PROBE_PROMPTS), len(estimator.models_)
    rng = np.random.default_rng(0)
    encoder_categories = _categories(estimator)
    per_query = {}
    for column in estimator.columns_:
        if column == "prompt":
            per_query["prompts"] = list(_PROBE_PROMPTS)
        else:
            known = [str(c) for c in encoder_categories.get(column, [])] or ["x"]
            per_query[f"{column}s"] = [known[i % len(known)] if i < n - 1 else "never seen" for i in range(n)]
    run = np.zeros((n, k), bool)
    run[1, 0] = True
    run[2, : min(2, k)] = True
    run[4, rng.permutation(k)[: max(1, k // 2)]] = True
    run[5] = True
    responses = np.array([[_PROBE_RESPONSES[(i + j) % len(_PROBE_RESPONSES)] for j in range(k)]
                          for i in range(n)], dtype=object)
    signals = {name: np.where(run, rng.normal(size=(n, k)), np.nan) for name in estimator.signal_names_}
    cost = np.where(run, rng.uniform(1e-5, 1e-2, size=(n, k)), np.nan)
    return dict(per_query, run=run, responses=responses, signals=signals, observed_cost=cost)


def _categories(estimator) -> dict[str, list]:
    for _, transformer, columns in getattr(estimator.featurizer_, "transformers_", []):
        if hasattr(transformer, "categories_"):
            return {c: list(cats) for c, cats in zip(columns, transformer.categories_)}
    return {}


def _largest_difference(a: Estimates, b: Estimates) -> float:
    worst = 0.0
    for name in ("quality", "sigma", "cost", "cov"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None and y is None:
            continue
        if x is None or y is None or np.shape(x) != np.shape(y):
            return np.inf
        scale = np.maximum(np.abs(y), 1e-3)
        worst = max(worst, float(np.max(np.abs(x - y) / scale, initial=0.0)))
    return worst


def compile_estimator(estimator, *, verify: bool = True) -> CompiledEstimator | None:
    """Build the fast twin of ``estimator`` and check it; ``None`` (with a warning) if it differs.

    Parameters
    ----------
    estimator : RouterEstimator
        Fitted.
    verify : bool, default=True
        Compare with ``estimator.predict`` on probe queries first. Also
        compiles every numba kernel the twin uses, so the first real request
        does not pay for it.

    Returns
    -------
    CompiledEstimator or None
        ``None`` when the estimator is not one this module understands or
        the twin's estimates differ by more than :data:`VERIFY_RTOL`
        (relative, floored at 1e-3 absolute scale); the caller then keeps
        ``estimator.predict``.
    """
    try:
        twin = CompiledEstimator(estimator)
    except (AttributeError, TypeError, ValueError, KeyError, ImportError) as error:
        warnings.warn(f"serving falls back to the estimator's own predict (about 10 ms per call): "
                      f"cannot compile it ({type(error).__name__}: {error})", RuntimeWarning, stacklevel=2)
        return None
    if verify:
        probe = _probe_inputs(estimator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # feature-name warnings of sklearn on probes
            expected = estimator.predict(**probe)
        difference = _largest_difference(twin.predict(**probe), expected)
        if not difference <= VERIFY_RTOL:
            warnings.warn(f"serving falls back to the estimator's own predict (about 10 ms per call): "
                          f"the compiled twin differs from it by {difference:.3g} on probe queries",
                          RuntimeWarning, stacklevel=2)
            return None
    return twin
