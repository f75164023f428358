"""Measure what partial logs cost the router: ``docs/partial_logs.json`` and the table of ``docs/partial_logs.md``.

Production logs rarely hold every (query, model) pair: a cascade stops at
the first good answer, a model added last week was called on a few queries
only, some calls were sampled away. This script hides rows of the RouterBench
table in such patterns, fits a router on each variant with
``python -m training.fit`` and compares the cascade-routing test AUCs.

Run from the repository root (the shared data lives in ``../shared/data``)::

    python docs/partial_logs.py                          # every variant
    python docs/partial_logs.py --variants full,pool10   # fully logged variants only

Variants (rows are hidden only in train and calibration queries; the test
queries keep all their rows; every table carries fit's seeded split of the
full table in its ``split`` column and is fitted with ``--split-column``, so
every variant is trained, calibrated and scored on the same queries):

* ``full``: every row;
* ``full_pooled``: every row, with the estimator partial logs get (one
  LightGBM for all models, ``--estimator pooled``), to tell what the logs
  cost from what the estimator changes;
* ``mar50``: each row dropped independently with probability 0.5;
* ``cascade``: models logged cheapest first until one has quality 1 or four
  were logged;
* ``new_model``: ``gpt-4-1106-preview`` logged on a random 10 % of the
  queries only;
* ``pool10``: the full table, fitted without ``gpt-4-1106-preview``
  (``--models``);
* ``full4``: the full table on the four cheapest models, the cascade's
  pool: the cascade's logs hold nothing of the other seven, so ``cascade``
  is fitted on these four too and compared with ``full4``;
* ``cascade_explore``: the cascade's logs plus every model on a random 10 %
  of the queries (an exploration slice);
* ``cascade_ipw``: the same with a ``propensity`` column (1 where the
  cascade logs the row, 0.1 where only exploration does), so that the
  estimators weight the explored rows by 1 / 0.1;
* ``cascade_ipw_calibrated``: the same, with policies calibrated on the
  fully logged calibration queries (``--min-fully-logged 100``) instead of
  the direct method.

Every fit gets the same ``--budget`` values (25, 50 and 75 % of the log cost
range of the full table's calibration single models), and every AUC is taken
over one range, that of the full table's test single models, so that the
variants compare. Variant tables go to a temporary directory (or
``--work-dir``), never into the repository. It writes

* ``docs/partial_logs.json``: per variant the AUCs, the share of cells
  logged, the fit's seconds, calibration and coverage information as the fit
  reports them, and the command line;
* the table of ``docs/partial_logs.md`` between the markers
  ``<!-- partial_logs.py:begin -->`` and ``<!-- partial_logs.py:end -->``
  (the prose around them is left untouched);

and prints the table. Everything is seeded: a rerun gives the same numbers
(only the timings change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from generated import replace_block, write_atomically
from numpy.typing import NDArray

from estimators.table import RoutingTable
from training.data import read_table
from training.fit import default_budgets, split
from training.metrics import auc, auc_bounds

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DATA = ROOT.parent / "shared" / "data" / "routerbench_subset" / "routerbench_subset.parquet"
#: fit's default split, repeated here to know which queries are test queries.
FRACTIONS = (0.5, 0.25, 0.25)
STRATEGY = "cascade_routing"
NEW_MODEL = "gpt-4-1106-preview"
MAR_DROP = 0.5
CASCADE_DEPTH = 4
#: Share of train+calibration queries on which every model is logged (an exploration slice).
EXPLORE_SHARE = 0.1
NEW_MODEL_SHARE = 0.1
#: Largest AUC loss against ``full`` that still meets a variant's target.
TOLERANCE = {"mar50": 1.0, "new_model": 1.5}

BEGIN, END = "<!-- partial_logs.py:begin -->", "<!-- partial_logs.py:end -->"
SKELETON = ("# Routing from partial logs\n\n"
            "Run `python docs/partial_logs.py` from the repository root to regenerate the table below "
            "and `docs/partial_logs.json`.\n\n"
            f"{BEGIN}\n{END}\n")

#: A hiding rule: (full table, train+calibration query indices, generator) -> logged cells, shape (N, K).
Hiding = Callable[[RoutingTable, NDArray[np.int_], np.random.Generator], NDArray[np.bool_]]


class FitError(RuntimeError):
    """A ``training.fit`` subprocess failed; the message names the variant and quotes its stderr."""


# --------------------------------------------------------------------------- #
# hiding rules
# --------------------------------------------------------------------------- #


def log_all(table: RoutingTable, hidden: NDArray[np.int_], rng: np.random.Generator) -> NDArray[np.bool_]:
    """Every cell logged (``full`` and ``pool10``).

    Parameters
    ----------
    table : RoutingTable
        The full table.
    hidden : ndarray of int
        Queries (indices into ``table``) whose rows may be hidden; unused.
    rng : numpy.random.Generator
        Unused.

    Returns
    -------
    ndarray of bool, shape (N, K)
        All ``True``.
    """
    return np.ones((table.n_queries, table.n_models), dtype=bool)


def missing_at_random(table: RoutingTable, hidden: NDArray[np.int_],
                      rng: np.random.Generator) -> NDArray[np.bool_]:
    """Drop each cell of the ``hidden`` queries with probability :data:`MAR_DROP` (``mar50``).

    A query that would lose every row keeps one, drawn at random.

    Parameters
    ----------
    table : RoutingTable
        The full table.
    hidden : ndarray of int
        Queries whose rows may be dropped (train and calibration).
    rng : numpy.random.Generator
        Source of the drops.

    Returns
    -------
    ndarray of bool, shape (N, K)
        ``True`` where the (query, model) row is kept.
    """
    logged = log_all(table, hidden, rng)
    kept = rng.random((len(hidden), table.n_models)) >= MAR_DROP
    empty = np.flatnonzero(~kept.any(axis=1))
    kept[empty, rng.integers(table.n_models, size=len(empty))] = True
    logged[hidden] = kept
    return logged


def cascade_logs(table: RoutingTable, hidden: NDArray[np.int_], rng: np.random.Generator) -> NDArray[np.bool_]:
    """Log what a cheapest-first cascade would have called (``cascade``).

    Models are called in ``table.models`` order (cheapest first) until one
    has quality 1 (its row is logged) or :data:`CASCADE_DEPTH` were called.

    Parameters
    ----------
    table : RoutingTable
        The full table, models sorted by mean cost.
    hidden : ndarray of int
        Queries whose rows may be dropped (train and calibration).
    rng : numpy.random.Generator
        Unused: the rule is deterministic.

    Returns
    -------
    ndarray of bool, shape (N, K)
        ``True`` where the (query, model) row is kept.
    """
    logged = log_all(table, hidden, rng)
    solved = table.quality[hidden] == 1
    first = np.where(solved.any(axis=1), solved.argmax(axis=1), table.n_models)
    depth = np.minimum(first + 1, CASCADE_DEPTH)
    logged[hidden] = np.arange(table.n_models) < depth[:, None]
    return logged


def cascade_reached(table: RoutingTable, hidden: NDArray[np.int_]) -> NDArray[np.bool_]:
    """The cells the cascade of :func:`cascade_logs` logs (every cell of the test queries)."""
    return cascade_logs(table, hidden, np.random.default_rng(0))


def explored_cascade_logs(table: RoutingTable, hidden: NDArray[np.int_],
                          rng: np.random.Generator) -> NDArray[np.bool_]:
    """The cascade's logs plus every model on a random :data:`EXPLORE_SHARE` of the ``hidden`` queries.

    Parameters
    ----------
    table : RoutingTable
        The full table, models sorted by mean cost.
    hidden : ndarray of int
        Queries whose rows may be dropped (train and calibration).
    rng : numpy.random.Generator
        Source of the explored queries.

    Returns
    -------
    ndarray of bool, shape (N, K)
        ``True`` where the (query, model) row is kept.
    """
    logged = cascade_reached(table, hidden)
    logged[rng.choice(hidden, size=round(EXPLORE_SHARE * len(hidden)), replace=False)] = True
    return logged


def cascade_propensity(table: RoutingTable, hidden: NDArray[np.int_]) -> NDArray[np.float64]:
    """Probability that the explored cascade logs each cell.

    1 where the cascade reaches it, else the exploration share.
    """
    return np.where(cascade_reached(table, hidden), 1.0, EXPLORE_SHARE)


def new_model_logs(table: RoutingTable, hidden: NDArray[np.int_], rng: np.random.Generator) -> NDArray[np.bool_]:
    """Log :data:`NEW_MODEL` on a random :data:`NEW_MODEL_SHARE` of the ``hidden`` queries only (``new_model``).

    Parameters
    ----------
    table : RoutingTable
        The full table; it must contain :data:`NEW_MODEL`.
    hidden : ndarray of int
        Queries whose :data:`NEW_MODEL` rows may be dropped (train and calibration).
    rng : numpy.random.Generator
        Source of the queries that keep the row.

    Returns
    -------
    ndarray of bool, shape (N, K)
        ``True`` where the (query, model) row is kept.
    """
    logged = log_all(table, hidden, rng)
    column = table.models.index(NEW_MODEL)
    keep = rng.choice(hidden, size=round(NEW_MODEL_SHARE * len(hidden)), replace=False)
    logged[np.setdiff1d(hidden, keep), column] = False
    return logged


# --------------------------------------------------------------------------- #
# variants
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Variant:
    """One way of logging the benchmark, and what its AUC should reach.

    Attributes
    ----------
    name : str
        Name on the command line and in the outputs.
    hiding : str
        What is hidden, for the table.
    rule : Hiding
        The cells kept.
    target : str
        The target, for the table.
    pool : callable or None
        ``pool(models)``: the models the fit uses (``--models``), from the
        full table's models (cheapest first); ``None`` for all.
    reference : str
        The variant whose AUC this one is compared with (same pool).
    propensity : callable or None
        ``propensity(table, hidden)``: the probability of each cell being
        logged, written as the ``propensity`` column; ``None`` for none.
    fit_args : tuple of str
        Extra ``training.fit`` arguments.
    """

    name: str
    hiding: str
    rule: Hiding
    target: str
    pool: Callable[[tuple[str, ...]], list[str]] | None = None
    reference: str = "full"
    propensity: Callable[[RoutingTable, NDArray[np.int_]], NDArray[np.float64]] | None = None
    fit_args: tuple[str, ...] = ()

    def models(self, table: RoutingTable) -> list[str]:
        """The models this variant's fit uses."""
        return list(table.models) if self.pool is None else self.pool(table.models)


