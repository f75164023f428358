"""Quality, uncertainty and cost estimators that feed the decision kernel.

Everything that turns a query (and what the models run so far returned)
into per-model estimates lives here; this package imports nothing from
``training``. Names are imported on first use, so ``import estimators`` (or
:mod:`estimators.table` alone) does not load scikit-learn and LightGBM.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cost import CostEstimator as CostEstimator
    from .embedding import EmbeddingFeaturizer as EmbeddingFeaturizer
    from .estimator import ESTIMATOR_KINDS as ESTIMATOR_KINDS
    from .estimator import Estimates as Estimates
    from .estimator import Estimator as Estimator
    from .estimator import PreparedQueries as PreparedQueries
    from .estimator import RouterEstimator as RouterEstimator
    from .estimator import make_router_estimator as make_router_estimator
    from .featurize import FrozenFeaturizer as FrozenFeaturizer
    from .featurize import StructuralFeaturizer as StructuralFeaturizer
    from .featurize import TextFeaturizer as TextFeaturizer
    from .featurize import make_prompt_featurizer as make_prompt_featurizer
    from .quality import QualityEstimator as QualityEstimator
    from .quality import make_lightgbm_regressor as make_lightgbm_regressor
    from .quality import make_linear_regressor as make_linear_regressor
    from .sigma import SigmaRegressor as SigmaRegressor
    from .table import RoutingTable as RoutingTable

#: Public name -> module that defines it.
_EXPORTS = {
    "RouterEstimator": "estimator", "Estimates": "estimator", "Estimator": "estimator",
    "PreparedQueries": "estimator", "ESTIMATOR_KINDS": "estimator", "make_router_estimator": "estimator",
    "QualityEstimator": "quality", "make_lightgbm_regressor": "quality", "make_linear_regressor": "quality",
    "CostEstimator": "cost", "SigmaRegressor": "sigma",
    "TextFeaturizer": "featurize", "StructuralFeaturizer": "featurize", "FrozenFeaturizer": "featurize",
    "make_prompt_featurizer": "featurize", "EmbeddingFeaturizer": "embedding", "RoutingTable": "table",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    """Import a public name from its module on first use."""
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'estimators' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
