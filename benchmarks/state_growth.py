"""Start-up, reload and memory of a ``movierec serve`` worker against the size of its online state,
with and without a snapshot (recommender/snapshots.py).

For each event count (``--events``, default 0, 100,000 and 1,000,000) it writes that many rating
events into a fresh SQLite state, as API posts of ``--per-post`` ratings would (half the users
known to the bundle, half new), then starts ``movierec serve --workers 1`` on 127.0.0.1 and
measures:

- start-up: seconds from the process start until ``/ready`` answers 200;
- reload: seconds of ``POST /admin/reload?force=true`` (a new model loaded and caught up);
- RSS: the server process's resident memory after start-up and after the reload (``/proc``).

Each non-empty state is measured twice: with snapshots off (a copy of the bundle relabelled and
with ``serving.snapshot_every`` out of reach, so start-up and reload replay every event), then
after ``movierec state compact`` wrote a snapshot and ``--tail`` more events were recorded after
it (workers write one every ``serving.snapshot_every`` events, so a start-up replays at most about
that many). Times are the best of ``--repeat`` runs, RSS the largest. The bundle is trained on
generated data (``movierec synth`` with the tiny training recipe of the tests) unless ``--model``
is given.

Usage::

    .venv/bin/python benchmarks/state_growth.py --workdir /tmp/state-growth
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recommender import HybridRecommender  # noqa: E402
from recommender.state import StateStore  # noqa: E402
from recommender.state_db import state_url  # noqa: E402

MOVIEREC = Path(sys.executable).parent / "movierec"
KEY = "state-growth-key"
TINY = ["retrieval.epochs=2", "retrieval.dim=16", "retrieval.hidden=32", "content.dim=16", "trainer.progress=false",
        "ranking.epochs=1", "ranking.candidates=30"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MOVIEREC_PROGRESS": "0", "PYTHONPATH": str(ROOT)}


def bundle(workdir: Path, users: int, items: int, ratings: int) -> Path:
    """A bundle trained on generated data with the tests' tiny recipe (reused when present)."""
    model = workdir / "model"
    if (model / "manifest.json").is_file():
        return model
    data = workdir / "data"
    subprocess.run([str(MOVIEREC), "synth", "--out", str(data), "--users", str(users), "--items", str(items),
                    "--ratings", str(ratings)], check=True, env=env())
    sets = [a for kv in TINY for a in ("--set", kv)]
    subprocess.run([str(MOVIEREC), "train", "--data", str(data), "--out", str(model), *sets], check=True, env=env())
    return model


def fill(store: StateStore, model: HybridRecommender, n: int, users: int, per_post: int, seed: int) -> None:
    """``n`` rating events as API posts of ``per_post`` ratings (half known users, half new)."""
    rng = np.random.default_rng(seed)
    known = model.user_ids[: users // 2].tolist()
    base = int(np.max(model.user_ids)) + 1
    pool = [*known, *(base + k for k in range(users - len(known)))]
    items = model.items["item_id"].to_numpy()
    titles = model.items["title"].to_numpy()
    written = 0
    while written < n:
        m = min(per_post, n - written)
        pick = rng.integers(len(items), size=m)
        store.append_ratings(pool[int(rng.integers(len(pool)))],
                             [(items[i].item(), float(rng.integers(1, 6)), str(titles[i])) for i in pick])
        written += m


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(model: Path, state: Path, timeout: float = 900) -> dict[str, float]:
    """Start-up seconds, reload seconds and RSS (MB) of one ``movierec serve`` worker."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(MOVIEREC), "serve", "--model", str(model), "--port", str(port), "--workers", "1"],
        env={**env(), "MOVIEREC_STATE_DIR": str(state), "MOVIEREC_API_KEY": KEY},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("server exited")
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError("server not ready")
            time.sleep(0.05)
        start = time.perf_counter() - t0
        time.sleep(1.0)  # let a snapshot the start-up may have started finish
        rss_start = rss_mb(proc.pid)
        t = time.perf_counter()
        r = httpx.post(f"{base}/admin/reload", params={"force": "true"}, headers={"X-API-Key": KEY}, timeout=timeout)
        reload_s = time.perf_counter() - t
        if r.status_code != 200:
            raise RuntimeError(f"reload answered {r.status_code}: {r.text}")
        time.sleep(1.0)
        rss_reload = rss_mb(proc.pid)
        return {"startup_s": start, "reload_s": reload_s, "rss_start_mb": rss_start, "rss_reload_mb": rss_reload}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def without_snapshots(model: Path, out: Path) -> Path:
    """A copy of ``model`` under another version (so no snapshot of ``model`` applies to it) whose
    workers never write one."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model_version"] = f"{manifest['model_version']}-no-snapshots"
    manifest.setdefault("config", {}).setdefault("serving", {})["snapshot_every"] = 10**15
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def best(model: Path, state: Path, repeat: int) -> dict[str, float]:
    runs = [measure(model, state) for _ in range(repeat)]
    return {
        "startup_s": min(r["startup_s"] for r in runs), "reload_s": min(r["reload_s"] for r in runs),
        "rss_start_mb": max(r["rss_start_mb"] for r in runs), "rss_reload_mb": max(r["rss_reload_mb"] for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None, help="a bundle (default: train one on generated data)")
    ap.add_argument("--events", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    ap.add_argument("--users", type=int, default=10_000, help="users posting (half known to the bundle, half new)")
    ap.add_argument("--per-post", type=int, default=100)
    ap.add_argument("--tail", type=int, default=5_000, help="events recorded after the snapshot")
    ap.add_argument("--synth", type=int, nargs=3, default=[2_000, 1_000, 60_000], metavar=("USERS", "ITEMS", "RATINGS"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    model_path = args.model or bundle(args.workdir, *args.synth)
    model = HybridRecommender.load(model_path)
    off = without_snapshots(model_path, args.workdir / "model-no-snapshots")
    rows = []
    for n in args.events:
        state = args.workdir / f"state-{n}"
        shutil.rmtree(state, ignore_errors=True)
        store = StateStore(state_url(state))
        fill(store, model, n, args.users, args.per_post, seed=n)
        if n == 0:
            rows.append({"events": 0, "snapshot": "-", **best(model_path, state, args.repeat)})
        else:
            rows.append({"events": n, "snapshot": "off", **best(off, state, args.repeat)})
            print(json.dumps(rows[-1]), flush=True)
            subprocess.run([str(MOVIEREC), "state", "compact", "--state", str(state), "--model", str(model_path)],
                           check=True, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            fill(store, model, args.tail, args.users, args.per_post, seed=n + 1)
            rows.append({"events": n + args.tail, "snapshot": f"at {n:,}", **best(model_path, state, args.repeat)})
        store.close()
        print(json.dumps(rows[-1]), flush=True)
    empty = rows[0]
    print(f"\n{'events':>10} {'snapshot':>12} {'start-up s':>11} {'reload s':>9} {'RSS MB':>8} {'RSS after reload':>17}"
          f" {'start-up / empty':>17} {'reload / empty':>15} {'RSS / empty':>12}")
    for r in rows:
        print(f"{r['events']:>10,} {r['snapshot']:>12} {r['startup_s']:>11.2f} {r['reload_s']:>9.2f} {r['rss_start_mb']:>8.0f}"
              f" {r['rss_reload_mb']:>17.0f} {r['startup_s'] / empty['startup_s']:>17.2f} {r['reload_s'] / empty['reload_s']:>15.2f}"
              f" {max(r['rss_start_mb'], r['rss_reload_mb']) / max(empty['rss_start_mb'], empty['rss_reload_mb']):>12.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
