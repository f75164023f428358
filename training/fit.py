"""``python -m training.fit``: train estimators, fit policies to budgets, evaluate, save.

The main job of the toolkit. With no arguments it runs on the built-in
synthetic benchmark (:mod:`training.synthetic`), so a fresh install shows
the whole pipeline in about a minute:

1. load and validate the data (long-format table or RouterBench's wide one);
2. split queries into train / calibration / test (seeded);
3. fit the quality, uncertainty and cost estimators on train;
4. fit one policy per budget on calibration, and a curve of budgets along
   the single models' hull for the AUC;
5. play every policy on test, print a summary, write ``report.json`` and
   ``quality_cost.png``, and save the router artifact with its manifest.

Exit codes: 0 on success; 2 on bad input (a bad argument, missing or
malformed data), with a one-line ``error:`` on stderr; 1 when an output (the
artifact, its manifest or the report) cannot be written.
"""

from __future__ import annotations

if __name__ == "__main__":  # parse before the heavy imports below, so that --help and usage errors answer at once
    import sys

    from training.cli import fit_parser, parse_or_exit_code

    if isinstance(code := parse_or_exit_code(fit_parser().parse_args, sys.argv[1:]), int):
        sys.exit(code)
    from importlib import import_module

    # run the importable module (parsed again): one copy of it, the one tests import
    sys.exit(import_module("training.fit").main())

import argparse
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from estimators.estimator import make_router_estimator
from estimators.table import RoutingTable

from .artifact import manifest_path, save_artifact
from .cli import (
    FIT_EXIT_STATUS,
    check_writable,
    fit_parser,
    key_from_env,
    logs_summary,
    refuse_inputs_as_outputs,
    run_command,
    writing,
)
from .data import coverage, fingerprint, read_prices, read_table
from .defaults import FIT_STRATEGIES, MIN_FULLY_LOGGED
from .episodes import EpisodeOutcome, EstimatorEpisodes, calibration_episodes
from .files import write_atomically
from .metrics import auc, auc_bounds, auc_label, budget_grid, linear_auc, single_model_points
from .policy import (
    SIGMA_TRANSFORMS,
    TIE_STANDARD_ERRORS,
    BudgetError,
    Choice,
    choose_policy,
    describe,
    fit_candidates,
    single_outcomes,
)
from .router import Router
from .splits import prompt_groups, shared_groups, split, split_from_labels
from .synthetic import default_table, synthetic_prices

__all__ = ["EXIT_CODES", "SIGMA_STRATEGIES", "STRATEGIES", "FitReport", "default_budgets", "fit_router", "load",
           "main", "parse_args", "run", "split", "summary"]

