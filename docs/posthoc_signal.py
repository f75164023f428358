"""What each response check adds to the post-hoc estimates: ``docs/posthoc_signal.json`` and ``.md``.

The default learned estimator reads, after models ran, their answers'
agreement, kind and length, and the checks of
:data:`estimators.posthoc.CHECKS` (code that parses, hedging, a cut-off
answer). This script fits it on the protocol's training split of
``docs/peers.py`` (same seeds, same split) with the checks switched on one
at a time, all together, or none, and scores the post-hoc estimates of a
random run set of three models per test query (Brier score and AUROC, as
``docs/peers.md``). A check stays in the estimator only if it helps here.

Run from the repository root::

    nice -n 10 python docs/posthoc_signal.py --seeds 0,1,2 --variants none,all
    nice -n 10 python docs/posthoc_signal.py --seeds 0 --variants code_parses,hedges,truncated --resume
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from generated import replace_block, write_atomically
from peers import DATA, PROTOCOL, _load, _table_path

import estimators.posthoc as posthoc
from estimators.estimator import make_router_estimator
from training.data import read_table
from training.protocol import _estimate_scores, learned_split

DOCS = Path(__file__).resolve().parent
TABLE = "routerbench_subset"
BEGIN, END = "<!-- posthoc_signal.py:begin -->", "<!-- posthoc_signal.py:end -->"
SKELETON = f"# Post-hoc signal from the responses\n\n{BEGIN}\n{END}\n"


def scores(table: Any, seed: int, variant: str) -> dict[str, Any]:
    """Post-hoc and ex-ante scores of the learned estimator with the checks of ``variant``."""
    all_checks = dict(zip(posthoc.CHECKS, posthoc._CHECKS, strict=True))
    chosen = {"none": [], "all": list(all_checks), "pairs": [], "all+pairs": list(all_checks)}.get(variant, [variant])
    saved = posthoc.CHECKS, posthoc._CHECKS, posthoc.PAIRS
    posthoc.CHECKS, posthoc._CHECKS = tuple(chosen), tuple(all_checks[c] for c in chosen)
    posthoc.PAIRS = variant.endswith("pairs")
    try:
        train, calibration, test = learned_split(table, seed, PROTOCOL["train_fraction"],
                                                 PROTOCOL["calibration_fraction"])
        ordered = table.reorder_models(np.argsort(np.nanmean(table.cost[calibration], axis=0), kind="stable"))
        fitted = make_router_estimator("learned").fit(ordered, train)
        return _estimate_scores(fitted, ordered.subset(test), seed)
    finally:
        posthoc.CHECKS, posthoc._CHECKS, posthoc.PAIRS = saved


def main(argv: Sequence[str] | None = None) -> int:
    """Score every (seed, variant) not yet in the JSON, then write the table."""
    parser = argparse.ArgumentParser(prog="python docs/posthoc_signal.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2])
    parser.add_argument("--variants", default="none,all",
                        help=f"comma-separated: none, all, pairs, all+pairs, or one of {list(posthoc.CHECKS)}")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--json", type=Path, default=DOCS / "posthoc_signal.json")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in ("none", "all", "pairs", "all+pairs", *posthoc.CHECKS)]
    if unknown:
        print(f"posthoc_signal.py: error: unknown variants {unknown}", file=sys.stderr)
        return 2
    payload = (_load(args.json) if args.resume else None) or {"runs": {}}
    table = read_table(_table_path(args.data, TABLE))
    for seed in args.seeds:
        for variant in variants:
            key = f"{seed}/{variant}"
            if key not in payload["runs"]:
                print(f"{key} ...", file=sys.stderr, flush=True)
                payload["runs"][key] = scores(table, seed, variant)
                write_atomically(args.json, json.dumps(payload, indent=1) + "\n")
    text = table_text(payload["runs"])
    replace_block(DOCS / "posthoc_signal.md", text, BEGIN, END, SKELETON)
    print(text)
    return 0


def table_text(runs: dict[str, dict[str, Any]]) -> str:
    """Post-hoc Brier / AUROC per variant (mean over the seeds it ran), and its change from ``none`` on those seeds."""
    lines = [f"{TABLE}, learned estimator, test split, post-hoc estimates of a random run set of three models "
             "per query.", "",
             "| checks | seeds | post-hoc Brier | post-hoc AUROC | Δ Brier vs none | Δ AUROC vs none |",
             "|---|---|---|---|---|---|"]
    variants = sorted({key.split("/")[1] for key in runs}, key=lambda v: (v != "none", v != "all", v))
    for variant in variants:
        seeds = sorted(int(key.split("/")[0]) for key in runs if key.split("/")[1] == variant)
        post = [runs[f"{s}/{variant}"]["post_hoc"] for s in seeds]
        brier, auroc = np.mean([p["brier"] for p in post]), np.mean([p["auroc"] for p in post])
        paired = [s for s in seeds if f"{s}/none" in runs]
        delta = "— | —"
        if paired and variant != "none":
            db = np.mean([runs[f"{s}/{variant}"]["post_hoc"]["brier"] - runs[f"{s}/none"]["post_hoc"]["brier"]
                          for s in paired])
            da = np.mean([runs[f"{s}/{variant}"]["post_hoc"]["auroc"] - runs[f"{s}/none"]["post_hoc"]["auroc"]
                          for s in paired])
            delta = f"{db:+.4f} | {da:+.4f}"
        lines.append(f"| {variant} | {','.join(map(str, seeds))} | {brier:.4f} | {auroc:.4f} | {delta} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
