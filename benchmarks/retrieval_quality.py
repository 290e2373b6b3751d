"""Retrieval quality: the two-tower candidate generator against EASE and content alone.

    python benchmarks/retrieval_quality.py --data ../shared/data/ml-100k [--seed 42] [--set retrieval.lr=0.01]

P2 (20% per-user holdout, seed 42): Recall@10/50/100 and NDCG@10 of retrieval order, with
most-popular and EASE on the same split. P3 (20% of items lose all training ratings, seed 42):
Recall@10 / NDCG@10 ranking only among the cold items, two-tower (cold vectors from content and
genres through the item tower) against TF-IDF content alone and random. Writes
``benchmarks/out/retrieval_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from content import ContentModel, ContentSimilarity  # noqa: E402
from movierec.core.baselines import make_baseline  # noqa: E402
from movierec.core.config import load_config  # noqa: E402
from movierec.core.loaders import load_dataset  # noqa: E402
from movierec.core.metrics import evaluate_topn  # noqa: E402
from movierec.core.splits import cold_items, holdout_per_user  # noqa: E402
from retrieval.two_tower import fit_two_tower  # noqa: E402

KEYS = ("recall@10", "ndcg@10", "recall@50", "recall@100")


def _row(m: dict[str, float]) -> dict[str, float]:
    return {k: round(m[k], 4) for k in KEYS if k in m}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "retrieval_quality.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MOVIEREC_PROGRESS", "0")
    torch.set_num_threads(1)
    cfg = load_config(args.config, args.set)
    ds = load_dataset(args.data)
    content = ContentModel.fit(ds.items, cfg.content, seed=args.seed)
    result: dict[str, dict] = {"dataset": {"name": ds.name, "repr": repr(ds)}, "P2": {}, "P3": {}}

    train, test = holdout_per_user(ds, 0.2, args.seed)
    for name in ("popular", "ease"):
        model = make_baseline(name).fit(train)
        result["P2"][name] = _row(evaluate_topn(model.score_users, train, test, ks=(10, 50, 100)))
    t = time.perf_counter()
    tt = fit_two_tower(train, content.vectors, cfg.retrieval, cfg.trainer, seed=args.seed)
    seconds = time.perf_counter() - t
    uv, iv = tt.user_vectors, tt.item_vectors
    result["P2"]["two-tower (retrieval order)"] = _row(evaluate_topn(lambda u: uv[u] @ iv.T, train, test, ks=(10, 50, 100)))
    result["P2"]["two-tower (retrieval order)"]["train_seconds"] = round(seconds, 1)
    result["P2"]["two-tower (retrieval order)"]["epochs"] = tt.metrics["epochs"]

    warm, cold_test, cold = cold_items(ds, 0.2, args.seed)
    rng = np.random.default_rng(args.seed)
    result["P3"]["random"] = _row(evaluate_topn(lambda u: rng.random((len(u), warm.n_items)), warm, cold_test, ks=(10,), candidate_items=cold))
    sim = ContentSimilarity(content).fit_users(warm)
    result["P3"]["content alone (TF-IDF)"] = _row(evaluate_topn(sim.score_users, warm, cold_test, ks=(10,), candidate_items=cold))
    tt_cold = fit_two_tower(warm, content.vectors, cfg.retrieval, cfg.trainer, seed=args.seed)
    uv, iv = tt_cold.user_vectors, tt_cold.item_vectors
    result["P3"]["two-tower"] = _row(evaluate_topn(lambda u: uv[u] @ iv.T, warm, cold_test, ks=(10,), candidate_items=cold))

    for proto in ("P2", "P3"):
        print(f"\n{proto} on {ds!r}")
        keys = [k for k in KEYS if any(k in r for r in result[proto].values())]
        print(f"{'model':<30}" + "".join(f"{k:>12}" for k in keys))
        for name, row in result[proto].items():
            print(f"{name:<30}" + "".join(f"{row.get(k, float('nan')):>12.4f}" for k in keys))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": cfg.model_dump(mode="json"), **result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
