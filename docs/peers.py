"""Peer routers side by side: ``docs/peers.json`` and the tables of ``docs/peers.md``.

Whether the learned estimators are any good can only be said next to what
users would otherwise pick. This script runs every estimator family of
:data:`estimators.estimator.ESTIMATOR_KINDS` (ours and the peers: kNN,
per-task means, an MLP, matrix factorisation) through the same harness,
:func:`training.protocol.evaluate_strategies`, on every shared table and
seed: each estimator is trained on the same training split, its routing and
cascade-routing policies are fitted on the same calibration split and played
on the same test split, re-estimating after every model run.

Run from the repository root (the shared data lives in ``../shared/data``)::

    python docs/peers.py                                  # everything (~1 hour on 2 cores)
    python docs/peers.py --tables routerbench_subset --estimators learned,knn --seeds 0
    python docs/peers.py --resume                         # keep what docs/peers.json already holds
    python docs/peers.py --unlabelled --resume            # the same tables with task and subtask blanked

It writes, after every (table, estimator, seed), ``docs/peers.json`` (or
``--json``; so a killed run keeps what it measured and ``--resume`` carries
on), and at the
end the tables of ``docs/peers.md`` between the markers
``<!-- peers.py:begin -->`` and ``<!-- peers.py:end -->``; the prose around
them is written by hand and left untouched. Everything is seeded: a rerun
gives the same numbers (only the timings change).
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

from estimators.estimator import ESTIMATOR_KINDS
from training.data import read_table
from training.protocol import EvaluationReport, evaluate_strategies

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DATA = ROOT.parent / "shared" / "data"
TABLES = ("routerbench_subset", "llmrouter_9models", "routellm_gpt4_mixtral")
#: Suffix of a table read without its ``task`` and ``subtask`` columns (``--unlabelled``): users' traffic logs
#: rarely carry a clean task label, so the default must earn its place there too.
UNLABELLED = "-unlabelled"
SEEDS = (0, 1, 2)
#: The estimator ``python -m training.fit`` uses unless told otherwise.
DEFAULT_ESTIMATOR = "learned"
#: Most models cascade routing runs per query (routing runs one).
MAX_DEPTH = 3
STRATEGIES = ("routing", "cascade_routing")
#: What "at least the best of the peers" allows, in AUC ×100 averaged over the seeds.
TOLERANCE = 0.1
#: The protocol, recorded in the JSON: ``--resume`` reuses only entries measured with the same one. Half
#: the queries train the estimators; 20 % calibrate the policies (the protocol's 5 % suits the paper's
#: ~36k queries, not 3,150: a λ fitted on 158 queries lost up to 0.5 AUC to its own routing on test); the
#: remaining 30 % test.
PROTOCOL = {"max_depth": MAX_DEPTH, "strategies": list(STRATEGIES), "train_fraction": 0.5,
            "calibration_fraction": 0.2}

BEGIN, END = "<!-- peers.py:begin -->", "<!-- peers.py:end -->"
SKELETON = f"# Peer routers\n\n{BEGIN}\n{END}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate every (table, estimator, seed), then write the JSON and the tables.

    Returns
    -------
    int
        0 on success, 2 when a table is missing.
    """
    args = _parser().parse_args(argv)
    missing = [name for name in args.tables if not _table_path(args.data, name).is_file()]
    if missing:
        print(f"peers.py: error: no table {missing} under {args.data}", file=sys.stderr)
        return 2
    path = args.json
    payload = _load(path) if args.resume else None
    if payload is None or payload.get("protocol") != {**PROTOCOL, "n_boot": args.bootstrap}:
        payload = {"protocol": {**PROTOCOL, "n_boot": args.bootstrap}, "runs": {}}
    payload["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg())}
    for name in args.tables:
        table = read_table(_table_path(args.data, name))
        if args.unlabelled:
            table, name = table.without(["task", "subtask"]), name + UNLABELLED
        for kind in args.estimators:
            for seed in args.seeds:
                key = f"{name}/{kind}/{seed}"
                if key in payload["runs"]:
                    continue
                print(f"{key} ...", file=sys.stderr, flush=True)
                started, cpu_started, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
                report = evaluate_strategies(
                    table, estimator=kind, seed=seed, max_depth=MAX_DEPTH, strategies=STRATEGIES,
                    train_fraction=PROTOCOL["train_fraction"], calibration_fraction=PROTOCOL["calibration_fraction"],
                    n_boot=args.bootstrap, progress=False)
                payload["runs"][key] = {**_summary(report, time.perf_counter() - started),
                                        "cpu_seconds": time.process_time() - cpu_started, "load_average": load}
                write_atomically(path, json.dumps(payload, indent=1) + "\n")
    generated = tables_text(payload["runs"])
    replace_block(DOCS / "peers.md", generated, BEGIN, END, SKELETON)
    print(generated)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python docs/peers.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the shared tables (default: %(default)s)")
    parser.add_argument("--tables", type=_names(TABLES), default=list(TABLES),
                        help="comma-separated tables (default: all)")
    parser.add_argument("--estimators", type=_names(ESTIMATOR_KINDS), default=list(ESTIMATOR_KINDS),
                        help="comma-separated estimator kinds (default: all)")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=list(SEEDS),
                        help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--unlabelled", action="store_true",
                        help=f"read the tables without their task and subtask columns; runs are kept as "
                             f"'<table>{UNLABELLED}' (default: off)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs --json already holds for the same protocol (default: off)")
    parser.add_argument("--json", type=Path, default=DOCS / "peers.json",
                        help="where the runs are kept, after each one (default: %(default)s); runs kept in "
                             "several files (parallel jobs) are merged by copying their 'runs' into one and "
                             "rerunning with --resume")
    return parser


