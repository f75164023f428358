"""Small logs without prompt text: the default router against the calibration hull (issue 27, "Must show").

A team with a few hundred logged queries per model, and no prompt text in
its log (only task labels), must not be handed a router that does worse
than a fixed mix of single models. For every shared table read without its
``prompt`` column and every seed, this script trains the default estimator
on 250 queries, fits cascade routing per budget on 20 % of the queries and
plays it on the rest, exactly as :func:`training.protocol.evaluate_strategies`
does for learned estimators (the candidate kept per budget on calibration,
:func:`training.policy.choose_policy`); beside it, the *calibration hull*:
the constant-estimate hull mix (:func:`training.policy.hull_policy`, the
single models on the upper hull of the calibration split's mean cost and
quality, γ-mixed around the budget), fitted on the same calibration queries
at the same budgets and played on the same test queries (at a budget below
the cheapest model's calibration cost, where the router's candidates are
clamped to their cheapest policy, the cheapest model alone). Both AUCs ×100 are
taken over the test single models' cost range, with the paired bootstrap
interval of their difference (:func:`training.metrics.bootstrap_auc`).

Run from the repository root::

    python docs/small_logs.py                  # every table and seed: docs/small_logs.json and the block in
                                               # docs/estimators.md
    python docs/small_logs.py --resume         # keep what docs/small_logs.json holds

The split is the protocol's for a full table (``_split`` with the train
fraction ``250 / N``), so the router's AUC is the one
``evaluate_strategies(table.without(["prompt"]), estimator="learned",
train_fraction=250 / N, calibration_fraction=0.2, max_depth=3,
strategies=("cascade_routing",))`` reports: the same calls in the same
order (split, fit, calibration and test episodes, budgets, candidates, the
choice, the bootstrap's point estimate). Seeded: a rerun gives the same
numbers; only the timings change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from generated import replace_block, write_atomically
from peers import DATA, DEFAULT_ESTIMATOR, DOCS, MAX_DEPTH, SEEDS, TABLES, _names, _table_path

from estimators.estimator import make_router_estimator
from training import metrics
from training.data import read_table
from training.episodes import EstimatorEpisodes, calibration_episodes
from training.policy import SIGMA_TRANSFORMS, choose_policy, describe, fit_candidates, hull_policy, single_outcomes
from training.protocol import BUDGETS_PER_SEGMENT, _split

#: Training queries: "a few hundred logged queries per model" (issue 27).
N_TRAIN = 250
CALIBRATION_FRACTION = 0.2
#: The columns the tables are read without: no prompt text, the task labels kept.
BLANKED = ("prompt",)
N_BOOT = 200
#: The targets: mean over seeds at least the hull's − 0.3, and no seed more than 1.0 below it.
MEAN_TOLERANCE, SEED_TOLERANCE = 0.3, 1.0
BEGIN, END = "<!-- small_logs.py:begin -->", "<!-- small_logs.py:end -->"


def run(name: str, seed: int, data: Path = DATA) -> dict[str, Any]:
    """The router's and the calibration hull's test AUC on one table and seed.

    Parameters
    ----------
    name : str
        A shared table, read without :data:`BLANKED`.
    seed : int
        Seeds the split (as the protocol's).
    data : Path
        Folder of the shared tables.

    Returns
    -------
    dict
        ``router``, ``hull`` and ``router-hull`` (AUC ×100 with the 95 %
        paired bootstrap interval), the candidate kept per budget, split
        sizes and CPU seconds.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    table = read_table(_table_path(data, name)).without(list(BLANKED))
    train_fraction = N_TRAIN / table.n_queries
    train, rest = _split(table.n_queries, train_fraction, seed)  # the protocol's split for a full table
    calibration, test = (rest[part] for part in _split(
        rest.size, CALIBRATION_FRACTION / (1 - train_fraction), seed + 1))
    ordered = table.reorder_models(np.argsort(np.nanmean(table.cost[calibration], axis=0), kind="stable"))
    fitted = make_router_estimator(DEFAULT_ESTIMATOR).fit(ordered, train)
    calibration_play, _ = calibration_episodes(fitted, ordered.subset(calibration))
    test_play = EstimatorEpisodes(fitted, ordered.subset(test), direct_method=False)
    costs, qualities = metrics.single_model_points(ordered.quality[test], ordered.cost[test])
    lo, hi, left = metrics.auc_bounds(costs, qualities)
    singles = single_outcomes(calibration_play)
    per_query: dict[str, tuple[list, list]] = {"router": ([], []), "hull": ([], [])}
    kept, clamped, cheapest = [], 0, min(outcome.mean_cost for outcome in singles)
    for budget in metrics.budget_grid(costs, qualities, per_segment=BUDGETS_PER_SEGMENT):
        candidates = fit_candidates(calibration_play, float(budget), max_depth=MAX_DEPTH,
                                    sigma_transforms=SIGMA_TRANSFORMS, singles=singles)
        choice = choose_policy(calibration_play, candidates)
        hull = candidates[0]  # simplest first: the hull mix, when one meets the budget
        if not describe(hull, ordered.models).startswith("hull"):
            # Below the cheapest model's calibration cost the router's candidates are clamped to their cheapest
            # policy; the hull's counterpart is the cheapest model alone.
            hull = hull_policy(calibration_play, cheapest, singles=singles)
            clamped += 1
        kept.append(describe(choice.policy, ordered.models))
        for key, policy in (("router", choice.policy), ("hull", hull)):
            outcome = policy.play(test_play)
            per_query[key][0].append(outcome.quality)
            per_query[key][1].append(outcome.cost)
    boot = metrics.bootstrap_auc({k: np.array(v[0]) for k, v in per_query.items()},
                                 {k: np.array(v[1]) for k, v in per_query.items()}, lo, hi, left,
                                 n_boot=N_BOOT, seed=seed)
    difference = boot["differences"]["router", "hull"]
    return {
        **{key: list(boot["strategies"][key]) for key in per_query},
        "router-hull": list(difference),
        "kept": kept, "hull_clamped": clamped,
        "n_train": int(train.size), "n_calibration": int(calibration.size), "n_test": int(test.size),
        "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started,
    }


def table_text(runs: dict[str, dict[str, Any]]) -> str:
    """The generated block: per table, each seed's router / hull AUC, the mean, the worst seed, the verdict."""
    lines = [
        "_Generated by `python docs/small_logs.py`; do not edit by hand._", "",
        f"Each shared table without its `{'`, `'.join(BLANKED)}` column, {N_TRAIN} training queries, "
        f"{CALIBRATION_FRACTION * 100:.0f} % calibration, the rest test; `max_depth` {MAX_DEPTH}; the default "
        f"`{DEFAULT_ESTIMATOR}` estimator's cascade routing (candidate kept per budget on calibration) against the "
        "calibration hull (the constant-estimate hull mix fitted on the same calibration queries). AUC ×100 "
        "over the test single models' cost range; router − hull with its 95 % paired bootstrap interval.", "",
        "| table | seed | router | calibration hull | router − hull | budgets where the hull is kept | CPU s |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    verdicts = []
    for name in TABLES:
        keys = sorted(k for k in runs if k.startswith(f"{name}/"))
        for key in keys:
            r = runs[key]
            d, low, high = r["router-hull"]
            hulls = sum(k.startswith("hull") for k in r["kept"])
            lines.append(f"| {name} | {key.rsplit('/', 1)[1]} | {r['router'][0]:.2f} | {r['hull'][0]:.2f} | "
                         f"{d:+.2f} [{low:+.2f}, {high:+.2f}] | {hulls} of {len(r['kept'])} | "
                         f"{r['cpu_seconds']:.0f} |")
        if keys:
            gaps = [runs[k]["router-hull"][0] for k in keys]
            ok = np.mean(gaps) >= -MEAN_TOLERANCE and min(gaps) >= -SEED_TOLERANCE
            verdict = ("yes" if ok else "**no**") if len(keys) == len(SEEDS) else (
                f"not shown: {len(keys)} of {len(SEEDS)} seeds ran" + ("" if ok else ", and **no** on those"))
            verdicts.append(f"| {name} | {', '.join(k.rsplit('/', 1)[1] for k in keys)} | {np.mean(gaps):+.2f} | "
                            f"{min(gaps):+.2f} | {verdict} |")
    lines += ["", f"Target: router − hull ≥ −{MEAN_TOLERANCE} on the mean of the seeds and ≥ −{SEED_TOLERANCE} "
              "on every seed.", "",
              "| table | seeds | mean router − hull | worst seed | target met |", "|---|---:|---:|---:|---|",
              *verdicts, *(f"| {name} | none ran | — | — | not shown |" for name in TABLES
                           if not any(k.startswith(f"{name}/") for k in runs))]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every (table, seed) not yet in the JSON, then write the block of docs/estimators.md."""
    parser = argparse.ArgumentParser(prog="python docs/small_logs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=_names(TABLES), default=list(TABLES), help="comma-separated tables")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=list(SEEDS))
    parser.add_argument("--resume", action="store_true", help="keep the runs --json already holds")
    parser.add_argument("--json", type=Path, default=DOCS / "small_logs.json")
    args = parser.parse_args(argv)
    payload: dict[str, Any] = {"runs": {}}
    if args.resume and args.json.is_file():
        payload = json.loads(args.json.read_text(encoding="utf-8"))
    payload["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg())}
    for name in args.tables:
        for seed in args.seeds:
            key = f"{name}/{seed}"
            if key not in payload["runs"]:
                print(f"{key} ...", file=sys.stderr, flush=True)
                payload["runs"][key] = run(name, seed)
                write_atomically(args.json, json.dumps(payload, indent=1) + "\n")
    text = table_text(payload["runs"])
    replace_block(DOCS / "estimators.md", text, BEGIN, END, f"{BEGIN}\n{END}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
