"""Diversity: NDCG@10 against intra-list diversity and genre coverage, MMR strengths.

Protocol P2 on MovieLens 100K (``holdout_per_user(ds, 0.2, 42)``): one bundle trained with
``movierec.pipeline.train`` (default config) on the train side; every test user gets the same
candidate pool the service re-ranks (``max(3k, 50)`` ranked candidates, items rated in train
excluded), then :func:`serving.rerank.mmr` picks 10 of them at each diversity level. This is the
exact serve-time path of ``GET /users/{id}/recommendations?diversity=..``, batched.

Reported per level:
  * NDCG@10 and Recall@10 (every held-out rating relevant);
  * intra-list diversity (ILD): mean pairwise ``1 - cosine`` of the two-tower item vectors in a
    list (centred on the catalogue mean; MMR works in the same space, centred on its pool) and,
    as an independent view, mean pairwise genre Jaccard distance;
  * genre coverage: distinct genres in a list / genres in the catalogue, averaged over users;
  * catalogue coverage@10: distinct items recommended over all lists / catalogue size.

Run: ``.venv/bin/python benchmarks/diversity.py --data /work/shared/data/ml-100k [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from movierec.core.config import Config  # noqa: E402
from movierec.core.loaders import load_dataset  # noqa: E402
from movierec.core.index import normalize  # noqa: E402
from movierec.core.metrics import topn_metrics  # noqa: E402
from movierec.pipeline import train as train_pipeline  # noqa: E402
from movierec.core.splits import holdout_per_user  # noqa: E402
from recommender import HybridRecommender  # noqa: E402
from serving.rerank import mmr  # noqa: E402

log = logging.getLogger("benchmarks.diversity")
LEVELS = (0.0, 0.25, 0.5, 0.75)
K = 10
POOL = max(3 * K, 50)  # serving/app.py::_ranked_items uses the same pool for diversity > 0


def _pairwise_mean(sim: np.ndarray) -> float:
    """Mean of the off-diagonal entries of a square similarity matrix."""
    n = len(sim)
    if n < 2:
        return 0.0
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def list_diversity(model: HybridRecommender, lists: np.ndarray, genre_matrix: np.ndarray) -> dict[str, float]:
    """ILD over item vectors and genres, and genre coverage, averaged over lists.

    Args:
        lists: (n_users, k) item_idx, -1 for empty slots.
        genre_matrix: (n_items, n_genres) 0/1 genre indicators.
    """
    vec_ild, genre_ild, cover = [], [], []
    # centred on the catalogue mean: raw two-tower vectors share one dominant direction (top-10
    # lists average cosine ~0.95), which would squeeze every list's ILD towards 0
    centre = model.retrieval.item_vectors.mean(axis=0, keepdims=True)
    for row in lists:
        row = row[row >= 0]
        v = normalize((model.retrieval.item_vectors[row] - centre).astype(np.float32))
        vec_ild.append(1.0 - _pairwise_mean(v @ v.T))
        g = genre_matrix[row]
        inter = g @ g.T
        union = g.sum(1)[:, None] + g.sum(1)[None, :] - inter
        jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        genre_ild.append(1.0 - _pairwise_mean(jac))
        cover.append(float((g.sum(0) > 0).sum()) / genre_matrix.shape[1])
    return {"ild_vectors": float(np.mean(vec_ild)), "ild_genres": float(np.mean(genre_ild)), "genre_coverage": float(np.mean(cover))}


def diversity_curve(model: HybridRecommender, test_csr: Any, levels: tuple[float, ...] = LEVELS) -> list[dict[str, float]]:
    """NDCG/recall/diversity of the MMR-re-ranked top-10 at each diversity level."""
    users = np.flatnonzero(np.diff(test_csr.indptr) > 0)
    t = time.perf_counter()
    pool_ids, pool_scores = model.recommend_batch(users, POOL, rank=True)
    log.info("ranked pools of %d for %d users in %.1fs", POOL, len(users), time.perf_counter() - t)
    genres = sorted({g for gs in model.items["genres"] for g in gs})
    gpos = {g: j for j, g in enumerate(genres)}
    genre_matrix = np.zeros((model.n_items, len(genres)), np.float32)
    for i, gs in enumerate(model.items["genres"]):
        for g in gs:
            genre_matrix[i, gpos[g]] = 1.0
    rel = test_csr[users]
    out = []
    for level in levels:
        lists = np.full((len(users), K), -1, np.int64)
        for row in range(len(users)):
            ok = pool_ids[row] >= 0
            idx, s = pool_ids[row][ok], np.nan_to_num(pool_scores[row][ok], neginf=0.0)
            order = mmr(idx, s, model.retrieval.item_vectors[idx], K, level)
            lists[row, : len(order)] = idx[order]
        m = topn_metrics(lists, rel, K, n_items=model.n_items)
        d = list_diversity(model, lists, genre_matrix)
        out.append({"diversity": level, "ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"], "coverage@10": m["coverage@10"], **d})
        log.info("diversity %.2f: %s", level, out[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/ml-100k"))
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out/diversity"), help="keeps the trained P2 bundle")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/diversity.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("MOVIEREC_PROGRESS", "0")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    ds = load_dataset(args.data)
    train, test = holdout_per_user(ds, 0.2, 42)
    bundle = args.workdir / "p2-default"
    train_secs = None
    if not (bundle / "manifest.json").is_file():
        config = Config()
        config.trainer.progress = False
        t = time.perf_counter()
        train_pipeline(train, bundle, config)
        train_secs = time.perf_counter() - t
        log.info("trained P2 bundle in %.1fs", train_secs)
    model = HybridRecommender.load(bundle)
    curve = diversity_curve(model, test.to_csr().tocsr())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"bundle": str(bundle), "train_seconds": train_secs, "pool": POOL, "curve": curve}, indent=1))
    lines = [
        "| diversity | NDCG@10 | Recall@10 | ILD (item vectors) | ILD (genres) | genre coverage | catalogue coverage@10 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in curve:
        lines.append(
            f"| {r['diversity']:.2f} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | {r['ild_vectors']:.3f} | "
            f"{r['ild_genres']:.3f} | {r['genre_coverage']:.3f} | {r['coverage@10']:.3f} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