def _names(allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        names = [name for name in text.split(",") if name]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown or names}; choose from {list(allowed)}")
        return names
    return parse


def _table_path(folder: Path, name: str) -> Path:
    return folder / name / f"{name}.parquet"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _summary(report: EvaluationReport, seconds: float) -> dict[str, Any]:
    """What the tables need of one report, plus its curves for whoever wants to look closer."""
    difference = report.differences["cascade_routing-routing"]
    return {
        "auc": {name: report.auc[name] for name in ("linear", *report.strategies)},
        "auc_ci": {name: list(report.auc_ci[name]) for name in report.strategies},
        "cascade_routing-routing": list(difference),
        "estimate_scores": report.estimate_scores,
        "n_calibration": report.n_calibration,
        "n_test": report.n_test,
        "curves": report.curves,
        "seconds": seconds,
    }


# --------------------------------------------------------------------------- #
# tables
# --------------------------------------------------------------------------- #


def tables_text(runs: dict[str, dict[str, Any]]) -> str:
    """The generated part of peers.md: mean AUCs, the verdict, per-seed intervals and estimate scores.

    Parameters
    ----------
    runs : dict
        ``"table/estimator/seed"`` → :func:`_summary`.

    Returns
    -------
    str
        Markdown.
    """
    tables = [t for name in TABLES for t in (name, name + UNLABELLED) if any(key.startswith(f"{t}/") for key in runs)]
    kinds = [k for k in ESTIMATOR_KINDS if any(f"/{k}/" in key for key in runs)]
    mean = {(t, k): _mean_over_seeds(runs, t, k) for t in tables for k in kinds}
    parts = [
        "_Generated by `python docs/peers.py`; do not edit by hand._",
        "",
        f"Protocol: `training.protocol.evaluate_strategies`, train fraction {PROTOCOL['train_fraction']}, "
        f"calibration fraction {PROTOCOL['calibration_fraction']}, the rest test; `max_depth` {MAX_DEPTH} for "
        "cascade routing; σ transform chosen per budget on calibration; AUC ×100 over the test single models' "
        f"cost range. Default estimator: `{DEFAULT_ESTIMATOR}`. `<table>{UNLABELLED}`: the same table read without "
        "its `task` and `subtask` columns (`--unlabelled`).",
        "",
        "### AUC ×100, mean over the seeds: routing / cascade routing (cascade routing − routing)",
        "",
        "| estimator | " + " | ".join(tables) + " |",
        "|---|" + "---|" * len(tables),
    ]
    for kind in kinds:
        cells = []
        for t in tables:
            m = mean[t, kind]
            cells.append("—" if m is None else
                         f"{m['routing']:.2f} / {_bold(m['cascade_routing'], t, mean)} "
                         f"({m['cascade_routing'] - m['routing']:+.2f})")
        rows_label = f"**{kind}**" if kind == DEFAULT_ESTIMATOR else kind
        parts.append(f"| {rows_label} | " + " | ".join(cells) + " |")
    parts += ["", "### Verdict: the default's cascade-routing AUC against every peer's, on the seeds both ran", "",
              "Each peer is compared on the seeds where both it and the default ran (the mean over seeds 0–2 "
              "when everything ran); the row names the peer closest to the default (or furthest above it).", "",
              "| table | default (its seeds) | closest peer | default − peer, common seeds | within "
              f"{TOLERANCE} | not run |",
              "|---|---:|---|---:|---|---|"]
    for t in tables:
        missing = [f"{k} {','.join(str(s) for s in SEEDS if f'{t}/{k}/{s}' not in runs)}" for k in ESTIMATOR_KINDS
                   if any(f"{t}/{k}/{s}" not in runs for s in SEEDS)]
        ours_seeds = _seeds(runs, t, DEFAULT_ESTIMATOR)
        gaps = {}
        for k in kinds:
            common = sorted(set(ours_seeds) & set(_seeds(runs, t, k)))
            if k != DEFAULT_ESTIMATOR and common:
                gaps[k] = (float(np.mean([runs[f"{t}/{DEFAULT_ESTIMATOR}/{s}"]["auc"]["cascade_routing"]
                                          - runs[f"{t}/{k}/{s}"]["auc"]["cascade_routing"] for s in common])),
                           common)
        ours = mean.get((t, DEFAULT_ESTIMATOR))
        cells = f"{ours['cascade_routing']:.2f} ({_seed_list(ours_seeds)})" if ours else "—"
        if gaps:
            closest = min(gaps, key=lambda k: gaps[k][0])
            gap, common = gaps[closest]
            verdict = f"{closest} | {gap:+.2f} ({_seed_list(common)}) | {'yes' if gap >= -TOLERANCE else '**no**'}"
        else:
            verdict = "— | — | —"
        parts.append(f"| {t} | {cells} | {verdict} | {'; '.join(missing) or 'nothing'} |")
    parts += ["", "### Per seed: AUC ×100 [95 % bootstrap interval] and the paired difference", "",
              "| table | estimator | seed | routing | cascade routing | cascade routing − routing |",
              "|---|---|---:|---|---|---|"]
    for t in tables:
        for kind in kinds:
            for key in sorted(k for k in runs if k.startswith(f"{t}/{kind}/")):
                run = runs[key]
                d, lo, hi = run["cascade_routing-routing"]
                parts.append(f"| {t} | {kind} | {key.rsplit('/', 1)[1]} | {_with_ci(run, 'routing')} | "
                             f"{_with_ci(run, 'cascade_routing')} | {d:+.2f} [{lo:+.2f}, {hi:+.2f}] |")
    parts += ["", "### Estimates on the test split, mean over seeds: Brier score / AUROC",
              "", "Ex-ante: every (query, model) before any model ran. Post-hoc: the models of a random run "
              "set of three per query (both models on routellm), the estimates an answer is selected on.", "",
              "| estimator | " + " | ".join(f"{t} ex-ante | {t} post-hoc" for t in tables) + " |",
              "|---|" + "---|" * (2 * len(tables))]
    for kind in kinds:
        cells = []
        for t in tables:
            m = mean[t, kind]
            for when in ("ex_ante", "post_hoc"):
                cells.append("—" if m is None else f"{m[when]['brier']:.4f} / {m[when]['auroc']:.3f}")
        parts.append(f"| {kind} | " + " | ".join(cells) + " |")
    seconds = sum(run["seconds"] for run in runs.values())
    timed = [run for run in runs.values() if "cpu_seconds" in run]
    parts += ["", f"{len(runs)} runs, {seconds / 60:.0f} minutes in all (wall)."
              + (f" The {len(timed)} runs that recorded it: {sum(r['seconds'] for r in timed) / 60:.0f} minutes "
                 f"wall, {sum(r['cpu_seconds'] for r in timed) / 60:.1f} CPU-minutes, 1-minute load average at their "
                 f"start {min(r['load_average'] for r in timed):.1f}–{max(r['load_average'] for r in timed):.1f} "
                 f"on {os.cpu_count()} cores." if timed else "")]
    return "\n".join(parts)


