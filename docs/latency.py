"""Quality at a grid of (cost, latency) budgets: ``docs/latency.json`` and the tables of ``docs/latency.md``.

ALGORITHM.md §7 adds a mean-latency budget ``T`` beside the cost budget
``B``. This script fits routing and cascade routing to every pair of a small
grid, on two tables, with the default learned estimator, the way
``python -m training.fit`` does (train 0.5 / calibration 0.25 / test 0.25,
cascade routing at most 3 models per query, σ transform chosen on
calibration), for seeds 0, 1 and 2, and reports each policy's test quality,
cost and latency, and whether test cost and test latency are within 10 % of
the budgets that bind (mean over the seeds where it binds).

* ``synthetic``: the built-in default benchmark (``training.synthetic``), whose
  ``latency_s`` is the assumed time to first token plus output tokens at the
  assumed tokens per second of the RouterBench model each synthetic model
  imitates, with noise.
* ``routerbench_subset`` (``../shared/data``): RouterBench logs neither time
  nor tokens, so latency is derived: output tokens ``ceil(len(response)/4)``
  (the toolkit's guess for unknown token counts), then
  ``ttft_s + output_tokens / output_tokens_per_s`` with
  :data:`training.synthetic.ASSUMED_THROUGHPUT` (assumed figures, not
  measurements: see there).

A budget *binds* when its multiplier is positive (``λ > 0`` for cost,
``μ > 0`` for latency): the policy would spend more (or take longer) without
it, so its calibration figure sits at the budget and the test figure should
too. The grid is the same per seed in shares, not in numbers: cost budgets
at 25, 50 and 75 % of the single models' log cost range on calibration,
latency budgets at 20, 50 and 80 % of the way from the fastest single model
to the slowest cost-only policy (of either strategy: both share the grid).

Run from the repository root::

    python docs/latency.py            # both tables, three seeds: about 2 minutes on 2 idle cores
    python docs/latency.py --tables synthetic
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from generated import replace_block, write_atomically

from estimators.estimator import make_router_estimator
from estimators.table import RoutingTable
from training.data import derive_latency, read_table
from training.episodes import EstimatorEpisodes, calibration_episodes
from training.fit import default_budgets
from training.policy import SIGMA_TRANSFORMS, fit_policy
from training.splits import split
from training.synthetic import ASSUMED_THROUGHPUT, default_table, synthetic_prices

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DATA = ROOT.parent / "shared" / "data"
TABLES = ("synthetic", "routerbench_subset")
STRATEGIES = ("routing", "cascade_routing")
#: Train / calibration / test. Larger calibration and test splits than the default 50/25/25: a budget is
#: met on calibration and judged on test, and both are noisy when a few expensive calls decide the mean.
FRACTIONS = (0.4, 0.3, 0.3)
SEEDS = (0, 1, 2)
MAX_DEPTH = 3
#: Latency budgets as shares of the way from the fastest single model to the slowest cost-only policy.
LATENCY_SHARES = (0.2, 0.5, 0.8)
#: How close to a binding budget the test figure must come.
TOLERANCE = 0.10

BEGIN, END = "<!-- latency.py:begin -->", "<!-- latency.py:end -->"
SKELETON = f"# Latency as a second budget\n\n{BEGIN}\n{END}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Fit and test every (table, strategy, cost budget, latency budget); write the JSON and the tables.

    Returns
    -------
    int
        0 on success, 2 when a shared table is missing.
    """
    parser = argparse.ArgumentParser(prog="python docs/latency.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated, of " + ", ".join(TABLES))
    parser.add_argument("--json", type=Path, default=DOCS / "latency.json")
    args = parser.parse_args(argv)
    names = [name for name in args.tables.split(",") if name]
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        parser.error(f"unknown table(s) {unknown}; choose from {list(TABLES)}")
    # the tables not rerun keep their figures from the JSON (rerunning only the synthetic one after it changed)
    results = json.loads(args.json.read_text()) if args.json.is_file() and set(names) != set(TABLES) else {}
    results = {name: results[name] for name in TABLES if name in results and name not in names}
    for name in names:
        started = time.perf_counter()
        try:
            table, prices = load(name)
        except FileNotFoundError as error:
            print(f"latency.py: error: {error}", file=sys.stderr)
            return 2
        runs = [grid(table, prices, seed) for seed in SEEDS]
        results[name] = {"runs": runs, "seconds": round(time.perf_counter() - started, 1)}
        print(f"{name}: {results[name]['seconds']} s", file=sys.stderr)
    results = {name: results[name] for name in TABLES if name in results}  # in the tables' order
    write_atomically(args.json, json.dumps(results, indent=1) + "\n")
    generated = tables_text(results)
    replace_block(DOCS / "latency.md", generated, BEGIN, END, SKELETON)
    print(generated)
    return 0


