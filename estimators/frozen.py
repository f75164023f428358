"""Fitted regressors frozen into the arrays their predictions need.

Why: a routing decision has a budget of a fraction of a millisecond, and
one ``predict`` call of a scikit-learn pipeline or a LightGBM regressor
spends tens of microseconds in validation and call overhead alone (an
estimator calls about thirty of them per query). At the end of ``fit`` an
estimator therefore freezes its fitted regressors with
:func:`freeze_regressors` and predicts through the result:

* LightGBM regressors, all outputs at once: :class:`~estimators._forest.Forest`
  (one compiled pass, bit-identical to the trees' own walk);
* ridge pipelines (``SimpleImputer(add_indicator) → StandardScaler → Ridge``):
  one affine map, :class:`Affine`;
* anything else: :class:`Called`, the regressor's own ``predict``.

The fitted regressors stay on the estimator (they are the oracle of the
tests in ``tests/``); these objects hold only arrays, scalars and, for
:class:`Called`, the regressor itself, so they pickle as they are.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._forest import Forest

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

__all__ = ["Affine", "Called", "FrozenRegressors", "Regressor", "freeze_regressors"]


class Regressor(Protocol):
    """What :class:`Called` uses of a fitted regressor: scikit-learn's ``predict``."""

    def predict(self, X: NDArray[np.float64]) -> ArrayLike: ...


class Affine:
    """Ridge pipelines of several outputs as one affine map ``x⁰·W + m·M + b``.

    For one pipeline with imputer fill ``f``, scaler ``(μ, s)`` over
    ``z = [filled x, missing indicators]`` and ridge ``(w, b)``, the output
    ``(z - μ)/s · w + b`` regroups into ``x⁰ · W + m · M + b'`` with ``x⁰``
    the input with NaN as 0, ``m`` its missing mask, ``W = w/s`` on the
    input columns, ``M = f·W`` plus the indicator weights of the same
    column, and ``b' = b - μ/s · w``. Stacking the columns of every
    pipeline evaluates all of them with two products instead of one
    imputation, concatenation and product each; and since the map is a sum
    over input columns, :meth:`partial` lets a caller evaluate the prompt's
    columns once per query and only the post-hoc ones per step.

    Parameters
    ----------
    pipelines : sequence of Pipeline
        Fitted pipelines accepted by :meth:`supports`.
    """

    def __init__(self, pipelines: Sequence[Pipeline]) -> None:
        weights, missing_weights, bias = [], [], []
        for pipeline in pipelines:
            imputer, scaler, ridge = (step for _, step in pipeline.steps)
            fill = np.asarray(imputer.statistics_, dtype=np.float64)
            indicator = imputer.indicator_
            indicator = np.zeros(0, np.int64) if indicator is None else np.asarray(indicator.features_, np.int64)
            coef = np.atleast_2d(np.asarray(ridge.coef_, dtype=np.float64))
            mean = scaler.mean_ if scaler.with_mean else 0.0
            scale = scaler.scale_ if scaler.with_std else 1.0
            scaled = (coef / scale).T  # (inputs + indicators, outputs)
            direct = scaled[:fill.size]
            when_missing = fill[:, None] * direct
            np.add.at(when_missing, indicator, scaled[fill.size:])
            weights.append(direct)
            missing_weights.append(when_missing)
            bias.append(np.atleast_1d(np.asarray(ridge.intercept_, dtype=np.float64))
                        - ((mean / scale) * coef).sum(axis=1))
        self.weights = np.ascontiguousarray(np.hstack(weights))
        self.missing_weights = np.ascontiguousarray(np.hstack(missing_weights))
        self.bias = np.concatenate(bias)

    @classmethod
    def supports(cls, regressor: Any) -> bool:
        """Whether ``regressor`` is a fitted pipeline this map reproduces exactly (up to rounding).

        Checked by exact types, so a subclass that might transform
        differently is called through its own ``predict`` instead.

        Parameters
        ----------
        regressor : object
            Any fitted regressor.

        Returns
        -------
        bool
            ``True`` for ``SimpleImputer`` (NaN as missing, ``missing-only``
            indicator) → ``StandardScaler`` → ``Ridge``.
        """
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
        indicator = imputer.indicator_
        return (nan_missing and (imputer.keep_empty_features or np.isfinite(imputer.statistics_).all())
                and (indicator is None or indicator.features == "missing-only"))

    def partial(self, X: NDArray[np.float64], start: int = 0) -> NDArray[np.float64]:
        """Contribution (without the bias) of input columns ``start … start + X.shape[1] - 1`` given as ``X``.

        The map is a sum over input columns, so a caller can evaluate the
        prompt's columns once and the post-hoc ones per step.

        Parameters
        ----------
        X : ndarray of float64, shape (N, C)
            Those input columns, NaN for missing.
        start : int, default=0
            Index of ``X``'s first column among the pipelines' inputs.

        Returns
        -------
        ndarray of float64, shape (N, n_outputs)
        """
        columns = slice(start, start + X.shape[1])
        missing = np.isnan(X)
        if not missing.any():  # adding the zero product would change nothing
            return X @ self.weights[columns]
        return np.where(missing, 0.0, X) @ self.weights[columns] + missing @ self.missing_weights[columns]

    def constant_partial(self, row: NDArray[np.float64], start: int = 0) -> NDArray[np.float64]:
        """:meth:`partial` of one row that recurs unchanged, computed once per row value and ``start``.

        The post-hoc block of a query that ran no model (every first step of
        a served cascade) is one constant row; its products are the same
        each time, so they are kept (by the row's bytes: a different row
        is computed, never confused with it). Callers pass only rows that
        recur: at most :data:`_CONSTANT_ROWS` are kept per map.

        Parameters
        ----------
        row : ndarray of float64, shape (1, C)
        start : int, default=0
            As in :meth:`partial`.

        Returns
        -------
        ndarray of float64, shape (1, n_outputs)
            Read-only, shared by the calls.
        """
        memo = _CONSTANT_PARTIALS.setdefault(self, {})
        key = (start, row.shape, row.tobytes())
        value = memo.get(key)
        if value is None:
            value = self.partial(row, start)
            value.setflags(write=False)
            if len(memo) >= _CONSTANT_ROWS:
                memo.clear()
            memo[key] = value
        return value

    def predict(self, X: NDArray[np.float64], parallel: bool = False) -> NDArray[np.float64]:
        """The pipelines' outputs on ``X`` from two matrix products.

        Parameters
        ----------
        X : ndarray of float64, shape (N, F)
            Every input column, NaN for missing.
        parallel : bool, default=False
            Accepted for a uniform interface (the products use BLAS threads).

        Returns
        -------
        ndarray of float64, shape (N, n_outputs)
        """
        return self.partial(X) + self.bias


