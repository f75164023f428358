"""LightGBM regressors as flat arrays and one compiled tree walk, for serving.

``LGBMRegressor.predict`` costs about 40 µs per call on one row (parameter
handling, validation, the C call) and a cost estimator holds one per model,
so a single decision would spend half a millisecond in call overhead alone.
:class:`Forest` reads the trees of several fitted regressors once
(``Booster.dump_model``) and evaluates all of them in one compiled loop,
with LightGBM's rules for numerical splits and missing values:

* NaN counts as 0 unless the split's missing type is ``NaN``;
* with missing type ``Zero`` (|x| <= 1e-35) or ``NaN``, missing values go to
  the default side;
* otherwise ``x <= threshold`` goes left.

Leaf values are added in tree order as LightGBM does, then the objective's
output transform is applied (identity for ``regression``, the logistic
function for ``cross_entropy``). Anything else (categorical splits, other
objectives, linear trees) makes :meth:`Forest.from_regressors` return
``None`` and the caller keeps the regressor's own ``predict``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernel.config import JIT_OPTIONS

__all__ = ["Forest"]

_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
_TRANSFORMS = {"regression": 0, "cross_entropy": 1, "xentropy": 1}
_ZERO = 1e-35  # LightGBM's kZeroThreshold


def _walk_rows(X, feature, threshold, left, right, default_left, missing, leaf_value, roots, owner,
               transform, out):
    n_rows = X.shape[0]
    for r in prange(n_rows):
        for o in range(out.shape[1]):
            out[r, o] = 0.0
        for t in range(roots.size):
            node = roots[t]
            while node >= 0:
                value = X[r, feature[node]]
                kind = missing[node]
                if np.isnan(value) and kind != 2:
                    value = 0.0
                if (kind == 1 and -_ZERO <= value <= _ZERO) or (kind == 2 and np.isnan(value)):
                    node = left[node] if default_left[node] else right[node]
                elif value <= threshold[node]:
                    node = left[node]
                else:
                    node = right[node]
            out[r, owner[t]] += leaf_value[-node - 1]
        for o in range(out.shape[1]):
            if transform[o] == 1:
                out[r, o] = 1.0 / (1.0 + np.exp(-out[r, o]))


#: Serial walk (services: deterministic, one thread, cached on disk).
_walk = njit(**JIT_OPTIONS)(_walk_rows)
#: Row-parallel walk for batch scoring. Not cached: numba keys its disk cache by
#: function, not by the ``parallel`` flag, so caching both variants of one function
#: lets one load the other's machine code (the kernel's drivers are separate functions for this reason).
#: Compiled on first batch use instead (about a second).
_walk_parallel = njit(parallel=True, **{**JIT_OPTIONS, "cache": False})(_walk_rows)


class Forest:
    """The trees of several LightGBM regressors, evaluated together.

    Build with :meth:`from_regressors`; :meth:`predict` returns one column
    per regressor, equal to each regressor's ``predict``.
    """

    def __init__(self, arrays: dict[str, np.ndarray], n_features: int) -> None:
        self.arrays = arrays
        self.n_features = n_features

    @classmethod
    def from_regressors(cls, regressors) -> "Forest | None":
        """Flatten fitted ``LGBMRegressor``/``Booster`` objects, or ``None`` if unsupported."""
        nodes: dict[str, list] = {k: [] for k in ("feature", "threshold", "left", "right",
                                                  "default_left", "missing")}
        leaves: list[float] = []
        roots: list[int] = []
        owner: list[int] = []
        transform: list[int] = []
        n_features = None
        for index, regressor in enumerate(regressors):
            booster = getattr(regressor, "booster_", regressor)
            if not hasattr(booster, "dump_model"):
                return None
            model = booster.dump_model()
            objective = str(model.get("objective", "")).split(" ")[0]
            if objective not in _TRANSFORMS or model.get("average_output") or "linear" in str(
                    model.get("tree_info", [{}])[0].keys()):
                return None
            if getattr(booster, "best_iteration", 0) not in (0, -1, None):
                return None  # sklearn's predict would stop early
            transform.append(_TRANSFORMS[objective])
            n_features = model["max_feature_idx"] + 1 if n_features is None else n_features
            if model["max_feature_idx"] + 1 != n_features:
                return None
            for tree in model["tree_info"]:
                root = cls._add(tree["tree_structure"], nodes, leaves)
                if root is None:
                    return None
                roots.append(root)
                owner.append(index)
        arrays = {
            "feature": np.asarray(nodes["feature"], np.int64),
            "threshold": np.asarray(nodes["threshold"], np.float64),
            "left": np.asarray(nodes["left"], np.int64),
            "right": np.asarray(nodes["right"], np.int64),
            "default_left": np.asarray(nodes["default_left"], np.bool_),
            "missing": np.asarray(nodes["missing"], np.int64),
            "leaf_value": np.asarray(leaves, np.float64),
            "roots": np.asarray(roots, np.int64),
            "owner": np.asarray(owner, np.int64),
            "transform": np.asarray(transform, np.int64),
        }
        return cls(arrays, int(n_features or 0))

    @staticmethod
    def _add(node: dict, nodes: dict, leaves: list) -> int | None:
        """Append ``node`` (depth first); internal nodes get indices >= 0, leaves ``-(j + 1)``."""
        if "leaf_value" in node:
            leaves.append(float(node["leaf_value"]))
            return -len(leaves)
        if node.get("decision_type") != "<=" or node.get("missing_type") not in _MISSING:
            return None
        index = len(nodes["feature"])
        nodes["feature"].append(int(node["split_feature"]))
        nodes["threshold"].append(float(node["threshold"]))
        nodes["default_left"].append(bool(node["default_left"]))
        nodes["missing"].append(_MISSING[node["missing_type"]])
        nodes["left"].append(0)
        nodes["right"].append(0)
        left = Forest._add(node["left_child"], nodes, leaves)
        right = Forest._add(node["right_child"], nodes, leaves)
        if left is None or right is None:
            return None
        nodes["left"][index], nodes["right"][index] = left, right
        return index

    @property
    def n_outputs(self) -> int:
        return int(self.arrays["transform"].size)

    def predict(self, X: np.ndarray, parallel: bool = False) -> np.ndarray:
        """Predictions of every regressor on ``X``, shape ``(N, n_outputs)``; ``parallel`` spreads rows over threads."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] < self.n_features:
            raise ValueError(f"X must have shape (N, >= {self.n_features}); got {X.shape}")
        out = np.empty((X.shape[0], self.n_outputs))
        a = self.arrays
        (_walk_parallel if parallel else _walk)(X, a["feature"], a["threshold"], a["left"], a["right"], a["default_left"], a["missing"],
              a["leaf_value"], a["roots"], a["owner"], a["transform"], out)
        return out


