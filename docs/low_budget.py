"""Why low-budget cascades lose (issue 28, point 2): ``docs/low_budget.json`` and the tables of ``docs/low_budget.md``.

For one shared table and seed, with the protocol of ``docs/peers.py`` (same
split through :func:`training.protocol.learned_split`, same budgets, the
default estimator), this script measures per budget what a fixed-depth
cascade router (``max_depth`` 3, its σ transform chosen on calibration, as
the protocol fitted it before the candidate choice) does on the test
queries next to routing:

* how often it ran a second model, how often that changed the answer, and
  whether the change fixed a wrong answer or broke a right one;
* the share of its cost spent on models after the first;
* how often it *started* with the cheapest model (against routing), the
  sign of a plan of two that stopped after one;
* the σ transform chosen, and the standard error of the paired calibration
  difference to routing (what 630 calibration queries can tell apart).

Then, per model, what a run reveals: the estimator's reveal σ against the
root mean square of how far the estimate really moved on test when the
model ran after 0, 1 or 2 others, and the AUROC of the estimate before and
after.

Run from the repository root, under ``nice`` on a shared machine::

    nice -n 10 python docs/low_budget.py routerbench_subset 0

It writes the JSON and the block of ``docs/low_budget.md`` between
``<!-- low_budget.py:begin -->`` and ``<!-- low_budget.py:end -->``; the
prose around it is written by hand.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import numpy as np
from generated import replace_block, write_atomically
from peers import DATA, DEFAULT_ESTIMATOR, DOCS, MAX_DEPTH, PROTOCOL, _table_path

import kernel
from estimators.accuracy import auroc
from estimators.estimator import make_router_estimator
from training import metrics
from training.data import read_table
from training.decision import play_cascades
from training.episodes import EstimatorEpisodes, calibration_episodes
from training.policy import SIGMA_TRANSFORMS, fit_policy
from training.protocol import BUDGETS_PER_SEGMENT, learned_split

BEGIN, END = "<!-- low_budget.py:begin -->", "<!-- low_budget.py:end -->"
SKELETON = f"# Why low-budget cascades lose\n\n{BEGIN}\n{END}\n"
#: Run-set sizes after which the reveal of one more model is measured.
SIZES = (0, 1, 2)


def trace(policy: Any, episodes: EstimatorEpisodes) -> dict[str, np.ndarray]:
    """Per test query: models run in order, the answer selected, its quality and the cost."""
    n, k = episodes.n_queries, episodes.n_models
    order, run, answer = play_cascades(policy, episodes.estimates, n, k, u=kernel.default_uniforms(n))
    rows = np.arange(n)
    return {"order": order, "answer": answer, "quality": episodes.quality[rows, answer],
            "cost": (episodes.cost * run).sum(axis=1), "first_cost": episodes.cost[rows, order[:, 0]],
            "first_quality": episodes.quality[rows, order[:, 0]]}


def budget_row(budget: float, calibration: EstimatorEpisodes, test: EstimatorEpisodes) -> dict[str, Any]:
    """Routing and depth-3 cascade routing at one budget, fitted on calibration, traced on test."""
    routing = fit_policy(calibration, budget, strategy="routing", max_depth=1, on_infeasible="clamp")
    cascade = fit_policy(calibration, budget, strategy="cascade_routing", max_depth=MAX_DEPTH,
                         on_infeasible="clamp", sigma_transforms=SIGMA_TRANSFORMS)
    r, c = trace(routing, test), trace(cascade, test)
    more = (c["order"] >= 0).sum(axis=1) >= 2
    changed = more & (c["answer"] != c["order"][:, 0])
    paired = cascade.play(calibration).quality - routing.play(calibration).quality
    return {"budget": budget, "routing_quality": float(r["quality"].mean()),
            "cascade_quality": float(c["quality"].mean()), "cascade_cost": float(c["cost"].mean()),
            "second_run": float(more.mean()), "changed": float(changed.mean()),
            "fixed": float((changed & (c["quality"] > c["first_quality"])).mean()),
            "broke": float((changed & (c["quality"] < c["first_quality"])).mean()),
            "later_cost_share": float((c["cost"] - c["first_cost"]).sum() / c["cost"].sum()),
            "cheapest_first_cascade": float((c["order"][:, 0] == 0).mean()),
            "cheapest_first_routing": float((r["order"][:, 0] == 0).mean()),
            "sigma_transform": list(cascade.sigma_transform),
            "calibration_difference": float(paired.mean()),
            "calibration_standard_error": float(paired.std(ddof=1) / math.sqrt(paired.size))}


def reveals(fitted: Any, test: EstimatorEpisodes, seed: int) -> list[dict[str, Any]]:
    """Per model and run-set size: the reveal σ the decision uses, the realised move, AUROC before and after."""
    n, k = test.n_queries, test.n_models
    rng = np.random.default_rng([seed, 28])
    rows = np.arange(n)
    found = []
    for size in SIZES:
        shuffled = np.argsort(rng.random((n, k)), axis=1)
        # how far the models already run move when one more joins them: sums of squares and counts per model
        run_moves, run_counts = np.zeros(k), np.zeros(k)
        for model in range(k):
            others = shuffled[shuffled != model].reshape(n, k - 1)[:, :size]
            run = np.zeros((n, k), dtype=bool)
            np.put_along_axis(run, others, True, axis=1)
            before = test.estimates(rows, run)
            after_run = run.copy()
            after_run[:, model] = True
            moved = test.estimates(rows, after_run).quality - before.quality
            run_moves += np.where(run, moved ** 2, 0.0).sum(axis=0)
            run_counts += run.sum(axis=0)
            after = before.quality[:, model] + moved[:, model]
            truth = test.quality[:, [model]]
            found.append({"model": fitted.models_[model], "size": size,
                          "reveal_sigma": float(before.sigma[:, model].mean()),
                          "realised": float(np.sqrt(np.mean(moved[:, model] ** 2))),
                          "auroc_before": auroc(truth, before.quality[:, [model]]),
                          "auroc_after": auroc(truth, after[:, None])})
        for cell in found[-k:]:
            j = fitted.models_.index(cell["model"])
            cell["run_moved"] = float(np.sqrt(run_moves[j] / run_counts[j])) if run_counts[j] else math.nan
    return found


def run(name: str, seed: int) -> dict[str, Any]:
    """Everything the page shows for one table and seed."""
    started, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()
    table = read_table(_table_path(DATA, name))
    train, calibration, test = learned_split(table, seed, PROTOCOL["train_fraction"],
                                             PROTOCOL["calibration_fraction"])
    ordered = table.reorder_models(np.argsort(np.nanmean(table.cost[calibration], axis=0), kind="stable"))
    fitted = make_router_estimator(DEFAULT_ESTIMATOR).fit(ordered, train)
    calibration_play, _ = calibration_episodes(fitted, ordered.subset(calibration))
    test_play = EstimatorEpisodes(fitted, ordered.subset(test), direct_method=False)
    costs, qualities = metrics.single_model_points(ordered.quality[test], ordered.cost[test])
    budgets = metrics.budget_grid(costs, qualities, per_segment=BUDGETS_PER_SEGMENT)
    return {"table": name, "seed": seed, "models": list(ordered.models), "n_calibration": int(calibration.size),
            "n_test": int(test.size), "budgets": [budget_row(float(b), calibration_play, test_play) for b in budgets],
            "reveals": reveals(fitted, test_play, seed), "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu, "load_average_at_start": list(load),
            "load_average_at_end": list(os.getloadavg())}


def tables_text(result: dict[str, Any]) -> str:
    """The generated part of the page."""
    parts = [f"_Generated by `python docs/low_budget.py {result['table']} {result['seed']}`; do not edit by hand._",
             "", f"{result['table']}, seed {result['seed']}, protocol of `docs/peers.py` ({result['n_calibration']} "
             f"calibration and {result['n_test']} test queries), default estimator, cascade routing at `max_depth` "
             f"{MAX_DEPTH} with its σ transform chosen on calibration (no candidate choice), routing beside it. "
             "Shares are of the test queries; *later cost*: share of cascade routing's test cost spent on the "
             "models run after the first; *cheapest first*: share of queries whose first model is the cheapest, "
             "cascade routing / routing; *cal. diff ± SE*: calibration quality of cascade routing minus "
             "routing, with the standard error of that paired mean.", "",
             "| budget | routing | cascade routing | 2nd model run | answer changed | fixed / broke | later cost | "
             "cheapest first | σ transform | cal. diff ± SE |", "|---:|---:|---:|---:|---:|---|---:|---|---|---|"]
    for row in result["budgets"]:
        scale, power = row["sigma_transform"]
        parts.append(
            f"| {row['budget']:.3g} | {row['routing_quality']:.4f} | {row['cascade_quality']:.4f} | "
            f"{row['second_run']:.3f} | {row['changed']:.3f} | {row['fixed']:.3f} / {row['broke']:.3f} | "
            f"{row['later_cost_share']:.3f} | {row['cheapest_first_cascade']:.3f} / "
            f"{row['cheapest_first_routing']:.3f} | {scale:g}·σ^{power:g} | "
            f"{row['calibration_difference']:+.4f} ± {row['calibration_standard_error']:.4f} |")
    parts += ["", "What one more run reveals, per model (test queries, run sets drawn at random): the reveal σ "
              "the decision uses for that model before it runs, the root mean square of how far its estimate "
              "really moved once it ran, and the AUROC of its estimate before and after; then, for a model "
              "already run (σ 0 in the decision), how far its estimate still moves when one more model joins "
              "a run set of 1 or 2.", "",
              "| model | after 0 others: σ / moved / AUROC | after 1 other | after 2 others | run, moves when "
              "one more joins (size 1 / 2) |", "|---|---|---|---|---|"]
    by_model: dict[str, dict[int, dict[str, Any]]] = {}
    for cell in result["reveals"]:
        by_model.setdefault(cell["model"], {})[cell["size"]] = cell
    for model in result["models"]:
        cells = [by_model[model][size] for size in SIZES]
        parts.append(f"| {model} | " + " | ".join(
            f"{c['reveal_sigma']:.3f} / {c['realised']:.3f} / {c['auroc_before']:.3f} → {c['auroc_after']:.3f}"
            for c in cells) + " | " + " / ".join(f"{c.get('run_moved', math.nan):.3f}" for c in cells[1:]) + " |")
    loads = [f"{result[key][0]:.1f} at the {key.rsplit('_', 1)[1]}" for key in ("load_average_at_start",
                                                                               "load_average_at_end") if key in result]
    parts += ["", f"{result['seconds']:.0f} s wall, {result['cpu_seconds']:.0f} CPU-s, load average "
              f"{' and '.join(loads)} on {os.cpu_count()} cores (contended)."]
    return "\n".join(parts)


if __name__ == "__main__":
    table_name, seed_text = sys.argv[1:3]
    found = run(table_name, int(seed_text))
    write_atomically(DOCS / "low_budget.json", json.dumps(found, indent=1) + "\n")
    text = tables_text(found)
    replace_block(DOCS / "low_budget.md", text, BEGIN, END, SKELETON)
    print(text)