def _without_new_model(models: tuple[str, ...]) -> list[str]:
    return [m for m in models if m != NEW_MODEL]


def _cascade_pool(models: tuple[str, ...]) -> list[str]:
    return list(models[:CASCADE_DEPTH])


VARIANTS = {variant.name: variant for variant in (
    Variant("full", "none", log_all, "reference"),
    Variant("full_pooled", "none; one LightGBM for all models (`--estimator pooled`, what partial logs get)",
            log_all, "reference", fit_args=("--estimator", "pooled")),
    Variant("mar50", f"each row dropped with p = {MAR_DROP}", missing_at_random,
            f"≥ full − {TOLERANCE['mar50']}"),
    Variant("cascade", f"cheapest first until quality 1 or {CASCADE_DEPTH} models (fitted on those {CASCADE_DEPTH})",
            cascade_logs, "report", pool=_cascade_pool, reference="full4"),
    Variant("new_model", f"{NEW_MODEL} on {NEW_MODEL_SHARE:.0%} of the queries", new_model_logs,
            f"≥ full − {TOLERANCE['new_model']} and ≥ pool10"),
    Variant("pool10", f"{NEW_MODEL} left out (`--models`, test too)", log_all, "reference", pool=_without_new_model),
    Variant("full4", f"none; the {CASCADE_DEPTH} cheapest models only (`--models`)", log_all, "reference for cascade",
            pool=_cascade_pool),
    Variant("cascade_explore", f"cascade + every model on {EXPLORE_SHARE:.0%} of the queries", explored_cascade_logs,
            "report", pool=_cascade_pool, reference="full4"),
    Variant("cascade_ipw", "cascade_explore with a propensity column (inverse-propensity weights)",
            explored_cascade_logs, "report", pool=_cascade_pool, reference="full4", propensity=cascade_propensity),
    Variant("cascade_ipw_calibrated", "cascade_ipw, policies calibrated on the fully logged queries "
            "(`--min-fully-logged 100`)", explored_cascade_logs, "report", pool=_cascade_pool, reference="full4",
            propensity=cascade_propensity, fit_args=("--min-fully-logged", "100")),
)}


