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

The evaluation is QuickScorer (Lucchese et al., SIGIR 2015) whenever every
tree has at most 64 leaves. A node-by-node walk spends most of its time on
branch mispredictions: which child comes next depends on the data. QuickScorer
instead gives each tree a 64-bit vector of its leaves (numbered left to
right), starts it all ones, and for every node whose test sends the row
right clears the leaves of that node's left subtree; the exit leaf is then
the lowest set bit. The nodes that go right are found without branching on
the tree shape: the nodes are grouped by (feature, missing type) and sorted
by threshold, so for a value ``v`` they are a prefix of the group (those with
``v > threshold``), scanned until the first test that fails. A "zero" value
of a ``Zero`` group or a NaN of a ``NaN`` group instead goes to each node's
default side, so it clears the masks of that group's default-right nodes.
Leaf values are then added in tree order, exactly as the walk adds them, so
both give bit-identical output; the walk (:meth:`Forest.walk`) remains the
fallback for larger trees and the reference in tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter

import numpy as np
from numba import njit, prange
from numpy.typing import ArrayLike, NDArray

from kernel.config import BLOCK_SIZE, JIT_OPTIONS, UNCACHED_JIT_OPTIONS

try:  # LLVM's cttz; numba has had it for years, but it lives in an "unsafe" module
    from numba.cpython.unsafe.numbers import trailing_zeros as _trailing_zeros
except ImportError:  # pragma: no cover
    _trailing_zeros = None  # type: ignore[assignment]  # old numba: the de Bruijn fallback below is used

__all__ = ["Forest", "Tabulated", "MAX_QUICKSCORER_LEAVES"]

_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
_TRANSFORMS = {"regression": 0, "cross_entropy": 1, "xentropy": 1}
_ZERO = 1e-35  # LightGBM's kZeroThreshold
_ALL_LEAVES = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_ONE = np.uint64(1)
#: Trees with more leaves than bits in a mask are walked node by node.
MAX_QUICKSCORER_LEAVES = 64
#: de Bruijn sequence and table for the index of the lowest set bit of a uint64.
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DE_BRUIJN_SHIFT = np.uint64(58)
_DE_BRUIJN_TABLE = np.zeros(64, np.uint64)
for _bit in range(64):
    _DE_BRUIJN_TABLE[((int(_DE_BRUIJN) << _bit) & 0xFFFF_FFFF_FFFF_FFFF) >> 58] = _bit
del _bit


def _walk_rows(X, feature, threshold, left, right, default_left, missing, leaf_value, roots, owner,
               transform, out):
    n_rows = X.shape[0]
    for r in prange(n_rows):  # ``out`` arrives holding each row's starting score (0, or a prior's offset)
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
_walk_parallel = njit(parallel=True, **UNCACHED_JIT_OPTIONS)(_walk_rows)


@njit(**JIT_OPTIONS)
def _lowest_bit_de_bruijn(bits):
    """Index of the lowest set bit of a nonzero uint64 (de Bruijn multiplication, exact)."""
    lowest = bits & (~bits + np.uint64(1))
    return _DE_BRUIJN_TABLE[(lowest * _DE_BRUIJN) >> _DE_BRUIJN_SHIFT]


if _trailing_zeros is not None:
    @njit(**JIT_OPTIONS)
    def _lowest_bit(bits):
        """Index of the lowest set bit of a nonzero uint64 (one ``tzcnt``)."""
        return np.uint64(_trailing_zeros(bits))
else:  # pragma: no cover
    _lowest_bit = _lowest_bit_de_bruijn


