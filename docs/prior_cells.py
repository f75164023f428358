"""Out-of-fold log loss of the learned estimator's prior alone, per choice of cells (``docs/peers.md``).

For one shared table, on the protocol's training split of each seed (half
the queries, as in ``docs/peers.py``), with the estimator's own two folds
(``GroupKFold`` over the augmented rows, :mod:`estimators.quality`), prints
the out-of-fold log loss per (query, model) of the shrunk per-cell means
(:func:`estimators.clusters._out_of_fold_loss`, the best shrinkage of
:data:`estimators.clusters.PRIOR_WEIGHTS`) with the label columns left in
the table as cells, alone (``0``) and with k-means clusters of the prompt
features for each count asked. Run from the repository root::

    python docs/prior_cells.py llmrouter_9models 0,1,2 32,64 task,subtask   # clusters alone
    python docs/prior_cells.py llmrouter_9models 0,1,2 32,64 task           # clusters and the subtask
    python docs/prior_cells.py llmrouter_9models 0,1,2 32 subtask           # the task label (column "0")

Arguments: table, seeds, cluster counts, the columns read as absent.
Seeded; about 10 CPU-s per seed.
"""

from __future__ import annotations

import sys

import numpy as np
from peers import DATA, _table_path
from sklearn.cluster import KMeans
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from estimators.clusters import PRIOR_WEIGHTS, CellPrior, PromptClusters, _out_of_fold_loss, cluster_space
from estimators.featurize import make_prompt_featurizer, prompt_frame
from estimators.peers import CATEGORY_PREFIX
from estimators.prompts import read_prompts
from estimators.runsets import sample_run_sets
from training.data import read_table
from training.protocol import _split


def main(name: str, seeds: list[int], counts: list[int], blank: list[str]) -> None:
    """Print one line per seed: ``count:loss(m shrinkage)`` for no clusters and each count."""
    table = read_table(_table_path(DATA, name)).without(blank)
    for seed in seeds:
        train, _ = _split(table.n_queries, 0.5, seed)
        sub = table.subset(train)
        prompts, _ = read_prompts(sub.prompts)
        frame = prompt_frame(prompts, sub.tasks, sub.subtasks, n=sub.n_queries)
        featurizer = make_prompt_featurizer(list(frame.columns)).fit(frame)
        features = featurizer.transform(frame)
        names = [str(n) for n in featurizer.get_feature_names_out()]
        rows, _ = sample_run_sets(sub.n_queries, sub.n_models, random_state=0)
        query_fold = np.zeros(sub.n_queries, dtype=np.int64)
        for fold, (_, inside) in enumerate(GroupKFold(2).split(rows, groups=rows)):
            query_fold[rows[inside]] = fold
        labels = np.flatnonzero([n.startswith(CATEGORY_PREFIX) for n in names]).astype(np.int64)
        columns, offset, scale = cluster_space(features, names)
        space = (features[:, columns] - offset) * scale
        out = []
        for count in [0, *counts]:
            clusters = None
            if count:
                with threadpool_limits(1):
                    kmeans = KMeans(n_clusters=count, n_init=3, random_state=0).fit(space)
                clusters = PromptClusters(kmeans, columns, offset, scale)
            loss = _out_of_fold_loss(CellPrior(labels, clusters, 0.0).keys(features), sub.quality, query_fold,
                                     PRIOR_WEIGHTS) / sub.quality.size
            best = int(np.argmin(loss))
            out.append(f"{count}:{loss[best]:.4f}(m{PRIOR_WEIGHTS[best]:g})")
        print(name, "without", blank, "seed", seed, " ".join(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2].split(",")], [int(c) for c in sys.argv[3].split(",") if c],
         [c for c in sys.argv[4].split(",") if c])