def logged_cells(variant: Variant, table: RoutingTable, hidden: NDArray[np.int_], seed: int) -> NDArray[np.bool_]:
    """Apply a variant's rule with its own generator, and check that fit will see the same queries and split.

    Parameters
    ----------
    variant : Variant
        The variant.
    table : RoutingTable
        The full table.
    hidden : ndarray of int
        Train and calibration queries.
    seed : int
        The run's seed; each hiding rule draws from ``(seed, the CRC32 of its name)``, so that
        variants sharing a rule (the explored cascades) hide the same rows.

    Returns
    -------
    ndarray of bool, shape (N, K)
        ``True`` where the (query, model) row is kept.

    Raises
    ------
    RuntimeError
        If a query lost every row or a test query lost one (a bug in a rule).
    """
    rng = np.random.default_rng((seed, zlib.crc32(variant.rule.__name__.encode())))
    logged = variant.rule(table, hidden, rng)
    test = np.setdiff1d(np.arange(table.n_queries), hidden)
    if not logged.any(axis=1).all() or not logged[test].all():
        raise RuntimeError(f"variant {variant.name} hides every row of a query or a row of a test query")
    return logged


def logged_rows(frame: pd.DataFrame, table: RoutingTable, logged: NDArray[np.bool_],
                propensity: NDArray[np.float64] | None = None) -> pd.DataFrame:
    """The rows of the raw long table whose (query, model) cell is logged.

    Parameters
    ----------
    frame : pandas.DataFrame
        The raw long table, one row per (query_id, model).
    table : RoutingTable
        The same data as read by :func:`training.data.read_table`.
    logged : ndarray of bool, shape (N, K)
        Cells kept, in ``table`` order.
    propensity : ndarray of float, shape (N, K), optional
        Written as a ``propensity`` column when given.

    Returns
    -------
    pandas.DataFrame
        The kept rows of ``frame``, in their original order.
    """
    query = pd.Index(table.query_ids).get_indexer(frame["query_id"].astype(str))
    model = pd.Index(table.models).get_indexer(frame["model"].astype(str))
    if propensity is not None:
        frame = frame.assign(propensity=propensity[query, model])
    return frame[logged[query, model]]