def _mean_over_seeds(runs: dict[str, dict[str, Any]], table: str, kind: str) -> dict[str, Any] | None:
    chosen = [run for key, run in runs.items() if key.startswith(f"{table}/{kind}/")]
    if not chosen:
        return None
    mean = {name: float(np.mean([run["auc"][name] for run in chosen])) for name in ("routing", "cascade_routing")}
    for when in ("ex_ante", "post_hoc"):
        mean[when] = {metric: float(np.mean([run["estimate_scores"][when][metric] for run in chosen]))
                      for metric in ("brier", "auroc")}
    return mean


def _seeds(runs: dict[str, dict[str, Any]], table: str, kind: str) -> list[int]:
    return sorted(int(key.rsplit("/", 1)[1]) for key in runs if key.startswith(f"{table}/{kind}/"))


def _seed_list(seeds: Sequence[int]) -> str:
    return "seed " + ", ".join(str(s) for s in seeds) if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))


def _bold(value: float, table: str, mean: dict) -> str:
    best = max(m["cascade_routing"] for (t, _), m in mean.items() if t == table and m is not None)
    return f"**{value:.2f}**" if value == best else f"{value:.2f}"


def _with_ci(run: dict[str, Any], name: str) -> str:
    low, high = run["auc_ci"][name]
    return f"{run['auc'][name]:.2f} [{low:.2f}, {high:.2f}]"


if __name__ == "__main__":
    sys.exit(main())