#: Decision strategies ``--strategy`` accepts (the first is the default).
STRATEGIES = FIT_STRATEGIES
#: Exit codes of :func:`main`, listed in ``--help``.
EXIT_CODES = FIT_EXIT_STATUS
#: The files written into ``--report``.
REPORT_FILES = ("report.json", "quality_cost.png")
#: Strategies whose decisions use σ, so that fitting also picks a σ scale.
SIGMA_STRATEGIES = ("cascade_routing", "cascade")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line, so that a bad flag fails before any data is read or model fitted.

    Checks argparse cannot express are made here too: ``--max-depth >= 1``,
    ``--curve-points >= 2``, ``--fractions`` positive and summing to 1,
    ``--budget`` values positive and finite.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    argparse.Namespace
        The options, one attribute per flag (``args.max_depth``, ...).

    Raises
    ------
    SystemExit
        After argparse has printed the help (code 0) or a usage error (code 2).
    """
    parser = fit_parser()
    args = parser.parse_args(argv)
    if args.curve_points < 2:
        parser.error(f"--curve-points must be >= 2 (the hull segment's two ends), got {args.curve_points}")
    if args.fractions is not None:  # the deprecated spelling of the split
        words = [word.split("=")[0] for word in (sys.argv[1:] if argv is None else argv)]
        given = [flag for flag in ("--train-fraction", "--calibration-fraction") if flag in words]
        if given:
            parser.error(f"give the split as --train-fraction and --calibration-fraction, not also as the "
                         f"deprecated --fractions (with {', '.join(given)})")
        fractions = np.asarray(args.fractions)
        if (fractions <= 0).any() or abs(fractions.sum() - 1.0) > 1e-9:
            parser.error(f"--fractions must be three positive numbers summing to 1, got {args.fractions}")
        args.train_fraction, args.calibration_fraction = args.fractions[:2]
        args.fractions = tuple(args.fractions)
    else:
        test_fraction = 1.0 - args.train_fraction - args.calibration_fraction
        if test_fraction <= 1e-9:
            parser.error(f"--train-fraction {args.train_fraction} and --calibration-fraction "
                         f"{args.calibration_fraction} leave no queries to test on; make them sum to less than 1")
        args.fractions = (args.train_fraction, args.calibration_fraction, test_fraction)
    if args.latency_budget is not None and args.per_step:
        parser.error("--per-step fits a per-step λ for a cost budget only; drop it or --latency-budget")
    if args.latency_budget is not None and args.strategy == "threshold":
        parser.error("--latency-budget: the threshold cascade has no multiplier to trade latency with; "
                     "use --strategy cascade_routing, cascade or routing")
    return args


def load(args: argparse.Namespace) -> tuple[RoutingTable, dict[str, tuple[float, float]] | None]:
    """Read the benchmark (or build the synthetic one) and the prices the cost estimator may use.

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`parse_args`; ``data``, ``prices``, ``throughput``,
        ``models``, ``n_queries``, ``seed`` and ``latency_budget`` are read.

    Returns
    -------
    table : RoutingTable
        The validated table, restricted to ``--models`` when given.
    prices : dict of str to (float, float), or None
        USD per 1M input/output tokens per model (the synthetic benchmark's
        own prices without ``--data``; those of ``--prices`` restricted to the
        models of ``table``); ``None`` with ``--data`` but no ``--prices``
        (cost is then learned from prompts).

    Raises
    ------
    ValueError
        If ``--data`` does not exist, the table is malformed, or a latency
        budget is asked of a table without latency.
    """
    models = args.models
    if args.data is None:
        return default_table(args.n_queries, seed=args.seed, models=models).without(args.ignore_columns), \
            synthetic_prices()
    if not args.data.exists():
        raise ValueError(f"--data {args.data} does not exist")
    prices = read_prices(args.prices) if args.prices is not None else None
    table = read_table(args.data, models=models, prices=prices, quality_range=args.quality_range,
                       throughput=args.throughput, allow_pickle=args.allow_pickle).without(args.ignore_columns)
    if args.latency_budget is not None and table.latency is None:
        raise ValueError(f"--latency-budget needs latency, and {args.data} has none: add a latency_s column "
                         "(seconds per query and model), or pass --throughput with ttft_s and "
                         "output_tokens_per_s per model to derive it from output_tokens")
    if len(table.models) < 2:
        raise ValueError(f"need at least two models to route between; {args.data} has only {list(table.models)}"
                         + (" after --models" if models is not None else ""))
    if prices is not None:
        prices = {m: prices[m] for m in table.models}
    return table, prices


def _split(table: RoutingTable, fractions: Sequence[float], seed: int, split_column: bool
           ) -> tuple[NDArray[np.int_], ...]:
    """The table's split column with ``split_column``, else the seeded split (test: fully logged queries only;
    queries with one prompt text in one part)."""
    if not split_column:
        return split(table.n_queries, fractions, seed, table.fully_logged, groups=prompt_groups(table.prompts))
    if table.splits is None:
        raise ValueError("--split-column: the table has no split column (or it is empty on every row)")
    return split_from_labels(table.splits, table.fully_logged)


#: Memory ``training.fit`` takes beyond the table it has read, per logged (query, model) row: the peak
#: resident memory minus the resident memory once ``read_table`` returned, ``bench/bench_partial.py`` at 10 copies,
#: 2026-12-08 (issue 33). Full logs (346,500 rows): 743 MiB through the estimators' fit (its peak, the quality
#: regressors' final fit); 750 MiB kept. Partial logs, one pooled regressor (318,205 rows): the
#: estimators' whole fit took 3,843 MiB above the loaded table; 4,000 MiB kept. The
#: table's own memory (prompts and responses, which depend on the text, held once per query and distinct answer)
#: is not estimated: it is resident when the check runs, so ``MemAvailable`` has already paid for it. What
#: remains grows with the rows (the run-set feature rows; the pooled regressor stacks them once per model).
FIT_BYTES_PER_ROW = {"full": 750 * 2**20 / 346_500, "pooled": 4000 * 2**20 / 318_205}


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation now (Linux ``MemAvailable``), or ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process and of its finished children (``getrusage``), in bytes."""
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux, bytes on macOS
    return scale * max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                       resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def check_fit_memory(n_rows: int, *, pooled: bool, available: int | None = None) -> None:
    """Stop before fitting when the rows would not fit in memory, rather than be killed half-way.

    Called once the table is read: what fitting needs beyond it is
    ``n_rows`` times :data:`FIT_BYTES_PER_ROW`, compared with what is
    available then (the table already counted).

    Parameters
    ----------
    n_rows : int
        Logged (query, model) rows of the table.
    pooled : bool
        Partial logs (the pooled quality regressor, several times the memory per row).
    available : int, optional
        Bytes available; default :func:`available_memory_bytes` (no check where unknown).

    Raises
    ------
    ValueError
        If the estimate exceeds what is available, with what to do.
    """
    available = available_memory_bytes() if available is None else available
    need = n_rows * FIT_BYTES_PER_ROW["pooled" if pooled else "full"]
    if available is None or need <= available:
        return
    fits = int(available / FIT_BYTES_PER_ROW["pooled" if pooled else "full"])
    raise ValueError(f"fitting {n_rows:,} logged rows needs about {need / 2**30:.1f} GiB besides the table read, "
                     f"and {available / 2**30:.1f} GiB is available: sample the queries down to about {fits:,} rows "
                     "(whole queries; docs/sampling.md measures what a sample loses), or fit on a machine with more "
                     "memory; --skip-memory-check fits anyway")