def with_split_column(frame: pd.DataFrame, table: RoutingTable, parts: Sequence[NDArray[np.int_]]) -> pd.DataFrame:
    """``frame`` with its ``split`` column set to each query's part (train, calibration, test) of ``parts``."""
    labels = np.empty(table.n_queries, dtype=object)
    for name, part in zip(("train", "calibration", "test"), parts, strict=True):
        labels[part] = name
    return frame.assign(split=labels[pd.Index(table.query_ids).get_indexer(frame["query_id"].astype(str))])


def fit_command(variant: Variant, data: Path, folder: Path, table: RoutingTable, budgets: Sequence[float],
                seed: int) -> list[str]:
    """The ``python -m training.fit`` command line of one variant."""
    command = [sys.executable, "-m", "training.fit", "--data", str(data), "--seed", str(seed),
               "--budget", *map(repr, budgets), "--out", str(folder / "router.joblib"),
               "--report", str(folder), "--quiet", "--split-column"]
    if variant.pool is not None:
        command += ["--models", ",".join(variant.models(table))]
    command += variant.fit_args
    return command


def run_fit(name: str, command: list[str]) -> tuple[dict[str, Any], float]:
    """Run one fit and read its ``report.json``.

    Parameters
    ----------
    name : str
        The variant, for messages.
    command : list of str
        As built by :func:`fit_command`.

    Returns
    -------
    report : dict
        The fit's report.
    seconds : float
        Wall time of the subprocess.

    Raises
    ------
    FitError
        If the fit exits non-zero; the message quotes its stderr.
    """
    print(f"{name}: {shlex.join(command)}", file=sys.stderr)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise FitError(f"training.fit failed on variant {name} (exit {done.returncode}):\n{done.stderr.rstrip()}")
    print(f"{name}: {seconds:.0f} s", file=sys.stderr)
    report_path = Path(command[command.index("--report") + 1]) / "report.json"
    return json.loads(report_path.read_text(encoding="utf-8")), seconds


