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

if __name__ == "__main__":  # parse before the heavy imports below, so that --help and usage errors answer at once
    import sys

    from training.cli import evaluate_parser, logged_parser, parse_or_exit_code

    given = sys.argv[1:]
    logged = any(arg == "--logged" or arg.startswith("--logged=") for arg in given)  # its own parser (issue 34)
    if isinstance(code := parse_or_exit_code((logged_parser if logged else evaluate_parser)().parse_args, given),
                  int):
        sys.exit(code)
    from importlib import import_module

    # run the importable module (parsed again): one copy of it, the one tests import
    sys.exit(import_module("training.evaluate").main())

import argparse
import importlib.util
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .cli import (
    CANNOT_WRITE,
    EVALUATE_EXIT_STATUS,
    OutputError,
    check_writable,
    evaluate_parser,
    fail,
    logs_summary,
    one_line_warnings,
    parse_or_exit_code,
    refuse_inputs_as_outputs,
    writing,
)
from .data import read_table
from .files import write_atomically
from .metrics import auc_label
from .protocol import DEFAULT_STRATEGIES, EvaluationReport, evaluate_strategies

__all__ = ["EXIT_CODES", "build_parser", "format_report", "main"]

#: Exit codes of :func:`main`, listed in ``--help``.
EXIT_CODES = EVALUATE_EXIT_STATUS


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser, kept separate from :func:`main` so tests and docs can inspect the flags.

    Every flag's help states its default; the epilog lists the exit codes
    (:data:`EXIT_CODES`).

    Returns
    -------
    argparse.ArgumentParser
        A new parser for ``python -m training.evaluate``.
    """
    return evaluate_parser()


@one_line_warnings()
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
        rows.append(f"{auc_label(name):<18} {report.auc[name]:6.2f}  [{low:6.2f}, {high:6.2f}]  "
                    f"{_gap(report, lead, name):<36}  {_statuses(report, name)}")
    rows += ["", "AUC x100 of test quality over [cheapest, dearest single-model cost]; "
             "'hull': the single models' hull (the best fixed mix of two models); intervals: paired bootstrap "
             "over test queries.", *_latency_lines(report),
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

