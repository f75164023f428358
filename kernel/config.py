"""The one place for numba settings and the kernel's numeric conventions.

Decision kernels run with ``fastmath`` off: ties, ``-inf`` run-maxima and the
tie tolerance below must behave exactly as in the plain-Python reference.
"""

from __future__ import annotations

from typing import TypedDict


class JitOptions(TypedDict):
    """The keyword arguments of ``numba.njit`` this package sets (typed, so ``njit(**JIT_OPTIONS)`` type-checks)."""

    cache: bool
    fastmath: bool
    nogil: bool


#: Options shared by every compiled kernel. ``cache=True`` keeps the compiled
#: code on disk so a service pays the compile time once per install, and
#: ``nogil=True`` lets the serial variant run concurrently in threads.
JIT_OPTIONS: JitOptions = {"cache": True, "fastmath": False, "nogil": True}

#: The same without the disk cache, for the row-parallel twin of a serial
#: kernel compiled from the same Python function: numba keys its disk cache by
#: function, not by the ``parallel`` flag, so caching both lets one load the
#: other's machine code (``estimators._forest``).
UNCACHED_JIT_OPTIONS: JitOptions = {**JIT_OPTIONS, "cache": False}

#: Next-model code meaning "stop and answer with the best run model".
STOP = -1

#: Strategy codes passed to the compiled kernels.
ROUTING = 0
CASCADE = 1
CASCADE_ROUTING = 2
THRESHOLD = 3
STRATEGIES = {
    "routing": ROUTING,
    "cascade": CASCADE,
    "cascade_routing": CASCADE_ROUTING,
    "threshold": THRESHOLD,
}

#: Candidates whose score lies within ``TIE_RTOL * max(1, |best|)`` of the
#: best are tied (ALGORITHM.md §3).
TIE_RTOL = 1e-9

#: Two tied candidates whose costs differ by less than
#: ``COST_RTOL * max(1, |cost|)`` have equal cost: sums of the same costs in a
#: different order differ in the last bits, and must not decide a tie.
COST_RTOL = 1e-12

#: Supersets are bit masks in an int64, so at most 62 models.
MAX_MODELS = 62

#: Jitter added to a covariance's diagonal before its Cholesky factorisation.
COV_JITTER = 1e-12

#: Queries handled per block of the drivers: scratch buffers are allocated
#: once per block, and blocks are what ``prange`` spreads over threads.
BLOCK_SIZE = 256