def default_budgets(costs: NDArray[np.float64]) -> list[float]:
    """Three budgets spread over the single models' cost range, for a run without ``--budget``.

    Parameters
    ----------
    costs : ndarray of float64, shape (K,)
        Mean cost per query of each single model (all positive).

    Returns
    -------
    list of float
        The budgets at 25, 50 and 75 % of the log cost range, lowest first.
    """
    low, high = np.log(costs.min()), np.log(costs.max())
    return [float(np.exp(low + f * (high - low))) for f in (0.25, 0.5, 0.75)]


@dataclass(frozen=True)
class FitReport:
    """What :func:`fit_router` measured, beside the router it returns.

    Attributes
    ----------
    metrics : dict
        The content of ``report.json`` that fitting decides (JSON-able):
        ``models``, ``strategy``, ``estimator``, split sizes, ``coverage``,
        ``calibration``, per requested budget the calibration and test
        figures beside the best single model within it (``budgets``), the
        whole ``curve``, ``single_models``, ``auc``, ``data_fingerprint``
        and ``peak_rss_gib``. :func:`run` adds ``data``, ``artifact`` and
        ``seconds``.
    train, calibration, test : ndarray of int
        Row indices of the table's queries in each part.
    """

    metrics: dict[str, Any]
    train: NDArray[np.int_]
    calibration: NDArray[np.int_]
    test: NDArray[np.int_]


