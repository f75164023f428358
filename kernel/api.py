"""Public, validating entry points of the decision kernel.

Each function checks its inputs (raising ``ValueError``/``TypeError`` that
name the argument), converts them to contiguous float64, calls a compiled
driver and returns plain arrays. See ALGORITHM.md for the rules.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _validate as check
from ._drivers import (
    plan_all_parallel,
    plan_all_serial,
    plan_one,
    simulate_all_parallel,
    simulate_all_serial,
)
from .config import BLOCK_SIZE, CASCADE, MAX_MODELS, STOP, THRESHOLD
from .samples import normal_samples

_FLOAT64 = np.dtype(np.float64)
_BOOL = np.dtype(np.bool_)

__all__ = ["Decider", "decide", "plan", "select_answer", "simulate", "expected_max", "SimulationResult"]


def _policy_arguments(strategy, lambdas, thresholds, max_depth, gamma, u, n_samples, shape):
    """Validate the policy parameters shared by :func:`plan` and :func:`simulate`."""
    n_queries, n_models = shape
    code = check.strategy_code(strategy)
    lambda_values = (np.zeros(1) if code == THRESHOLD and lambdas is None
                     else check.lambda_vector(lambdas, n_models))
    threshold_values = (check.threshold_vector(thresholds, n_models) if code == THRESHOLD
                        else np.zeros(0))
    depth = check.depth(max_depth, n_models)
    gamma, u = check.mixing(gamma, u, n_queries)
    z = normal_samples(n_samples, n_models)
    return code, lambda_values, threshold_values, depth, gamma, u, z


def plan(quality: ArrayLike, cost: ArrayLike, *, sigma: ArrayLike | None = None,
         cov: ArrayLike | None = None, run: ArrayLike | None = None,
         lambdas: ArrayLike | None = None, strategy: str = "cascade_routing",
         thresholds: ArrayLike | None = None, max_depth: int | None = None,
         force_order: bool = False, gamma: float = 0.0, u: ArrayLike | None = None,
         n_samples: int = 64, prune: bool = True,
         parallel: bool = True) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Like :func:`decide`, and also return the chosen supermodel of each query.

    Call it instead of :func:`decide` when the caller needs the plan behind
    the next step, e.g. to show which models a query is expected to use.

    Parameters
    ----------
    quality, cost : array-like of shape (N, K)
        Current quality and cost estimates, models sorted by mean cost.
    sigma, cov, run, lambdas, strategy, thresholds, max_depth
        As in :func:`decide`.
    force_order, gamma, u, n_samples, prune, parallel
        As in :func:`decide`.

    Returns
    -------
    next_model : ndarray of int64, shape (N,)
        Index of the model to run next, ``-1`` to stop.
    plan_mask : ndarray of int64, shape (N,)
        Bit mask of the chosen supermodel ``M*`` (bit ``i`` set when model
        ``i`` is in it); equals the run set when stopping. Service code shows
        it as "the models this query is expected to use".
    """
    quality, cost = check.estimate_matrices(quality, cost)
    shape = quality.shape
    sigma, chol, use_cov = check.uncertainty(sigma, cov, shape)
    run = check.run_matrix(run, shape)
    code, lambda_values, threshold_values, depth, gamma, u, z = _policy_arguments(
        strategy, lambdas, thresholds, max_depth, gamma, u, n_samples, shape)
    if code in (CASCADE, THRESHOLD):
        check.check_prefix_runs(run, strategy)
    next_model = np.empty(shape[0], dtype=np.int64)
    plan_mask = np.empty(shape[0], dtype=np.int64)
    # One block is the same work either way; the serial driver skips the thread pool's start-up.
    driver = plan_all_parallel if parallel and shape[0] > BLOCK_SIZE else plan_all_serial
    driver(quality, sigma, chol, use_cov, cost, run, lambda_values, code, threshold_values,
           depth, bool(force_order), gamma, u, z, bool(prune), next_model, plan_mask)
    return next_model, plan_mask


