"""Regenerate the RouterBench reproduction: ``docs/reproduction.json``, figures and tables.

Run from the repository root (the shared data lives in ``../shared/data``)::

    python docs/reproduce.py

It evaluates the paper's nine RouterBench settings (pools of 3, 5 and 11
models × low, medium and high estimate noise) with
:func:`training.protocol.evaluate_strategies`, then ablations that explain
our choices and departures from the paper (σ as the estimates give it
instead of the σ transform chosen on calibration; every strategy at depth 5
on the 11-model pool, our earlier reading of ``max_depth``; the paper's 5 %
calibration split; other seeds for the closest call, routing against
cascade routing at 5 models and high noise). It writes

* ``docs/reproduction.json``: every report, the paper's numbers, timings;
* ``docs/figures/routerbench_*.png``: quality-cost curves;
* the generated tables of ``docs/reproduction.md``, between the markers
  ``<!-- reproduce.py:begin -->`` and ``<!-- reproduce.py:end -->``; the
  prose around them is written by hand and left untouched.

Everything is seeded: a rerun on the same code gives the same numbers (only
the timings change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numba
import numpy as np
from generated import replace_block, write_atomically

from estimators.table import RoutingTable
from training.data import read_table
from training.policy import SIGMA_TRANSFORMS
from training.protocol import DEFAULT_STRATEGIES, EvaluationReport, evaluate_strategies

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DATA = ROOT.parent / "shared" / "data" / "routerbench_subset" / "routerbench_subset.parquet"

#: The paper's pools (ALGORITHM.md §6); "11" is every model of the table.
POOLS = {
    3: ("mistralai/mixtral-8x7b-chat", "gpt-3.5-turbo-1106", "gpt-4-1106-preview"),
    5: ("mistralai/mixtral-8x7b-chat", "gpt-3.5-turbo-1106", "gpt-4-1106-preview",
        "WizardLM/WizardLM-13B-V1.2", "claude-v2"),
    11: None,
}
NOISES = ("low", "medium", "high")
#: ~945 calibration queries of 3,150: half the paper's ~1,800, yet enough to
#: fit K recalibration lines and a budget's λ; see reproduction.md.
CALIBRATION_FRACTION = 0.3
PAPER_CALIBRATION_FRACTION = 0.05
#: Limits cascade routing only (ALGORITHM.md §6, the authors' code); both cascades run the whole pool.
MAX_DEPTH = 5
#: Our earlier reading, for the ablation: every strategy at depth 5.
UNIFORM_DEPTHS = {strategy: MAX_DEPTH for strategy in DEFAULT_STRATEGIES}
#: σ as the estimates give it, for the ablation of the σ transform chosen on calibration.
IDENTITY_SIGMA = ((1.0, 1.0),)
SEED = 0
#: Seeds of the robustness ablation (split, noise and bootstrap all change).
OTHER_SEEDS = (1, 2, 3, 4, 5)
CLOSEST_CALL = "5-high"
STRATEGY_LABELS = {
    "linear": "linear",
    "routing": "routing",
    "threshold_cascade": "threshold cascade",
    "cascade": "optimal cascade",
    "cascade_routing": "cascade routing",
}
ROW_ORDER = ("linear", "routing", "threshold_cascade", "cascade", "cascade_routing")

#: The paper's RouterBench AUC ×100 (0-shot, full RouterBench), copied from ALGORITHM.md §6.
PAPER = {
    "linear": [69.62, 69.62, 69.62, 69.22, 69.22, 69.22, 70.51, 70.51, 70.51],
    "routing": [79.73, 74.97, 71.81, 81.24, 74.43, 71.33, 83.25, 74.63, 72.67],
    "threshold_cascade": [80.86, 74.64, 72.48, 82.33, 73.03, 69.53, 84.48, 73.64, 69.79],
    "cascade": [81.09, 76.16, 72.67, 83.06, 75.17, 70.18, 84.47, 75.10, 70.26],
    "cascade_routing": [82.36, 76.55, 73.22, 84.33, 76.31, 72.75, 87.24, 77.57, 74.40],
}
SETTINGS = [f"{pool}-{noise}" for pool in POOLS for noise in NOISES]

BEGIN, END = "<!-- reproduce.py:begin -->", "<!-- reproduce.py:end -->"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every setting and ablation, then write the JSON, figures and tables."""
    args = _parser().parse_args(argv)
    if not args.data.is_file():
        print(f"reproduce.py: error: no RouterBench table at {args.data}", file=sys.stderr)
        return 2
    table = read_table(args.data)
    machine = _machine()
    started = time.perf_counter()
    main_reports = {name: _run(table, name, n_boot=args.bootstrap) for name in SETTINGS}
    main_seconds = time.perf_counter() - started
    ablations: dict[str, dict[str, EvaluationReport]] = {}
    if not args.no_ablations:
        ablations["identity_sigma"] = {
            name: _run(table, name, n_boot=args.bootstrap, sigma_transforms=IDENTITY_SIGMA,
                       strategies=("cascade", "cascade_routing"))
            for name in SETTINGS}
        ablations["uniform_depths"] = {
            f"11-{noise}": _run(table, f"11-{noise}", n_boot=args.bootstrap, max_depth=UNIFORM_DEPTHS)
            for noise in NOISES}
        ablations["paper_calibration"] = {
            name: _run(table, name, n_boot=args.bootstrap, calibration_fraction=PAPER_CALIBRATION_FRACTION)
            for name in ("3-low", "3-high", "11-low", "11-high")}
        ablations["seeds"] = {
            f"seed {seed}": _run(table, CLOSEST_CALL, n_boot=args.bootstrap, seed=seed,
                                 strategies=("routing", "cascade_routing"))
            for seed in OTHER_SEEDS}
    total_seconds = time.perf_counter() - started

    payload = {
        "data": str(args.data.relative_to(ROOT.parent)) if args.data.is_relative_to(ROOT.parent)
        else str(args.data),
        "protocol": {"calibration_fraction": CALIBRATION_FRACTION, "max_depth": MAX_DEPTH,
                     "max_depth_limits": "cascade_routing", "sigma_transforms": [list(t) for t in SIGMA_TRANSFORMS],
                     "seed": SEED, "n_boot": args.bootstrap, "per_step": False},
        "main_seconds": main_seconds,
        "total_seconds": total_seconds,
        "machine": machine,
        "paper": {name: dict(zip(SETTINGS, values, strict=True)) for name, values in PAPER.items()},
        "settings": {name: report.to_dict() for name, report in main_reports.items()},
        "ablations": {kind: {name: report.to_dict() for name, report in reports.items()}
                      for kind, reports in ablations.items()},
    }
    write_atomically(DOCS / "reproduction.json", json.dumps(payload, indent=1) + "\n")
    _figures(main_reports, DOCS / "figures")
    _write_tables(DOCS / "reproduction.md", _tables(main_reports, ablations, payload))
    print(f"9 settings: {main_seconds:.0f} s; with ablations: {total_seconds:.0f} s", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python docs/reproduce.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA,
                        help="routerbench_subset.parquet (default: %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=500,
                        help="bootstrap resamples per setting (default: %(default)s)")
    parser.add_argument("--no-ablations", action="store_true",
                        help="run only the nine main settings (default: off)")
    return parser