def fit_router(table: RoutingTable, budgets: Sequence[float] | None = None, *,
               latency_budgets: Sequence[float] | None = None, strategy: str = "cascade_routing",
               estimator: str = "learned", prices: dict[str, tuple[float, float]] | None = None,
               max_depth: int = 3, per_step: bool = False, fractions: Sequence[float] = (0.5, 0.25, 0.25),
               seed: int = 0, split_column: bool = False, curve_points: int = 4,
               min_fully_logged: int = MIN_FULLY_LOGGED, allow_over_budget: bool = False,
               progress: Callable[[str], None] | None = None, quiet: bool = True) -> tuple[Router, FitReport]:
    """Split, fit the estimators on train and one policy per budget on calibration, and measure them on test.

    The library form of ``python -m training.fit`` (which adds reading the
    data, the artifact, the report files and the summary): the arguments
    are its flags'.

    Parameters
    ----------
    table : RoutingTable
        The logged benchmark, at least two models.
    budgets : sequence of float, optional
        Mean cost per query to fit a policy for; default three budgets
        spread over the single models' calibration costs (:func:`default_budgets`).
    latency_budgets : sequence of float, optional
        Mean latency per query (seconds); every pair of budgets gets a policy.
    strategy : str, default="cascade_routing"
        One of :data:`STRATEGIES`.
    estimator : str, default="learned"
        A kind of :func:`~estimators.estimator.make_router_estimator`.
    prices : dict of str to (float, float), optional
        USD per 1M input/output tokens per model, for the cost estimator.
    max_depth : int, default=3
        Most models per query.
    per_step : bool, default=False
        Fit a per-step ``λ`` shape.
    fractions : (float, float, float), default=(0.5, 0.25, 0.25)
        Train, calibration and test shares of the seeded split.
    seed : int, default=0
        Seed of the split.
    split_column : bool, default=False
        Split by the table's split column instead.
    curve_points : int, default=4
        Budgets along the single models' hull, for the AUC.
    min_fully_logged : int, default=MIN_FULLY_LOGGED
        See :func:`~training.episodes.calibration_episodes`.
    allow_over_budget : bool, default=False
        Fit the cheapest policy for a requested budget that cannot be met
        instead of raising.
    progress : callable, optional
        Called with the name of each stage as it starts.
    quiet : bool, default=True
        No progress bar over the budgets.

    Returns
    -------
    (Router, FitReport)

    Raises
    ------
    ValueError
        On too few queries, or a requested budget that cannot be met (without ``allow_over_budget``).
    """
    report_stage = progress if progress is not None else (lambda stage: None)
    train, calibration, test = _split(table, fractions, seed, split_column)
    report_stage(f"fitting estimators on {len(train)} queries")
    fitted = make_router_estimator(estimator, prices).fit(table, train)
    report_stage("estimating calibration and test queries")
    fitting_episodes, calibration_used = calibration_episodes(fitted, table.subset(calibration),
                                                              min_fully_logged=min_fully_logged)
    test_table = table.subset(test)
    test_episodes = EstimatorEpisodes(fitted, test_table, direct_method=False)
    single_cost, single_quality = single_model_points(test_table.quality, test_table.cost)
    calibration_costs = fitting_episodes.cost.mean(axis=0)
    budgets = sorted(set(budgets or default_budgets(calibration_costs)))
    latencies: list[float | None] = [*sorted(set(latency_budgets))] if latency_budgets else [None]
    requested = [(budget, latency) for budget in budgets for latency in latencies]
    curve = [(budget, None) for budget in sorted(set(budget_grid(single_cost, single_quality, curve_points))
                                                  - set(budgets if latencies == [None] else []))]
    report_stage("fitting policies")
    options = _FitOptions(strategy, max_depth, per_step, allow_over_budget)
    rows: list[dict[str, Any]] = []
    policies = []
    singles = single_outcomes(fitting_episodes)  # the calibration hull's points, shared by every budget
    for budget, latency in tqdm(requested + curve, desc="budgets", disable=quiet, leave=False):
        choice = _fit_budget(options, fitting_episodes, float(budget), latency,
                             strict=(budget, latency) in requested, singles=singles)
        policy = choice.policy
        outcome = policy.play(test_episodes)
        if (budget, latency) in requested:
            policies.append(policy)
        rows.append({"budget": float(budget), "latency_budget": latency, "requested": (budget, latency) in requested,
                     **_calibration_figures(choice, table.models),
                     "test_cost": outcome.mean_cost, "test_quality": outcome.mean_quality,
                     "test_latency": None if outcome.latency is None else outcome.mean_latency,
                     "sigma_transform": list(policy.sigma_transform), "mu": policy.mu,
                     "models_per_query": float((outcome.order >= 0).sum(1).mean())})
    lo, hi, left = auc_bounds(single_cost, single_quality)
    curve_rows = sorted((r for r in rows if r["latency_budget"] is None), key=lambda r: r["budget"])
    single_latency = (None if test_episodes.latency is None
                      else test_episodes.latency.mean(axis=0).tolist())
    metrics = {
        "models": list(table.models),
        "strategy": strategy,
        "estimator": estimator,
        "pooled_quality_regressor": bool(fitted.quality_.pooled_),
        "max_depth": max_depth,
        "n_train": len(train), "n_calibration": len(calibration), "n_test": len(test),
        "split": "split column" if split_column else f"seeded (seed {seed}, fractions {list(fractions)})",
        "prompts_in_several_parts": shared_groups((train, calibration, test), prompt_groups(table.prompts)),
        "coverage": {"table": coverage(table), "train": coverage(table, train)},
        "calibration": calibration_used,
        "budgets": [_with_best_single(r, table.models, single_cost, single_quality, single_latency)
                    for r in sorted(rows, key=lambda r: (r["budget"], r["latency_budget"] or np.inf))
                    if r["requested"]],
        "curve": curve_rows,
        "latency": single_latency is not None,
        "single_models": [{"model": m, "cost": float(c), "quality": float(q),
                           "latency": None if single_latency is None else single_latency[i]}
                          for i, (m, c, q) in enumerate(zip(table.models, single_cost, single_quality, strict=True))],
        "auc": {strategy: auc([r["test_cost"] for r in curve_rows], [r["test_quality"] for r in curve_rows],
                              lo, hi, left_quality=left),
                "linear": linear_auc(single_cost, single_quality)},
        "data_fingerprint": fingerprint(table),
        "peak_rss_gib": peak_rss_bytes() / 2**30,
    }
    return Router(fitted, tuple(policies), tuple(table.models)), FitReport(metrics, train, calibration, test)


