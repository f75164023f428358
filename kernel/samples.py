"""The shared standard-normal sample matrix behind every E[max] (ALGORITHM.md §2)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtri
from scipy.stats import qmc

__all__ = ["normal_samples", "default_uniforms", "DEFAULT_SEED"]

DEFAULT_SEED = 20241014


def normal_samples(n_samples: int, n_models: int, seed: int = DEFAULT_SEED) -> NDArray[np.float64]:
    """Return the fixed ``(n_samples, n_models)`` matrix ``Z`` of normal draws.

    Every query and every supermodel shares this matrix (common random
    numbers): decisions then move smoothly with ``λ`` and the estimate of
    ``Q`` stays exactly submodular, which makes pruning exact.

    The points are scrambled Sobol points mapped through the normal quantile.
    Each column is then centred to mean zero so that a single model's
    estimated quality is its mean, ``Q({i}) = q_i``, as for the exact
    expectation; routing then reduces to ``argmax q_i - λ c_i``.

    Parameters
    ----------
    n_samples : int
        Number of draws ``S``; a power of two (Sobol points balance only then).
    n_models : int
        Number of models ``K`` (one column each).
    seed : int
        Scrambling seed; the default is fixed so that results are reproducible
        across processes.

    Returns
    -------
    ndarray of float64, shape (n_samples, n_models)
        Read-only; C-contiguous.
    """
    n_samples = int(n_samples)
    n_models = int(n_models)
    if n_samples < 2 or n_samples & (n_samples - 1):
        raise ValueError(f"n_samples must be a power of two >= 2, got {n_samples}")
    if n_models < 1:
        raise ValueError(f"n_models must be >= 1, got {n_models}")
    return _cached_samples(n_samples, n_models, int(seed))


@lru_cache(maxsize=64)
def _cached_samples(n_samples: int, n_models: int, seed: int) -> np.ndarray:
    sobol = qmc.Sobol(d=n_models, scramble=True, seed=seed)
    z = ndtri(sobol.random_base2(int(np.log2(n_samples))))
    z -= z.mean(axis=0)
    z = np.ascontiguousarray(z, dtype=np.float64)
    z.setflags(write=False)
    return z


def default_uniforms(n_queries: int) -> NDArray[np.float64]:
    """Per-query uniforms ``u_n = frac(0.5 + n·φ)`` used when the caller passes none.

    A low-discrepancy sequence (φ the golden ratio): deterministic, and the
    share of queries with ``u < γ`` matches ``γ`` closely for any ``N``, as
    budget fitting assumes. Callers that decide for a subset of queries
    index into this to stay consistent with whole-batch calls.

    Parameters
    ----------
    n_queries : int
        Number of queries ``N``.

    Returns
    -------
    ndarray of float64, shape (n_queries,)
        The uniforms, in [0, 1).
    """
    return np.mod(0.5 + np.arange(n_queries) * 0.6180339887498949, 1.0)
