"""``movierec candidates`` with its defaults (``--workers auto``) against ``--workers 1``.

Two measurements, each printing a markdown table:

* ``cli``: the command as a user runs it, for each bundle given, the configurations alternating
  (``--repeats`` rounds, so a change in the host's load hits them alike). users/s is the
  command's own summary (bundle loading excluded), wall is the whole command (start-up, loading,
  the job, the merge) timed from outside, CPU is the command's and its workers' user + system
  seconds (on a host busy with other work the workers' share of the cores, not their count,
  sets the wall), load is ``/proc/loadavg`` before and after.
* ``break-even``: in one process with one loaded bundle, the same user list written by one
  process (``write_candidates``) and by forked workers (``write_candidates_parallel``: fork,
  per-worker set-up, merge), for growing user counts (users repeat when the bundle has fewer).
  The count from which the workers win is what ``--workers auto``'s threshold
  (``movierec.candidates.PARALLEL_MIN_USERS``) rests on.

    python benchmarks/candidates_workers.py cli --model B1M --model B100k --repeats 2
    python benchmarks/candidates_workers.py break-even --model B100k --users 1024 2048 4096 8192
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_avg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def run_cli(model: str, out: Path, extra: list[str], k: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MOVIEREC_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "movierec", "candidates", "--model", model, "--out", str(out), "--k", str(k), "--json", *extra]
    import resource

    before = load_avg()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    ru2 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its workers (reaped by it)
    cpu = (ru2.ru_utime + ru2.ru_stime) - (ru.ru_utime + ru.ru_stime)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    return {"users": summary["users"], "workers": summary["workers"], "users_per_s": summary["users_per_second"],
            "job_s": summary["seconds"], "wall_s": round(wall, 2), "cpu_s": round(cpu, 1), "load": f"{before}-{load_avg()}"}


def cli(args: argparse.Namespace) -> list[dict]:
    configs = [("defaults", []), ("--workers 1", ["--workers", "1"])] + [(f"--workers {w}", ["--workers", str(w)]) for w in args.workers]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.model:
            for rnd in range(args.repeats):
                for name, extra in configs:
                    row = {"model": Path(model).name, "round": rnd + 1, "options": name + (" --no-rank" if args.no_rank else ""),
                           **run_cli(model, Path(tmp) / "c.parquet", extra + (["--no-rank"] if args.no_rank else []), args.k)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    print("| bundle | round | options | users | workers | job users/s | job s | command wall s | command CPU s | load before-after |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['round']} | {r['options']} | {r['users']:,} | {r['workers']} | {r['users_per_s']:,.0f} | {r['job_s']} | {r['wall_s']} | {r['cpu_s']} | {r['load']} |")
    return rows


def break_even(args: argparse.Namespace) -> list[dict]:
    import numpy as np

    from movierec.candidates import write_candidates_parallel
    from recommender import HybridRecommender
    from retrieval.candidates import write_candidates

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_dir in args.model:
            m = HybridRecommender.load(model_dir)
            item_ids = m.items["item_id"].to_numpy()
            k = min(args.k, m.n_items)
            # warm both paths once (batch index, ranker tables), so neither pays a first-use cost
            write_candidates(lambda u: m.recommend_batch(u, k), np.arange(min(256, len(m.user_ids))), m.user_ids, item_ids,
                             Path(tmp) / "w.parquet", show_progress=False)
            for n in args.users:
                users = np.resize(np.arange(len(m.user_ids)), n)
                chunk = -(-n // args.workers)  # one chunk per worker
                for rnd in range(args.repeats):
                    before = load_avg()
                    one = write_candidates(lambda u: m.recommend_batch(u, k), users, m.user_ids, item_ids, Path(tmp) / "a.parquet",
                                           chunk_size=chunk, show_progress=False)
                    many = write_candidates_parallel(m, users, Path(tmp) / "b.parquet", k, workers=args.workers, chunk_size=chunk,
                                                     show_progress=False)
                    row = {"model": Path(model_dir).name, "items": m.n_items, "users": n, "round": rnd + 1, "one_s": one["seconds"],
                           "workers_s": many["seconds"], "ratio": round(one["seconds"] / max(many["seconds"], 1e-9), 2),
                           "load": f"{before}-{load_avg()}"}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    print(f"| bundle | items | users | round | one process s | {args.workers} workers s | one / workers | load before-after |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['items']:,} | {r['users']:,} | {r['round']} | {r['one_s']} | {r['workers_s']} | {r['ratio']} | {r['load']} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["cli", "break-even"])
    ap.add_argument("--model", action="append", required=True, help="bundle directory (repeatable)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-rank", action="store_true", help="cli: retrieval order only")
    ap.add_argument("--workers", type=int, nargs="*", default=None,
                    help="cli: also these explicit counts; break-even: the worker count (default 2)")
    ap.add_argument("--users", type=int, nargs="*", default=[1024, 2048, 4096, 8192], help="break-even: user counts")
    args = ap.parse_args()
    if args.mode == "cli":
        args.workers = args.workers or []
        cli(args)
    else:
        args.workers = (args.workers or [2])[0]
        break_even(args)


if __name__ == "__main__":
    main()
