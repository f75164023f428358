"""Close the loop on RouterBench (issue 34): serve with exploration, log, refit, and evaluate off-policy.

Run from the repository root (about 5 minutes on 2 cores)::

    nice python docs/feedback_loop.py

What it does, with the logged RouterBench outcomes standing in for upstreams
(no HTTP: the service's own pieces, ``Router.decide``/``Router.select`` one
batch per cascade step (:func:`training.offpolicy.replay`), its exploration
draw (:class:`training.explore.Exploration`), its row builder and
log writer (:mod:`training.serving.traffic`), and the log reader
:func:`training.traffic_log.read_logs` with the labels joined):

1. fit's seeded split of the table (train / calibration / test, test fully
   logged as in ``docs/partial_logs.py``); a router **R0** fitted on a
   random 10 % of the train+calibration queries (full logs of those);
2. the other 90 % served by R0 (its middle budget, not paced: the replay is
   batched) with exploration ``ε = 0.1`` drawing ``m = 3`` models, written
   to a traffic log, every answer labelled with its RouterBench quality
   (a judge); the log read back;
3. refits on the 10 % plus the log: **with** its propensities and
   **without** (the column dropped); and **full**, the same queries with
   every outcome (the ceiling). Test AUC (cascade routing, ×100, over the
   full fit's single-model cost range) of each, and the share of the gap
   R0 → full the refit recovers;
4. off-policy evaluation: the test queries served by R0 with the same
   exploration, 50 seeds (only the exploration draws change); the
   candidate is the *full* router; IPS and doubly robust estimates of its
   mean quality (95 % intervals) against its true quality on those queries
   (its cascade run with every outcome). Seed 0 is estimated from a real
   log (:func:`training.offpolicy.estimate`); the other seeds reuse the
   replays (the candidate's and the logger's paths do not depend on the
   draws) and only redraw the exploration, and the script checks that the
   two ways agree on seed 0.

Writes ``docs/feedback_loop.json`` and the table of ``docs/feedback_loop.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generated import replace_block, write_atomically  # noqa: E402
from partial_logs import DATA, FRACTIONS, STRATEGY, run_fit, with_split_column  # noqa: E402

from training.data import read_table  # noqa: E402
from training.explore import Exploration  # noqa: E402
from training.fit import default_budgets, split  # noqa: E402
from training.metrics import auc, auc_bounds  # noqa: E402
from training.offpolicy import Interval, _prior, estimate, replay  # noqa: E402
from training.router import load_router  # noqa: E402
from training.serving.traffic import TrafficLog, request_rows  # noqa: E402
from training.traffic_log import read_logs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
COLUMNS = ["query_id", "prompt", "task", "subtask", "model", "response", "cost_usd", "quality", "split"]
BEGIN, END = "<!-- feedback_loop.py:begin -->", "<!-- feedback_loop.py:end -->"
Reply = namedtuple("Reply", "text cost prompt_tokens completion_tokens")
Step = namedtuple("Step", "model reply failure seconds")


def outcome_of(table, rows):
    """``outcome(i, model)`` of :func:`replay` for the queries ``rows`` of the full table."""
    column = {m: j for j, m in enumerate(table.models)}

    def outcome(i, model):
        q, j = rows[i], column[model]
        return {"cost": table.cost[q, j], "response": table.responses[q, j], "quality": table.quality[q, j]}

    return outcome


def keywords_of(table, rows):
    """The per-query columns the table has, for ``rows``."""
    return {name: list(values[rows]) for name, values in (("tasks", table.tasks), ("subtasks", table.subtasks))
            if values is not None}


def serve(router, table, rows, exploration, rng, budget):
    """The logger's cascades on ``rows`` (full information) and each query's exploration draw."""
    keywords = keywords_of(table, rows)
    played = replay(router, list(table.prompts[rows]), outcome_of(table, rows), budget=budget, **keywords)
    draws = [exploration.draw(rng, table.models) for _ in rows]
    return played, draws


def write_log(folder, table, rows, played, draws, exploration, budget):
    """The served queries' rows through the service's row builder and log writer (query ids as request ids)."""
    log = TrafficLog(folder, max_rows=5000)
    column = {m: j for j, m in enumerate(table.models)}
    try:
        for i, q in enumerate(rows):
            extra = [m for m in draws[i] if m not in played.paths[i]]
            steps = [Step(m, Reply(table.responses[q, column[m]], table.cost[q, column[m]], 0, 0), None, 0.0)
                     for m in [*played.paths[i], *extra]]
            cost = float(sum(s.reply.cost for s in steps))
            task = "" if table.tasks is None else table.tasks[q]
            subtask = "" if table.subtasks is None else table.subtasks[q]
            log.submit(request_rows(table.query_ids[q], table.prompts[q], task, subtask, steps,
                                    played.selected[i], budget=budget, lambdas=[], paced=False, cost=cost,
                                    explored=len(extra), exploration=exploration, n_models=len(table.models)))
    finally:
        log.close()
    labels = read_logs(folder, keep_unlabelled=True)[["query_id", "model"]]
    q = pd.Index(table.query_ids).get_indexer(labels["query_id"])
    j = pd.Index(table.models).get_indexer(labels["model"])
    return read_logs(folder, labels.assign(quality=table.quality[q, j]))  # a judge labels every answer


def fit(name, frame, work, budgets, seed):
    data = work / f"{name}.parquet"
    frame.to_parquet(data)
    command = [sys.executable, "-m", "training.fit", "--data", str(data), "--seed", str(seed),
               "--budget", *map(repr, budgets), "--out", str(work / name / "router.joblib"),
               "--report", str(work / name), "--quiet", "--split-column"]
    report, seconds = run_fit(name, command)
    return report, work / name / "router.joblib"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--explore-models", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial 10 %% and of the served queries' exploration draws; the docs "
                             "are the run of seed 0, another seed only prints its table and writes its JSON "
                             "into --work-dir (or the current folder)")
    args = parser.parse_args(argv)
    table = read_table(DATA)
    train, calibration, test = split(table.n_queries, FRACTIONS, 0)
    hidden = np.union1d(train, calibration)
    rng = np.random.default_rng(args.seed)
    initial = np.sort(rng.choice(hidden, size=round(0.1 * len(hidden)), replace=False))
    rest = np.setdiff1d(hidden, initial)
    frame = with_split_column(pd.read_parquet(DATA), table, (train, calibration, test))[COLUMNS]
    q_of = pd.Index(table.query_ids).get_indexer(frame["query_id"].astype(str))
    budgets = default_budgets(table.cost[calibration].mean(axis=0))
    budget = budgets[1]
    exploration = Exploration(args.epsilon, args.explore_models)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="feedback_loop_") as scratch:
        work = Path(args.work_dir or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        seed_rows = frame[np.isin(q_of, np.union1d(initial, test))]
        report0, artifact0 = fit("r0", seed_rows, work, budgets, 0)
        router0 = load_router(artifact0)
        played, draws = serve(router0, table, rest, exploration, random.Random(1 + args.seed), budget)
        logged = write_log(work / "log", table, rest, played, draws, exploration, budget)
        refit = pd.concat([seed_rows.assign(propensity=1.0), logged.assign(
            split=with_split_column(logged, table, (train, calibration, test))["split"])[COLUMNS + ["propensity"]]],
            ignore_index=True)
        reports = {"r0": report0}
        reports["refit"], _ = fit("refit", refit, work, budgets, 0)
        reports["refit_no_propensity"], _ = fit("refit_no_propensity", refit.drop(columns="propensity"), work,
                                                budgets, 0)
        reports["full"], artifact_full = fit("full", frame[np.isin(q_of, np.union1d(hidden, test))], work,
                                             budgets, 0)
        single = reports["full"]["single_models"]
        lo, hi, left = auc_bounds([s["cost"] for s in single], [s["quality"] for s in single])
        for name, report in reports.items():
            curve = report["curve"]
            results[name] = {"auc": auc([r["test_cost"] for r in curve], [r["test_quality"] for r in curve],
                                              lo, hi, left_quality=left),
                             "n_train": report["n_train"], "n_calibration": report["n_calibration"],
                             "n_test": report["n_test"], "calibration": report.get("calibration")}
        gap = results["full"]["auc"] - results["r0"]["auc"]
        for name in ("refit", "refit_no_propensity"):
            results[name]["recovered"] = (results[name]["auc"] - results["r0"]["auc"]) / gap
        explored_rows = int(logged["explored"].sum())
        # Off-policy evaluation of the full router on the test queries, logged by R0.
        candidate = load_router(artifact_full)
        keywords = keywords_of(table, test)
        truth = replay(candidate, list(table.prompts[test]), outcome_of(table, test), budget=budget, **keywords)
        logger = replay(router0, list(table.prompts[test]), outcome_of(table, test), budget=budget, **keywords)
        true_quality, true_cost = float(truth.quality.mean()), float(truth.cost.mean())
        prior = _prior(candidate, list(table.prompts[test]), budget, keywords.get("tasks"), keywords.get("subtasks"))
        cascades = [set(p) for p in logger.paths]
        outside = np.array([len(set(p) - c) for p, c in zip(truth.paths, cascades, strict=True)])
        p = np.array([exploration.path_probability(j, len(table.models)) for j in outside])
        seeds = []
        for seed in range(args.seeds):
            rng_seed = random.Random(1000 + seed)
            drawn = [exploration.draw(rng_seed, table.models) for _ in test]
            seen = np.array([set(path) <= c | set(d) for path, c, d in zip(truth.paths, cascades, drawn,
                                                                           strict=True)]) & (p > 0)
            w = np.where(seen, 1 / np.where(p > 0, p, 1), 0.0)
            entry = {"seed": seed, "observed": int(seen.sum())}
            for name, value, direct in (("quality", truth.quality, prior[0]), ("cost", truth.cost, prior[1])):
                y = np.where(seen, value, 0.0)
                ips = Interval.of(w * y, 1.96)
                dr = Interval.of(direct + w * (y - np.where(seen, direct, 0.0)), 1.96)
                entry[f"ips_{name}"], entry[f"dr_{name}"] = ips.__dict__, dr.__dict__
            if seed == 0:  # the same estimate from a real log
                rows = write_log(work / "log_test", table, test, logger, drawn, exploration, budget)
                real = estimate(candidate, rows, budget=budget)
                assert abs(real.dr_quality.value - entry["dr_quality"]["value"]) < 1e-9, (real, entry)
                assert abs(real.ips_quality.value - entry["ips_quality"]["value"]) < 1e-9, (real, entry)
                entry["from_log"] = real.as_dict()
            seeds.append(entry)
    covered = {k: sum(Interval(**s[k]).covers(true_quality if "quality" in k else true_cost) for s in seeds)
               for k in ("ips_quality", "dr_quality", "ips_cost", "dr_cost")}
    payload = {"command": "python docs/feedback_loop.py", "data": str(DATA.relative_to(ROOT.parent)),
               "epsilon": args.epsilon, "explore_models": args.explore_models, "budget": budget,
               "split": {"train": len(train), "calibration": len(calibration), "test": len(test)},
               "initial_queries": len(initial), "served_queries": len(rest), "logged_rows": len(logged),
               "explored_rows": explored_rows, "fits": results,
               "ope": {"candidate": "full", "true_quality": true_quality, "true_cost": true_cost,
                       "unsupported_queries": int((p == 0).sum()), "queries": len(test),
                       "paths_differing": float(np.mean([a != b for a, b in zip(truth.paths, logger.paths,
                                                                                 strict=True)])),
                       "covered_of": len(seeds), "covered": covered, "seeds": seeds},
               "machine": {"cpus": os.cpu_count(), "load_average_at_end": list(os.getloadavg())}}
    payload["seed"] = args.seed
    text = table_text(payload)
    if args.seed:
        write_atomically(Path(args.work_dir or ".") / "feedback_loop.json", json.dumps(payload, indent=1,
                                                                                      default=float) + "\n")
    else:
        write_atomically(DOCS / "feedback_loop.json", json.dumps(payload, indent=1, default=float) + "\n")
        replace_block(DOCS / "feedback_loop.md", text, BEGIN, END, f"# Closing the loop\n\n{BEGIN}\n{END}\n")
    print(text)
    return 0


def table_text(payload: dict) -> str:
    fits, ope = payload["fits"], payload["ope"]
    lines = ["_Generated by `python docs/feedback_loop.py`; do not edit by hand._", "",
             f"{payload['initial_queries']} initial queries (10 % of train+calibration, full logs), "
             f"{payload['served_queries']} served by R0 with ε = {payload['epsilon']}, m = "
             f"{payload['explore_models']}: {payload['logged_rows']} logged rows, {payload['explored_rows']} of "
             f"them explored; budget {payload['budget']:.3g} USD; {STRATEGY} test AUC ×100 on "
             f"{fits['full']['n_test']} fully logged test queries.", "",
             "| router | test AUC | share of the R0 → full gap recovered |", "|---|---:|---:|"]
    for name in ("r0", "refit", "refit_no_propensity", "full"):
        share = fits[name].get("recovered")
        lines.append(f"| {name} | {fits[name]['auc']:.2f} | {'' if share is None else f'{100 * share:.0f} %'} |")
    lines += ["", f"Off-policy evaluation of `full` on the {ope['queries']} test queries logged by R0 "
              f"({100 * ope['paths_differing']:.0f} % of its paths differ from R0's, "
              f"{ope['unsupported_queries']} leave it at more than m models): true mean quality "
              f"{ope['true_quality']:.4f}, cost {ope['true_cost']:.3g} USD. Seeds whose 95 % interval covers "
              "the truth:", "", "| estimate | covered | mean width |", "|---|---:|---:|"]
    for key in ("ips_quality", "dr_quality", "ips_cost", "dr_cost"):
        widths = [s[key]["high"] - s[key]["low"] for s in ope["seeds"]]
        lines.append(f"| {key} | {ope['covered'][key]} / {ope['covered_of']} | {np.mean(widths):.3g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
