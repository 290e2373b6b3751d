"""Ranking speed: re-scoring 100 and 250 candidates for one user, and batch users/s.

    python benchmarks/ranking_speed.py --model MODEL_DIR            # an existing bundle with a ranker
    python benchmarks/ranking_speed.py --data ../shared/data/ml-100k  # trains one first (P2 train side)
    python benchmarks/ranking_speed.py --model MODEL_DIR --scale-items 100000  # + features at 100k items
    python benchmarks/ranking_speed.py --model MODEL_DIR --candidates 250 --no-batch   # one request, as the serving target counts it

Single user: the time of ``Ranker.rerank`` for one user and their top-C retrieval candidates
(features + net, what a request adds on top of retrieval), p50/p99 over many users, one thread
(torch, FAISS and BLAS each limited to one, as ``movierec serve`` runs its workers).
Batch: ``HybridRecommender.recommend_batch(users, k=100, rank=True)`` over every user in chunks
of 1,000 (retrieval + ranking), users per second, next to the same call with ``rank=False``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recommender import HybridRecommender  # noqa: E402


def single_user(model: HybridRecommender, n_candidates: int = 100, repeats: int = 2000, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    retr = model.retrieval
    users = rng.integers(0, retr.n_users, size=repeats)
    times, cpu = [], []
    for i, u in enumerate(users):
        hist = retr.histories.of(u)
        ids, s = retr.search(retr.user_vectors[u][None, :], n_candidates, [hist])
        t, c = time.perf_counter(), time.process_time()
        model.ranker.rerank(model, np.array([u]), [hist], ids, s)
        if i >= 50:  # warm-up
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    ms = np.array(times) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        # CPU time of this process: on a shared machine the wall time also counts waiting for a core
        "cpu_p50_ms": float(np.percentile(np.array(cpu) * 1e3, 50)),
        "n": len(ms),
    }


def features_at_scale(n_items: int, n_candidates: int = 100, repeats: int = 500, seed: int = 0) -> dict[str, float]:
    """``compute_features`` for one user and ``n_candidates`` over a synthetic catalogue of
    ``n_items`` (random unit content vectors, 256 item-item neighbours per column as
    ``item_item_matrix`` keeps, histories of 20-256 items): what the feature step costs when the
    catalogue, not the request, is large."""
    import scipy.sparse as sp

    from ranking.features import FeatureContext, compute_features, pad_histories

    rng = np.random.default_rng(seed)
    content = rng.normal(size=(n_items, 128)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    keep = min(256, n_items)
    rows = rng.integers(0, n_items, size=n_items * keep).astype(np.int32)
    cols = np.repeat(np.arange(n_items, dtype=np.int32), keep)
    collab = sp.csr_matrix((rng.normal(size=len(rows)).astype(np.float32), (rows, cols)), shape=(n_items, n_items))
    ctx = FeatureContext(
        content=content,
        genres=(rng.random((n_items, 18)) < 0.1).astype(np.float32),
        years=rng.integers(1930, 2020, size=n_items).astype(np.float64),
        item_counts=rng.integers(0, 500, size=n_items),
        item_mean=rng.uniform(1, 5, size=n_items).astype(np.float32),
        collab=collab,
        user_mean=rng.uniform(2, 4.5, size=1000).astype(np.float32),
        user_features=np.zeros((1000, 0), np.float32),
        global_mean=3.5,
        ref_year=2020.0,
    )
    times = []
    for i in range(repeats + 20):
        hist = rng.integers(0, n_items, size=int(rng.integers(20, 257)))
        u = np.array([int(rng.integers(0, 1000))])
        ph = pad_histories([hist], [rng.integers(1, 6, size=len(hist)).astype(np.float32)], ctx.user_mean[u])
        cand = rng.choice(n_items, size=(1, n_candidates), replace=False)
        scores = rng.normal(size=(1, n_candidates)).astype(np.float32)
        t, c = time.perf_counter(), time.process_time()
        compute_features(ctx, u, ph, cand, scores)
        if i >= 20:  # the first calls build the per-item tables
            times.append((time.perf_counter() - t, time.process_time() - c))
    ms = np.array(times) * 1e3
    p50, p90 = np.percentile(ms[:, 0], [50, 90])
    return {"items": n_items, "p50_ms": float(p50), "p90_ms": float(p90), "cpu_p50_ms": float(np.percentile(ms[:, 1], 50)), "n": len(ms)}


def batch(model: HybridRecommender, rank: bool, k: int = 100, chunk: int = 1000) -> dict[str, float]:
    users = np.arange(model.retrieval.n_users)
    model.recommend_batch(users[: min(chunk, len(users))], k, rank=rank)  # warm-up
    t, c = time.perf_counter(), time.process_time()
    for s in range(0, len(users), chunk):
        model.recommend_batch(users[s : s + chunk], k, rank=rank)
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    return {"users": int(len(users)), "seconds": secs, "users_per_s": len(users) / secs, "users_per_cpu_s": len(users) / cpu}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--candidates", default="100,250", help="comma-separated list lengths of the single-user runs")
    p.add_argument("--no-batch", action="store_true", help="skip the batch users/s runs")
    p.add_argument("--scale-items", type=int, default=0, help="also time compute_features over a synthetic catalogue of this many items")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ranking_speed.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MOVIEREC_PROGRESS", "0")
    torch.set_num_threads(1)
    import faiss

    faiss.omp_set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="movierec-ranks-") as tmp:
        path = args.model
        if path is None:
            from movierec.core.config import Config
            from movierec.core.loaders import load_dataset
            from movierec.pipeline import train
            from movierec.core.splits import holdout_per_user

            train_ds, _ = holdout_per_user(load_dataset(args.data), 0.2, 42)
            config = Config()
            config.trainer.progress = False
            path = train(train_ds, Path(tmp) / "bundle", config)
        model = HybridRecommender.load(path)
        if model.ranker is None:
            raise SystemExit(f"{path}: bundle has no ranker")
        sizes = [int(c) for c in args.candidates.split(",")]
        out = {"catalogue": {"users": model.retrieval.n_users, "items": model.n_items}}
        for c in sizes:
            out[f"single_user_{c}_candidates"] = single_user(model, c, args.repeats)
        if not args.no_batch:
            out["batch_ranked_k100"] = batch(model, rank=True)
            out["batch_retrieval_only_k100"] = batch(model, rank=False)
    if args.scale_items:
        out["features_at_scale"] = features_at_scale(args.scale_items)
    for c in sizes:
        s = out[f"single_user_{c}_candidates"]
        print(f"| rerank {c} candidates, one user | p50 {s['p50_ms']:.2f} ms | p90 {s['p90_ms']:.2f} ms | p99 {s['p99_ms']:.2f} ms | CPU p50 {s['cpu_p50_ms']:.2f} ms |")
    for name in [] if args.no_batch else ("batch_ranked_k100", "batch_retrieval_only_k100"):
        print(f"| {name} | {out[name]['users_per_s']:,.0f} users/s | {out[name]['users_per_cpu_s']:,.0f} users per CPU second |")
    if args.scale_items:
        f = out["features_at_scale"]
        print(f"| compute_features, 1 user x 100 candidates, {f['items']:,} items | p50 {f['p50_ms']:.2f} ms | p90 {f['p90_ms']:.2f} ms | CPU p50 {f['cpu_p50_ms']:.2f} ms |")
    print(f"(load average {os.getloadavg()[0]:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
