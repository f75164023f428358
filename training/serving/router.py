"""Where artifacts of format version 3 written before issue 31 pickled the router; it lives in :mod:`training.router`.

Unpickling looks a class up by the module path it was saved under, so this
name stays importable for those artifacts (``joblib.load`` finds
``training.serving.router.Router`` here). New code imports
:mod:`training.router`; new artifacts name it.
"""

from ..router import Router

__all__ = ["Router"]