def _run(table: RoutingTable, setting: str, *, n_boot: int,
         calibration_fraction: float = CALIBRATION_FRACTION,
         max_depth: int | dict[str, int | None] = MAX_DEPTH, seed: int = SEED,
         strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
         sigma_transforms: tuple[tuple[float, float], ...] = SIGMA_TRANSFORMS) -> EvaluationReport:
    """Evaluate one ``"<pool>-<noise>"`` setting, announcing it on stderr."""
    pool, noise = setting.split("-")
    names = POOLS[int(pool)]
    pool_table = table if names is None else table.select_models(names)
    print(f"{setting} (calibration {calibration_fraction}, depth {max_depth}, seed {seed}, "
          f"σ transforms {sigma_transforms})", file=sys.stderr)
    return evaluate_strategies(pool_table, noise=noise, calibration_fraction=calibration_fraction,
                               max_depth=max_depth, seed=seed, n_boot=n_boot, strategies=strategies,
                               sigma_transforms=sigma_transforms)


def _machine() -> dict[str, Any]:
    """What the timings were measured on, including how busy the machine was."""
    return {
        "cpus": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }


# --------------------------------------------------------------------------- #
# figures
# --------------------------------------------------------------------------- #


def _figures(reports: dict[str, EvaluationReport], folder: Path) -> None:
    """One two-panel figure (linear and log cost) per low-noise pool, and a 3×3 grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for pool in POOLS:
        report = reports[f"{pool}-low"]
        figure, axes = plt.subplots(1, 2, figsize=(13, 6), layout="constrained")
        for ax, log_cost in zip(axes, (False, True), strict=True):
            report.plot(ax=ax, log_cost=log_cost,
                        title=f"RouterBench subset, {pool} models, low noise"
                              f"{' (log cost)' if log_cost else ''}")
        _legend_below(figure, axes)
        figure.savefig(folder / f"routerbench_{pool}_low.png", dpi=120)
        plt.close(figure)
    figure, axes = plt.subplots(len(POOLS), len(NOISES), figsize=(18, 15), layout="constrained")
    for row, pool in enumerate(POOLS):
        for column, noise in enumerate(NOISES):
            reports[f"{pool}-{noise}"].plot(ax=axes[row, column], log_cost=True,
                                            title=f"{pool} models, {noise} noise (log cost)")
    _legend_below(figure, axes.ravel())
    figure.savefig(folder / "routerbench_all.png", dpi=90)
    plt.close(figure)


def _legend_below(figure, axes) -> None:
    """One legend under the panels instead of one per panel over the single models' labels.

    Minor tick labels of log axes are dropped too: across the short cost
    range of a pool they overlap.
    """
    from matplotlib.ticker import NullFormatter

    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        ax.get_legend().remove()
        if ax.get_xscale() == "log":
            ax.xaxis.set_minor_formatter(NullFormatter())
    figure.legend(handles, labels, loc="outside lower center", ncol=len(labels))


# --------------------------------------------------------------------------- #
# tables
# --------------------------------------------------------------------------- #


def _tables(reports: dict[str, EvaluationReport], ablations: dict[str, dict[str, EvaluationReport]],
            payload: dict[str, Any]) -> str:
    """The generated part of reproduction.md."""
    first = reports[SETTINGS[0]]
    machine = payload["machine"]
    parts = [
        "_Generated by `python docs/reproduce.py`; do not edit by hand._",
        "",
        f"Data: `{payload['data']}` ({first.n_calibration + first.n_test:,} queries). "
        f"Calibration fraction {CALIBRATION_FRACTION} → {first.n_calibration} calibration / "
        f"{first.n_test} test queries; seed {SEED}; `max_depth` {MAX_DEPTH} for cascade routing (the cascades "
        f"may run every model); one λ for all steps (no per-step search); σ transform `(scale, power)` chosen "
        f"per budget on calibration among {', '.join(str(t) for t in SIGMA_TRANSFORMS)}; "
        f"{payload['protocol']['n_boot']} paired bootstrap resamples.",
        "",
        f"**Wall time: {payload['main_seconds']:.0f} s for the nine settings** "
        f"({payload['total_seconds']:.0f} s with the ablations) on {machine['cpus']} CPUs, "
        f"{machine['numba_threads']} numba threads, load average at start "
        f"{machine['load_average_at_start'][0]:.1f} (other jobs were running).",
        "",
        "### Ours: AUC ×100 with 95 % bootstrap interval",
        "",
        _auc_table(reports, SETTINGS),
        "",
        "### The paper (ALGORITHM.md §6, full RouterBench, 5 % calibration)",
        "",
        _paper_table(),
        "",
        "### Gain over the linear baseline (AUC − linear), ours / paper",
        "",
        _gain_table(reports),
        "",
        "### Does cascade routing match or beat every other strategy?",
        "",
        "Paired bootstrap interval of AUC(cascade routing) − AUC(other); the claim holds in a setting "
        "when every upper bound is ≥ 0.",
        "",
        _difference_table(reports, SETTINGS),
        "",
        "### Budget statuses (met / above_max / below_min, of all budgets) and seconds per setting",
        "",
        _status_table(reports, SETTINGS),
    ]
    if "identity_sigma" in ablations:
        parts += [
            "",
            "### Ablation: σ as the estimates give it, against the σ transform chosen on calibration",
            "",
            "Same splits, estimates and budgets as the main table. Each cell: AUC with the chosen transform "
            "(main table) / with σ unchanged, and their difference.",
            "",
            _transform_table(reports, ablations["identity_sigma"]),
            "",
            "Transforms chosen for cascade routing, over the budgets of each setting:",
            "",
            _chosen_transforms_table(reports),
        ]
    if "uniform_depths" in ablations:
        depth_reports = ablations["uniform_depths"]
        parts += [
            "",
            "### Ablation: every strategy at depth 5 on the 11-model pool (our earlier reading)",
            "",
            "Same split, estimates and budgets as the main table; the threshold and optimal cascades, too, "
            "stop after 5 models, so they can never reach the dearest ones.",
            "",
            _auc_table(depth_reports, list(depth_reports)),
            "",
            _difference_table(depth_reports, list(depth_reports)),
            "",
            _status_table(depth_reports, list(depth_reports)),
        ]
    if "paper_calibration" in ablations:
        small = ablations["paper_calibration"]
        sample = next(iter(small.values()))
        parts += [
            "",
            f"### Ablation: the paper's 5 % calibration split ({sample.n_calibration} calibration / "
            f"{sample.n_test} test queries)",
            "",
            _auc_table(small, list(small)),
            "",
            _difference_table(small, list(small)),
            "",
            _overspend_table(small, reports),
        ]
    if "seeds" in ablations:
        parts += [
            "",
            f"### Ablation: other seeds for {CLOSEST_CALL}, routing against cascade routing",
            "",
            "Each seed draws another split, other estimate noise and other bootstrap resamples.",
            "",
            _seed_table({f"seed {SEED}": reports[CLOSEST_CALL], **ablations["seeds"]}),
        ]
    return "\n".join(parts)


def _auc_table(reports: dict[str, EvaluationReport], settings: list[str]) -> str:
    rows = [_header(settings)]
    for name in ROW_ORDER:
        cells = []
        for setting in settings:
            report = reports[setting]
            low, high = report.auc_ci[name]
            best = max(report.auc[s] for s in report.strategies)
            value = f"{report.auc[name]:.2f}"
            cells.append(f"{'**' + value + '**' if report.auc[name] == best else value} "
                         f"[{low:.2f}, {high:.2f}]")
        rows.append(f"| {STRATEGY_LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _transform_table(reports: dict[str, EvaluationReport], identity: dict[str, EvaluationReport]) -> str:
    rows = [_header(SETTINGS)]
    for name in ("cascade", "cascade_routing"):
        cells = [f"{reports[s].auc[name]:.2f} / {identity[s].auc[name]:.2f} "
                 f"({reports[s].auc[name] - identity[s].auc[name]:+.2f})" for s in SETTINGS]
        rows.append(f"| {STRATEGY_LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _chosen_transforms_table(reports: dict[str, EvaluationReport]) -> str:
    rows = [_header(SETTINGS)]
    counts = {s: Counter(tuple(p["sigma_transform"]) for p in reports[s].curves["cascade_routing"])
              for s in SETTINGS}
    for transform in SIGMA_TRANSFORMS:
        label = f"{transform[0]:g}·σ" + (f"^{transform[1]:g}" if transform[1] != 1 else "")
        rows.append(f"| {label} | " + " | ".join(str(counts[s][transform]) for s in SETTINGS) + " |")
    return "\n".join(rows)


def _paper_table() -> str:
    rows = [_header(SETTINGS)]
    for name in ROW_ORDER:
        rows.append(f"| {STRATEGY_LABELS[name]} | " + " | ".join(f"{v:.2f}" for v in PAPER[name]) + " |")
    return "\n".join(rows)


def _gain_table(reports: dict[str, EvaluationReport]) -> str:
    rows = [_header(SETTINGS)]
    for name in ROW_ORDER[1:]:
        cells = [f"{reports[s].auc[name] - reports[s].auc['linear']:+.2f} / "
                 f"{PAPER[name][i] - PAPER['linear'][i]:+.2f}" for i, s in enumerate(SETTINGS)]
        rows.append(f"| {STRATEGY_LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _difference_table(reports: dict[str, EvaluationReport], settings: list[str]) -> str:
    rows = [_header(settings)]
    for name in ROW_ORDER[:-1]:
        cells = []
        for setting in settings:
            estimate, low, high = reports[setting].differences[f"cascade_routing-{name}"]
            cells.append(f"{estimate:+.2f} [{low:+.2f}, {high:+.2f}]{'' if high >= 0 else ' ✗'}")
        rows.append(f"| − {STRATEGY_LABELS[name]} | " + " | ".join(cells) + " |")
    verdicts = ["yes" if _claim_holds(reports[s]) else "**no**" for s in settings]
    rows.append("| **claim holds** | " + " | ".join(verdicts) + " |")
    return "\n".join(rows)


def _status_table(reports: dict[str, EvaluationReport], settings: list[str]) -> str:
    rows = [_header(settings)]
    for name in ROW_ORDER[1:]:
        cells = []
        for setting in settings:
            counts = Counter(p["status"] for p in reports[setting].curves[name])
            cells.append(f"{counts['met']}/{counts['above_max']}/{counts['below_min']}")
        rows.append(f"| {STRATEGY_LABELS[name]} | " + " | ".join(cells) + " |")
    rows.append("| unclamped fits over budget on calibration | "
                + " | ".join(str(_over_budget(reports[s])) for s in settings) + " |")
    rows.append("| seconds | " + " | ".join(f"{reports[s].seconds:.0f}" for s in settings) + " |")
    return "\n".join(rows)


def _over_budget(report: EvaluationReport) -> int:
    """Fits not clamped (``below_min``) whose calibration cost still exceeds the budget: should be 0."""
    return sum(p["calibration_cost"] > p["budget"] for points in report.curves.values()
               for p in points if p["status"] != "below_min")


def _seed_table(reports: dict[str, EvaluationReport]) -> str:
    rows = ["| | routing | cascade routing | cascade routing − routing [95 % CI] |", "|---|---|---|---|"]
    for name, report in reports.items():
        estimate, low, high = report.differences["cascade_routing-routing"]
        rows.append(f"| {name} | {report.auc['routing']:.2f} | {report.auc['cascade_routing']:.2f} | "
                    f"{estimate:+.2f} [{low:+.2f}, {high:+.2f}] |")
    differences = [report.differences["cascade_routing-routing"][0] for report in reports.values()]
    rows.append(f"| mean over seeds | | | {np.mean(differences):+.2f} |")
    return "\n".join(rows)


def _overspend_table(small: dict[str, EvaluationReport], reports: dict[str, EvaluationReport]) -> str:
    """Largest test overspend (test cost / budget − 1) among met budgets, small vs main split."""
    settings = list(small)
    rows = ["Largest test overspend among budgets met on calibration (test cost / budget − 1), "
            f"{PAPER_CALIBRATION_FRACTION} vs {CALIBRATION_FRACTION} calibration:", "", _header(settings)]
    for name in ROW_ORDER[1:]:
        cells = [f"{_overspend(small[s], name):+.0%} vs {_overspend(reports[s], name):+.0%}" for s in settings]
        rows.append(f"| {STRATEGY_LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _overspend(report: EvaluationReport, name: str) -> float:
    met = [p for p in report.curves[name] if p["status"] == "met"]
    return max((p["cost"] / p["budget"] - 1 for p in met), default=float("nan"))


def _claim_holds(report: EvaluationReport) -> bool:
    """Cascade routing's AUC is not significantly below any other strategy's."""
    return all(report.differences[f"cascade_routing-{name}"][2] >= 0 for name in report.strategies[1:])


def _header(settings: list[str]) -> str:
    return "| | " + " | ".join(settings) + " |\n|---|" + "---|" * len(settings)


def _write_tables(path: Path, generated: str) -> None:
    """Replace the generated block of ``path`` (create the file around it if needed)."""
    replace_block(path, generated, BEGIN, END, f"# RouterBench reproduction\n\n{BEGIN}\n{END}\n")


if __name__ == "__main__":
    sys.exit(main())