@njit(**JIT_OPTIONS)
def _quickscore_block(block, X, group_feature, group_kind, group_start, threshold, tree, mask,
                      default_start, default_tree, default_mask, leaf_start, leaf_value, owner,
                      transform, out):
    """QuickScorer on rows ``block * BLOCK_SIZE`` onwards; one bit vector per tree, reused across rows.

    Indices are cast to ``uint64``: numba then skips its negative-index
    wrap-around, which made the node scan twice as slow.
    """
    n_trees = np.uint64(leaf_start.size)
    bitvectors = np.empty(leaf_start.size, np.uint64)
    for r in range(block * BLOCK_SIZE, min(X.shape[0], (block + 1) * BLOCK_SIZE)):
        bitvectors[:] = _ALL_LEAVES
        for g in range(group_feature.size):
            value = X[r, group_feature[g]]
            kind = group_kind[g]
            missing = np.isnan(value)
            if missing and kind != 2:
                value = 0.0
            if (kind == 1 and -_ZERO <= value <= _ZERO) or (kind == 2 and missing):
                k, end = np.uint64(default_start[g]), np.uint64(default_start[g + 1])
                while k < end:  # every node of the group whose default side is right
                    bitvectors[np.uint64(default_tree[k])] &= default_mask[k]
                    k += _ONE
            else:
                k, end = np.uint64(group_start[g]), np.uint64(group_start[g + 1])
                while k < end and value > threshold[k]:  # the nodes that send ``value`` right
                    bitvectors[np.uint64(tree[k])] &= mask[k]
                    k += _ONE
        # ``out`` arrives holding each row's starting score (0, or a prior's offset);
        # out[r, owner[t]] += exit leaf, in tree order as the walk adds them (so bit for bit the
        # same sums); each run of trees of one owner is summed in a register.
        t = np.uint64(0)
        while t < n_trees:
            o = np.uint64(owner[t])
            total = out[r, o]
            while t < n_trees and np.uint64(owner[t]) == o:
                total += leaf_value[np.uint64(leaf_start[t]) + _lowest_bit(bitvectors[t])]
                t += _ONE
            out[r, o] = total
        for o in range(out.shape[1]):
            if transform[o] == 1:
                out[r, o] = 1.0 / (1.0 + np.exp(-out[r, o]))


