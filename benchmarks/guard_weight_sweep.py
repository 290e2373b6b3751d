"""The guarded ranker's served NDCG@10 at every weight of its learned order, on validation.

    python benchmarks/guard_weight_sweep.py DATA:SEED [key=value ...]

Same protocol as ``benchmarks/validation_quick.py`` (the P2 split's test part is never read; the
pipeline trains on ``holdout_per_user(train, 0.2, seed + 1000)``'s fit part, rating model off),
then the trained bundle's guard weight is set to 0, 0.2, ..., 1 in turn and the ranked order is
scored on the validation part by NDCG@10 with full ranking, next to EASE at its best lambda. One
JSON line: the weight training chose, the score at each weight and its ratio to EASE.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import validation_quick as vq

from movierec.core.config import load_config
from movierec.core.loaders import load_dataset
from movierec.core.metrics import topn_metrics
from movierec.pipeline import train as train_pipeline
from movierec.core.splits import holdout_per_user
from recommender import HybridRecommender

WEIGHTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def sweep(spec: str, sets: list[str]) -> dict:
    name, seed = spec.split(":")
    seed = int(seed)
    train, _test = holdout_per_user(load_dataset(vq.PATHS[name]), 0.2, seed)  # the test part is never read
    fit, val = holdout_per_user(train, 0.2, seed + 1000)
    rel = val.to_csr().tocsr()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    ease = vq._ease_scores(name, seed, fit, users, rel)
    config = load_config(None, ["ranking.rating.enabled=false", *sets])
    config.trainer.progress = False
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        train_pipeline(fit, f"{d}/b", config)
        wall = time.perf_counter() - t
        model = HybridRecommender.load(f"{d}/b")
        ranker_metrics = json.loads(Path(f"{d}/b/manifest.json").read_text())["metrics"].get("ranker", {})
        net = model.ranker.net
        chosen = net.alpha
        ranked = {}
        for a in (*WEIGHTS, chosen):
            net.alpha = a
            ids, _ = model.recommend_batch(users, 10, rank=True)
            ranked[a] = round(topn_metrics(ids, rel[users], 10)["ndcg@10"], 4)
        ids, _ = model.recommend_batch(users, 10, rank=False)
        two_tower = round(topn_metrics(ids, rel[users], 10)["ndcg@10"], 4)
    best = max(ease.values())
    return dict(
        data=spec, sets=sets, ease={k: round(v, 4) for k, v in ease.items()}, chosen=chosen, ranked_by_weight=ranked,
        ratio_by_weight={a: round(v / best, 4) for a, v in ranked.items()}, two_tower=two_tower, wall=round(wall, 1),
        collab_lambda=ranker_metrics.get("collab_lambda"),
    )


def main() -> None:
    spec, *sets = sys.argv[1:]
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    print(json.dumps(sweep(spec, sets)), flush=True)


if __name__ == "__main__":  # the rating model's background process imports this module
    main()