def decide(quality: ArrayLike, cost: ArrayLike, *, sigma: ArrayLike | None = None,
           cov: ArrayLike | None = None, run: ArrayLike | None = None,
           lambdas: ArrayLike | None = None, strategy: str = "cascade_routing",
           thresholds: ArrayLike | None = None, max_depth: int | None = None,
           force_order: bool = False, gamma: float = 0.0, u: ArrayLike | None = None,
           n_samples: int = 64, prune: bool = True, parallel: bool = True) -> NDArray[np.int64]:
    """Decide, per query, which model to run next (``-1`` = stop and answer).

    Parameters
    ----------
    quality, cost : array-like of shape (N, K)
        Current quality and cost estimates, models sorted by mean cost. For a
        model that has run these are its post-hoc estimates (its cost is
        then what it actually cost).
    sigma : array-like of shape (N, K), optional
        Standard deviations of the quality estimates (independent errors).
    cov : array-like of shape (N, K, K), optional
        Full error covariance instead of ``sigma``. Without either, the
        estimates are taken as exact.
    run : bool array-like of shape (N, K), optional
        Models already run per query; default none.
    lambdas : float or 1-D array-like
        Cost multiplier ``λ_t``, per step ``t`` = number of models run. Past
        the end of the vector the policy stops. Not needed for ``threshold``.
    strategy : {"cascade_routing", "cascade", "routing", "threshold"}
        ``cascade`` is the paper's optimal cascade; ``threshold`` the
        baseline cascade that continues while ``q_j < θ_j``.
    thresholds : 1-D array-like of length K - 1, optional
        ``θ_j`` for the threshold cascade.
    max_depth : int, optional
        Most models run per query (and largest supermodel considered).
    force_order : bool
        Only add models whose index exceeds every run model's; the next
        model is then the lowest-index member of the plan.
    gamma : float in [0, 1]
        Probability of breaking score ties towards the most expensive
        candidate; fitted so that the budget is met exactly.
    u : array-like of shape (N,), optional
        Per-query uniforms compared with ``gamma``; default a deterministic
        low-discrepancy sequence.
    n_samples : int
        Draws for ``E[max]``; a power of two.
    prune : bool
        Exact submodular pruning; off only for tests and benchmarks.
    parallel : bool
        Spread queries over threads. Use ``False`` inside threaded services:
        the serial kernel is deterministic and releases the GIL.

    Returns
    -------
    ndarray of int64, shape (N,)
        Index of the model to run next, ``-1`` to stop and answer.

    Examples
    --------
    >>> import numpy as np
    >>> from kernel import decide
    >>> quality = np.array([[0.6, 0.9]]); cost = np.array([[0.1, 1.0]])
    >>> decide(quality, cost, lambdas=0.1, strategy="routing").tolist()
    [1]
    >>> decide(quality, cost, lambdas=1.0, strategy="routing").tolist()
    [0]
    """
    return plan(quality, cost, sigma=sigma, cov=cov, run=run, lambdas=lambdas, strategy=strategy,
                thresholds=thresholds, max_depth=max_depth, force_order=force_order, gamma=gamma,
                u=u, n_samples=n_samples, prune=prune, parallel=parallel)[0]


