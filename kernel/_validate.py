"""Input checks for the public kernel functions.

The compiled kernels never raise on data; these functions do, with messages
that name the argument, the offending position and what to do.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .config import COV_JITTER, MAX_MODELS, STRATEGIES
from .samples import default_uniforms


def _first_position(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def as_float_array(name: str, value: ArrayLike, ndim: int) -> NDArray[np.float64]:
    """Return ``value`` as a C-contiguous float64 array of ``ndim`` dimensions, all finite.

    The compiled kernels take exactly this layout and never check it, so
    every array argument passes through here first.

    Parameters
    ----------
    name : str
        Argument name, quoted in error messages.
    value : array-like
        The argument as the caller passed it.
    ndim : int
        Required number of dimensions.

    Returns
    -------
    ndarray of float64
        ``value`` itself when it already has this layout, else a copy.

    Raises
    ------
    TypeError
        If ``value`` is not numeric.
    ValueError
        If it has another number of dimensions or a NaN or infinity.
    """
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be numeric, got {type(value).__name__}: {error}") from None
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        position = _first_position(bad)
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf), "
            f"first at index {position}: {array[position]}; estimates must be finite")
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def check_shape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raise unless ``array`` has ``shape``: the kernels index without bounds checks.

    Parameters
    ----------
    name : str
        Argument name, quoted in the error message.
    array : ndarray
        The validated argument.
    shape : tuple of int
        The shape it must have.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape} (queries x models)")


def check_nonnegative(name: str, array: np.ndarray) -> None:
    """Raise on a negative entry: costs, deviations and multipliers are never negative.

    Parameters
    ----------
    name : str
        Argument name, quoted in the error message with the first offender.
    array : ndarray
        The validated argument.

    Raises
    ------
    ValueError
        If any entry is negative.
    """
    bad = array < 0
    if bad.any():
        position = _first_position(bad)
        raise ValueError(
            f"{name} must be >= 0; it has {int(bad.sum())} negative value(s), "
            f"first {array[position]} at index {position}")


def estimate_matrices(quality: ArrayLike, cost: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate the ``(N, K)`` quality and cost estimates that every decision starts from.

    Parameters
    ----------
    quality, cost : array-like of shape (N, K)
        Estimates per query and model; ``cost`` non-negative, ``K`` in
        ``[1, MAX_MODELS]``.

    Returns
    -------
    quality, cost : ndarray of float64, shape (N, K)
        C-contiguous and finite.
    """
    quality = as_float_array("quality", quality, 2)
    cost = as_float_array("cost", cost, 2)
    check_shape("cost", cost, quality.shape)
    check_nonnegative("cost", cost)
    n_models = quality.shape[1]
    if n_models < 1:
        raise ValueError("quality has no model columns; pass at least one model")
    if n_models > MAX_MODELS:
        raise ValueError(f"{n_models} models given; the kernel supports at most {MAX_MODELS}")
    return quality, cost


def uncertainty(
    sigma: ArrayLike | None, cov: ArrayLike | None, shape: tuple[int, int]
) -> tuple[NDArray[np.float64], NDArray[np.float64], bool]:
    """Return ``(sigma, cholesky, use_cov)``; no uncertainty means ``sigma = 0``.

    The kernels take both arrays whichever form was given, so the unused one
    is a dummy of the right number of dimensions.

    Parameters
    ----------
    sigma : array-like of shape (N, K) or None
        Standard deviations (independent errors).
    cov : array-like of shape (N, K, K) or None
        Full covariances; at most one of ``sigma`` and ``cov``.
    shape : tuple of int
        ``(N, K)`` of the estimates.

    Returns
    -------
    sigma : ndarray of float64
        Shape (N, K), or a (1, 1) dummy when ``cov`` is used.
    cholesky : ndarray of float64
        Shape (N, K, K) Cholesky factors, or a (1, 1, 1) dummy.
    use_cov : bool
        Whether the covariances are used.
    """
    n_queries, n_models = shape
    if sigma is not None and cov is not None:
        raise ValueError("pass either sigma (independent errors) or cov (full covariance), not both")
    if cov is None:
        if sigma is None:
            sigma = np.zeros(shape)
        sigma = as_float_array("sigma", sigma, 2)
        check_shape("sigma", sigma, shape)
        check_nonnegative("sigma", sigma)
        return sigma, np.zeros((1, 1, 1)), False
    cov = as_float_array("cov", cov, 3)
    check_shape("cov", cov, (n_queries, n_models, n_models))
    return np.zeros((1, 1)), cholesky_factors(cov), True


def cholesky_factors(cov: NDArray[np.float64]) -> NDArray[np.float64]:
    """Cholesky factors of ``cov + jitter·I`` for a stack of covariance matrices.

    Correlated draws are ``q + L z``; the jitter lets a positive
    semi-definite (singular) covariance factorise.

    Parameters
    ----------
    cov : ndarray of float64, shape (..., K, K)
        Symmetric positive semi-definite matrices.

    Returns
    -------
    ndarray of float64, shape (..., K, K)
        Lower-triangular factors, C-contiguous.

    Raises
    ------
    ValueError
        If a matrix is not symmetric or not positive semi-definite.
    """
    asymmetry = np.abs(cov - np.swapaxes(cov, -1, -2))
    scale = np.maximum(1.0, np.abs(cov).max(axis=(-1, -2), keepdims=True))
    bad = (asymmetry > 1e-9 * scale).any(axis=(-1, -2))
    if bad.any():
        raise ValueError(f"cov must be symmetric; matrix {int(np.argmax(bad))} is not")
    jittered = cov + COV_JITTER * np.eye(cov.shape[-1])
    try:
        return np.ascontiguousarray(np.linalg.cholesky(jittered))
    except np.linalg.LinAlgError:
        smallest = np.linalg.eigvalsh(jittered)[..., 0]
        row = int(np.argmin(smallest))
        raise ValueError(
            f"cov must be positive semi-definite; matrix {row} has eigenvalue {smallest[row]:.3g}. "
            "Project it onto the PSD cone (clip negative eigenvalues) before calling") from None


