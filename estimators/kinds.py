"""The estimator families a user picks by name (``--estimator``), in a module that imports nothing.

The command lines build their ``--help`` from these names without loading
scikit-learn or LightGBM (:mod:`estimators.estimator` and
:mod:`estimators.peers` map them to classes).
"""

from __future__ import annotations

__all__ = ["ESTIMATOR_KINDS", "PEER_KINDS"]

#: The peer routers' quality models (:data:`estimators.peers.PEER_REGRESSORS` maps each to its class).
PEER_KINDS = ("knn", "task-mean", "mlp", "mf")
#: Estimator families a user can pick by name (CLI ``--estimator``): ours, then the peer routers.
ESTIMATOR_KINDS = ("learned", "linear", "pooled", *PEER_KINDS)
