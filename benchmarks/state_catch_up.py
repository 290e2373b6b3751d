"""Catch-up cost of the online state: how long a worker takes to apply N live ratings it has not
seen (a start-up, a reload, or a worker that was idle while others wrote), and what the
per-request sequence check costs.

It writes ``--ratings`` ratings into a fresh state database (SQLite by default, or ``--url``),
spread over ``--users`` users (half of them known to the bundle, half new), each user posting
``--per-post`` ratings at a time as the API does; then loads the bundle and times
``HybridRecommender.catch_up`` alone (the load is timed apart), repeated ``--repeat`` times.

Usage::

    .venv/bin/movierec train --data ../shared/data/ml-100k --out /tmp/catchup/bundle
    .venv/bin/python benchmarks/state_catch_up.py --model /tmp/catchup/bundle --ratings 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recommender import HybridRecommender  # noqa: E402
from recommender.state import StateStore  # noqa: E402
from recommender.state_db import state_url  # noqa: E402


def fill(store: StateStore, model: HybridRecommender, n: int, users: int, per_post: int, seed: int) -> float:
    """Write ``n`` ratings as API posts would; returns the seconds it took."""
    rng = np.random.default_rng(seed)
    known = model.user_ids[: users // 2].tolist()
    base = int(np.max(model.user_ids)) + 1 if model.users.integer else 0
    new = [base + k if model.users.integer else f"live-{k}" for k in range(users - len(known))]
    pool = [*known, *new]
    items = model.items["item_id"].to_numpy()
    titles = model.items["title"].to_numpy()
    t0 = time.perf_counter()
    written = 0
    while written < n:
        u = pool[int(rng.integers(len(pool)))]
        m = min(per_post, n - written)
        pick = rng.integers(len(items), size=m)
        store.append_ratings(u, [(items[i].item(), float(rng.integers(1, 6)), str(titles[i])) for i in pick])
        written += m
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--ratings", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--per-post", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--url", default=None, help="database URL (default: SQLite in a temp folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="movierec-catchup-")
    store = StateStore(args.url or state_url(tmp.name))
    model = HybridRecommender.load(args.model)
    fill_s = fill(store, model, args.ratings, args.users, args.per_post, args.seed)
    print(f"wrote {args.ratings:,} ratings in {fill_s:.1f}s ({args.ratings / fill_s:,.0f}/s as {args.per_post}-rating posts)")

    t = time.perf_counter()
    checks = 2000
    for _ in range(checks):
        store.last_seq()
    check_us = (time.perf_counter() - t) / checks * 1e6
    print(f"sequence check: {check_us:.0f} us per request")

    runs = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        fresh = HybridRecommender.load(args.model, verify=False)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        events = fresh.catch_up(store)
        runs.append(time.perf_counter() - t)
        print(f"load {load_s:.2f}s; catch-up of {events:,} events: {runs[-1]:.2f}s "
              f"({fresh.histories.n_live:,} users changed, {len(fresh.users) - len(model.user_ids):,} new)")
    result = {
        "ratings": args.ratings, "users": args.users, "per_post": args.per_post, "backend": store.dialect,
        "catch_up_s": [round(r, 3) for r in runs], "catch_up_best_s": round(min(runs), 3), "check_us": round(check_us, 1),
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    store.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
