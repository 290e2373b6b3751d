"""CPU per request of the serving app itself: the ASGI app called in-process, no network, no uvicorn.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serving_inprocess.py --model MODEL_DIR
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serving_inprocess.py --model MODEL_DIR --endpoints new_user --profile

Per endpoint: CPU milliseconds per request of this process (``time.process_time``), after a
warm-up (for ``recommendations`` every sampled user once, so the answers come from the cache).
What the app costs apart from HTTP parsing and the network, and less sensitive to a busy machine
than a load test. ``--profile`` prints the top of a cProfile of the timed requests.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import random
import tempfile
import time
from pathlib import Path
from typing import Any


async def call(app: Any, method: str, path: str, query: bytes = b"", body: bytes = b"") -> dict[str, Any]:
    """One request through the ASGI app; returns the status and body."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "state": {},
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    out: dict[str, Any] = {"body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out


async def run(args: argparse.Namespace) -> None:
    from serving.app import create_app
    from serving.settings import Settings

    app = create_app(Settings(model=args.model, state_dir=Path(tempfile.mkdtemp(prefix="movierec-state-"))))
    async with app.router.lifespan_context(app):
        rec = app.state.store.get().recommender
        users = [str(u) for u in rec.user_ids[:500]]
        items = [int(x) for x in rec.items["item_id"].to_numpy()[:1500]]
        rnd = random.Random(1)
        kinds = {
            "recommendations": lambda: ("GET", f"/users/{rnd.choice(users)}/recommendations", b"k=10", b""),
            "new_user": lambda: ("POST", "/recommendations", b"", json.dumps({"k": 10, "liked_items": rnd.sample(items, 3)}).encode()),
            "similar": lambda: ("GET", f"/items/{rnd.choice(items)}/similar", b"k=10", b""),
            "health": lambda: ("GET", "/health", b"", b""),
        }
        for kind in args.endpoints.split(","):
            if kind == "recommendations":
                for u in users:
                    await call(app, "GET", f"/users/{u}/recommendations", b"k=10")
            for _ in range(300):
                r = await call(app, *kinds[kind]())
                if r["status"] != 200:
                    raise SystemExit(f"{kind}: status {r['status']}: {r['body'][:200]!r}")
            prof = cProfile.Profile() if args.profile else None
            if prof:
                prof.enable()
            t, c = time.perf_counter(), time.process_time()
            for _ in range(args.requests):
                await call(app, *kinds[kind]())
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            if prof:
                prof.disable()
                pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
            print(f"| {kind} | {1e3 * cpu / args.requests:.3f} ms CPU/request | {1e3 * wall / args.requests:.3f} ms wall |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--endpoints", default="recommendations,new_user,similar,health")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