class Decider:
    """One policy's kernel options, validated once, for deciding one query per call.

    A service decides one query at a time with the same policy; :func:`plan`
    would check ``λ``, the thresholds and the options and convert every
    argument to a batch on each call, which costs ten times the compiled
    work. A ``Decider`` checks the options once, checks each query's
    estimates inside the compiled call and calls that compiled function
    directly (numba's entry point, resolved once: no dispatch on argument
    types per call). Its decisions are those of :func:`plan` on the same
    query as a one-row batch, bit for bit: the same compiled search runs on
    the same values.

    Immutable once built, so one instance serves many threads (the compiled
    call releases the GIL and allocates its own scratch space).

    Parameters
    ----------
    n_models : int
        ``K``, the length of every per-query vector.
    lambdas, strategy, thresholds, max_depth, force_order, gamma, n_samples, prune
        As in :func:`decide`.

    Examples
    --------
    >>> import numpy as np
    >>> from kernel import Decider
    >>> decider = Decider(2, lambdas=0.1, strategy="routing")
    >>> decider.decide(np.array([0.6, 0.9]), np.array([0.1, 1.0]))
    1
    """

    n_models: int
    options: dict[str, Any]
    _policy: tuple[Any, ...]
    _shape: tuple[int]
    _zeros: NDArray[np.float64]
    _no_run: NDArray[np.bool_]
    _entry: Any

    def __init__(self, n_models: int, *, lambdas: ArrayLike | None = None, strategy: str = "cascade_routing",
                 thresholds: ArrayLike | None = None, max_depth: int | None = None, force_order: bool = False,
                 gamma: float = 0.0, n_samples: int = 64, prune: bool = True) -> None:
        if isinstance(n_models, bool) or not isinstance(n_models, numbers.Integral) or not 1 <= n_models <= MAX_MODELS:
            raise ValueError(f"n_models must be an integer in [1, {MAX_MODELS}], got {n_models!r}")
        self.n_models = int(n_models)
        code, lambda_values, threshold_values, depth, gamma, _, z = _policy_arguments(
            strategy, lambdas, thresholds, max_depth, gamma, None, n_samples, (1, self.n_models))
        self.options = dict(lambdas=None if lambdas is None else lambda_values.copy(), strategy=strategy,
                            thresholds=None if thresholds is None else np.array(thresholds, dtype=np.float64),
                            max_depth=max_depth, force_order=force_order, gamma=gamma, n_samples=n_samples,
                            prune=prune)
        # Copies: a caller's later change to its λ array must not change this policy.
        self._policy = (lambda_values.copy(), code, threshold_values.copy(), depth, bool(force_order), gamma, z,
                        bool(prune))
        self._shape = (self.n_models,)
        self._zeros = np.zeros(self.n_models)
        self._zeros.setflags(write=False)
        self._no_run = np.zeros(self.n_models, dtype=np.bool_)
        self._no_run.setflags(write=False)
        arguments = (self._zeros, self._zeros, self._zeros, self._no_run, 0.5, *self._policy)
        plan_one(*arguments)  # compiles, or loads the cached machine code, once per process
        signature = tuple(numba.typeof(value) for value in arguments)
        # The entry point takes exactly these types and trusts them: plan() passes only arrays of them.
        # With NUMBA_DISABLE_JIT=1 (CI's coverage run of the kernel tests) njit returns the Python function.
        overloads = getattr(plan_one, "overloads", None)
        self._entry = _python_plan_one if overloads is None else overloads[signature].entry_point

    def __reduce__(self):
        """Pickle the options, not the compiled entry point (rebuilt on load)."""
        return _rebuild_decider, (self.n_models, self.options)

    def _vector(self, value: ArrayLike) -> NDArray[np.float64] | None:
        """``value`` as the compiled call's float64 C-contiguous ``(K,)`` array, or ``None`` to take the batch path."""
        if not (type(value) is np.ndarray and value.dtype is _FLOAT64 and value.flags.c_contiguous):
            try:
                value = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                return None
            if value.shape == self._shape and not value.flags.c_contiguous:
                value = np.ascontiguousarray(value)
        return value if value.shape == self._shape else None

    def plan(self, quality: ArrayLike, cost: ArrayLike, *, sigma: ArrayLike | None = None,
             run: ArrayLike | None = None, u: float | None = None) -> tuple[int, int]:
        """Next model and planned supermodel of one query: :func:`plan` of the one-row batch.

        Inputs already in the compiled layout (float64 and C-contiguous
        ``(K,)`` arrays, ``run`` a bool array, ``u`` a float) go straight
        to the compiled call; others are converted first, or take the batch
        path, which decides alike.

        Parameters
        ----------
        quality, cost : array-like of shape (K,)
            The query's estimates.
        sigma : array-like of shape (K,), optional
            Standard deviations of the quality estimates (independent errors).
        run : bool array-like of shape (K,), optional
            Models already run; default none.
        u : float in [0, 1], optional
            The query's uniform for ``gamma``; default that of a one-query
            batch (:func:`default_uniforms`), 0.5.

        Returns
        -------
        (int, int)
            Next model (``STOP`` = -1 to stop) and the plan's bit mask.

        Raises
        ------
        ValueError, TypeError
            As :func:`plan` raises them for the one-row batch.
        """
        return self._plan(quality, cost, sigma, run, u)

    def decide(self, quality: ArrayLike, cost: ArrayLike, *, sigma: ArrayLike | None = None,
               run: ArrayLike | None = None, u: float | None = None) -> int:
        """Next model of one query (``STOP`` = -1 to stop): :func:`decide` of the one-row batch.

        Parameters
        ----------
        quality, cost, sigma, run, u
            As in :meth:`plan`.

        Returns
        -------
        int
        """
        return self._plan(quality, cost, sigma, run, u)[0]

    def _plan(self, quality, cost, sigma, run, u) -> tuple[int, int]:
        """:meth:`plan` with positional arguments: the compiled call when the layouts allow, else the batch path."""
        shape = self._shape  # the common case, arrays already in the compiled layout, is checked inline
        quality_row = (quality if type(quality) is np.ndarray and quality.dtype is _FLOAT64
                       and quality.shape == shape and quality.flags.c_contiguous else self._vector(quality))
        cost_row = (cost if type(cost) is np.ndarray and cost.dtype is _FLOAT64
                    and cost.shape == shape and cost.flags.c_contiguous else self._vector(cost))
        sigma_row = (self._zeros if sigma is None else sigma if type(sigma) is np.ndarray
                     and sigma.dtype is _FLOAT64 and sigma.shape == shape and sigma.flags.c_contiguous
                     else self._vector(sigma))
        if run is None:
            run_row = self._no_run
        elif type(run) is np.ndarray and run.dtype is _BOOL and run.shape == self._shape:
            run_row = run if run.flags.c_contiguous else np.ascontiguousarray(run)
        else:
            run_row = None
        uniform = 0.5 if u is None else u
        if (quality_row is not None and cost_row is not None and sigma_row is not None and run_row is not None
                and isinstance(uniform, float)):
            valid, next_model, plan_mask = self._entry(quality_row, sigma_row, cost_row, run_row, float(uniform),
                                                       *self._policy)
            if valid:
                return next_model, plan_mask
        return self._batch(quality, cost, sigma, run, u)

    def _batch(self, quality, cost, sigma, run, u) -> tuple[int, int]:
        """:func:`plan` on the one-row batch: for inputs the compiled call does not take, and to raise the errors."""
        for name, value in (("quality", quality), ("cost", cost), ("sigma", sigma), ("run", run)):
            if value is not None and np.ndim(value) != 1:
                raise ValueError(f"{name} must be one query's 1-dimensional vector of {self.n_models} values, "
                                 f"got shape {np.shape(value)}")
        if u is not None and (isinstance(u, bool) or not isinstance(u, numbers.Real)):
            raise TypeError(f"u must be a number in [0, 1], got {type(u).__name__} {u!r}")
        next_model, plan_mask = plan(
            [quality], [cost], sigma=None if sigma is None else [sigma], run=None if run is None else [run],
            u=None if u is None else [float(u)], parallel=False, **self.options)
        return int(next_model[0]), int(plan_mask[0])


