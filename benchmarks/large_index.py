"""Large-catalogue index benchmark: flat vs HNSW vs IVF-PQ on 1M synthetic item vectors.

Vectors are clustered (items of one taste sit together, as trained item vectors do), unit
length, 64 dimensions; queries are fresh draws from the same clusters. Each index kind is built
and measured in its own child process so that resident memory is that kind's alone:

* build seconds (including IVF-PQ training on a sample),
* index file size, resident memory of the loaded index (RSS after load minus RSS before; for
  IVF indexes, whose lists are many small allocations that reuse freed heap, the file size is
  the better measure), and RSS added by serving queries from the memory-mapped file (shared,
  file-backed pages: what replicas on one host share through the page cache),
* recall@10 against exact search, single-query latency (p50/p99) and batch latency (one call with
  all queries).

Usage::

    nice -n 10 .venv/bin/python benchmarks/large_index.py --n 1000000 --dim 64 --threads 1

Prints a markdown table (and JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clustered(n: int, dim: int, clusters: int, seed: int, draw_seed: int, chunk: int = 100_000) -> np.ndarray:
    """(n, dim) unit vectors around ``clusters`` centres (fixed by ``seed``) with Zipf-like
    cluster sizes; ``draw_seed`` picks the points, so queries are fresh draws near the items."""
    crng = np.random.default_rng(seed)
    centers = crng.normal(size=(clusters, dim)).astype(np.float32)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
    weights /= weights.sum()
    spread = crng.uniform(0.35, 0.8, size=clusters).astype(np.float32)  # tight and loose tastes
    rng = np.random.default_rng(draw_seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        c = rng.choice(clusters, size=m, p=weights)
        v = centers[c] + spread[c, None] * rng.normal(size=(m, dim)).astype(np.float32)
        out[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    import torch

    items = torch.from_numpy(vectors)
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), block):
        out[s : s + block] = torch.topk(torch.from_numpy(queries[s : s + block]) @ items.T, k, dim=1).indices.numpy()
    return out


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(got, truth)]))


def child(args: argparse.Namespace) -> dict:
    """Build, save, reload and query one index kind (runs in its own process)."""
    import faiss
    import torch

    from movierec.core.config import IndexConfig
    from movierec.core.index import VectorIndex, build_index

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    vectors = np.load(work / "vectors.npy")
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    kind = args.child
    config = {
        "flat": IndexConfig(kind="flat"),
        "hnsw": IndexConfig(kind="hnsw", hnsw_m=args.hnsw_m, ef_search=args.ef_search),
        "ivfpq": IndexConfig(kind="ivfpq", nlist=args.nlist, nprobe=args.nprobe[0], pq_m=args.pq_m, pq_nbits=args.pq_nbits),
    }[kind]
    t0 = time.perf_counter()
    index = build_index(vectors, config)
    build_s = time.perf_counter() - t0
    path = work / f"{kind}.faiss"
    index.save(path)
    del index
    gc.collect()
    base = rss_mb()
    loaded = VectorIndex.load(path, kind)
    index_rss = rss_mb() - base
    del loaded
    gc.collect()

    base = rss_mb()
    index = VectorIndex.load(path, kind, mmap=True)
    rows = []
    settings = [(None, None)]
    if kind == "ivfpq":
        settings = [("nprobe", p) for p in args.nprobe]
    elif kind == "hnsw":
        settings = [("efSearch", e) for e in args.ef_list]
    for name, value in settings:
        if name == "nprobe":
            faiss.extract_index_ivf(index.index).nprobe = value
        elif name == "efSearch":
            index.index.hnsw.efSearch = value
        index.search(queries[:20], args.k)  # warm-up (pages in the touched lists)
        lat = []
        for q in queries[: args.single]:
            t = time.perf_counter()
            index.search(q[None, :], args.k)
            lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        got, _ = index.search(queries, args.k)
        batch_s = time.perf_counter() - t
        row = {
            "kind": kind,
            "setting": f"{name}={value}" if name else "exact",
            "recall@10": round(recall(got, truth), 4),
            "single_p50_ms": round(1000 * float(np.percentile(lat, 50)), 3),
            "single_p99_ms": round(1000 * float(np.percentile(lat, 99)), 3),
            "batch_ms": round(1000 * batch_s, 1),
            "batch_queries": len(queries),
            # file-backed pages touched by plain searches (before any re-rank reads the vectors)
            "mmap_rss_after_queries_mb": round(rss_mb() - base, 1),
        }
        if kind == "ivfpq" and args.rerank:
            # shortlist from the compressed codes, exact re-score from the memory-mapped vectors
            mm = np.load(work / "vectors.npy", mmap_mode="r")
            t = time.perf_counter()
            short, _ = index.search(queries, args.rerank)
            exact = np.einsum("qd,qkd->qk", queries, mm[short.ravel()].reshape(len(queries), args.rerank, -1))
            reranked = np.take_along_axis(short, np.argsort(-exact, axis=1)[:, : args.k], 1)
            row["rerank_recall@10"] = round(recall(reranked, truth), 4)
            row["rerank_batch_ms"] = round(1000 * (time.perf_counter() - t), 1)
        rows.append(row)
    for row in rows:
        row.update(
            {
                "build_s": round(build_s, 1),
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "index_rss_mb": round(index_rss, 1),
                "build_peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )
    path.unlink()
    return {"rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--kinds", default="flat,ivfpq,hnsw")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-search", type=int, default=128)
    p.add_argument("--ef-list", type=int, nargs="+", default=[64, 128])
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    p.add_argument("--pq-m", type=int, default=16)
    p.add_argument("--pq-nbits", type=int, default=8)
    p.add_argument("--rerank", type=int, default=100, help="ivfpq: also re-score this many by exact dot product (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="movierec-large-index-") as work:
        t = time.perf_counter()
        vectors = clustered(args.n, args.dim, args.clusters, args.seed, draw_seed=args.seed + 1)
        queries = clustered(args.queries, args.dim, args.clusters, args.seed, draw_seed=args.seed + 2)
        truth = exact_topk(vectors, queries, args.k)
        np.save(Path(work) / "vectors.npy", vectors)
        np.save(Path(work) / "queries.npy", queries)
        np.save(Path(work) / "truth.npy", truth)
        print(f"# data {args.n:,} x {args.dim} ({args.clusters} clusters), {args.queries} queries, truth in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        del vectors
        rows = []
        for kind in args.kinds.split(","):
            cmd = [sys.executable, __file__, "--child", kind, "--workdir", work] + sys.argv[1:]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise SystemExit(f"{kind} failed:\n{res.stderr[-3000:]}")
            out = json.loads(res.stdout.strip().splitlines()[-1])
            for row in out["rows"]:
                print(json.dumps(row), file=sys.stderr)
            rows += out["rows"]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| index | setting | build s | file MB | index RSS MB | RSS mmap after queries MB | recall@10 | single p50 ms | single p99 ms | batch of 1000 ms | recall@10 re-ranked top-100 (batch ms) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        rr = f"{r['rerank_recall@10']:.3f} ({r['rerank_batch_ms']:.0f})" if "rerank_recall@10" in r else ""
        print(
            f"| {r['kind']} | {r['setting']} | {r['build_s']} | {r['file_mb']} | {r['index_rss_mb']} | {r['mmap_rss_after_queries_mb']} | "
            f"{r['recall@10']:.3f} | {r['single_p50_ms']} | {r['single_p99_ms']} | {r['batch_ms']} | {rr} |"
        )


if __name__ == "__main__":
    main()