def measure(variant: Variant, logged: NDArray[np.bool_], table: RoutingTable, hidden: NDArray[np.int_],
            report: dict[str, Any], bounds: tuple[float, float, float]) -> dict[str, Any]:
    """One variant's entry of ``partial_logs.json`` (without the comparisons with other variants).

    Parameters
    ----------
    variant : Variant
        The variant.
    logged : ndarray of bool, shape (N, K)
        Cells written to the variant's table.
    table : RoutingTable
        The full table.
    hidden : ndarray of int
        Train and calibration queries.
    report : dict
        The variant's ``report.json``.
    bounds : (float, float, float)
        The common AUC range and left anchor (:func:`training.metrics.auc_bounds` of ``full``).

    Returns
    -------
    dict
        Hiding, logged shares (of the 11-model train+calibration grid, counting
        only the models the fit uses), both AUCs, seconds, calibration and coverage.
    """
    used = np.isin(table.models, variant.models(table))
    cells = logged[hidden] & used
    lo, hi, left = bounds
    curve = report["curve"]
    return {
        "hiding": variant.hiding,
        "models": report["models"],
        "rows_written": int(logged.sum()),
        "logged_share": float(cells.mean()),
        "logged_share_by_model": dict(zip(table.models, cells.mean(axis=0).tolist(), strict=True)),
        "auc_common_range": auc([r["test_cost"] for r in curve], [r["test_quality"] for r in curve],
                                lo, hi, left_quality=left),
        "auc_reported": report["auc"][STRATEGY],
        "n_train": report["n_train"], "n_calibration": report["n_calibration"], "n_test": report["n_test"],
        "fit_seconds": report["seconds"],
        "calibration": report.get("calibration"),
        "coverage": report.get("coverage"),
    }


def compare(results: dict[str, dict[str, Any]]) -> None:
    """Add to each result its AUC difference with its reference (same pool) and whether its target is met."""
    full = results["full"]["auc_common_range"]
    for name, result in results.items():
        value = result["auc_common_range"]
        reference = VARIANTS[name].reference
        result["reference"] = reference
        result["auc_vs_reference"] = value - results[reference]["auc_common_range"]
        met = None
        if name in TOLERANCE:
            met = value >= full - TOLERANCE[name]
        if name == "new_model":
            met = met and value >= results["pool10"]["auc_common_range"]
        result["target"] = VARIANTS[name].target
        result["met"] = met


# --------------------------------------------------------------------------- #
# outputs
# --------------------------------------------------------------------------- #


