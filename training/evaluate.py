"""Command line for the paper's evaluation protocol (ALGORITHM.md §6).

Run ``python -m training.evaluate --data TABLE [options]``: it loads a
benchmark table, calls :func:`training.protocol.evaluate_strategies` and
prints each strategy's AUC with its bootstrap interval; ``--json`` and
``--plot`` also write the full report and the quality-cost curves.

Exit codes: 0 on success; 2 on bad input (a bad argument, missing or
malformed data), with a one-line ``error:`` on stderr; 1 when an output file
cannot be written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from estimators.estimator import ESTIMATOR_KINDS
from estimators.simulated import NOISE_LEVELS

from .cli import (CANNOT_WRITE, OutputError, check_writable, fail, ignored_columns, logs_summary, non_negative_int,
                  parse_or_exit_code, positive_int, quality_range, refuse_inputs_as_outputs, writing)
from .data import read_table
from .episodes import MIN_FULLY_LOGGED
from .files import write_atomically
from .protocol import DEFAULT_STRATEGIES, EvaluationReport, evaluate_strategies

__all__ = ["EXIT_CODES", "build_parser", "format_report", "main"]

_PROGRAM = "python -m training.evaluate"
#: Exit codes of :func:`main`, listed in ``--help``.
EXIT_CODES = ("exit status: 0 on success; 2 on bad input (bad argument, missing or malformed data), with a "
              "one-line 'error:' on stderr; 1 if an output (--json, --plot) cannot be written.")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser, kept separate from :func:`main` so tests and docs can inspect the flags.

    Every flag's help states its default; the epilog lists the exit codes
    (:data:`EXIT_CODES`).

    Returns
    -------
    argparse.ArgumentParser
        A new parser for ``python -m training.evaluate``.
    """
    parser = argparse.ArgumentParser(
        prog=_PROGRAM,
        description=(
            "Compare routing, the threshold cascade, the optimal cascade and cascade routing on a "
            "benchmark table with the paper's protocol: a seeded calibration/test split, simulated "
            "estimates recalibrated on the calibration split only, budgets along the single models' "
            "hull, AUC x100 on the test split with paired bootstrap intervals."),
        epilog=EXIT_CODES,
    )
    parser.add_argument("--data", required=True, type=Path, metavar="PATH",
                        help="benchmark table: long-format .parquet/.csv/.csv.gz (query_id, model, "
                             "quality, cost_usd) or a wide RouterBench .pkl/.csv (required)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a .pkl --data file (unpickling runs any code it holds: trusted files "
                             "only); default: refuse it")
    parser.add_argument("--quality-range", type=quality_range, default=(0.0, 1.0), metavar="LO,HI",
                        help="inclusive range of the quality column (default 0,1; e.g. 0,100 for percent)")
    parser.add_argument("--models", type=_model_list, default=None, metavar="A,B,C",
                        help="comma-separated model pool (default: every model of the table, "
                             "sorted by mean cost)")
    parser.add_argument("--noise", choices=list(NOISE_LEVELS), default="low",
                        help="noise level of the simulated quality and cost estimates "
                             "(default: %(default)s)")
    parser.add_argument("--estimator", choices=["simulated", *ESTIMATOR_KINDS], default="simulated",
                        help="'simulated': the paper's noisy-oracle estimates at --noise; 'learned' "
                             "(LightGBM), 'pooled' (one LightGBM for all models), 'linear' (ridge), or the peer "
                             "routers 'knn', 'mlp' (RouterBench), 'task-mean' (mean quality per task), 'mf' "
                             "(RouteLLM's matrix factorisation): estimators fitted on a training split "
                             "(default: %(default)s)")
    parser.add_argument("--ignore-columns", type=ignored_columns, default=[], metavar="A,B",
                        help="read the table without these per-query columns (comma-separated among prompt, task, "
                             "subtask), as traffic logs without task labels; a router fitted without a column "
                             "is served without it (the estimator derives prompt clusters in place of tasks); default: none, "
                             "every column is read")
    parser.add_argument("--train-fraction", type=_fraction, default=0.5, metavar="F",
                        help="share of queries the learned estimators train on (default: %(default)s)")
    parser.add_argument("--calibration-fraction", type=_fraction, default=0.05, metavar="F",
                        help="share of queries, in (0, 1), used to fit estimates and policies; the "
                             "paper's 0.05 suits ~36k queries, use ~0.3 for a few thousand "
                             "(default: %(default)s)")
    parser.add_argument("--max-depth", type=positive_int, default=5, metavar="D",
                        help="most models cascade routing runs per query (the threshold and optimal cascades "
                             "may run every model); 5 is the paper's protocol (ALGORITHM.md §6), so that the "
                             "AUCs compare with the paper's, where python -m training.fit saves routers with 3 "
                             "(default: %(default)s)")
    parser.add_argument("--min-fully-logged", type=positive_int, default=MIN_FULLY_LOGGED, metavar="N",
                        help="partial logs (learned estimators): fit policies on the calibration queries logged "
                             "for every model when there are at least N, else with the direct method; the test "
                             "split always holds only fully logged queries (default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the split, the estimate noise and the bootstrap "
                             "(default: %(default)s)")
    parser.add_argument("--bootstrap", type=positive_int, default=500, metavar="N",
                        help="bootstrap resamples of the test queries (default: %(default)s)")
    parser.add_argument("--per-step", action="store_true",
                        help="also search a per-step lambda (threshold) shape: slower, usually "
                             "slightly better (default: off, one lambda for all steps)")
    parser.add_argument("--latency-budget", type=_positive_float, default=None, metavar="SECONDS",
                        help="also fit every policy to this mean latency per query (needs latency_s in the data, "
                             "or --throughput); the threshold cascade, which has no multiplier for it, is left "
                             "out (default: off)")
    parser.add_argument("--throughput", type=Path, default=None, metavar="MODELS.csv",
                        help="per-model ttft_s and output_tokens_per_s, to derive latency from output_tokens "
                             "when the data has no latency_s column (default: off)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json",
                        help="write the full report (AUCs, intervals, curves) as JSON (default: off)")
    parser.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                        help="draw the quality-cost curves and the single models; needs matplotlib "
                             "(default: off)")
    parser.add_argument("--quiet", action="store_true",
                        help="hide the progress bars (default: off, bars on stderr)")
    parser.add_argument("--logged", metavar="DIR", default=None,
                        help="instead of all the above: off-policy estimates of --artifact on a training.serve "
                             "--log-dir (python -m training.evaluate --logged DIR --help) (default: off)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; return the process exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on a bad argument or bad data, 1 if an output file
        cannot be written.
    """
    given = sys.argv[1:] if argv is None else list(argv)
    if any(arg == "--logged" or arg.startswith("--logged=") for arg in given):  # off-policy (issue 34)
        from .offpolicy import main as logged_main

        return logged_main(given)
    args = parse_or_exit_code(build_parser().parse_args, argv)
    if isinstance(args, int):
        return args
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        return fail('--plot needs matplotlib, which is not installed: pip install "cascade-router[plot]"')
    outputs = [(flag, path) for flag, path in (("--json", args.json), ("--plot", args.plot)) if path is not None]
    try:
        refuse_inputs_as_outputs(outputs, [("--data", args.data), ("--throughput", args.throughput)])
    except ValueError as error:
        return fail(str(error))
    try:
        for flag, path in outputs:
            check_writable(flag, path)
    except OutputError as error:
        return fail(str(error), code=CANNOT_WRITE)
    try:
        table = read_table(args.data, models=args.models, quality_range=args.quality_range,
                           throughput=args.throughput, allow_pickle=args.allow_pickle).without(args.ignore_columns)
        if len(table.models) < 2:
            raise ValueError(f"need at least two models to compare strategies; the table has only {list(table.models)}")
        report = evaluate_strategies(
            table, noise=args.noise, calibration_fraction=args.calibration_fraction,
            estimator=args.estimator, train_fraction=args.train_fraction,
            max_depth=args.max_depth, seed=args.seed, n_boot=args.bootstrap,
            per_step=args.per_step, progress=not args.quiet, min_fully_logged=args.min_fully_logged,
            strategies=[s for s in DEFAULT_STRATEGIES if args.latency_budget is None or s != "threshold"],
            latency_budget=args.latency_budget)
    except (ValueError, TypeError, FileNotFoundError) as error:
        return fail(f"{args.data}: {error}")
    print(format_report(report, source=str(args.data)))
    for flag, path, write in (("--json", args.json, _save_json), ("--plot", args.plot, _save_plot)):
        if path is None:
            continue
        try:
            with writing(flag, path):
                write(report, path)
        except OutputError as error:
            return fail(str(error), code=CANNOT_WRITE)
    return 0


def format_report(report: EvaluationReport, *, source: str = "") -> str:
    """Format a report for the terminal, so each strategy's AUC reads beside its interval and its gap to the lead.

    Parameters
    ----------
    report : EvaluationReport
        As returned by :func:`training.protocol.evaluate_strategies`.
    source : str, default=""
        Where the data came from, printed first when given.

    Returns
    -------
    str
        The settings (models, noise, split sizes, seed, lambda shape,
        bootstrap), then one row per strategy and for the linear
        interpolation of the single models: AUC x100, its 95 % interval,
        the paired difference to the first strategy (cascade routing by
        default) and how its budgets were met.
    """
    lead = report.strategies[0]
    rows = [f"data: {source}"] if source else []
    rows += [
        f"models ({len(report.models)}, cascade order): {', '.join(report.models)}",
        f"noise: {report.noise}   calibration: {report.n_calibration} queries   "
        f"test: {report.n_test} queries   seed: {report.seed}   "
        f"lambda: {'per step' if report.per_step else 'one for all steps'}   bootstrap: {report.n_boot}",
        "",
        f"{'strategy':<18} {'AUC':>6}  {'95% CI':<16}  {f'{lead} - strategy [95% CI]':<36}  budgets",
    ]
    for name in [*report.strategies, "linear"]:
        low, high = report.auc_ci[name]
        rows.append(f"{name:<18} {report.auc[name]:6.2f}  [{low:6.2f}, {high:6.2f}]  "
                    f"{_gap(report, lead, name):<36}  {_statuses(report, name)}")
    rows += ["", "AUC x100 of test quality over [cheapest, dearest single-model cost]; "
             "intervals: paired bootstrap over test queries.", *_latency_lines(report),
             f"seconds: {report.seconds:.1f}"]
    if report.calibration:
        rows += logs_summary(report.coverage, report.calibration)
    return "\n".join(rows)


def _latency_lines(report: EvaluationReport) -> list[str]:
    """Each strategy's range of mean test latency over its budgets, and the latency budget they were fitted to."""
    timed = {name: [p["latency"] for p in points] for name, points in report.curves.items()
             if points and "latency" in points[0]}
    if not timed:
        return []
    limit = next(iter(report.curves.values()))[0].get("latency_budget")
    head = "mean test latency per query" + ("" if limit is None else f" (latency budget {limit:.4g} s)")
    return [f"{head}: " + ", ".join(f"{name} {min(v):.3g}-{max(v):.3g} s" for name, v in timed.items())]


def _statuses(report: EvaluationReport, name: str) -> str:
    """How the budgets of one strategy were met, e.g. ``"21 met, 7 above_max"``."""
    counts = Counter(point["status"] for point in report.curves.get(name, []))
    return ", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "-"


def _gap(report: EvaluationReport, lead: str, name: str) -> str:
    """``AUC(lead) − AUC(name)`` with its paired interval, or ``-`` for the lead itself."""
    if name == lead:
        return "-"
    estimate, low, high = report.differences[f"{lead}-{name}"]
    return f"{estimate:+6.2f} [{low:+6.2f}, {high:+6.2f}]"


def _save_json(report: EvaluationReport, path: Path) -> None:
    """Write the full report to ``path`` as JSON."""
    write_atomically(path, (json.dumps(report.to_dict(), indent=2) + "\n").encode("utf-8"))


def _save_plot(report: EvaluationReport, path: Path) -> None:
    """Write the curves to ``path``, off-screen (the Agg backend needs no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    report.plot(ax=ax, title=f"{len(report.models)} models, {report.noise} noise "
                             f"(n_test = {report.n_test})")
    try:
        # the format named by the suffix, as savefig(path) infers it; rendered to the temporary file first
        write_atomically(path, lambda handle: figure.savefig(handle, dpi=150, format=path.suffix[1:] or None))
    finally:
        plt.close(figure)


def _model_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty model name in {text!r}; separate names with single commas")
    return names


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
