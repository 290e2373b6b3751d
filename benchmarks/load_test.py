"""Load test of ``movierec serve`` on 127.0.0.1 with wrk: throughput and latency per endpoint.

For each worker count it starts ``movierec serve --model BUNDLE --workers N`` and, in the same
run, a FastAPI app with one empty endpoint under the same uvicorn stack (uvloop + httptools), so
the ratio to the framework's floor is measured on the same machine at the same moment. Each
endpoint is driven twice with wrk (one client thread, so the server keeps most of the CPU):

* ``max``: closed loop with 16 connections: the most requests/s the server sustains.
* ``rate``: the target rate (default 500 requests/s) spread over a few connections with a Lua
  ``delay()``: latency at a steady load, the figure the target in DESIGN.md is about.

Paths are mixed: random known users, random movies, random sets of three liked movies. Every run
is bounded in time (``--duration`` seconds each) and the servers are always stopped.

Usage::

    .venv/bin/movierec train --data ../shared/data/ml-100k --out /tmp/bundle
    .venv/bin/python benchmarks/load_test.py --model /tmp/bundle --duration 8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

log = logging.getLogger("load_test")
ROOT = Path(__file__).resolve().parents[1]


def empty_app() -> object:
    """The baseline: FastAPI with one endpoint that does nothing (uvicorn factory)."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/empty")
    async def empty() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cmd: list[str], port: int, ready_path: str, env: dict[str, str], timeout: float = 120) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    _stop(proc)
    raise RuntimeError(f"server not ready within {timeout}s: {' '.join(cmd)}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants (uvicorn's workers)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def _lua(kind: str, users: list, items: list, delay_ms: float | None, seed: int = 42) -> str:
    """A wrk script issuing one kind of request with random ids (and a per-connection delay)."""
    rnd = random.Random(seed)
    u = rnd.sample(users, min(len(users), 500))
    i = rnd.sample(items, min(len(items), 500))
    lua_list = lambda xs: "{" + ",".join(json.dumps(str(x)) for x in xs) + "}"  # noqa: E731
    head = f"math.randomseed({seed})\nlocal users = {lua_list(u)}\nlocal items = {lua_list(i)}\n"
    if kind == "recommendations":
        body = 'return wrk.format("GET", "/users/" .. users[math.random(#users)] .. "/recommendations?k=10")'
    elif kind == "recommendations_walk":  # every user in turn: warms each worker's answer cache
        head += "local n = 0\n"
        body = 'n = n % #users + 1\n  return wrk.format("GET", "/users/" .. users[n] .. "/recommendations?k=10")'
    elif kind == "similar":
        body = 'return wrk.format("GET", "/items/" .. items[math.random(#items)] .. "/similar?k=10")'
    elif kind == "new_user":
        body = (
            'local b = \'{"k": 10, "liked_items": [\' .. items[math.random(#items)] .. "," .. items[math.random(#items)]'
            ' .. "," .. items[math.random(#items)] .. "]}"\n'
            '  return wrk.format("POST", "/recommendations", {["Content-Type"] = "application/json"}, b)'
        )
    elif kind == "empty":
        body = 'return wrk.format("GET", "/empty")'
    else:
        raise ValueError(kind)
    script = head + f"request = function()\n  {body}\nend\n"
    if delay_ms is not None:
        script += f"delay = function()\n  return {delay_ms:.3f}\nend\n"
    return script


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, script: str, connections: int, duration: float, server_pid: int | None = None) -> dict[str, float]:
    """One wrk run; returns requests/s, p50/p99 in ms, the count of failed requests and, given
    the server's pid, its CPU milliseconds per request (workers included): less sensitive than
    throughput to what else the machine is running."""
    cpu0 = _tree_cpu(server_pid) if server_pid else 0.0
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(duration))}s", "--latency", "-s", f.name, url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    finally:
        os.unlink(f.name)
    cpu = _tree_cpu(server_pid) - cpu0 if server_pid else float("nan")
    done = re.search(r"(\d+) requests in", out)
    cpu_ms = 1e3 * cpu / int(done.group(1)) if done and int(done.group(1)) else float("nan")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, flags=re.M))
    if "50" not in lat or "99" not in lat:  # no request finished within the run
        log.warning("wrk reported no latencies:\n%s", out)
        return {"rps": rps, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": 0, "cpu_ms": cpu_ms}
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return {"rps": rps, "p50_ms": _ms(lat["50"]), "p99_ms": _ms(lat["99"]), "errors": errors, "cpu_ms": cpu_ms}


def _warm_caches(url: str, script: str, connections: int, budget: float, server_pid: int) -> None:
    """Walk the users in 3-second wrk runs until a run costs the server under 0.5 ms of CPU
    per request (answers come from the caches; one computed answer costs several ms)."""
    spent = 0.0
    while spent < budget:
        run = run_wrk(url, script, connections, 3, server_pid)
        spent += 3
        log.info("cache warm-up: %.0f req/s, %.3f ms CPU per request", run["rps"], run["cpu_ms"])
        if run["cpu_ms"] < 0.5:
            return
    log.warning("caches still cold after %.0f s of warm-up: the recommendations rows include computed answers", budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="bundle from movierec train")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--rate", type=int, default=500, help="target requests/s of the steady-load runs")
    parser.add_argument("--rate-connections", type=int, default=8, help="connections sharing the steady load")
    parser.add_argument("--max-connections", type=int, default=16, help="connections of the max-throughput runs")
    parser.add_argument(
        "--servers", default="1:ranked,2:ranked,1:retrieval",
        help="comma-separated WORKERS:MODE, MODE ranked (the bundle's ranker) or retrieval (MOVIEREC_RANK=0)",
    )
    parser.add_argument(
        "--endpoints", default="empty,recommendations,similar,new_user",
        help="comma-separated endpoints to drive (empty is always measured: the ratios need it)",
    )
    parser.add_argument(
        "--cache-warmup", type=float, default=90.0,
        help="at most this many seconds of walking every sampled user in turn before the recommendations runs, until the "
        "server spends under 0.5 ms of CPU per request (each worker's answer cache holds them), so the runs measure cached "
        "answers (0: the random 3-second warm-up only, as in session 4)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")

    from recommender import HybridRecommender

    model = HybridRecommender.load(args.model)
    users = [x.item() if hasattr(x, "item") else x for x in model.user_ids]
    items = [x.item() if hasattr(x, "item") else x for x in model.items["item_id"].to_numpy()]
    log.info("bundle %s: %d users, %d items, ranker=%s", args.model, len(users), len(items), model.ranker is not None)
    del model

    env = {**os.environ, "MOVIEREC_API_KEY": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    delay_ms = 1000.0 * args.rate_connections / args.rate
    results = []
    for spec in args.servers.split(","):
        w, mode = spec.split(":")
        workers = int(w)
        server_env = {**env, "MOVIEREC_RANK": "1" if mode == "ranked" else "0"}
        port, empty_port = _free_port(), _free_port()
        servers = []
        try:
            servers.append(
                _start(
                    [sys.executable, "-m", "movierec.cli", "serve", "--model", str(args.model), "--port", str(port), "--workers", str(workers)],
                    port, "/ready", server_env,
                )
            )
            servers.append(
                _start(
                    [sys.executable, "-m", "uvicorn", "load_test:empty_app", "--factory", "--app-dir", str(ROOT / "benchmarks"),
                     "--host", "127.0.0.1", "--port", str(empty_port), "--workers", str(workers),
                     "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
                    empty_port, "/empty", env,
                )
            )
            kinds = ["empty"] + [k for k in args.endpoints.split(",") if k and k != "empty"]
            for kind in kinds:
                url = f"http://127.0.0.1:{empty_port if kind == 'empty' else port}"
                if kind == "recommendations" and args.cache_warmup > 0:
                    _warm_caches(url, _lua("recommendations_walk", users, items, None), args.max_connections, args.cache_warmup, servers[0].pid)
                run_wrk(url, _lua(kind, users, items, None), args.max_connections, 3)  # warm-up
                pid = servers[1 if kind == "empty" else 0].pid
                peak = run_wrk(url, _lua(kind, users, items, None), args.max_connections, args.duration, pid)
                steady = run_wrk(url, _lua(kind, users, items, delay_ms), args.rate_connections, args.duration, pid)
                row = {"workers": workers, "mode": mode, "endpoint": kind, "max": peak, "rate": steady}
                results.append(row)
                log.info(
                    "workers=%d %-9s %-16s max %7.0f req/s p50 %6.2f p99 %6.2f ms | at %d req/s: got %5.0f p50 %6.2f p99 %6.2f ms (errors %d/%d)",
                    workers, mode, kind, peak["rps"], peak["p50_ms"], peak["p99_ms"], args.rate,
                    steady["rps"], steady["p50_ms"], steady["p99_ms"], peak["errors"], steady["errors"],
                )
        finally:
            for proc in servers:
                _stop(proc)

    lines = [
        f"| workers | mode | endpoint | max req/s ({args.max_connections} conn.) | p50 ms | p99 ms | at {args.rate} req/s: achieved "
        "| p50 ms | p99 ms | vs empty (max req/s) | server CPU ms/request (max run) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        empty = next(r for r in results if r["workers"] == row["workers"] and r["mode"] == row["mode"] and r["endpoint"] == "empty")
        ratio = row["max"]["rps"] / empty["max"]["rps"]
        lines.append(
            f"| {row['workers']} | {row['mode']} | {row['endpoint']} | {row['max']['rps']:,.0f} | {row['max']['p50_ms']:.2f} | {row['max']['p99_ms']:.2f} "
            f"| {row['rate']['rps']:,.0f} | {row['rate']['p50_ms']:.2f} | {row['rate']['p99_ms']:.2f} | {ratio:.2f} "
            f"| {row['max']['cpu_ms']:.3f} | {row['max']['errors'] + row['rate']['errors']} |"
        )
    lines.append(f"(load average {os.getloadavg()[0]:.2f} at the end)")
    sys.stdout.write("\n".join(lines) + "\n")
    if any(r["max"]["errors"] or r["rate"]["errors"] for r in results):
        log.warning("some requests failed (non-2xx or socket errors): see the JSON output")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
