"""What the tie rule of the candidate choice costs or buys on test (docs/decisions.md item 38).

For one shared table and seed, with the protocol of ``docs/peers.py`` and
the default estimator, every candidate of :func:`training.policy.fit_candidates`
(the constant-estimate hull, routing, cascade routing at depths 2 and 3) is
fitted per budget on calibration and played on test; the test AUC of cascade
routing is then computed for several ways of choosing among them:

* ``depth3_fixed``: depth 3 always (what the protocol did before);
* ``argmax``: the best calibration quality (ties to the simpler);
* ``0.5se``, ``1se``: the simplest candidate within that many standard
  errors of the best, that no simpler one beats (``1se`` is the default).

Run from the repository root::

    python docs/candidate_rules.py routerbench_subset 0

It prints one JSON line of AUCs ×100. Not part of any generated page: the
figures are quoted, with the command, in docs/decisions.md item 38.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from peers import DATA, DEFAULT_ESTIMATOR, MAX_DEPTH, PROTOCOL, _table_path

import training.policy as policy_module
from estimators.estimator import make_router_estimator
from training import metrics
from training.data import read_table
from training.episodes import EstimatorEpisodes, calibration_episodes
from training.policy import SIGMA_TRANSFORMS, choose_policy, fit_candidates, single_outcomes
from training.protocol import BUDGETS_PER_SEGMENT, learned_split

RULES = {"depth3_fixed": None, "argmax": 0.0, "0.5se": 0.5, "1se": 1.0}


def main(name: str, seed: int) -> dict[str, float]:
    """Test AUC ×100 of cascade routing under each rule of :data:`RULES`."""
    table = read_table(_table_path(DATA, name))
    train_fraction, calibration_fraction = PROTOCOL["train_fraction"], PROTOCOL["calibration_fraction"]
    train, calibration, test = learned_split(table, seed, train_fraction, calibration_fraction)
    ordered = table.reorder_models(np.argsort(np.nanmean(table.cost[calibration], axis=0), kind="stable"))
    fitted = make_router_estimator(DEFAULT_ESTIMATOR).fit(ordered, train)
    calibration_play, _ = calibration_episodes(fitted, ordered.subset(calibration))
    test_play = EstimatorEpisodes(fitted, ordered.subset(test), direct_method=False)
    costs, qualities = metrics.single_model_points(ordered.quality[test], ordered.cost[test])
    lo, hi, left = metrics.auc_bounds(costs, qualities)
    singles = single_outcomes(calibration_play)
    points: dict[str, list[tuple[float, float]]] = {rule: [] for rule in RULES}
    default = policy_module.TIE_STANDARD_ERRORS
    try:
        for budget in metrics.budget_grid(costs, qualities, per_segment=BUDGETS_PER_SEGMENT):
            candidates = fit_candidates(calibration_play, float(budget), max_depth=MAX_DEPTH,
                                        sigma_transforms=SIGMA_TRANSFORMS, singles=singles)
            outcomes = [candidate.play(test_play) for candidate in candidates]
            for rule, errors in RULES.items():
                if errors is None:
                    kept = len(candidates) - 1
                else:
                    policy_module.TIE_STANDARD_ERRORS = errors
                    kept = choose_policy(calibration_play, candidates).kept
                points[rule].append((outcomes[kept].mean_cost, outcomes[kept].mean_quality))
    finally:
        policy_module.TIE_STANDARD_ERRORS = default
    return {rule: metrics.auc([c for c, _ in p], [q for _, q in p], lo, hi, left_quality=left)
            for rule, p in points.items()}


if __name__ == "__main__":
    table_name, seed_text = sys.argv[1:3]
    print(table_name, seed_text, json.dumps(main(table_name, int(seed_text))))