def _quickscore_rows(X, group_feature, group_kind, group_start, threshold, tree, mask, default_start,
                     default_tree, default_mask, leaf_start, leaf_value, owner, transform, out):
    for block in prange((X.shape[0] + BLOCK_SIZE - 1) // BLOCK_SIZE):
        _quickscore_block(block, X, group_feature, group_kind, group_start, threshold, tree, mask,
                          default_start, default_tree, default_mask, leaf_start, leaf_value, owner,
                          transform, out)


#: Serial QuickScorer (services; cached on disk), and the row-parallel one (not
#: cached, for the reason given for ``_walk_parallel``).
_quickscore = njit(**JIT_OPTIONS)(_quickscore_rows)
_quickscore_parallel = njit(parallel=True, **UNCACHED_JIT_OPTIONS)(_quickscore_rows)

#: Arrays of :meth:`Forest.predict`'s QuickScorer, in the order its kernel takes them.
_QUICKSCORER_ARRAYS = itemgetter("qs_group_feature", "qs_group_kind", "qs_group_start", "qs_threshold", "qs_tree",
                                 "qs_mask", "qs_default_start", "qs_default_tree", "qs_default_mask", "qs_leaf_start",
                                 "leaf_value", "owner", "transform")


def _quickscorer_arrays(a: dict[str, np.ndarray], leaf_start: np.ndarray) -> dict[str, np.ndarray] | None:
    """QuickScorer's layout of the flat trees ``a``, or ``None`` if a tree has more than 64 leaves.

    ``leaf_start[t]`` is tree ``t``'s first leaf in ``a["leaf_value"]``. A
    node's mask (``uint64``) has zeros on the leaves of its left subtree, as
    bits relative to its tree's first leaf. Nodes are grouped by (feature,
    missing type), groups given by ``qs_group_feature``/``qs_group_kind``,
    and sorted by threshold within a group: ``qs_group_start`` delimits the
    groups in ``qs_threshold``/``qs_tree``/``qs_mask``, and
    ``qs_default_start`` each group's default-right nodes in
    ``qs_default_tree``/``qs_default_mask``.
    """
    n_trees = leaf_start.size
    leaf_end = np.append(leaf_start[1:], a["leaf_value"].size)
    if n_trees and (leaf_end - leaf_start).max() > MAX_QUICKSCORER_LEAVES:
        return None
    left, right = a["left"], a["right"]
    n_nodes = left.size
    node_tree = np.zeros(n_nodes, np.int32)
    node_mask = np.zeros(n_nodes, np.uint64)

    def leaves(node: int, t: int) -> tuple[int, int]:
        """Leaf range ``[first, end)`` of the subtree at ``node`` (``end`` -1 if not left to right); sets masks."""
        if node < 0:
            return -node - 1, -node
        first, middle = leaves(int(left[node]), t)
        middle_again, end = leaves(int(right[node]), t)
        low, high = first - int(leaf_start[t]), middle - int(leaf_start[t])
        if middle != middle_again or end < 0 or not 0 <= low < high <= MAX_QUICKSCORER_LEAVES:
            return first, -1
        node_tree[node] = t
        node_mask[node] = ~np.uint64(((1 << high) - 1) ^ ((1 << low) - 1))
        return first, end

    for t in range(n_trees):
        # Forest._add numbers leaves depth first, left child first: left to right, contiguous per tree.
        if leaves(int(a["roots"][t]), t) != (leaf_start[t], leaf_end[t]):
            return None  # not that order after all: keep the walk
    order = np.lexsort((a["threshold"], a["missing"], a["feature"]))  # stable: ties keep node order
    keys = a["feature"][order] * 3 + a["missing"][order]
    starts = np.flatnonzero(np.diff(keys, prepend=-1)) if n_nodes else np.zeros(0, np.int64)
    group_start = np.append(starts, n_nodes)
    default_right = ~a["default_left"][order]
    per_group = np.add.reduceat(default_right.astype(np.int64), starts) if n_nodes else np.zeros(0, np.int64)
    default_start = np.concatenate([[0], np.cumsum(per_group)])
    chosen = order[default_right]
    return {
        "qs_group_feature": a["feature"][order][starts].astype(np.int32),
        "qs_group_kind": a["missing"][order][starts].astype(np.int32),
        "qs_group_start": group_start.astype(np.int32),
        "qs_threshold": np.ascontiguousarray(a["threshold"][order]),
        "qs_tree": node_tree[order],
        "qs_mask": node_mask[order],
        "qs_default_start": np.asarray(default_start, np.int32),
        "qs_default_tree": node_tree[chosen],
        "qs_default_mask": node_mask[chosen],
        "qs_leaf_start": leaf_start.astype(np.int32),
    }


class Forest:
    """The trees of several LightGBM regressors, evaluated together.

    Why: one compiled pass over flat arrays replaces a ``predict`` call per
    regressor and its overhead. Build with :meth:`from_regressors`;
    :meth:`predict` returns one column per regressor, equal to each
    regressor's ``predict``.

    Parameters
    ----------
    arrays : dict of str to ndarray
        The flattened trees (node, leaf, root, owner and transform arrays,
        plus QuickScorer's ``qs_*`` layout when every tree qualifies), as
        :meth:`from_regressors` builds them.
    n_features : int
        Number of input columns the trees were fitted on.
    """

    def __init__(self, arrays: dict[str, np.ndarray], n_features: int) -> None:
        self.arrays = arrays
        self.n_features = n_features

    @classmethod
    def from_regressors(cls, regressors: Iterable[object]) -> Forest | None:
        """Flatten fitted ``LGBMRegressor``/``Booster`` objects, or ``None`` if unsupported.

        Read once at the end of fitting, so that prediction never calls
        LightGBM again.

        Parameters
        ----------
        regressors : iterable of LGBMRegressor or Booster
            Fitted on the same features; output ``j`` of the forest is
            regressor ``j``'s prediction.

        Returns
        -------
        Forest or None
            ``None`` when a regressor cannot be reproduced exactly
            (categorical splits, linear trees, another objective, early
            stopping, different feature counts): keep its own ``predict``.
        """
        nodes: dict[str, list] = {k: [] for k in ("feature", "threshold", "left", "right",
                                                  "default_left", "missing")}
        leaves: list[float] = []
        leaf_start: list[int] = []
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
                leaf_start.append(len(leaves))
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
        arrays.update(_quickscorer_arrays(arrays, np.asarray(leaf_start, np.int64)) or {})
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
        """Number of output columns: one per flattened regressor."""
        return int(self.arrays["transform"].size)

    @property
    def quickscorer(self) -> bool:
        """Whether :meth:`predict` uses QuickScorer (every tree has at most 64 leaves) rather than the walk."""
        return "qs_mask" in self.arrays

    def predict(self, X: ArrayLike, parallel: bool = False, offset: ArrayLike | None = None) -> NDArray[np.float64]:
        """Predictions of every regressor on ``X``, equal to their own ``predict`` but in one compiled pass.

        Parameters
        ----------
        X : array-like of shape (N, F)
            Features (converted to C-contiguous float64), NaN allowed.
        parallel : bool, default=False
            Spread rows over threads (same numbers).
        offset : array-like of shape (N, n_outputs), optional
            Starting score of each row and output, added to the trees' sum
            before the objective's transform: what LightGBM's ``init_score``
            was in training (a boosted-from prior); default 0, which gives
            the regressors' own ``predict`` bit for bit.

        Returns
        -------
        ndarray of float64, shape (N, n_outputs)
        """
        if not self.quickscorer:
            return self.walk(X, parallel, offset)
        rows, out = self._check(X, offset)
        (_quickscore_parallel if parallel else _quickscore)(  # type: ignore[call-arg]  # mypy miscounts *itemgetter(...)
            rows, *_QUICKSCORER_ARRAYS(self.arrays), out)
        return out

    def walk(self, X: ArrayLike, parallel: bool = False, offset: ArrayLike | None = None) -> NDArray[np.float64]:
        """:meth:`predict` by walking each tree node by node: the fallback, and the reference in tests.

        Parameters
        ----------
        X : array-like of shape (N, F)
            Features (converted to C-contiguous float64), NaN allowed.
        parallel : bool, default=False
            Spread rows over threads (same numbers).
        offset : array-like of shape (N, n_outputs), optional
            As in :meth:`predict`.

        Returns
        -------
        ndarray of float64, shape (N, n_outputs)
        """
        rows, out = self._check(X, offset)
        a = self.arrays
        (_walk_parallel if parallel else _walk)(rows, a["feature"], a["threshold"], a["left"], a["right"],
                                                a["default_left"], a["missing"], a["leaf_value"], a["roots"],
                                                a["owner"], a["transform"], out)
        return out

    def _check(self, X: ArrayLike, offset: ArrayLike | None = None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``X`` as the kernels read it, and the output array filled with each row's starting score."""
        rows = np.ascontiguousarray(X, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] < self.n_features:
            raise ValueError(f"X must have shape (N, >= {self.n_features}); got {rows.shape}")
        if offset is None:
            return rows, np.zeros((rows.shape[0], self.n_outputs))
        out = np.array(offset, dtype=np.float64, order="C")  # a copy: the kernels add into it
        if out.shape != (rows.shape[0], self.n_outputs):
            raise ValueError(f"offset must have shape {(rows.shape[0], self.n_outputs)}; got {out.shape}")
        return rows, out


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

    Parameters
    ----------
    thresholds : ndarray of float64, shape (T,)
        Sorted split thresholds of the continuous feature.
    values : ndarray of float64, shape (G, T + 1)
        Forest output per grid row and interval (``x <= thresholds[0]``,
        ..., ``x > thresholds[-1]``).
    zero_values : ndarray of float64, shape (G,)
        Forest output per grid row for ``|x| <= 1e-35``.
    """

    def __init__(self, thresholds: NDArray[np.float64], values: NDArray[np.float64],
                 zero_values: NDArray[np.float64]) -> None:
        self.thresholds, self.values, self.zero_values = thresholds, values, zero_values

    @classmethod
    def from_forest(cls, forest: Forest, continuous: int, grid: ArrayLike) -> Tabulated:
        """Tabulate ``forest`` (one output) over ``grid`` rows (values of the other features).

        Evaluated with the forest's own :meth:`Forest.predict`, once per
        (grid row, interval), so that a look-up returns what the trees would.

        Parameters
        ----------
        forest : Forest
            One output.
        continuous : int
            Index of the feature the table runs over.
        grid : array-like of shape (G, F)
            Every combination of the other features' values (column
            ``continuous`` is ignored).

        Returns
        -------
        Tabulated
        """
        a = forest.arrays
        splits = a["feature"] == continuous
        thresholds = np.unique(a["threshold"][splits])
        points = np.concatenate([thresholds, [np.nextafter(thresholds[-1], np.inf) if thresholds.size else 1.0]])
        points = np.where(np.abs(points) <= _ZERO, np.nextafter(_ZERO, np.inf), points)
        cells = np.asarray(grid, dtype=np.float64)
        n_groups, n_points = len(cells), len(points)
        X = np.repeat(cells, n_points + 1, axis=0)
        X[:, continuous] = np.tile(np.concatenate([points, [0.0]]), n_groups)
        table = forest.predict(X)[:, 0].reshape(n_groups, n_points + 1)
        return cls(thresholds, np.ascontiguousarray(table[:, :-1]), np.ascontiguousarray(table[:, -1]))

    def predict(self, groups: ArrayLike, x: ArrayLike) -> NDArray[np.float64]:
        """Forest output for rows in ``groups`` (indices into the grid) with continuous value ``x``.

        A look-up per row instead of a walk of every tree.

        Parameters
        ----------
        groups : array-like of int, shape (N,)
            Row of the ``grid`` of :meth:`from_forest` that each row's other
            features equal.
        x : array-like of float, shape (N,)
            The continuous feature; NaN is refused.

        Returns
        -------
        ndarray of float64, shape (N,)
        """
        x = np.ascontiguousarray(x, dtype=np.float64)
        if np.isnan(x).any():
            raise ValueError("Tabulated forests do not take NaN")
        out = np.empty(x.size)
        _lookup(self.thresholds, self.values, self.zero_values, np.ascontiguousarray(groups, dtype=np.int64), x, out)
        return out
