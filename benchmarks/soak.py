"""Soak test of ``movierec serve``: steady load for minutes with a hot reload every 30 s.

What it checks: the server keeps answering through repeated bundle swaps, with zero
failed requests, memory (RSS of the server process) flat within 10%, and latency percentiles
recorded, overall and for the requests that overlapped a reload.

How: ``movierec serve`` is started on 127.0.0.1 with an admin key. ``--clients`` threads send an
open-loop mix at ``--rate`` requests/s in total (known users' recommendations, similar movies,
new-user recommendations from three liked movies, item lookups, title search); every answer must
be 200 with a well-formed body, anything else counts as a failure. Every ``--reload-every``
seconds ``POST /admin/reload?force=true`` makes the server load the bundle again from disk and
swap it in, so each reload builds a whole new model and drops the old one: a leak there shows up
as RSS growth. RSS is read from ``/proc/<pid>/status`` every 2 s. The run is bounded by
``--duration`` and ``--max-requests``, and the server is always stopped.

Usage::

    .venv/bin/movierec train --data ../shared/data/ml-100k --out /tmp/soak/bundle
    MOVIEREC_RANK=0 .venv/bin/python benchmarks/soak.py --model /tmp/soak/bundle --duration 300 --json /tmp/soak/result.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

log = logging.getLogger("soak")
ROOT = Path(__file__).resolve().parents[1]
API_KEY = "soak-admin-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of one process from /proc (Linux), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Tally:
    """Everything the load threads record; one lock, appends only."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    late_ticks: int = 0  # open-loop sends that could not start on time (the client fell behind)

    def record(self, kind: str, t0: float, t1: float, error: str | None) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(t1 - t0)
            self.starts.append(t0)
            self.ends.append(t1)
            if error is not None:
                self.failures.append(f"{kind}: {error}")


def _check(kind: str, r: httpx.Response) -> str | None:
    """None for a good answer; a short reason otherwise (status or shape)."""
    if r.status_code != 200:
        return f"HTTP {r.status_code} {r.text[:120]}"
    body = r.json()
    if kind in ("user", "new_user", "similar") and not isinstance(body.get("items"), list):
        return "no items list"
    if kind in ("user", "new_user", "similar") and not body["items"]:
        return "empty items"
    if kind == "item" and "title" not in body:
        return "no title"
    return None


def _request(client: httpx.Client, rng: random.Random, users: list[Any], items: list[Any], words: list[str]) -> tuple[str, httpx.Response]:
    roll = rng.random()
    if roll < 0.4:
        return "user", client.get(f"/users/{rng.choice(users)}/recommendations", params={"k": 10})
    if roll < 0.6:
        return "similar", client.get(f"/items/{rng.choice(items)}/similar", params={"k": 10})
    if roll < 0.75:
        return "new_user", client.post("/recommendations", json={"liked_items": rng.sample(items, 3), "k": 10})
    if roll < 0.9:
        return "item", client.get(f"/items/{rng.choice(items)}")
    return "search", client.get("/items", params={"q": rng.choice(words), "limit": 10})


