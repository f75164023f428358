"""Serving a fitted router: the :class:`Router` services load, budget pacing, batch scoring.

Everything here starts from an artifact written by ``python -m training.fit``
(:func:`load_router`) and never fits anything.
"""

from ..pacing import PaceController, PacingState
from ..router import Observed, PacedRouter, Plan, Router, load_router

__all__ = ["Observed", "PaceController", "PacedRouter", "PacingState", "Plan", "Router", "load_router"]
