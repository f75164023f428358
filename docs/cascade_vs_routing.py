"""Where cascading pays: ``docs/cascade_vs_routing.json`` and the tables of ``docs/cascade_vs_routing.md``.

Issue 28 point 5: per budget, cascade routing's mean test quality minus
routing's, with a paired bootstrap 95 % interval over the test queries
(:func:`training.metrics.paired_budget_differences`, reported by
:func:`training.protocol.evaluate_strategies` as ``budget_differences``).
The default estimator, the protocol of ``docs/peers.py`` (same splits,
``max_depth`` 3), and at every budget the candidate kept on calibration
(ALGORITHM.md §4 point 4: the constant-estimate hull, routing, cascade
routing at depth 2 or 3), named per budget.

Run from the repository root::

    python docs/cascade_vs_routing.py                       # 3 tables x seeds 0-2
    python docs/cascade_vs_routing.py --tables routerbench_subset --seeds 0
    python docs/cascade_vs_routing.py --resume              # keep what the JSON already holds

It writes the JSON after every (table, seed) and, at the end, the block of
``docs/cascade_vs_routing.md`` between ``<!-- cascade_vs_routing.py:begin -->``
and ``<!-- cascade_vs_routing.py:end -->``; the prose around it is written by hand.
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
from peers import (
    DATA,
    DEFAULT_ESTIMATOR,
    DOCS,
    MAX_DEPTH,
    PROTOCOL,
    SEEDS,
    STRATEGIES,
    TABLES,
    _load,
    _names,
    _table_path,
)

from training.data import read_table
from training.protocol import EvaluationReport, evaluate_strategies

BEGIN, END = "<!-- cascade_vs_routing.py:begin -->", "<!-- cascade_vs_routing.py:end -->"
SKELETON = f"# Cascade routing vs routing, per budget\n\n{BEGIN}\n{END}\n"
PAIR = "cascade_routing-routing"


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate every (table, seed), then write the JSON and the tables.

    Returns
    -------
    int
        0 on success, 2 when a table is missing.
    """
    parser = argparse.ArgumentParser(prog="python docs/cascade_vs_routing.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the shared tables (default: %(default)s)")
    parser.add_argument("--tables", type=_names(TABLES), default=list(TABLES), help="comma-separated tables")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=list(SEEDS),
                        help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="keep the runs the JSON already holds")
    parser.add_argument("--json", type=Path, default=DOCS / "cascade_vs_routing.json", help="where runs are kept")
    args = parser.parse_args(argv)
    missing = [name for name in args.tables if not _table_path(args.data, name).is_file()]
    if missing:
        print(f"cascade_vs_routing.py: error: no table {missing} under {args.data}", file=sys.stderr)
        return 2
    protocol = {**PROTOCOL, "estimator": DEFAULT_ESTIMATOR, "n_boot": args.bootstrap}
    payload = _load(args.json) if args.resume else None
    if payload is None or payload.get("protocol") != protocol:
        payload = {"protocol": protocol, "runs": {}}
    payload["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg())}
    for name in args.tables:
        table = read_table(_table_path(args.data, name))
        for seed in args.seeds:
            key = f"{name}/{seed}"
            if key in payload["runs"]:
                continue
            print(f"{key} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            report = evaluate_strategies(
                table, estimator=DEFAULT_ESTIMATOR, seed=seed, max_depth=MAX_DEPTH, strategies=STRATEGIES,
                train_fraction=PROTOCOL["train_fraction"], calibration_fraction=PROTOCOL["calibration_fraction"],
                n_boot=args.bootstrap, progress=False)
            payload["runs"][key] = summary(report, time.perf_counter() - started)
            write_atomically(args.json, json.dumps(payload, indent=1) + "\n")
    generated = tables_text(payload["runs"])
    replace_block(DOCS / "cascade_vs_routing.md", generated, BEGIN, END, SKELETON)
    print(generated)
    return 0


def summary(report: EvaluationReport, seconds: float) -> dict[str, Any]:
    """What the tables need of one report: AUCs, the AUC difference, and per budget the paired difference."""
    chosen = {name: [point.get("chosen") for point in report.curves[name]] for name in ("routing", "cascade_routing")}
    return {"auc": {name: report.auc[name] for name in ("linear", "routing", "cascade_routing")},
            PAIR: list(report.differences[PAIR]),
            "budgets": [{**row, "cascade_routing_chosen": chosen["cascade_routing"][j],
                         "routing_chosen": chosen["routing"][j],
                         "cost": report.curves["cascade_routing"][j]["cost"]}
                        for j, row in enumerate(report.budget_differences[PAIR])],
            "n_calibration": report.n_calibration, "n_test": report.n_test, "seconds": seconds}


def tables_text(runs: dict[str, dict[str, Any]]) -> str:
    """The generated part of the page: a summary per table and seed, then every budget.

    Parameters
    ----------
    runs : dict
        ``"table/seed"`` → :func:`summary`.

    Returns
    -------
    str
        Markdown.
    """
    parts = ["_Generated by `python docs/cascade_vs_routing.py`; do not edit by hand._", "",
             f"Protocol of `docs/peers.py` (train fraction {PROTOCOL['train_fraction']}, calibration fraction "
             f"{PROTOCOL['calibration_fraction']}, the rest test, `max_depth` {MAX_DEPTH}), default estimator "
             f"`{DEFAULT_ESTIMATOR}`, every budget's policy chosen on calibration among the constant-estimate hull, "
             "routing and cascade routing at depths 2 and 3 (ALGORITHM.md §4 point 4). Difference: mean test quality "
             "of cascade routing minus routing at the same budget, with its paired bootstrap 95 % interval over the "
             "test queries. *Pays*: the interval is above 0; *loses*: below 0; else inside the noise.", "",
             "### Summary per table and seed", "",
             "| table | seed | AUC routing | AUC cascade routing | AUC difference [95 %] | budgets: pays / "
             "noise / loses | largest loss [95 %] |", "|---|---:|---:|---:|---|---|---|"]
    for key in sorted(runs, key=_order):
        run = runs[key]
        table, seed = key.rsplit("/", 1)
        d, lo, hi = run[PAIR]
        rows = run["budgets"]
        pays = sum(r["low"] > 0 for r in rows)
        loses = sum(r["high"] < 0 for r in rows)
        worst = min(rows, key=lambda r: r["difference"])
        parts.append(f"| {table} | {seed} | {run['auc']['routing']:.2f} | {run['auc']['cascade_routing']:.2f} | "
                     f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}] | {pays} / {len(rows) - pays - loses} / {loses} | "
                     f"{worst['difference']:+.4f} [{worst['low']:+.4f}, {worst['high']:+.4f}] |")
    tables = sorted({key.rsplit("/", 1)[0] for key in runs}, key=lambda t: TABLES.index(t) if t in TABLES else 99)
    for table in tables:
        seeds = sorted((key for key in runs if key.startswith(f"{table}/")), key=_order)
        parts += ["", f"### {table}: per budget", "",
                  "| seed | budget | test cost (CR) | CR − routing [95 %] | verdict | kept for cascade routing | "
                  "kept for routing |", "|---:|---:|---:|---|---|---|---|"]
        for key in seeds:
            for r in runs[key]["budgets"]:
                verdict = "pays" if r["low"] > 0 else "**loses**" if r["high"] < 0 else "noise"
                parts.append(f"| {key.rsplit('/', 1)[1]} | {r['budget']:.4g} | {r['cost']:.4g} | "
                             f"{r['difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] | {verdict} | "
                             f"{r['cascade_routing_chosen']} | {r['routing_chosen']} |")
    seconds = sum(run["seconds"] for run in runs.values())
    mean = {t: float(np.mean([runs[k][PAIR][0] for k in runs if k.startswith(f"{t}/")])) for t in tables}
    parts += ["", "Mean AUC difference over the seeds: "
              + ", ".join(f"{t} {value:+.2f}" for t, value in mean.items())
              + f". {len(runs)} runs, {seconds / 60:.0f} minutes in all."]
    return "\n".join(parts)


def _order(key: str) -> tuple[int, int]:
    table, seed = key.rsplit("/", 1)
    return (TABLES.index(table) if table in TABLES else 99, int(seed))


if __name__ == "__main__":
    sys.exit(main())