def run(args: argparse.Namespace) -> dict:
    """Do the whole job (load, split, fit, evaluate, save), so that :func:`main` only maps its failures to exit codes.

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`parse_args`.

    Returns
    -------
    dict
        The report also written to ``--report``/``report.json``: models,
        settings, split sizes, per requested budget the test cost and
        quality beside the best single model within it, the whole curve,
        the AUCs, the data fingerprint, the artifact paths and the seconds.

    Raises
    ------
    ValueError
        On bad input (missing or malformed data, too few queries).
    training.cli.OutputError
        If the artifact, its manifest or the report cannot be written.
    """
    started = time.perf_counter()
    key = key_from_env("--sign-key-env", args.sign_key_env)  # before any work: a missing key fails in a second
    refuse_inputs_as_outputs(
        [("--out", args.out), ("--out (its manifest)", manifest_path(args.out)), ("--report", args.report),
         *((f"--report ({name})", args.report / name) for name in REPORT_FILES)],
        [("--data", args.data), ("--prices", args.prices), ("--throughput", args.throughput)])
    check_writable("--out", args.out)
    check_writable("--out (its manifest)", manifest_path(args.out))
    check_writable("--report", args.report, directory=True)
    stages = tqdm(total=5, desc="training.fit", disable=args.quiet, unit="stage")
    stages.set_postfix_str("loading data")
    table, prices = load(args)
    if not args.skip_memory_check:
        check_fit_memory(int(table.logged.sum()), pooled=not bool(table.fully_logged.all()))

    def stage(name: str) -> None:
        stages.update()
        stages.set_postfix_str(name)

    router, fitted = fit_router(table, args.budget, latency_budgets=args.latency_budget, strategy=args.strategy,
                                estimator=args.estimator, prices=prices, max_depth=args.max_depth,
                                per_step=args.per_step, fractions=args.fractions, seed=args.seed,
                                split_column=args.split_column, curve_points=args.curve_points,
                                min_fully_logged=args.min_fully_logged, allow_over_budget=args.allow_over_budget,
                                progress=stage, quiet=args.quiet)
    stages.update()
    stages.set_postfix_str("writing report and artifact")
    report = dict(fitted.metrics)
    fingerprint_value = report.pop("data_fingerprint")
    peak = report.pop("peak_rss_gib")
    report["data"] = str(args.data) if args.data else f"synthetic(n_queries={args.n_queries}, seed={args.seed})"
    report["data_fingerprint"] = fingerprint_value
    report["peak_rss_gib"] = peak
    estimator = router.estimator
    with writing("--out", args.out):
        args.out.parent.mkdir(parents=True, exist_ok=True)
        manifest = save_artifact(
            router, args.out, models=list(table.models), budgets=router.budgets,
            feature_schema={"per_query": estimator.columns_, "signals": estimator.signal_names_,
                            "uses_responses": estimator.uses_responses_,
                            "latency": estimator.latency_ is not None},
            data_fingerprint=report["data_fingerprint"],
            metrics={"auc": report["auc"], "budgets": report["budgets"]},
            extra={"strategy": args.strategy, "max_depth": args.max_depth, "seed": args.seed,
                   "latency_budgets": router.latency_budgets}, key=key)
    report["artifact"] = {"path": str(args.out), "manifest": str(manifest), "signed": key is not None}
    report["seconds"] = round(time.perf_counter() - started, 2)
    with writing("--report", args.report):
        _write_report(report, args.report)
    stages.update()
    stages.close()
    return report