def load(name: str) -> tuple[RoutingTable, dict[str, tuple[float, float]] | None]:
    """The table with latency, and the token prices its cost estimator uses (``None``: learned cost)."""
    if name == "synthetic":
        return default_table(3000, seed=0), synthetic_prices()
    path = DATA / name / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no table {path}")
    table = read_table(path)
    tokens = np.where(table.logged, np.ceil(np.vectorize(len, otypes=[float])(table.responses) / 4.0), np.nan)
    table = replace(table, output_tokens=np.maximum(tokens, 1.0))
    return replace(table, latency=derive_latency(table, ASSUMED_THROUGHPUT)), None


def grid(table: RoutingTable, prices: dict[str, tuple[float, float]] | None, seed: int) -> dict[str, Any]:
    """Every strategy at every (cost budget, latency budget) pair, fitted on calibration and played on test."""
    train, calibration, test = split(table.n_queries, FRACTIONS, seed, table.fully_logged)
    estimator = make_router_estimator("learned", prices).fit(table, train)
    fitting, _ = calibration_episodes(estimator, table.subset(calibration))
    testing = EstimatorEpisodes(estimator, table.subset(test), direct_method=False)
    budgets = default_budgets(fitting.cost.mean(axis=0))
    fastest = float(testing.latency.mean(axis=0).min())
    cells = [{**_fit(fitting, testing, strategy, budget, None), "cost_index": i, "latency_index": None}
             for strategy in STRATEGIES for i, budget in enumerate(budgets)]
    slowest = max(cell["calibration_latency"] for cell in cells)  # one grid for both strategies: comparable
    latency_budgets = [fastest + share * (slowest - fastest) for share in LATENCY_SHARES]
    cells += [{**_fit(fitting, testing, strategy, budget, limit), "cost_index": i, "latency_index": j}
              for strategy in STRATEGIES for i, budget in enumerate(budgets) for j, limit in enumerate(latency_budgets)]
    single = {m: {"cost": float(c), "latency": float(lat), "quality": float(q)} for m, c, lat, q in zip(
        table.models, testing.cost.mean(axis=0), testing.latency.mean(axis=0), testing.quality.mean(axis=0),
        strict=True)}
    return {"seed": seed, "n_train": len(train), "n_calibration": len(calibration), "n_test": len(test),
            "single_models": single, "cells": cells}


def _fit(fitting, testing, strategy: str, budget: float, latency_budget: float | None) -> dict[str, Any]:
    started = time.perf_counter()
    policy = fit_policy(fitting, budget, strategy=strategy, max_depth=MAX_DEPTH, latency_budget=latency_budget,
                        on_infeasible="clamp", sigma_transforms=SIGMA_TRANSFORMS if strategy != "routing" else None)
    seconds = time.perf_counter() - started
    outcome = policy.play(testing)
    return {"strategy": strategy, "budget": budget, "latency_budget": latency_budget,
            "status": policy.budget_status, "lambda": float(np.max(policy.lambdas)), "mu": policy.mu,
            "calibration_cost": policy.calibration_cost, "calibration_latency": policy.calibration_latency,
            "calibration_quality": policy.calibration_quality, "test_cost": outcome.mean_cost,
            "test_latency": outcome.mean_latency, "test_quality": outcome.mean_quality,
            "evaluations": policy.search_evaluations, "fit_seconds": round(seconds, 2)}