def _python_plan_one(*arguments: Any) -> tuple[bool, int, int]:
    """``plan_one`` run as Python (``NUMBA_DISABLE_JIT=1``), returning Python scalars as the compiled call does."""
    valid, next_model, plan_mask = plan_one(*arguments)
    return bool(valid), int(next_model), int(plan_mask)


def _rebuild_decider(n_models: int, options: dict) -> Decider:
    return Decider(n_models, **options)


def select_answer(quality: ArrayLike, run: ArrayLike) -> NDArray[np.int64]:
    """Which run model's answer to return: the highest post-hoc quality estimate.

    The post-hoc estimate is the best guess of which answer is right once
    the models have run, so the cascade answers with that model's response.

    Parameters
    ----------
    quality : array-like of shape (N, K)
        Post-hoc quality estimates (only those of run models are read).
    run : bool array-like of shape (N, K)
        Models run per query.

    Returns
    -------
    ndarray of int64, shape (N,)
        Index of the run model to answer with; ``-1`` for a query with no
        model run. Ties go to the lower index.
    """
    quality = check.as_float_array("quality", quality, 2)
    run = check.run_matrix(run, quality.shape)
    masked = np.where(run, quality, -np.inf)
    answer = np.argmax(masked, axis=1).astype(np.int64)
    answer[~run.any(axis=1)] = STOP
    return answer


