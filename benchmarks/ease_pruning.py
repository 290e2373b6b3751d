"""What pruning EASE's columns costs, on validation: NDCG@10 by weights kept per column.

    python benchmarks/ease_pruning.py ml100k:1 latest:1

For each ``DATA:SEED``: the P2 split ``holdout_per_user(ds, 0.2, seed)`` (its test part is never
read), a validation split ``holdout_per_user(train, 0.2, seed + 1000)`` carved from training,
EASE over the 6,000 most-rated items of the fit part at lambda 200, 300 and 500, each column
pruned to its 128 ... 1,024 largest weights (as ``ranking.item_item.item_item_matrix`` does) or
kept whole, and full-ranking NDCG@10 on the validation part. One JSON line per (data, lambda).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import validation_quick as vq

from movierec.core.loaders import load_dataset
from movierec.core.ease import ease_weights
from movierec.core.metrics import topn_metrics
from movierec.core.splits import holdout_per_user
from ranking.item_item import _prune_columns, binary, most_rated

KEEP = (128, 256, 512, 1024, None)


def main() -> None:
    for spec in sys.argv[1:] or ["ml100k:1"]:
        name, seed = spec.split(":")
        train, _test = holdout_per_user(load_dataset(vq.PATHS[name]), 0.2, int(seed))
        fit, val = holdout_per_user(train, 0.2, int(seed) + 1000)
        rel = val.to_csr().tocsr()
        users = np.flatnonzero(np.diff(rel.indptr) > 0)
        x = binary(fit.to_csr())
        kept = most_rated(x, 6000)
        seen = x[users].nonzero()
        for lam in (200, 300, 500):
            t = time.perf_counter()
            w = ease_weights(x[:, kept], lam)
            fit_s = time.perf_counter() - t
            row = {}
            for keep in KEEP:
                wk = w if keep is None or keep >= len(kept) else _prune_columns(w, keep).toarray()
                scores = np.full((len(users), x.shape[1]), -np.inf, np.float32)
                scores[:, kept] = np.asarray(x[users][:, kept] @ wk)
                scores[seen] = -np.inf
                top = np.argsort(-scores, axis=1)[:, :10]
                row[str(keep or "all")] = round(topn_metrics(top, rel[users], 10)["ndcg@10"], 4)
            print(json.dumps(dict(data=spec, lam=lam, fit_s=round(fit_s, 2), ndcg_by_weights_kept=row)), flush=True)


if __name__ == "__main__":
    main()