def load_worker(
    base: str, rate: float, stop: threading.Event, tally: Tally, seed: int, ids: tuple[list[Any], list[Any], list[str]], budget: list[int]
) -> None:
    """Open loop: one request every 1/rate seconds on its own schedule, so a slow answer shows up
    as latency (and late ticks), not as a quietly lower load."""
    rng = random.Random(seed)
    users, items, words = ids
    interval = 1.0 / rate
    next_t = time.perf_counter() + rng.random() * interval
    with httpx.Client(base_url=base, timeout=30.0) as client:
        while not stop.is_set():
            now = time.perf_counter()
            if now < next_t:
                time.sleep(next_t - now)
            elif now - next_t > interval:
                with tally.lock:
                    tally.late_ticks += 1
            next_t += interval
            with tally.lock:
                if budget[0] <= 0:
                    stop.set()
                    break
                budget[0] -= 1
            t0 = time.perf_counter()
            kind = "?"
            try:
                kind, r = _request(client, rng, users, items, words)
                error = _check(kind, r)
            except (httpx.HTTPError, ValueError) as e:
                error = f"{type(e).__name__}: {e}"
            tally.record(kind, t0, time.perf_counter(), error)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000
    return {
        "n": int(len(a)),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p90_ms": round(float(np.percentile(a, 90)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


def soak(
    model: Path,
    duration: float,
    rate: float,
    clients: int,
    reload_every: float,
    max_requests: int,
    rank: bool,
    malloc_arena_max: int | None = None,
) -> dict[str, Any]:
    """Run the soak and return its measurements (see the module docstring).

    ``malloc_arena_max`` sets glibc's ``MALLOC_ARENA_MAX`` for the server: each thread-pool
    thread that allocates can get its own malloc arena, and freed model memory fragmented over
    many arenas shows up as RSS that climbs for minutes before it levels off.
    """
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MOVIEREC_API_KEY=API_KEY, MOVIEREC_RANK="1" if rank else "0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if malloc_arena_max is not None:
        env["MALLOC_ARENA_MAX"] = str(malloc_arena_max)
    cmd = [str(Path(sys.executable).parent / "movierec"), "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {server.stderr.read().decode()[-2000:] if server.stderr else ''}")
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready in 180 s")
            time.sleep(0.5)
        from recommender import HybridRecommender  # ids to query, read from the same bundle

        rec = HybridRecommender.load(model, verify=False)
        users = [int(u) if isinstance(u, np.integer) else u for u in rec.user_ids.tolist()]
        items = [int(i) if isinstance(i, np.integer) else i for i in rec.items["item_id"].tolist()]
        words = sorted({w.lower() for t in rec.items["title"].head(300) for w in str(t).split() if len(w) > 3})[:200]
        del rec

        tally = Tally()
        stop = threading.Event()
        budget = [max_requests]
        rss: list[tuple[float, int]] = []
        reloads: list[dict[str, Any]] = []
        t_start = time.perf_counter()
        threads = [
            threading.Thread(
                target=load_worker, args=(base, rate / clients, stop, tally, 1000 + i, (users, items, words), budget), daemon=True
            )
            for i in range(clients)
        ]
        for t in threads:
            t.start()
        next_reload = t_start + reload_every
        next_rss = t_start
        with httpx.Client(base_url=base, timeout=120.0) as admin:
            while not stop.is_set() and time.perf_counter() - t_start < duration:
                now = time.perf_counter()
                if now >= next_rss:
                    rss.append((now - t_start, rss_bytes(server.pid)))
                    next_rss += 2.0
                if now >= next_reload:
                    r0 = time.perf_counter()
                    r = admin.post("/admin/reload", params={"force": "true"}, headers={"X-API-Key": API_KEY})
                    r1 = time.perf_counter()
                    ok = r.status_code == 200 and r.json().get("status") == "reloaded"
                    reloads.append({"at_s": round(r0 - t_start, 1), "seconds": round(r1 - r0, 2), "ok": ok})
                    if not ok:
                        tally.failures.append(f"reload: HTTP {r.status_code} {r.text[:200]}")
                    log.info("reload %d at %.0fs took %.2fs (%s)", len(reloads), r0 - t_start, r1 - r0, "ok" if ok else "FAILED")
                    next_reload += reload_every
                time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        elapsed = time.perf_counter() - t_start
        rss.append((elapsed, rss_bytes(server.pid)))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    all_lat = [x for v in tally.latencies.values() for x in v]
    # requests that overlapped a reload (their interval intersects the reload call)
    windows = [(r["at_s"] + t_start, r["at_s"] + t_start + r["seconds"]) for r in reloads]
    during = [
        e - s for s, e in zip(tally.starts, tally.ends) if any(s < we and e > ws for ws, we in windows)
    ]
    # memory: compare the first minute after warm-up (after the first reload, when the second
    # copy of the model has been built and the old one freed) with the last minute
    mb = [(t, b / 2**20) for t, b in rss]
    warm = reload_every + 5
    first = [m for t, m in mb if warm <= t < warm + 60]
    last = [m for t, m in mb if t >= elapsed - 60]
    base_mb = float(np.median(first)) if first else float("nan")
    end_mb = float(np.median(last)) if last else float("nan")
    return {
        "duration_s": round(elapsed, 1),
        "rate_target": rate,
        "rate_achieved": round(len(all_lat) / elapsed, 1),
        "clients": clients,
        "rank": rank,
        "malloc_arena_max": malloc_arena_max,
        "requests": len(all_lat),
        "failed": len(tally.failures),
        "failures_sample": tally.failures[:10],
        "late_ticks": tally.late_ticks,
        "latency": {"all": _percentiles(all_lat), "during_reload": _percentiles(during), **{k: _percentiles(v) for k, v in sorted(tally.latencies.items())}},
        "reloads": {"count": len(reloads), "ok": sum(r["ok"] for r in reloads), "seconds": [r["seconds"] for r in reloads]},
        "rss_mb": {
            "start": round(mb[0][1], 1),
            "after_warmup_median": round(base_mb, 1),
            "last_minute_median": round(end_mb, 1),
            "max_after_warmup": round(max((m for t, m in mb if t >= warm), default=float("nan")), 1),
            "growth_pct": round(100 * (end_mb / base_mb - 1), 2),
            "samples": [(round(t), round(m, 1)) for t, m in mb],
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="bundle directory")
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load (bounded)")
    p.add_argument("--rate", type=float, default=40.0, help="requests/s in total (open loop)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--reload-every", type=float, default=30.0)
    p.add_argument("--max-requests", type=int, default=100_000, help="hard cap on requests sent")
    p.add_argument("--json", type=Path, default=None, help="write the result here as well")
    p.add_argument("--malloc-arena-max", type=int, default=None, help="MALLOC_ARENA_MAX for the server (glibc)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would swamp the log
    rank = os.environ.get("MOVIEREC_RANK", "1").lower() not in ("0", "false", "no")
    result = soak(
        args.model, args.duration, args.rate, args.clients, args.reload_every, args.max_requests, rank, args.malloc_arena_max
    )
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text)
    log.info(
        "requests=%d failed=%d p99=%.1fms rss growth=%.2f%% reloads ok=%d/%d",
        result["requests"], result["failed"], result["latency"]["all"].get("p99_ms", float("nan")),
        result["rss_mb"]["growth_pct"], result["reloads"]["ok"], result["reloads"]["count"],
    )
    sys.stdout.write(text + "\n")
    if result["failed"] or not abs(result["rss_mb"]["growth_pct"]) <= 10:
        sys.exit(1)


if __name__ == "__main__":
    main()