@njit(**JIT_OPTIONS)
def _lookup(thresholds, values, zero_values, groups, x, out):
    for r in range(x.size):
        value = x[r]
        if -_ZERO <= value <= _ZERO:
            out[r] = zero_values[groups[r]]
        else:
            out[r] = values[groups[r], np.searchsorted(thresholds, value, side="left")]


class Tabulated:
    """A :class:`Forest` of one output as a table over one continuous feature.

    When every other feature takes a few known values (the σ model's "ran",
    ``|R|`` and model index), the forest is, for each combination of them, a
    step function of the continuous feature whose steps sit at that
    feature's split thresholds. :meth:`from_forest` evaluates the forest
    once per (combination, interval), with the same tree walk, so a look-up
    returns exactly what the walk would: ``x <= t`` intervals, and ``|x| <=
    1e-35`` (LightGBM's "zero" for missing-type ``Zero`` splits) kept apart.
    NaN is not supported (the caller never passes it; :meth:`predict` checks).
    """

    def __init__(self, thresholds: np.ndarray, values: np.ndarray, zero_values: np.ndarray) -> None:
        self.thresholds, self.values, self.zero_values = thresholds, values, zero_values

    @classmethod
    def from_forest(cls, forest: Forest, continuous: int, grid: np.ndarray) -> "Tabulated":
        """Tabulate ``forest`` (one output) over ``grid`` rows (values of the other features)."""
        a = forest.arrays
        splits = a["feature"] == continuous
        thresholds = np.unique(a["threshold"][splits])
        points = np.concatenate([thresholds, [np.nextafter(thresholds[-1], np.inf) if thresholds.size else 1.0]])
        points = np.where(np.abs(points) <= _ZERO, np.nextafter(_ZERO, np.inf), points)
        n_groups, n_points = len(grid), len(points)
        X = np.repeat(np.asarray(grid, dtype=np.float64), n_points + 1, axis=0)
        X[:, continuous] = np.tile(np.concatenate([points, [0.0]]), n_groups)
        table = forest.predict(X)[:, 0].reshape(n_groups, n_points + 1)
        return cls(thresholds, np.ascontiguousarray(table[:, :-1]), np.ascontiguousarray(table[:, -1]))

    def predict(self, groups: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Forest output for rows in ``groups`` (indices into the grid) with continuous value ``x``."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        if np.isnan(x).any():
            raise ValueError("Tabulated forests do not take NaN")
        out = np.empty(x.size)
        _lookup(self.thresholds, self.values, self.zero_values, np.ascontiguousarray(groups, dtype=np.int64), x, out)
        return out