#: :meth:`Affine.constant_partial`'s products per map (outside the map, so they are never pickled).
_CONSTANT_PARTIALS: weakref.WeakKeyDictionary[Affine, dict[tuple[int, tuple[int, ...], bytes], NDArray[np.float64]]]
_CONSTANT_PARTIALS = weakref.WeakKeyDictionary()
_CONSTANT_ROWS = 8


class Called:
    """A regressor that cannot be frozen, called through its own ``predict``.

    Parameters
    ----------
    regressor : fitted regressor
        Called as it is.
    """

    def __init__(self, regressor: Regressor) -> None:
        self.regressor = regressor

    def predict(self, X: NDArray[np.float64], parallel: bool = False) -> NDArray[np.float64]:
        """The regressor's predictions as columns, the shape every frozen part returns.

        Parameters
        ----------
        X : ndarray of float64, shape (N, F)
        parallel : bool, default=False
            Accepted for a uniform interface (not used).

        Returns
        -------
        ndarray of float64, shape (N, n_outputs)
        """
        out = np.asarray(self.regressor.predict(X), dtype=np.float64)
        return out.reshape(len(X), -1)


class FrozenRegressors:
    """Several fitted regressors of the same features, evaluated as one ``(N, outputs)`` block.

    Parameters
    ----------
    parts : list
        :class:`~estimators._forest.Forest`, :class:`Affine` or
        :class:`Called` objects whose outputs, side by side, are the
        regressors' outputs in order.
    """

    def __init__(self, parts: list[Forest | Affine | Called]) -> None:
        self.parts = parts

    @property
    def affine(self) -> Affine | None:
        """The single affine map when every regressor is one (its prompt share can be computed apart)."""
        return self.parts[0] if len(self.parts) == 1 and isinstance(self.parts[0], Affine) else None

    def predict(self, X: NDArray[np.float64], parallel: bool = False,
                offset: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """Every regressor's prediction on ``X``, side by side in regressor order.

        Parameters
        ----------
        X : ndarray of float64, shape (N, F)
        parallel : bool, default=False
            Spread the forests' rows over threads (same numbers).
        offset : ndarray of float64, shape (N, outputs), optional
            Each row's starting raw score (regressors boosted from a prior's
            ``init_score``); only when every regressor is in one forest.

        Returns
        -------
        ndarray of float64, shape (N, outputs)

        Raises
        ------
        ValueError
            If ``offset`` is given and the regressors are not one forest.
        """
        if offset is not None:
            if len(self.parts) != 1 or not isinstance(self.parts[0], Forest):
                raise ValueError("a starting score (offset) needs every regressor frozen into one LightGBM forest")
            return self.parts[0].predict(X, parallel, offset)
        if len(self.parts) == 1:
            return self.parts[0].predict(X, parallel)
        return np.hstack([part.predict(X, parallel) for part in self.parts])


def freeze_regressors(regressors: Iterable[Regressor]) -> FrozenRegressors:
    """Freeze fitted regressors: one :class:`Forest` for all LightGBM ones, affine maps for ridge pipelines.

    Parameters
    ----------
    regressors : iterable of fitted regressors
        Their outputs, in order, are the columns of the frozen prediction.

    Returns
    -------
    FrozenRegressors
    """
    regressors = list(regressors)
    if regressors and all(type(r).__name__ == "LGBMRegressor" for r in regressors):
        forest = Forest.from_regressors(regressors)
        if forest is not None:
            return FrozenRegressors([forest])
    if regressors and all(Affine.supports(r) for r in regressors):
        return FrozenRegressors([Affine(regressors)])
    parts: list[Forest | Affine | Called] = []
    for regressor in regressors:
        forest = Forest.from_regressors([regressor]) if type(regressor).__name__ == "LGBMRegressor" else None
        parts.append(forest or (Affine([regressor]) if Affine.supports(regressor) else Called(regressor)))
    return FrozenRegressors(parts)