def tables_text(results: dict[str, dict[str, Any]]) -> str:
    """The generated part of latency.md: per table the single models, then the grid averaged over the seeds."""
    parts = ["_Generated by `python docs/latency.py`; do not edit by hand._", ""]
    for name, result in results.items():
        runs = result["runs"]
        first = runs[0]
        parts += [f"### {name}", "",
                  f"{first['n_train']} train / {first['n_calibration']} calibration / {first['n_test']} test "
                  f"queries per seed (seeds {', '.join(str(r['seed']) for r in runs)}), default learned estimator, "
                  f"cascade routing at most {MAX_DEPTH} models; {result['seconds']} s in all.", "",
                  "| single model (seed 0 test split) | cost (mUSD) | latency (s) | quality |", "|---|---:|---:|---:|"]
        parts += [f"| {m} | {v['cost'] * 1e3:.3f} | {v['latency']:.2f} | {v['quality']:.3f} |"
                  for m, v in first["single_models"].items()]
        parts += ["", "Mean over the seeds; test / budget as mean [lowest, highest seed]; *binds*: in how many "
                      "seeds each budget's multiplier is positive; *within 10 %*: the mean test / budget of "
                      "every budget that binds, over the seeds where it binds.", "",
                  "| strategy | budget (mUSD) | latency budget (s) | test quality | test cost / budget | "
                  "test latency / budget | binds | within 10 % | fit (s) |",
                  "|---|---:|---:|---:|---:|---:|---|---|---:|"]
        checked = met = 0
        for key in dict.fromkeys((c["strategy"], c["cost_index"], c["latency_index"]) for c in first["cells"]):
            cells = [next(c for c in run["cells"] if (c["strategy"], c["cost_index"], c["latency_index"]) == key)
                     for run in runs]
            row, verdict = _row(cells)
            parts.append(row)
            if verdict is not None:
                checked += 1
                met += verdict
        seconds = [c["fit_seconds"] for run in runs for c in run["cells"] if c["latency_budget"] is not None]
        parts += ["", f"Binding budgets met on test within {TOLERANCE:.0%} (mean over the seeds where they bind): "
                      f"{met} of the {checked} grid cells where a budget binds. Two-budget fits (5 σ transforms "
                      f"each): median {np.median(seconds):.1f} s, longest {max(seconds):.1f} s.", ""]
    return "\n".join(parts).rstrip()


def _row(cells: list[dict[str, Any]]) -> tuple[str, bool | None]:
    """One grid cell over the seeds, and whether its binding budgets were met (``None``: none binds)."""
    cost = np.array([c["test_cost"] / c["budget"] for c in cells])
    latency = (None if cells[0]["latency_budget"] is None
               else np.array([c["test_latency"] / c["latency_budget"] for c in cells]))
    binds = {name: np.array([name in _binding(c) for c in cells]) for name in ("cost", "latency")}
    ratios = {"cost": cost, "latency": latency}
    means = {name: float(ratios[name][mask].mean()) for name, mask in binds.items() if mask.any()}
    verdict = None if not means else all(abs(value - 1.0) <= TOLERANCE for value in means.values())
    spread = ("—" if latency is None else f"{latency.mean():.1%} [{latency.min():.0%}, {latency.max():.0%}]")
    latency_budget = "—" if latency is None else f"{np.mean([c['latency_budget'] for c in cells]):.2f}"
    bound = ", ".join(f"{name} {int(mask.sum())}/{len(cells)}" for name, mask in binds.items() if mask.any())
    row = (f"| {cells[0]['strategy']} | {np.mean([c['budget'] for c in cells]) * 1e3:.3f} | {latency_budget} | "
           f"{np.mean([c['test_quality'] for c in cells]):.3f} | "
           f"{cost.mean():.1%} [{cost.min():.0%}, {cost.max():.0%}] | {spread} | {bound or 'neither'} | "
           f"{'—' if verdict is None else ('yes' if verdict else '**no**')} | "
           f"{np.mean([c['fit_seconds'] for c in cells]):.1f} |")
    return row, verdict


def _binding(cell: dict[str, Any]) -> list[str]:
    binds = []
    if cell["lambda"] > 0 and cell["status"] == "met":
        binds.append("cost")
    if cell["mu"] > 0 and cell["status"] == "met":
        binds.append("latency")
    return binds


if __name__ == "__main__":
    sys.exit(main())
