"""Batch candidates at a large catalogue: users/s and recall@k against exact search, per path.

Loads a bundle (e.g. the 1M ratings x 100k movies one of ``benchmarks/big_run.sh``) and times
the retrieval step of ``movierec candidates`` (``RetrievalModel.search``: top-k with each user's
training items excluded) over chunks of users, for:

* ``exact``: flat inner-product search (blocked matmul + top-k in torch, movierec/core/index.py),
* ``bundle``: the bundle's own index (HNSW above ``index.ann_threshold`` items),
* ``ivf sq8 P/N``: the IVF batch index (movierec/core/index.py:build_batch_index: 8-bit codes, hits
  re-scored exactly) scanning P of N lists, the path batch search takes from 50,000 items when
  the bundle's index is exact flat (P = the default when not given),

each with 1 and 2 threads (FAISS OpenMP and torch), plus the full job in one process
(``recommend_batch`` through ``write_candidates``, retrieval-only and ranked) and, with
``--workers 2``, ``movierec candidates --workers 2`` as a subprocess. Recall@k is measured
against the exact path on the same users, seen items excluded in both.

Usage::

    nice -n 10 /work/main/.venv/bin/python benchmarks/batch_candidates.py --model BUNDLE \\
        --users 20000 --k 100 --nprobe 8 16 32 --workers 2

Prints a markdown table (and JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def set_threads(n: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


CPU = {"last": 0.0}


def run_search(retr, users: np.ndarray, k: int, chunk: int) -> tuple[float, np.ndarray]:
    """Seconds for the retrieval step over ``users`` in chunks, and the ids found (CPU seconds
    of the process, all threads, in ``CPU["last"]``)."""
    out = np.empty((len(users), k), dtype=np.int64)
    t, c = time.perf_counter(), time.process_time()
    for s in range(0, len(users), chunk):
        u = users[s : s + chunk]
        ids, _ = retr.search(retr.user_vectors[u], k, [retr.histories.of(x) for x in u])
        out[s : s + len(u)] = ids
    CPU["last"] = time.process_time() - c
    return time.perf_counter() - t, out


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a[a >= 0], b[b >= 0])) for a, b in zip(got, truth))
    return hits / max(1, int((truth >= 0).sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--users", type=int, default=20_000, help="users timed (a seeded sample; all when larger)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--nprobe", type=int, nargs="*", default=[], help="IVF lists probed (besides the default)")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--exact-users", type=int, default=4096, help="users timed on the exact and bundle paths (slow)")
    ap.add_argument("--ranked-users", type=int, default=4096, help="users timed for the ranked job")
    ap.add_argument("--workers", type=int, default=0, help="also time `movierec candidates --workers N` (retrieval-only and ranked)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import faiss

    from movierec.core.config import IndexConfig
    from movierec.core.index import build_index
    from recommender import HybridRecommender
    from retrieval.candidates import write_candidates

    t = time.perf_counter()
    m = HybridRecommender.load(args.model)
    retr = m.retrieval
    load_s = time.perf_counter() - t
    n_users = retr.n_users
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(n_users, size=min(args.users, n_users), replace=False))
    few = users[: min(args.exact_users, len(users))]
    bundle_index = retr.index
    exact_index = build_index(retr.item_vectors, IndexConfig(kind="flat"))
    rows: list[dict] = []
    print(f"# {args.model}: {retr.n_items:,} items, {n_users:,} users, k={args.k}; loaded in {load_s:.1f}s; load {load_avg()}", file=sys.stderr)

    # exact reference (seen items excluded) on the first users
    retr.batch_min_items = 1 << 62
    retr.index = exact_index
    set_threads(2)
    _, truth = run_search(retr, few, args.k, args.chunk)
    pos = {u: i for i, u in enumerate(few)}

    def record(path: str, threads: int, seconds: float, n: int, got: np.ndarray | None, got_users: np.ndarray, cpu: float | None = None,
               **extra) -> None:
        rec = None
        if got is not None:
            sel = np.array([pos[u] for u in got_users if u in pos])
            mine = np.array([i for i, u in enumerate(got_users) if u in pos])
            rec = round(recall(got[mine], truth[sel]), 4) if len(sel) else None
        row = {"path": path, "threads": threads, "users": n, "seconds": round(seconds, 2), "users_per_s": round(n / seconds, 0),
               "users_per_cpu_s": None if cpu is None else round(n / max(cpu, 1e-9), 0),
               f"recall@{args.k}_vs_exact": rec, "load": load_avg(), **extra}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    for threads in args.threads:
        set_threads(threads)
        retr.batch_min_items = 1 << 62
        for name, index in (("exact", exact_index), (f"bundle ({bundle_index.kind})", bundle_index)):
            retr.index = index
            secs, got = run_search(retr, few, args.k, args.chunk)
            record(name, threads, secs, len(few), got, few, CPU["last"])
        retr.index = exact_index  # the batch index replaces exact search (with an HNSW bundle index it is not used)
        retr.batch_min_items = 0
        for nprobe in [None, *args.nprobe]:
            retr.batch_nprobe = nprobe
            retr._batch = None
            t = time.perf_counter()
            batch = retr.batch_index()
            build = time.perf_counter() - t
            secs, got = run_search(retr, users, args.k, args.chunk)
            lists = faiss.extract_index_ivf(batch.index)
            record(f"ivf sq8 {lists.nprobe}/{lists.nlist}" + (" (default)" if nprobe is None else ""), threads, secs,
                   len(users), got, users, CPU["last"], build_s=round(build, 1))
    # the job as `movierec candidates` runs it in one process: the bundle's index as loaded
    # (HNSW at 100k: the batch index is not used; a flat bundle index would build it), parquet written
    from retrieval.candidates import BATCH_MIN_ITEMS

    retr.index, retr.batch_nprobe, retr._batch, retr.batch_min_items = bundle_index, None, None, BATCH_MIN_ITEMS
    retr.batch_index()
    item_ids = m.items["item_id"].to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            set_threads(threads)
            for rank, some in ((False, users), (True, users[: args.ranked_users])):
                c = time.process_time()
                s = write_candidates(lambda u: m.recommend_batch(u, args.k, rank=rank), some, m.user_ids, item_ids,
                                     Path(tmp) / "c.parquet", chunk_size=args.chunk, show_progress=False)
                record("job " + ("ranked" if rank else "retrieval-only"), threads, s["seconds"], len(some), None, some, time.process_time() - c)
        if args.workers > 1:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "MOVIEREC_PROGRESS": "0"}
            ulist = Path(tmp) / "users.csv"
            ulist.write_text("user_id\n" + "\n".join(str(x) for x in np.asarray(m.user_ids)[users]) + "\n")
            for rank in (False, True):
                some = users if not rank else users[: args.ranked_users]
                if rank:
                    ulist.write_text("user_id\n" + "\n".join(str(x) for x in np.asarray(m.user_ids)[some]) + "\n")
                cmd = [sys.executable, "-m", "movierec", "candidates", "--model", args.model, "--out", str(Path(tmp) / f"parts{int(rank)}"),
                       "--k", str(args.k), "--workers", str(args.workers), "--users", str(ulist), "--json"] + (["--no-rank"] if not rank else [])
                t = time.perf_counter()
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                wall = time.perf_counter() - t
                if res.returncode:
                    print(res.stderr[-2000:], file=sys.stderr)
                    continue
                summary = json.loads(res.stdout[res.stdout.index("{") :])
                record(f"CLI --workers {args.workers} " + ("ranked" if rank else "--no-rank"), args.workers, summary["seconds"], len(some),
                       None, some, command_wall_s=round(wall, 1))

    if args.json:
        print(json.dumps(rows, indent=1))
        return
    key = f"recall@{args.k}_vs_exact"
    print(f"| path | threads | users | seconds | users/s | users per CPU-s | {key} | build s | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        rec = "" if r[key] is None else f"{r[key]:.4f}"
        cpu = "" if r["users_per_cpu_s"] is None else f"{r['users_per_cpu_s']:,.0f}"
        print(f"| {r['path']} | {r['threads']} | {r['users']:,} | {r['seconds']} | {r['users_per_s']:,.0f} | {cpu} | {rec} | {r.get('build_s', '')} | {r['load']} |")


if __name__ == "__main__":
    main()
