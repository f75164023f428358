"""Where artifacts of format version 3 written before issue 31 pickled the frozen predictors (:mod:`estimators.frozen`).

Unpickling looks a class up by the module path it was saved under, so these
names stay importable for those artifacts. New code imports
:mod:`estimators.frozen`; new artifacts name it.
"""

from .frozen import Affine, Called, FrozenRegressors

__all__ = ["Affine", "Called", "FrozenRegressors"]