def lambda_vector(lambdas: ArrayLike | None, n_models: int) -> NDArray[np.float64]:
    """Per-step multipliers; a scalar applies to every step.

    Parameters
    ----------
    lambdas : float or 1-D array-like
        ``λ_t`` per step ``t``; non-negative.
    n_models : int
        ``K``, the length a scalar is repeated to.

    Returns
    -------
    ndarray of float64, shape (T,)
        One multiplier per step.
    """
    if lambdas is None:
        raise TypeError("lambdas is required for this strategy: a scalar or one value per step")
    array = as_float_array("lambdas", lambdas, np.ndim(lambdas))
    if array.ndim == 0:
        array = np.full(n_models, float(array))
    if array.ndim != 1 or array.shape[0] == 0:
        raise ValueError(f"lambdas must be a scalar or a non-empty 1-D vector, got shape {array.shape}")
    check_nonnegative("lambdas", array)
    return array


def strategy_code(strategy: str) -> int:
    """Map a strategy name to the integer code the compiled kernels branch on.

    Parameters
    ----------
    strategy : str
        One of :data:`kernel.config.STRATEGIES`.

    Returns
    -------
    int
        Its code.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[strategy]


def threshold_vector(thresholds: ArrayLike | None, n_models: int) -> NDArray[np.float64]:
    """Validate the threshold cascade's ``θ_0..θ_{K-2}``: the last model has none to pass.

    Parameters
    ----------
    thresholds : 1-D array-like of length K - 1
        Quality below which the cascade continues past each model.
    n_models : int
        ``K``.

    Returns
    -------
    ndarray of float64, shape (K - 1,)
    """
    if thresholds is None:
        raise TypeError(f"strategy 'threshold' needs thresholds: {n_models - 1} values θ_0..θ_K-2")
    array = as_float_array("thresholds", thresholds, 1)
    if array.shape[0] != n_models - 1:
        raise ValueError(
            f"thresholds has {array.shape[0]} values, expected {n_models - 1} (one per model but the last)")
    return array


def depth(max_depth: int | None, n_models: int) -> int:
    """``max_depth`` as an int in ``[1, K]`` (a larger value cannot change a decision).

    Parameters
    ----------
    max_depth : int or None
        Most models run per query; ``None`` means ``K``.
    n_models : int
        ``K``.

    Returns
    -------
    int
    """
    if max_depth is None:
        return n_models
    if isinstance(max_depth, bool) or not isinstance(max_depth, numbers.Integral):
        raise TypeError(f"max_depth must be an integer, got {max_depth!r}")
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    return int(min(max_depth, n_models))


def run_matrix(run: ArrayLike | None, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """Validate the models already run as a C-contiguous bool ``(N, K)`` matrix.

    Parameters
    ----------
    run : bool or 0/1 integer array-like of shape (N, K), or None
        Models run per query; ``None`` means none yet.
    shape : tuple of int
        ``(N, K)`` of the estimates.

    Returns
    -------
    ndarray of bool, shape (N, K)
    """
    if run is None:
        return np.zeros(shape, dtype=np.bool_)
    array = np.asarray(run)
    if array.dtype != np.bool_:
        if not np.issubdtype(array.dtype, np.integer) or not np.isin(array, (0, 1)).all():
            raise TypeError(f"run must be a boolean (N, K) matrix, got dtype {array.dtype}")
        array = array.astype(np.bool_)
    check_shape("run", array, shape)
    return np.ascontiguousarray(array)


def check_prefix_runs(run: NDArray[np.bool_], strategy: str) -> None:
    """Cascades run models in index order, so their run sets must be prefixes.

    Parameters
    ----------
    run : ndarray of bool, shape (N, K)
        Models run per query.
    strategy : str
        The cascade strategy, quoted in the error message.

    Raises
    ------
    ValueError
        If some row's run set is not ``m_0..m_{t-1}``.
    """
    n_run = run.sum(axis=1)
    prefix = np.arange(run.shape[1]) < n_run[:, None]
    bad = (run != prefix).any(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"strategy {strategy!r} runs models in index order, so each run set must be a prefix "
            f"m_0..m_t-1; {rows.size} row(s) are not, first row {int(rows[0])}: "
            f"{np.flatnonzero(run[rows[0]]).tolist()}")


def mixing(gamma: float, u: ArrayLike | None, n_queries: int) -> tuple[float, NDArray[np.float64]]:
    """Validate ``γ`` and the per-query uniforms ``u`` (default :func:`default_uniforms`).

    A query breaks ties towards the most expensive candidate when
    ``u < γ``; that is how a policy meets its budget exactly.

    Parameters
    ----------
    gamma : float in [0, 1]
        Share of queries that break ties towards the expensive candidate.
    u : array-like of shape (N,) or None
        Per-query uniforms in [0, 1].
    n_queries : int
        ``N``.

    Returns
    -------
    gamma : float
    u : ndarray of float64, shape (N,)
    """
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
    if u is None:
        return float(gamma), default_uniforms(n_queries)
    u = as_float_array("u", u, 1)
    if u.shape[0] != n_queries:
        raise ValueError(f"u has {u.shape[0]} values, expected one per query ({n_queries})")
    if ((u < 0) | (u > 1)).any():
        raise ValueError("u must lie in [0, 1]")
    return float(gamma), u
