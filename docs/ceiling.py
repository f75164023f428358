"""The ceiling of cascade routing: ``docs/ceiling.json`` and the tables of ``docs/ceiling.md``.

Cascade routing beats routing only as far as running a model tells the
router something. How much could it gain on a table if the post-hoc
estimates were better? This script replays the protocol of
``docs/peers.py`` (same splits, depth, budgets and policy fitting, through
:func:`training.protocol.evaluate_strategies`) with the default learned
estimator's estimates replaced, query by query and run set by run set, by:

* ``learned``: the learned estimator as it is (the baseline);
* ``exact_run``: the truth for the models that ran (σ 0), the learned
  estimates for the others: a perfect verifier of each answer seen;
* ``exact_all``: once any model ran, the truth for every model (σ 0): the
  most one run could ever reveal. Before any run, the learned ex-ante
  estimates, so routing itself is unchanged;
* ``simulated_low`` / ``simulated_medium``: the paper's simulated
  estimates (:func:`estimators.simulated.simulate_estimates`, recalibrated
  on the training rows), ex-ante and post-hoc, quality and cost.

The protocol takes an estimator *kind*, not an estimator object, so the
script substitutes ``training.protocol.make_router_estimator`` with a
factory of :class:`_Replaced` wrappers for the time of each call; the
learned estimator underneath is fitted once per (table, seed) and shared by
the five variants.

Run from the repository root, under ``nice`` on a shared machine::

    nice -n 10 python docs/ceiling.py --seeds 0
    nice -n 10 python docs/ceiling.py --seeds 0,1,2 --resume
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
from peers import DATA, MAX_DEPTH, PROTOCOL, STRATEGIES, TABLES, _load, _table_path

import training.protocol as protocol
from estimators.estimator import Estimates, make_router_estimator
from estimators.simulated import simulate_estimates
from estimators.table import RoutingTable
from training.data import read_table

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MODES = ("learned", "exact_run", "exact_all", "simulated_low", "simulated_medium")
BEGIN, END = "<!-- ceiling.py:begin -->", "<!-- ceiling.py:end -->"
SKELETON = f"# The ceiling of cascade routing\n\n{BEGIN}\n{END}\n"

#: Learned estimators fitted so far, per (table, training rows): the five variants share one fit.
_FITTED: dict[tuple[int, bytes], Any] = {}


class _Replaced:
    """A fitted learned estimator whose estimates are replaced as ``mode`` says (see the module docstring)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.inner: Any = None
        self.rows: dict[object, int] = {}
        self.simulated: Any = None

    def fit(self, table: RoutingTable, train: np.ndarray) -> _Replaced:
        key = (id(table), np.asarray(train).tobytes())
        if key not in _FITTED:
            _FITTED.clear()  # one table at a time
            _FITTED[key] = make_router_estimator("learned").fit(table, train)
        self.inner = _FITTED[key]
        if self.mode.startswith("simulated_"):
            fully = np.asarray(train)[table.fully_logged[train]]
            quality = np.where(table.logged, table.quality, 0.0)  # cells not logged are never played
            cost = np.where(table.logged, table.cost, 0.0)
            self.simulated = simulate_estimates(quality, cost, noise=self.mode.split("_")[1], fit_rows=fully,
                                                seed=int.from_bytes(key[1][:4], "little"))
            self.rows = {q: i for i, q in enumerate(table.query_ids.tolist())}
        return self

    def predict_table(self, table: RoutingTable, run: Any = None, rows: Any = None) -> Estimates:
        found = self.inner.predict_table(table, run, rows)
        rows = np.arange(table.n_queries) if rows is None else np.asarray(rows)
        run = np.zeros(found.quality.shape, bool) if run is None else np.asarray(run, bool)
        if self.mode == "learned":
            return found
        if self.mode.startswith("simulated_"):
            at = np.array([self.rows[q] for q in table.query_ids[rows].tolist()], dtype=np.int64)
            s = self.simulated
            quality = np.where(run, s.post_quality[at], s.ante_quality[at])
            sigma = np.where(run, s.post_sigma[at], s.ante_sigma[at])
            cost = np.where(run, s.post_cost[at], s.ante_cost[at])
            return Estimates(quality, sigma, cost, None, found.latency)
        exact = run if self.mode == "exact_run" else np.broadcast_to(run.any(axis=1, keepdims=True), run.shape)
        truth = table.quality[rows]
        cov = found.cov
        if cov is not None:
            cov = np.where(exact[:, :, None] | exact[:, None, :], 0.0, cov)
        return Estimates(np.where(exact, truth, found.quality), np.where(exact, 0.0, found.sigma), found.cost, cov,
                         found.latency)


