"""Speed of the batch candidate path on a large catalogue, and its memory in the number of users.

    python benchmarks/speed.py [--items 100000] [--users 20000] [--k 100] [--index flat,hnsw]

Builds a :class:`RetrievalModel` over random unit vectors (the towers' weights do not change the
cost of search and exclusion), gives each user a history of ~50 items, and streams top-k
candidates for every user to parquet through the same ``write_candidates`` path as
``movierec candidates --no-rank``. Each configuration runs in its own subprocess, so the peak RSS
it reports is that run's alone; running 1x and 4x the users shows whether memory stays flat.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _one(items: int, users: int, k: int, kind: str, threads: int, repeat: int) -> dict:
    import faiss
    import torch

    from movierec.core.config import IndexConfig
    from movierec.core.index import build_index, normalize
    from retrieval.candidates import RetrievalModel, write_candidates
    from retrieval.inputs import Histories, UserFeatureEncoder
    from retrieval.towers import ItemTower, UserTower

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    dim = 64
    centers = rng.normal(size=(64, dim))
    item_vecs = normalize(centers[rng.integers(0, 64, items)] + 0.5 * rng.normal(size=(items, dim)))
    user_vecs = normalize(centers[rng.integers(0, 64, users)] + 0.5 * rng.normal(size=(users, dim)))
    lengths = rng.integers(20, 80, users)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    hist = Histories(indptr, rng.integers(0, items, indptr[-1]))
    t = time.perf_counter()
    index = build_index(item_vecs, IndexConfig(kind=kind))
    build_s = time.perf_counter() - t
    hp = {"n_items": items, "history_len": 50}
    model = RetrievalModel(
        UserTower(1, 1, 1, 0, dim, 8), ItemTower(1, 1, 1, dim, 8), item_vecs, user_vecs, hist,
        np.zeros((items, 1), np.float32), np.zeros((items, 1), np.float32), np.ones(items, np.float32),
        np.zeros((users, 0), np.float32), UserFeatureEncoder([]), hp, index=index,
    )
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            s = write_candidates(
                lambda u: model.recommend(u, k), np.arange(users), np.arange(users), np.arange(items),
                Path(tmp) / "c.parquet", chunk_size=2048, show_progress=False,
            )
            rates.append(s["users_per_second"])
    return {
        "items": items, "users": users, "k": k, "index": kind, "threads": threads,
        "build_seconds": round(build_s, 2), "users_per_second_median": float(np.median(rates)),
        "runs": rates, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--index", default="flat,hnsw")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "speed.json")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args.items, args.users, args.k, args.index, args.threads, args.repeat)))
        return 0
    rows = []
    for kind in args.index.split(","):
        for users in (args.users, 4 * args.users):
            cmd = [sys.executable, __file__, "--one", "--items", str(args.items), "--users", str(users), "--k", str(args.k),
                   "--index", kind, "--threads", str(args.threads), "--repeat", str(args.repeat)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
            r = rows[-1]
            print(f"{r['index']:<6} items={r['items']:>7} users={r['users']:>7} k={r['k']} threads={r['threads']}: "
                  f"{r['users_per_second_median']:>9,.0f} users/s (median of {r['runs']}), index build {r['build_seconds']}s, "
                  f"peak RSS {r['peak_rss_mb']} MB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