class SimulationResult(NamedTuple):
    """Outcome of whole episodes, one row per query.

    Attributes
    ----------
    order : ndarray of int64, shape (N, max_depth)
        Models run, in order, padded with ``-1``.
    cost : ndarray of float64, shape (N,)
        Realised cost: sum of the true costs of the models run.
    quality : ndarray of float64, shape (N,)
        True quality of the selected answer.
    answer : ndarray of int64, shape (N,)
        Index of the model whose answer was returned.
    """

    order: NDArray[np.int64]
    cost: NDArray[np.float64]
    quality: NDArray[np.float64]
    answer: NDArray[np.int64]

    @property
    def n_run(self) -> NDArray[np.int64]:
        """Number of models run per query, the episode's length (ndarray of int64, shape (N,))."""
        return (self.order >= 0).sum(axis=1)


def simulate(ante_quality: ArrayLike, ante_sigma: ArrayLike, ante_cost: ArrayLike,
             post_quality: ArrayLike, post_sigma: ArrayLike, post_cost: ArrayLike,
             true_quality: ArrayLike, true_cost: ArrayLike, *, lambdas: ArrayLike | None = None,
             strategy: str = "cascade_routing", thresholds: ArrayLike | None = None,
             max_depth: int | None = None, force_order: bool = False, gamma: float = 0.0,
             u: ArrayLike | None = None, n_samples: int = 64, prune: bool = True,
             parallel: bool = True) -> SimulationResult:
    """Play whole episodes for every query in one compiled call.

    For estimate tables: a model's estimates switch from ex-ante to post-hoc
    once it has run; the policy decides, "runs" the chosen model, and decides
    again until it stops, then answers with the best run model by post-hoc
    estimate. Realised quality and cost come from the ground truth. Policy
    fitting calls this many times, so it is the hot path.

    Parameters
    ----------
    ante_quality, ante_sigma, ante_cost : array-like of shape (N, K)
        Estimates before a model has run.
    post_quality, post_sigma, post_cost : array-like of shape (N, K)
        Estimates once it has run.
    true_quality, true_cost : array-like of shape (N, K)
        What each model would actually score and cost.
    lambdas, strategy, thresholds, max_depth, force_order, gamma, u, n_samples, prune, parallel
        The policy, as in :func:`decide` (independent errors only).

    Returns
    -------
    SimulationResult
        Per query, the models run, the realised cost and quality, and the answer.
    """
    ante_quality, ante_cost = check.estimate_matrices(ante_quality, ante_cost)
    shape = ante_quality.shape
    given = {"post_quality": post_quality, "post_cost": post_cost, "ante_sigma": ante_sigma,
             "post_sigma": post_sigma, "true_quality": true_quality, "true_cost": true_cost}
    arrays: dict[str, np.ndarray] = {}
    for name, value in given.items():
        arrays[name] = check.as_float_array(name, value, 2)
        check.check_shape(name, arrays[name], shape)
        if name != "true_quality" and name != "post_quality":
            check.check_nonnegative(name, arrays[name])
    code, lambda_values, threshold_values, depth, gamma, u, z = _policy_arguments(
        strategy, lambdas, thresholds, max_depth, gamma, u, n_samples, shape)
    n_queries = shape[0]
    order = np.full((n_queries, depth), STOP, dtype=np.int64)
    realised_cost = np.empty(n_queries)
    realised_quality = np.empty(n_queries)
    answer = np.empty(n_queries, dtype=np.int64)
    driver = simulate_all_parallel if parallel else simulate_all_serial
    driver(ante_quality, arrays["ante_sigma"], ante_cost, arrays["post_quality"],
           arrays["post_sigma"], arrays["post_cost"], arrays["true_quality"], arrays["true_cost"],
           lambda_values, code, threshold_values, depth, bool(force_order), gamma, u, z,
           bool(prune), order, realised_cost, realised_quality, answer)
    return SimulationResult(order, realised_cost, realised_quality, answer)