def run_one(table: RoutingTable, mode: str, seed: int, n_boot: int) -> dict[str, Any]:
    """Evaluate routing and cascade routing with the ``mode`` estimates; the summary the tables need."""
    original = protocol.make_router_estimator
    protocol.make_router_estimator = lambda kind, prices=None: _Replaced(mode)  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        report = protocol.evaluate_strategies(
            table, estimator="learned", seed=seed, max_depth=MAX_DEPTH, strategies=STRATEGIES,
            train_fraction=PROTOCOL["train_fraction"], calibration_fraction=PROTOCOL["calibration_fraction"],
            n_boot=n_boot, progress=False)
    finally:
        protocol.make_router_estimator = original
    return {"auc": {name: report.auc[name] for name in ("linear", *report.strategies)},
            "cascade_routing-routing": list(report.differences["cascade_routing-routing"]),
            "curves": report.curves, "seconds": time.perf_counter() - started}


def main(argv: Sequence[str] | None = None) -> int:
    """Run every (table, seed, mode) not yet in the JSON, then write the tables."""
    parser = argparse.ArgumentParser(prog="python docs/ceiling.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated (default: all three)")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0])
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated (default: all)")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--resume", action="store_true", help="keep what --json holds (default: start afresh)")
    parser.add_argument("--json", type=Path, default=DOCS / "ceiling.json")
    args = parser.parse_args(argv)
    tables = [t for t in args.tables.split(",") if t]
    modes = [m for m in args.modes.split(",") if m]
    unknown = [t for t in tables if t not in TABLES] + [m for m in modes if m not in MODES]
    if unknown:
        print(f"ceiling.py: error: unknown {unknown}; tables {list(TABLES)}, modes {list(MODES)}", file=sys.stderr)
        return 2
    payload = (_load(args.json) if args.resume else None) or {}
    protocol_key = {**PROTOCOL, "n_boot": args.bootstrap}
    if payload.get("protocol") != protocol_key:
        payload = {"protocol": protocol_key, "runs": {}}
    payload["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg())}
    for name in tables:
        table = read_table(_table_path(args.data, name))
        for seed in args.seeds:
            for mode in modes:
                key = f"{name}/{seed}/{mode}"
                if key in payload["runs"]:
                    continue
                print(f"{key} ...", file=sys.stderr, flush=True)
                payload["runs"][key] = run_one(table, mode, seed, args.bootstrap)
                write_atomically(args.json, json.dumps(payload, indent=1) + "\n")
    generated = tables_text(payload["runs"])
    replace_block(DOCS / "ceiling.md", generated, BEGIN, END, SKELETON)
    print(generated)
    return 0


def tables_text(runs: dict[str, dict[str, Any]]) -> str:
    """Per table and estimate variant: routing and cascade-routing AUC, their difference per seed, and the mean.

    Parameters
    ----------
    runs : dict
        ``"table/seed/mode"`` → :func:`run_one`'s summary.

    Returns
    -------
    str
    """
    lines = ["AUC ×100 on the test split (protocol of `docs/peers.py`: 50 % train, 20 % calibration, 30 % test, "
             f"max_depth {MAX_DEPTH}). CR − R: cascade routing minus routing, per seed with its paired bootstrap "
             "95 % interval, then the mean over the seeds run.", "",
             "| table | estimates | seeds | routing | cascade routing | CR − R per seed [95 %] | mean CR − R |",
             "|---|---|---|---|---|---|---|"]
    for name in TABLES:
        for mode in MODES:
            found = sorted((int(key.split("/")[1]), run) for key, run in runs.items()
                           if key.split("/")[0] == name and key.split("/")[2] == mode)
            if not found:
                continue
            routing = np.mean([r["auc"]["routing"] for _, r in found])
            cascade = np.mean([r["auc"]["cascade_routing"] for _, r in found])
            per_seed = "; ".join(f"{s}: {d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]"
                                 for s, d in ((s, r["cascade_routing-routing"]) for s, r in found))
            mean = np.mean([r["cascade_routing-routing"][0] for _, r in found])
            lines.append(f"| {name} | {mode} | {','.join(str(s) for s, _ in found)} | {routing:.2f} | "
                         f"{cascade:.2f} | {per_seed} | {mean:+.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
