"""Training, policy fitting, evaluation and batch scoring for cascade routing.

``training.load_router(path)`` loads a fitted router artifact strictly (see
:mod:`training.serving.router`); it is imported lazily so that light modules such as
:mod:`estimators.table` do not pull in the compiled kernel.
"""

__all__ = ["load_router"]


def __getattr__(name: str):
    if name == "load_router":
        from .serving.router import load_router

        return load_router
    raise AttributeError(f"module 'training' has no attribute {name!r}")