@dataclass(frozen=True)
class _FitOptions:
    """The settings every budget's fit shares."""

    strategy: str
    max_depth: int
    per_step: bool
    allow_over_budget: bool


def _fit_budget(options: _FitOptions, episodes: EstimatorEpisodes, budget: float, latency: float | None, *,
                strict: bool, singles: list[EpisodeOutcome]) -> Choice:
    """Fit every candidate for the budgets (:func:`~training.policy.fit_candidates`) and keep one on calibration.

    ``strict`` (a requested budget, without ``allow_over_budget``): budgets
    below the cheapest (fastest) policy are bad input, named with what it needs.
    """
    strategy = options.strategy
    infeasible = "raise" if strict and not options.allow_over_budget else "clamp"
    try:
        candidates = fit_candidates(episodes, budget, strategy=strategy, per_step=options.per_step,
                                    max_depth=options.max_depth, on_infeasible=infeasible, latency_budget=latency,
                                    sigma_transforms=SIGMA_TRANSFORMS if strategy in SIGMA_STRATEGIES else None,
                                    singles=singles)
    except BudgetError as error:
        if latency is None:
            raise ValueError(f"--budget {budget:.6g} cannot be met: the cheapest {strategy} policy costs "
                             f"{error.cheapest_cost:.6g} per query on the calibration queries; give a --budget of "
                             "at least that, or pass --allow-over-budget to fit the cheapest policy anyway") from None
        raise ValueError(f"--latency-budget {latency:.6g} with --budget {budget:.6g} cannot be met: the fastest "
                         f"{strategy} policy found takes {error.fastest_latency:.4g} s and costs "
                         f"{error.cheapest_cost:.6g} per query on the calibration queries; give a larger "
                         "--latency-budget (or --budget), or pass --allow-over-budget") from None
    return choose_policy(episodes, candidates)


def _calibration_figures(choice: Choice, models: Sequence[str]) -> dict:
    """The kept candidate's calibration cost, quality and budget status, which candidate it is, by how much it won."""
    policy = choice.policy
    spends = [p.calibration_cost for p in choice.candidates if p.budget_status == "above_max"]
    return {"calibration_cost": policy.calibration_cost, "calibration_quality": policy.calibration_quality,
            "calibration_status": policy.budget_status, "chosen": describe(policy, models),
            "chosen_depth": policy.max_depth, "chosen_gamma": policy.gamma,
            "calibration_latency": (None if np.isnan(policy.calibration_latency)
                                    else policy.calibration_latency),
            "most_the_router_spends": max(spends) if policy.budget_status == "above_max" and spends else None,
            "calibration_margin": choice.margin,
            "tie_rule": f"simplest candidate within {TIE_STANDARD_ERRORS:g} standard error of the best (paired, "
                        "calibration queries)",
            "candidates": [{"name": describe(p, models), "calibration_cost": p.calibration_cost,
                            "calibration_quality": p.calibration_quality, "calibration_status": p.budget_status,
                            "within_budget": within,
                            "gap_to_best": None if np.isnan(gap) else gap,
                            "standard_error": None if np.isnan(error) else error,
                            "best": i == choice.best, "kept": i == choice.kept}
                           for i, (p, within, gap, error) in enumerate(zip(choice.candidates, choice.within,
                                                                           choice.gaps, choice.standard_errors,
                                                                           strict=True))]}


