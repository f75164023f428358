"""How much the quality estimates gain from more training rows: ``docs/sampling.json`` and ``docs/sampling.md``.

Issue 33 asks whether fitting on months of logs needs a distributed fit of
the quality regressors, or whether a sample loses nothing. This script
measures it on the shared tables (``../shared/data``): the seeded split of
``training.fit`` (train 0.5 / calibration 0.25 / test 0.25, seed 0); the
default learned estimator fitted on a seeded random share of the training
queries, from 1 % to 100 %; on the fixed test queries, the ROC AUC of each
model's ex-ante quality estimate against its observed correctness (quality
above the model's median, for tables whose quality is not 0/1), averaged
over the models, and the mean squared error of the estimates. Seeds 0 and 1
of the subsample (the split stays the same).

Run (a few minutes; ``nice`` on a shared machine)::

    nice -n 10 python docs/sampling.py [TABLE ...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimators.estimator import make_router_estimator  # noqa: E402
from training.data import read_table  # noqa: E402
from training.splits import split  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
TABLES = ("routerbench_subset", "llmrouter_9models", "routellm_gpt4_mixtral")
SHARES = (0.01, 0.03, 0.1, 0.3, 1.0)
SEEDS = (0, 1)


def quality_auc(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean over models of the ROC AUC of the estimate against correctness (above the model's median if not 0/1)."""
    scores = []
    for j in range(truth.shape[1]):
        values = truth[:, j]
        labels = values > (0.5 if np.isin(values, (0.0, 1.0)).all() else np.median(values))
        if 0 < labels.sum() < labels.size:
            scores.append(roc_auc_score(labels, estimate[:, j]))
    return float(np.mean(scores))


def measure(name: str) -> list[dict]:
    table = read_table(SHARED / name / f"{name}.parquet")
    train, _, test = split(table.n_queries, (0.5, 0.25, 0.25), 0, table.fully_logged)
    test_table = table.subset(test)
    rows = []
    for share in SHARES:
        for seed in SEEDS if share < 1.0 else SEEDS[:1]:
            rng = np.random.default_rng(seed)
            size = max(20, int(round(share * len(train))))
            rows_used = np.sort(rng.choice(train, size=min(size, len(train)), replace=False))
            started = time.perf_counter()
            estimator = make_router_estimator("learned").fit(table, rows_used)
            estimate = estimator.predict_table(test_table).quality
            rows.append({"table": name, "share": share, "seed": seed, "train_queries": int(rows_used.size),
                         "train_rows": int(table.logged[rows_used].sum()),
                         "auc": quality_auc(estimate, test_table.quality),
                         "mse": float(np.mean((estimate - test_table.quality) ** 2)),
                         "fit_seconds": time.perf_counter() - started})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| table | share of train | train queries | train rows | quality AUC (mean of seeds) | MSE |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["table"] for r in rows):
        for share in SHARES:
            picked = [r for r in rows if r["table"] == name and r["share"] == share]
            if picked:
                lines.append(f"| {name} | {share:.0%} | {picked[0]['train_queries']:,} | {picked[0]['train_rows']:,} | "
                             f"{np.mean([r['auc'] for r in picked]):.4f} | {np.mean([r['mse'] for r in picked]):.4f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Measure the tables named in ``argv`` (default all three), updating ``sampling.json`` after each."""
    names = [n for n in (argv or TABLES) if (SHARED / n / f"{n}.parquet").exists()]
    path = ROOT / "docs" / "sampling.json"
    kept = json.loads(path.read_text()) if path.exists() else []  # other tables' rows stay
    rows = [row for row in kept if row["table"] not in names]
    for name in names:
        rows += measure(name)
        path.write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
