"""Snapshot every decision, estimate and replayed outcome, and compare two snapshots bit for bit.

Why: refactors of the estimators and the serving path must not change a
single number. ``capture`` runs the public entry points only
(``training.fit``, ``training.load_router`` and the router's methods,
``python -m training.score``), so the same script runs on the code before
and after a change::

    python bench/snapshot.py capture /tmp/before      # on the old commit
    python bench/snapshot.py capture /tmp/after       # on the new one
    python bench/snapshot.py compare /tmp/before /tmp/after

It fits the built-in synthetic default (LightGBM), the shared RouterBench
table with LightGBM and with ridge (skipped when ``../shared/data`` is
absent), then records per artifact: the fitted policies, ``report.json``
(without wall-clock fields), ``router.estimates`` / ``plan`` / ``select`` on
600 queries with random run sets built from the logged responses and
costs, and the output of ``training.score`` on the logged table (full
replay) and on its query rows. ``compare`` requires exact equality of every
array, float and string.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
ROUTERBENCH = ROOT.parent / "shared" / "data" / "routerbench_subset" / "routerbench_subset.parquet"
N_QUERIES = 600


def _fits(folder: Path) -> list[tuple[str, list[str], Path]]:
    """``(name, training.fit arguments, logged table)`` of each fit to snapshot."""
    from training.synthetic import make_benchmark

    synthetic = folder / "synthetic.parquet"
    make_benchmark(3000, seed=0).to_parquet(synthetic)
    fits = [("synthetic", [], synthetic)]
    if ROUTERBENCH.exists():
        fits.append(("routerbench_learned", ["--data", str(ROUTERBENCH), "--budget", "0.0005", "0.002"],
                     ROUTERBENCH))
        fits.append(("routerbench_linear", ["--data", str(ROUTERBENCH), "--estimator", "linear",
                                            "--budget", "0.001"], ROUTERBENCH))
    return fits


def _policies(router) -> list[dict]:
    out = []
    for policy in router.policies:
        fields = {}
        for name, value in vars(policy).items():
            if name == "search_evaluations":
                continue
            fields[name] = (np.asarray(value).tolist() if isinstance(value, np.ndarray)
                            else repr(value) if isinstance(value, float) else value)
        out.append(fields)
    return out


def _observed(frame: pd.DataFrame, models, rng) -> tuple[list[str], dict, list[dict]]:
    """Prompts, per-query inputs and random observed run sets of ``N_QUERIES`` queries."""
    ids = frame["query_id"].drop_duplicates().to_numpy()
    ids = rng.choice(ids, size=min(N_QUERIES, ids.size), replace=False)
    rows = frame[frame["query_id"].isin(ids)].set_index(["query_id", "model"])
    prompts, tasks, subtasks, observed = [], [], [], []
    for i, query in enumerate(ids):
        first = rows.loc[query].iloc[0]
        prompts.append(str(first["prompt"]))
        tasks.append(str(first["task"]))
        subtasks.append("" if pd.isna(first["subtask"]) else str(first["subtask"]))
        size = i % (min(len(models), 4) + 1)
        chosen = rng.choice(len(models), size=size, replace=False)
        observed.append({models[j]: {"response": str(rows.loc[(query, models[j]), "response"]),
                                     "cost": float(rows.loc[(query, models[j]), "cost_usd"])} for j in chosen})
    return prompts, {"tasks": tasks, "subtasks": subtasks}, observed


def _per_query(router, inputs: dict) -> dict:
    columns = list(getattr(router.estimator, "columns_", ["prompt"]))
    return {k: v for k, v in inputs.items() if k[:-1] in columns}


def capture(folder: Path) -> None:
    from training import load_router

    folder.mkdir(parents=True, exist_ok=True)
    for name, arguments, logged in _fits(folder):
        artifact, report = folder / f"{name}.joblib", folder / f"{name}_report"
        subprocess.run([sys.executable, "-m", "training.fit", *arguments, "--out", str(artifact),
                        "--report", str(report), "--quiet"], check=True, cwd=ROOT)
        router = load_router(artifact)
        frame = pd.read_parquet(logged)
        prompts, inputs, observed = _observed(frame, router.models_, np.random.default_rng(0))
        per_query = _per_query(router, inputs)
        estimates, run = router.estimates(prompts, observed, **per_query)
        arrays = {"quality": estimates.quality, "sigma": estimates.sigma, "cost": estimates.cost, "run": run}
        for budget in router.budgets:
            plans = router.plan(prompts, observed, budget, **per_query)
            arrays[f"next@{budget!r}"] = np.array([p.next or "" for p in plans])
            arrays[f"plan@{budget!r}"] = np.array([",".join(p.models) for p in plans])
        ran = [i for i, o in enumerate(observed) if o]
        arrays["select"] = np.array(router.select([prompts[i] for i in ran], [observed[i] for i in ran],
                                                  **{k: [v[i] for i in ran] for k, v in per_query.items()}))
        np.savez(folder / f"{name}_router.npz", **arrays)
        summary = json.loads((report / "report.json").read_text())
        for where in ("seconds", "peak_rss_gib", "artifact", "data"):  # wall clock, memory and paths
            summary.pop(where, None)
        (folder / f"{name}_summary.json").write_text(json.dumps({"policies": _policies(router), "report": summary},
                                                                sort_keys=True, indent=1))
        queries = frame.drop_duplicates("query_id")[["query_id", "prompt", "task", "subtask"]]
        queries.to_parquet(folder / f"{name}_queries.parquet")
        for kind, source in (("replay", logged), ("queries", folder / f"{name}_queries.parquet")):
            for budget in router.budgets:
                subprocess.run([sys.executable, "-m", "training.score", "--artifact", str(artifact),
                                "--input", str(source), "--output", str(folder / f"{name}_{kind}@{budget!r}.parquet"),
                                "--budget", repr(budget), "--quiet"], check=True, cwd=ROOT,
                               stdout=subprocess.DEVNULL)
        print(f"captured {name}", flush=True)


def compare(before: Path, after: Path) -> int:
    differences = 0
    names = sorted(p.name for p in before.glob("*_summary.json"))
    if not names:
        print(f"{before} holds no snapshot")
        return 1
    for summary in names:
        name = summary.removesuffix("_summary.json")
        a, b = (json.loads((d / summary).read_text()) for d in (before, after))
        for report in (a["report"], b["report"]):  # snapshots taken before paths and memory were left out
            for measured in ("artifact", "data", "peak_rss_gib"):
                report.pop(measured, None)
        if a != b:
            differences += 1
            print(f"{name}: policies or report differ")
            for key in a:
                if a[key] != b.get(key):
                    print(f"  {key}: {json.dumps(a[key])[:400]}\n  vs    {json.dumps(b.get(key))[:400]}")
        x, y = (np.load(d / f"{name}_router.npz") for d in (before, after))
        for key in x.files:
            if key not in y.files or x[key].shape != y[key].shape or not np.array_equal(x[key], y[key]):
                differences += 1
                worst = (np.max(np.abs(x[key] - y[key])) if key in y.files and x[key].dtype.kind == "f"
                         and x[key].shape == y[key].shape else "n/a")
                print(f"{name}: router {key} differs (largest difference {worst})")
        for path in sorted(before.glob(f"{name}_*@*.parquet")):
            p, q = pd.read_parquet(path), pd.read_parquet(after / path.name)
            for frame in (p, q):  # list columns compare as tuples
                for column in frame.columns:
                    if frame[column].dtype == object:
                        frame[column] = frame[column].map(lambda v: tuple(v) if isinstance(v, np.ndarray) else v)
            added = [c for c in q.columns if c not in p.columns]
            if added:  # a later release may add columns; every column both have must be equal
                print(f"{name}: {path.name} has new column(s) {added} (not compared)")
                q = q.drop(columns=added)
            if not p.equals(q):
                differences += 1
                print(f"{name}: {path.name} differs")
        print(f"{name}: compared")
    print("identical" if not differences else f"{differences} difference(s)")
    return 1 if differences else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "capture":
        capture(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