def table_text(results: dict[str, dict[str, Any]], payload: dict[str, Any]) -> str:
    """The generated part of ``partial_logs.md``: a line on the setting, then one row per variant."""
    lo, hi = payload["auc_range"]["lo"], payload["auc_range"]["hi"]
    split_sizes = payload["split"]
    rows = [
        f"_Generated by `{payload['command']}`; do not edit by hand._",
        "",
        f"Data: `{payload['data']}`, {payload['n_queries']:,} queries × {len(payload['models'])} models; "
        f"seed {payload['seed']}: {split_sizes['train']} train / {split_sizes['calibration']} calibration / "
        f"{split_sizes['test']} test queries (test queries fully logged in every variant). "
        f"Budgets {', '.join(f'{b:.3g}' for b in payload['budgets'])} USD per query for every fit; "
        f"{STRATEGY} test AUC ×100 over the full table's test single-model range [{lo:.3g}, {hi:.3g}].",
        "",
        "| logs | hiding | train+calibration cells logged | calibration | cascade-routing test AUC "
        "| vs reference | target | met |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]
    for name, r in results.items():
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        rows.append(f"| {name} | {r['hiding']} | {r['logged_share']:.1%} | {_calibration_cell(r['calibration'])} "
                    f"| {r['auc_common_range']:.2f} | {r['auc_vs_reference']:+.2f} ({r['reference']}) "
                    f"| {r['target']} | {met} |")
    seconds = ", ".join(f"{name} {r['fit_seconds']:.0f} s" for name, r in results.items())
    rows += ["", f"Fit seconds: {seconds} ({payload['machine']['cpus']} CPUs, load average at start "
                 f"{payload['machine']['load_average_at_start'][0]:.1f})."]
    return "\n".join(rows)


def _calibration_cell(calibration: object) -> str:
    """The calibration method if the report names one, else a dash."""
    if isinstance(calibration, dict) and "method" in calibration:
        return str(calibration["method"])
    if isinstance(calibration, str):
        return calibration
    return "—" if calibration is None else "see json"


def write_table(path: Path, generated: str) -> None:
    """Replace the generated block of ``path``, creating the file from :data:`SKELETON` if needed."""
    replace_block(path, generated, BEGIN, END, SKELETON)


# --------------------------------------------------------------------------- #
# command line
# --------------------------------------------------------------------------- #


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``--variants`` must name ``full``, and ``pool10`` with ``new_model``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    argparse.Namespace
        ``data``, ``seed``, ``variants`` (list of str, in :data:`VARIANTS` order) and ``work_dir``.
    """
    parser = argparse.ArgumentParser(prog="python docs/partial_logs.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="the long-format routerbench_subset.parquet")
    parser.add_argument("--seed", type=int, default=0, help="seed of fit's split and of the hiding rules")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated variants to fit; full is always needed (the reference), "
                             "and new_model needs pool10")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the variant tables, artifacts and reports here; default: a temporary "
                             "directory removed at the end")
    args = parser.parse_args(argv)
    chosen = {name.strip() for name in args.variants.split(",") if name.strip()}
    if unknown := chosen - set(VARIANTS):
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {list(VARIANTS)}")
    if "full" not in chosen:
        parser.error("--variants must include full: every AUC is compared with it")
    if "new_model" in chosen and "pool10" not in chosen:
        parser.error("--variants: new_model needs pool10 (its target is to beat it)")
    if missing := sorted({VARIANTS[name].reference for name in chosen} - chosen):
        parser.error(f"--variants: {', '.join(missing)} needed as the reference of a chosen variant")
    args.variants = [name for name in VARIANTS if name in chosen]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Build the variants, fit each, compare the AUCs and write the JSON and the table.

    Returns
    -------
    int
        0 on success; 1 if a fit failed (its stderr is printed); 2 if ``--data`` does not exist.
    """
    args = parse_args(argv)
    if not args.data.is_file():
        print(f"partial_logs.py: error: no table at {args.data}", file=sys.stderr)
        return 2
    load_average = list(os.getloadavg())
    table = read_table(args.data)
    train, calibration, test = split(table.n_queries, FRACTIONS, args.seed)
    frame = with_split_column(pd.read_parquet(args.data), table, (train, calibration, test))
    hidden = np.union1d(train, calibration)
    budgets = default_budgets(table.cost[calibration].mean(axis=0))
    results: dict[str, dict[str, Any]] = {}
    bounds = None
    work_dir = (contextlib.nullcontext(args.work_dir) if args.work_dir
                else tempfile.TemporaryDirectory(prefix="partial_logs_"))
    with work_dir as work:
        work = Path(work).resolve()
        work.mkdir(parents=True, exist_ok=True)
        for name in args.variants:
            variant = VARIANTS[name]
            logged = logged_cells(variant, table, hidden, args.seed)
            data = work / f"{name}.parquet"
            propensity = None if variant.propensity is None else variant.propensity(table, hidden)
            logged_rows(frame, table, logged, propensity).to_parquet(data)
            command = fit_command(variant, data, work / name, table, budgets, args.seed)
            try:
                report, wall = run_fit(name, command)
            except FitError as error:
                print(f"partial_logs.py: error: {error}", file=sys.stderr)
                return 1
            if bounds is None:  # full comes first: its test single models set the common range
                single = report["single_models"]
                bounds = auc_bounds([s["cost"] for s in single], [s["quality"] for s in single])
            results[name] = {**measure(variant, logged, table, hidden, report, bounds), "wall_seconds": wall,
                             "command": shlex.join(["python", *command[1:]])}
    compare(results)
    payload = {
        "command": shlex.join(["python", "docs/partial_logs.py", *(sys.argv[1:] if argv is None else argv)]),
        "data": _shown(args.data),
        "seed": args.seed,
        "n_queries": table.n_queries,
        "models": list(table.models),
        "split": {"train": len(train), "calibration": len(calibration), "test": len(test)},
        "budgets": budgets,
        "auc_range": dict(zip(("lo", "hi", "left_quality"), bounds, strict=True)),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load_average},
        "variants": results,
    }
    write_atomically(DOCS / "partial_logs.json", json.dumps(payload, indent=1) + "\n")
    generated = table_text(results, payload)
    write_table(DOCS / "partial_logs.md", generated)
    print(generated)
    for name, result in results.items():
        for key in ("calibration", "coverage"):
            if result[key] is not None:
                print(f"{name} {key}: {json.dumps(result[key])}")
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the repository's parent when it lies there (as the README quotes data paths)."""
    path = path.resolve()
    return str(Path("..") / path.relative_to(ROOT.parent)) if path.is_relative_to(ROOT.parent) else str(path)


if __name__ == "__main__":
    sys.exit(main())
