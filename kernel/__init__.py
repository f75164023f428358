"""Compiled decision core: routing, cascades and cascade routing (ALGORITHM.md).

Public API: :func:`decide`, :func:`plan`, :func:`simulate`,
:func:`select_answer`, :func:`expected_max` and :func:`normal_samples`.
"""

from .api import SimulationResult, decide, expected_max, plan, select_answer, simulate
from .config import MAX_MODELS, STOP, STRATEGIES
from .samples import default_uniforms, normal_samples

__all__ = [
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