def expected_max(quality: ArrayLike, sigma_or_cov: ArrayLike, members: ArrayLike,
                 z: ArrayLike) -> NDArray[np.float64] | float:
    """``Q(M) = E[max_{i∈M} Y_i]`` with the shared draws ``z`` (ALGORITHM.md §2).

    The quality term of the score ``τ(M) = Q(M) - λ·C(M)`` that the compiled
    search maximises, computed in NumPy from the same draws, so that tests
    and notebooks can check or explain a decision.

    Parameters
    ----------
    quality : array-like of shape (K,) or (N, K)
        Quality estimates of one query or of ``N`` queries.
    sigma_or_cov : array-like
        Standard deviations of shape (K,) / (N, K), or covariances of shape
        (K, K) / (N, K, K).
    members : bool array-like of shape (K,) or (N, K), or a sequence of indices
        The supermodel ``M``; an empty set gives ``-inf``.
    z : array-like of shape (S, K)
        The shared normal draws, e.g. :func:`kernel.normal_samples`.

    Returns
    -------
    float or ndarray of float64, shape (N,)
        A float for one query (1-D ``quality``), else one value per query.
    """
    quality = np.asarray(quality, dtype=np.float64)
    single = quality.ndim == 1
    quality = check.as_float_array("quality", np.atleast_2d(quality), 2)
    n_queries, n_models = quality.shape
    spread = check.as_float_array("sigma_or_cov", sigma_or_cov, np.ndim(sigma_or_cov))
    z = check.as_float_array("z", z, 2)
    if z.shape[1] != n_models:
        raise ValueError(f"z has {z.shape[1]} columns, expected one per model ({n_models})")
    if spread.ndim == (1 if single else 2):
        spread = np.broadcast_to(spread, quality.shape)
        check.check_nonnegative("sigma", spread)
        draws = quality[:, None, :] + spread[:, None, :] * z[None, :, :]
    elif spread.ndim == (2 if single else 3):
        spread = np.broadcast_to(spread, (n_queries, n_models, n_models))
        chol = check.cholesky_factors(np.ascontiguousarray(spread))
        draws = quality[:, None, :] + np.einsum("nij,sj->nsi", chol, z)
    else:
        raise ValueError(f"sigma_or_cov has shape {spread.shape}; expected standard deviations "
                         f"{quality.shape} or covariances {(n_queries, n_models, n_models)}")
    mask = np.asarray(members)
    if mask.dtype != np.bool_:
        indices = mask.astype(np.int64).ravel()
        if ((indices < 0) | (indices >= n_models)).any():
            raise ValueError(f"members {indices.tolist()} must be model indices in [0, {n_models})")
        mask = np.zeros(n_models, dtype=np.bool_)
        mask[indices] = True
    mask = np.broadcast_to(mask, quality.shape)
    values = np.where(mask[:, None, :], draws, -np.inf).max(axis=2).mean(axis=1)
    return float(values[0]) if single else values
