"""Compiled decision core: routing, cascades and cascade routing (ALGORITHM.md).

Public API: :func:`decide`, :func:`plan`, :class:`Decider`, :func:`simulate`,
:func:`select_answer`, :func:`expected_max` and :func:`normal_samples`.
"""

from ._cache import invalidate_stale_cache

invalidate_stale_cache()

# The kernels are imported after the cache check, on purpose.
from .api import Decider, SimulationResult, decide, expected_max, plan, select_answer, simulate  # noqa: E402
from .config import MAX_MODELS, STOP, STRATEGIES  # noqa: E402
from .samples import default_uniforms, normal_samples  # noqa: E402

__all__ = [
    "Decider",
    "MAX_MODELS",
    "STOP",
    "STRATEGIES",
    "SimulationResult",
    "decide",
    "default_uniforms",
    "expected_max",
    "normal_samples",
    "plan",
    "select_answer",
    "simulate",
]