def _with_best_single(row: dict, models, costs, qualities, latencies) -> dict:
    """Add the best single model whose test cost (and latency) fits the same budgets, and whether the router lost."""
    latency_budget = row["latency_budget"]
    within = costs <= row["budget"]
    if latency_budget is not None:
        within &= np.asarray(latencies) <= latency_budget
    fits = np.flatnonzero(within)
    best = int(fits[np.argmax(qualities[fits])]) if fits.size else int(np.argmin(costs))
    met = row["test_cost"] <= row["budget"] and (latency_budget is None or row["test_latency"] <= latency_budget)
    return {**{k: v for k, v in row.items() if k != "requested"},
            "test_status": "met" if met else "over",
            "best_single_model": models[best], "best_single_quality": float(qualities[best]),
            "best_single_cost": float(costs[best]),
            "test_loss_to_best_single": bool(fits.size) and row["test_quality"] < float(qualities[best])}


def _write_report(report: dict, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / REPORT_FILES[0], json.dumps(report, indent=2).encode("utf-8"))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot

        from .display import report_figure
    except ImportError:
        print("note: matplotlib is not installed; skipping quality_cost.png "
              '(pip install "cascade-router[plot]")', file=sys.stderr)
        return
    figure = report_figure(report)
    try:
        _save_figure(figure, directory / REPORT_FILES[1])
    finally:
        matplotlib.pyplot.close(figure)


def _save_figure(figure, path: Path) -> None:
    """Render the figure in memory and rename it into place: never half a PNG."""
    png = io.BytesIO()
    figure.savefig(png, dpi=120, bbox_inches="tight", format="png")
    write_atomically(path, png.getvalue())


def summary(report: dict) -> str:
    """Format a report for the terminal, so that budgets met and the gain over single models read at a glance.

    Parameters
    ----------
    report : dict
        As returned by :func:`run`.

    Returns
    -------
    str
        A table of the requested budgets (test cost, its share of the
        budget, quality, calibration cost, models per query, best single
        model within budget), then the AUCs, the split sizes and the artifact.
    """
    timed = report.get("latency", False)
    latency_head = f" {'lat budget':>10} {'test lat s':>10}" if timed else ""
    lines = [f"{'budget':>10}{latency_head} {'test cost':>10} {'test/budget':>11} {'test qual':>9} {'calib cost':>10} "
             f"{'calib qual':>10} {'models/q':>8}  chosen on calibration; best single model within budget on test",
             "-" * (130 + len(latency_head))]
    notes = []
    for r in report["budgets"]:
        tags = [] if r["calibration_status"] == "met" else [r["calibration_status"]]
        tags += ["over on test"] if r["test_status"] != "met" else []
        tags += ["loses on test"] if r["test_loss_to_best_single"] else []
        latency_cells = ""
        if timed:
            limit = "-" if r["latency_budget"] is None else f"{r['latency_budget']:.4g}"
            latency_cells = f" {limit:>10} {r['test_latency']:>10.3f}"
        lines.append(f"{r['budget']:>10.4g}{latency_cells} {r['test_cost']:>10.4g} "
                     f"{r['test_cost'] / r['budget']:>11.1%} "
                     f"{r['test_quality']:>9.3f} {r['calibration_cost']:>10.4g} {r['calibration_quality']:>10.3f} "
                     f"{r['models_per_query']:>8.2f}  {r['chosen']}{_margin(r)}; {r['best_single_model']} "
                     f"({r['best_single_quality']:.3f} at {r['best_single_cost']:.4g})"
                     + "".join(f"  [{tag}]" for tag in tags))
        notes += _budget_notes(r)
    auc_line = ", ".join(f"{auc_label(name)} {value:.2f}" for name, value in report["auc"].items())
    lines += notes + ["", _LEGEND, "",
                      "AUC x100 on test over the single-model cost range ('hull': the single models' hull): "
                      f"{auc_line}",
              f"{report['n_train']} train / {report['n_calibration']} calibration / {report['n_test']} test "
              f"queries, {len(report['models'])} models, {report['seconds']} s"
              + (f", peak memory {report['peak_rss_gib']:.2f} GiB" if "peak_rss_gib" in report else ""),
              *logs_summary(report["coverage"]["train"], report["calibration"]),
              *([(f"warning: {report['prompts_in_several_parts']} prompt(s) appear under several query ids in "
                  "more than one of train, calibration and test (the split column's choice): test figures of "
                  "estimators that remember prompts (kNN) are optimistic")]
                if report.get("prompts_in_several_parts") else []),
              f"artifact: {report['artifact']['path']} (manifest {report['artifact']['manifest']}; "
              f"{'signed' if report['artifact']['signed'] else 'unsigned'})"]
    return "\n".join(lines)


