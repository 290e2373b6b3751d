"""Measured growth of `movierec train` and `movierec candidates` with the data's size.

Two series on synthetic data (`movierec synth --seed 3`), each point run exactly as a user runs
it: `movierec train --data DIR --out BUNDLE` with the defaults (movierec/core/sizing.py picks the
size-dependent settings by itself; nothing is overridden here), then batch candidates k=100
retrieval-only for every user and ranked for a fixed sample of users. Every command runs under
/usr/bin/time -v (wall, user+sys CPU, peak RSS); the per-stage seconds come from the bundle's
manifest (`timings`), the size rules from the train log (`sized to the data: ...`).

    taskset -c 1 nice -n 10 env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        MOVIEREC_PROGRESS=0 PYTHONPATH=. python benchmarks/growth.py --series both

  ratings: 10,000 users x 20,000 movies; 125k, 250k, 500k, 1M ratings
  movies:  10,000 users x 250k ratings; 12,500, 25,000, 50,000, 100,000 movies

Synthetic data under --work is reused when its folder exists (synth is deterministic for a
seed); bundles are trained again on every run. Prints markdown tables on stdout (and writes
them with the raw numbers as JSON next to the work dirs); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

SERIES = {
    # (users, items, ratings)
    "ratings": [(10_000, 20_000, r) for r in (125_000, 250_000, 500_000, 1_000_000)],
    "movies": [(10_000, i, 250_000) for i in (12_500, 25_000, 50_000, 100_000)],
}
STAGES = ("content", "two_tower", "ranker", "rating_model")


def say(msg: str) -> None:
    print(f"[growth {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def timed(cmd: list[str], tag: Path) -> dict:
    """Run cmd under /usr/bin/time -v; wall, CPU, peak RSS and the 1-min load sampled meanwhile.

    stdout/stderr/time reports are kept as TAG.out/.log/.time for reading afterwards."""
    loads: list[float] = [load1()]
    done = threading.Event()

    def sample() -> None:  # load average every 15 s: wall times mean little without it
        while not done.wait(15):
            loads.append(load1())

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    with open(f"{tag}.out", "w") as out, open(f"{tag}.log", "w") as err:
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", f"{tag}.time", *cmd], check=False, stdout=out, stderr=err)
    done.set()
    th.join()
    rep = Path(f"{tag}.time").read_text()

    def field(name: str) -> str:
        m = re.search(rf"{re.escape(name)}.*?: (.+)", rep)
        return m.group(1).strip() if m else ""

    # GNU time exits 0 when the command was killed by a signal: read the recorded status instead
    if proc.returncode != 0 or field("Exit status") != "0":
        raise SystemExit(f"failed: {' '.join(cmd)} (see {tag}.log)")
    wall = 0.0
    for part in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":"):
        wall = wall * 60 + float(part)
    return {
        "wall": wall,
        "cpu": float(field("User time (seconds)")) + float(field("System time (seconds)")),
        "rss_mb": int(field("Maximum resident set size (kbytes)")) / 1024,
        "load_mean": float(np.mean(loads)),
        "load_max": max(loads),
    }


def run_point(users: int, items: int, ratings: int, work: Path, sample_n: int, k: int, seed: int) -> dict:
    movierec = [sys.executable, "-m", "movierec"]
    name = f"u{users}-i{items}-r{ratings}"
    data, bundle, logs = work / f"data-{name}", work / f"bundle-{name}", work / f"logs-{name}"
    logs.mkdir(parents=True, exist_ok=True)
    point: dict = {"users": users, "items": items, "ratings": ratings}
    if not (data / "ratings.csv").is_file():
        say(f"{name}: synth")
        point["synth"] = timed([*movierec, "synth", "--users", str(users), "--items", str(items), "--ratings", str(ratings),
                                "--seed", str(seed), "--out", str(data)], logs / "synth")
    say(f"{name}: train (load {load1():.2f})")
    point["train"] = timed([*movierec, "train", "--data", str(data), "--out", str(bundle)], logs / "train")
    manifest = json.loads((bundle / "manifest.json").read_text())
    point["stages"] = {s: manifest.get("timings", {}).get(s) for s in STAGES}
    log = (logs / "train.log").read_text()
    point["sizing"] = re.findall(r"sized to the data: (\S+?) \(", log)
    # under `taskset -c 1` the rating model sees one core and trains in-process after the ranker
    point["rating_in_background"] = "training in a background process" in log
    point["rated_items"] = manifest["dataset"]["items"]
    say(f"{name}: train {point['train']['wall']:.0f} s wall, stages {point['stages']}")

    # the same users for every size with this user count: a seeded draw from 1..users' ids
    ids = pd.read_csv(data / "ratings.csv", usecols=["userId"])["userId"].unique()
    sample = np.random.default_rng(0).choice(np.sort(ids), size=min(sample_n, len(ids)), replace=False)
    sample_csv = work / f"sample-{name}.csv"
    pd.DataFrame({"user_id": sample}).to_csv(sample_csv, index=False)
    for kind, extra, n in (("retrieval", ["--no-rank"], len(ids)), ("ranked", ["--users", str(sample_csv)], len(sample))):
        say(f"{name}: candidates {kind}")
        res = timed([*movierec, "candidates", "--model", str(bundle), "--k", str(k), "--json",
                     "--out", str(work / f"cands-{name}-{kind}.parquet"), *extra], logs / f"cand-{kind}")
        summary = json.loads(Path(logs / f"cand-{kind}.out").read_text())
        res["users"] = summary["users"]
        res["job_users_per_s"] = summary["users_per_second"]  # the job's own figure, bundle loading excluded
        res["users_per_s"] = n / res["wall"]  # whole command, loading included
        point[kind] = res
    return point


def table(points: list[dict], what: str) -> str:
    head = (f"| {what} | train wall s | train CPU s | train peak RSS MB | content s | two-tower s | ranker s | rating model s "
            "| retrieval-only: users/s (job), CPU s, RSS MB | ranked: users/s (job), CPU s, RSS MB | load during train, mean/max |")
    lines = [head, "|---|" + "---:|" * 9 + "---|"]
    for p in points:
        t, st, rr, rk = p["train"], p["stages"], p["retrieval"], p["ranked"]
        size = f"{p['ratings']:,} ratings" if what == "ratings" else f"{p['items']:,} movies ({p['rated_items']:,} rated)"
        stages = " | ".join("-" if st[s] is None else f"{st[s]:.1f}" for s in STAGES)
        lines.append(
            f"| {size} | {t['wall']:.1f} | {t['cpu']:.1f} | {t['rss_mb']:,.0f} | {stages} "
            f"| {rr['users_per_s']:,.0f} ({rr['job_users_per_s']:,.0f}), {rr['cpu']:.1f}, {rr['rss_mb']:,.0f} "
            f"| {rk['users_per_s']:,.0f} ({rk['job_users_per_s']:,.0f}), {rk['cpu']:.1f}, {rk['rss_mb']:,.0f} "
            f"| {t['load_mean']:.2f}/{t['load_max']:.2f} |"
        )
    lines.append("")
    for p in points:
        where = "a second process" if p.get("rating_in_background") else "the main process, after the ranker"
        lines.append(f"- {p['users']:,} x {p['items']:,} x {p['ratings']:,}: rating model in {where}; "
                     f"sized to the data: {', '.join(p.get('sizing', [])) or 'nothing'}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", choices=("ratings", "movies", "both"), default="both")
    ap.add_argument("--work", type=Path, default=Path("/work/tmp-growth"), help="data, bundles and logs (never commit them)")
    ap.add_argument("--sample", type=int, default=2048, help="users in the ranked candidates sample")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=3, help="movierec synth seed")
    ap.add_argument("--report", action="store_true", help="print the tables from the saved JSON without running anything")
    ap.add_argument("--points", nargs="+", metavar="U,I,R", help="run these users,items,ratings points instead (one series)")
    args = ap.parse_args()
    if os.environ.get("MOVIEREC_PROGRESS") != "0":
        say("note: MOVIEREC_PROGRESS=0 keeps progress bars out of the logs")
    args.work.mkdir(parents=True, exist_ok=True)
    names = ("ratings", "movies") if args.series == "both" else (args.series,)
    if args.points:  # e.g. a quick check of the script on tiny data
        SERIES[names[0]] = [tuple(int(x) for x in p.split(",")) for p in args.points]
        names = names[:1]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name in names:
        if args.report:
            print(f"\n### Cost against {name}\n\n" + table(json.loads((args.work / f"growth-{name}.json").read_text()), name))
            continue
        points = []
        for users, items, ratings in SERIES[name]:
            points.append(run_point(users, items, ratings, args.work, args.sample, args.k, args.seed))
            # after every point: a stopped session keeps what was measured
            (args.work / f"growth-{name}.json").write_text(json.dumps(points, indent=1))
        print(f"\n### Cost against {name} (started {started}, CPU affinity {sorted(os.sched_getaffinity(0))})\n")
        print(table(points, name), flush=True)


if __name__ == "__main__":
    main()
