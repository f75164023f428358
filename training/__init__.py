"""Training, policy fitting, evaluation and batch scoring for cascade routing.

``training.load_router(path)`` loads a fitted router artifact strictly (see
:mod:`training.router`); it is imported lazily so that light modules such as
:mod:`training.data` do not pull in the compiled kernel. The submodules
(:mod:`training.data`, :mod:`training.synthetic`, :mod:`training.metrics`,
:mod:`training.protocol`, :mod:`training.artifact`, ...) are imported by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs only; at runtime see __getattr__
    from .router import load_router

__all__ = ["load_router"]


def __getattr__(name: str) -> Any:
    if name == "load_router":
        from .router import load_router

        return load_router
    raise AttributeError(f"module 'training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
