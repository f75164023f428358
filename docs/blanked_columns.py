"""Which label column the unlabelled default misses: the protocol of ``docs/peers.py`` with one column blanked.

``docs/peers.py --unlabelled`` blanks ``task`` and ``subtask`` together. On
llmrouter_9models the ``subtask`` is the metric (``em_mc``, ``f1_score``,
``GSM8K``…), which no prompt states, while the ``task`` (the benchmark) is
partly visible in the prompt's format. Blanking one at a time splits the
labelled-vs-unlabelled gap between them: the default estimator with only
``subtask`` blanked (the task kept) and with only ``task`` blanked (the
metric kept), cascade routing AUC ×100 on the same splits as the peer table.

Run from the repository root::

    python docs/blanked_columns.py --table llmrouter_9models --blank subtask --seeds 0,1,2
    python docs/blanked_columns.py --table llmrouter_9models --blank task --seeds 0,1,2

Runs are kept in ``docs/blanked_columns.json`` (``--json``) after each one,
under ``<table>/without-<columns>/<seed>``, in the format of
``docs/peers.json``; a run already there is not repeated. The figures are
quoted, with the peer table's, in ``docs/peers.md`` ("Without task
labels"). Seeded: a rerun gives the same numbers, only the timings change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from generated import write_atomically
from peers import DATA, DEFAULT_ESTIMATOR, DOCS, MAX_DEPTH, PROTOCOL, SEEDS, STRATEGIES, TABLES, _summary, _table_path

from training.data import read_table
from training.protocol import evaluate_strategies


def main(argv: Sequence[str] | None = None) -> int:
    """Run the default estimator on one table with the given columns blanked, per seed; print the AUCs."""
    parser = argparse.ArgumentParser(prog="python docs/blanked_columns.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", choices=TABLES, required=True)
    parser.add_argument("--blank", required=True, help="comma-separated columns read as absent (task, subtask)")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=list(SEEDS))
    parser.add_argument("--json", type=Path, default=DOCS / "blanked_columns.json")
    args = parser.parse_args(argv)
    blank = sorted(name for name in args.blank.split(",") if name)
    payload = json.loads(args.json.read_text(encoding="utf-8")) if args.json.is_file() else {
        "protocol": {**PROTOCOL, "estimator": DEFAULT_ESTIMATOR, "n_boot": 200}, "runs": {}}
    table = read_table(_table_path(DATA, args.table)).without(blank)
    for seed in args.seeds:
        key = f"{args.table}/without-{'-'.join(blank)}/{seed}"
        if key not in payload["runs"]:
            print(f"{key} ...", file=sys.stderr, flush=True)
            started, cpu_started, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
            report = evaluate_strategies(
                table, estimator=DEFAULT_ESTIMATOR, seed=seed, max_depth=MAX_DEPTH, strategies=STRATEGIES,
                train_fraction=PROTOCOL["train_fraction"], calibration_fraction=PROTOCOL["calibration_fraction"],
                n_boot=payload["protocol"]["n_boot"], progress=False)
            payload["runs"][key] = {**_summary(report, time.perf_counter() - started),
                                    "cpu_seconds": time.process_time() - cpu_started, "load_average": load}
            write_atomically(args.json, json.dumps(payload, indent=1) + "\n")
        run = payload["runs"][key]
        print(f"{key}: routing {run['auc']['routing']:.2f}, cascade routing {run['auc']['cascade_routing']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