def _margin(row: dict) -> str:
    margin = row["calibration_margin"]
    return "" if margin is None else f" ({margin:+.3f})"


_LEGEND = """\
legend: 'test' columns are measured on the held-out test queries, 'calib' on the calibration queries the
policy was fitted on. 'chosen' is the candidate kept on calibration among the constant-estimate hull (the best
fixed mix of single models: 'hull mix: a + b (γ to b)') and the fitted policy (cascade_routing: at each depth
1..--max-depth, depth 1 being routing): the best calibration quality within the budget, or the simplest
candidate within one standard error of it (paired over the calibration queries); in brackets its calibration
quality minus the best other candidate's (negative: a simpler one kept inside the noise). Tags: [above_max]
the budget is more than the router can spend, so the surplus stays unspent; [below_min] the budget is below
the cheapest policy, fitted anyway (--allow-over-budget); [over on test] the test cost (or latency) exceeds
its budget (it was met on calibration); [loses on test] the best single model within the budget scores higher
on test than the router. 'lat budget' and 'test lat s': the mean-latency budget a policy was fitted to ('-':
none) and its mean latency on test, in seconds (the models a query calls run one after another, so their
latencies add up).\
"""


def _budget_notes(row: dict) -> list[str]:
    """Sentences for a budget the router cannot use as asked, or where it loses on test."""
    budget = row["budget"]
    notes = []
    if row["calibration_status"] == "above_max":
        notes.append(f"  budget {budget:.4g}: above what the router can use; calling every model it finds "
                     f"useful costs {row['most_the_router_spends']:.4g} per query on calibration, so the policy "
                     f"is fitted to that (the chosen one spends {row['calibration_cost']:.4g}) and the rest of "
                     "the budget stays unspent.")
    if row["calibration_status"] == "below_min":
        notes.append(f"  budget {budget:.4g}: below the cheapest policy; it spends {row['calibration_cost']:.4g} "
                     f"per query on calibration, {row['calibration_cost'] / budget - 1:.0%} over the budget.")
    if row["test_loss_to_best_single"]:
        notes.append(f"  budget {budget:.4g}: on test the router ({row['test_quality']:.3f}) loses to "
                     f"{row['best_single_model']} alone ({row['best_single_quality']:.3f}) by "
                     f"{row['best_single_quality'] - row['test_quality']:.3f}.")
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job as ``python -m training.fit`` does, returning the exit code so it can be called from Python.

    Never raises :class:`SystemExit`: ``--help`` returns 0 and a usage
    error 2, after argparse has printed them.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on bad input (with a one-line ``error:`` on stderr),
        1 if an output cannot be written.
    """
    return run_command(argv, parse_args, run, _print_summary)


def _print_summary(report: dict) -> int:
    print(summary(report))
    return 0

