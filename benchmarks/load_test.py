"""Load test of ``movierec serve`` on 127.0.0.1 with wrk: throughput and latency per endpoint.

For each worker count it starts ``movierec serve --model BUNDLE --workers N`` and, in the same
run, a FastAPI app with one empty endpoint under the same uvicorn stack (uvloop + httptools), so
the ratio to the framework's floor is measured on the same machine at the same moment. Each
endpoint is driven twice with wrk:

* ``max``: closed loop, one wrk thread (so the server keeps most of the CPU) and 16 connections,
  each sending its next request as soon as its answer is in: the most requests/s the server
  sustains, and the latency at that saturation.
* ``rate``: open loop paced by schedule, the load the serving target of docs/design.md is about:
  ``--rate`` requests/s (default 500) offered on ``--rate-connections`` connections (default 8),
  connection i sending at start + i*T/c + n*T with T = c / rate, so requests arrive evenly
  spread whatever the answers' latency, with no bursts. A Lua ``delay()`` waits until the
  connection's next send time (not at all when it is already late). wrk 4.1's scripts do not
  know which connection calls them, so each connection runs in its own wrk thread (``-t c -c
  c``); the client's CPU per request is reported (``client_cpu_ms``). Latency is given two ways:
  from each request's actual send (wrk's own histogram), and from its scheduled send time (the
  coordinated-omission-corrected latency: a slow answer also delays the requests that were due
  on its connection, and they are charged for the wait). The run reports the achieved
  requests/s, how late the sends went out (and how much of that was the client's own wake-up,
  not the server), the requests due that were never sent, errors (non-2xx, socket errors,
  timeouts), and says when the server fell behind the schedule.

  Pacing by schedule matters: a fixed ``delay()`` after each answer would be a closed loop with
  think time, reaching only c / (c / rate + latency) requests/s in bursts of c, and would measure
  neither the rate asked nor the latency at it.

Paths are mixed: random known users, random movies, random sets of three liked movies. Every run
is bounded in time (``--duration`` seconds each) and the servers are always stopped.

Usage::

    .venv/bin/movierec train --data ../shared/data/ml-100k --out /tmp/bundle
    .venv/bin/python benchmarks/load_test.py --model /tmp/bundle --duration 8
    .venv/bin/python benchmarks/load_test.py --model /tmp/bundle --duration 10 --servers 2:ranked --endpoints new_user --rate 500
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import resource
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


def _request_lua(kind: str, users: list, items: list, seed: int) -> str:
    """Lua defining ``next_request()``: one kind of request with random ids."""
    rnd = random.Random(seed)
    u = rnd.sample(users, min(len(users), 500))
    i = rnd.sample(items, min(len(items), 500))
    lua_list = lambda xs: "{" + ",".join(json.dumps(str(x)) for x in xs) + "}"  # noqa: E731
    head = f"local users = {lua_list(u)}\nlocal items = {lua_list(i)}\n"
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
    return head + f"local function next_request()\n  {body}\nend\n"


def _lua(kind: str, users: list, items: list, seed: int = 42) -> str:
    """A wrk script for the closed loop: each connection sends its next request as soon as the
    previous answer is in."""
    return f"math.randomseed({seed})\n" + _request_lua(kind, users, items, seed) + "request = next_request\n"


# Lead time between wrk's setup of its first thread and the first scheduled send: the threads and
# their connections are up by then, so the first sends are not late.
_LEAD_MS = 50.0

# The schedule. wrk 4.1 calls delay() when a connection is free to send (after connecting, after
# each response) and request() when that delay has run out; neither says which connection is
# calling, and one wrk thread's connections share one Lua state. So each connection gets its own
# wrk thread (-t C -c C): idx below is the connection, and delay/request/response of one state
# alternate strictly, which pairs every response with its request. The clock is CLOCK_MONOTONIC
# through LuaJIT's ffi (wrk's own clock, gettimeofday, is not visible to scripts).
_PACED_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } movierec_timespec;
int clock_gettime(int clk_id, movierec_timespec *tp);
]]
local ts = ffi.new("movierec_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e3 + tonumber(ts.tv_nsec) * 1e-6
end

local period = PERIOD_MS      -- T = connections / rate: each connection sends once per T
local connections = CONNECTIONS
local threads = {}

function setup(thread)
  start_ms = start_ms or now_ms() + LEAD_MS
  thread:set("idx", #threads)
  thread:set("start_ms", start_ms)
  threads[#threads + 1] = thread
end

function init(args)
  math.randomseed(SEED + idx)     -- a different request sequence per connection
  first = start_ms + idx * period / connections
  n = 0                           -- requests sent; the next one is due at first + n * period
  armed = false                   -- wrk calls request() once before the run to check its output
  sched, sent, recv, status = {}, {}, {}, {}
end

function delay()
  armed = true
  local wait = first + n * period - now_ms()
  if wait <= 0 then return 0 end
  return math.floor(wait)         -- wrk's timers count whole ms: rounding up would make most sends late
end

function request()
  if armed then
    n = n + 1
    sched[n] = first + (n - 1) * period
    sent[n] = now_ms()
  end
  return next_request()
end

function response(code, headers, body)
  if n > 0 and recv[n] == nil then
    recv[n] = now_ms()
    status[n] = code
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("paced-run %.3f %.3f %d %.6f\\n", start_ms, LEAD_MS, #threads, period))
  io.write(string.format("paced-wrk %d %d %d %d\\n", latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
  io.write(string.format("paced-errors %d %d %d %d %d\\n", e.connect, e.read, e.write, e.status, e.timeout))
  for _, t in ipairs(threads) do
    local i, m = t:get("idx"), t:get("n")
    local s, a, r, c = t:get("sched"), t:get("sent"), t:get("recv"), t:get("status")
    for k = 1, m do
      if r[k] then
        io.write(string.format("paced-req %d %.3f %.3f %.3f %d\\n", i, s[k], a[k], r[k], c[k]))
      else
        io.write(string.format("paced-req %d %.3f %.3f - 0\\n", i, s[k], a[k]))
      end
    end
  end
end
"""


def _paced_lua(kind: str, users: list, items: list, rate: float, connections: int, seed: int = 42) -> str:
    """A wrk script pacing ``connections`` connections (one wrk thread each) by schedule:
    connection i sends at start + i*T/c + n*T with T = c / rate, so ``rate`` requests a second
    arrive evenly spread whatever the answers' latency; ``delay()`` waits until the next send
    time, or not at all when the connection is already late. ``done()`` prints every request's
    scheduled, sent and answered times (``paced-req`` lines) for :func:`summarise_paced`."""
    script = _PACED_LUA.replace("PERIOD_MS", f"{1000.0 * connections / rate:.6f}").replace("CONNECTIONS", str(connections))
    script = script.replace("LEAD_MS", f"{_LEAD_MS:.1f}").replace("SEED", str(seed))
    return _request_lua(kind, users, items, seed) + script


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _wrk(
    url: str, script: str, threads: int, connections: int, duration: float, server_pid: int | None, *flags: str
) -> tuple[str, int, float]:
    """wrk driven by the Lua ``script``: its output, the requests it completed and, given the
    server's pid, the server's CPU milliseconds per request (workers included)."""
    cpu0 = _tree_cpu(server_pid) if server_pid else 0.0
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, int(duration))}s", *flags, "-s", f.name, url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=False).stdout
    finally:
        os.unlink(f.name)
    cpu = _tree_cpu(server_pid) - cpu0 if server_pid else float("nan")
    done = re.search(r"(\d+) requests in", out)
    requests = int(done.group(1)) if done else 0
    return out, requests, 1e3 * cpu / requests if requests else float("nan")


def run_wrk(url: str, script: str, connections: int, duration: float, server_pid: int | None = None) -> dict[str, float]:
    """One wrk run; returns requests/s, p50/p99 in ms, the count of failed requests and, given
    the server's pid, its CPU milliseconds per request (workers included): less sensitive than
    throughput to what else the machine is running."""
    out, _, cpu_ms = _wrk(url, script, 1, connections, duration, server_pid, "--latency")
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


def _pct(values: list[float], q: float) -> float:
    """The q-th percentile by nearest rank (as wrk reports its own), nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _quantiles(values: list[float]) -> dict[str, float]:
    return {"p50_ms": _pct(values, 50), "p90_ms": _pct(values, 90), "p99_ms": _pct(values, 99), "max_ms": max(values, default=float("nan"))}


def summarise_paced(out: str, rate: float, duration: float) -> dict:
    """Reads the ``paced-*`` lines a :func:`_paced_lua` script prints at the end of a wrk run.

    The run's window is [start, start + duration - lead]: wrk stops its threads up to 100 ms after
    its own timer, which began before the schedule's start, so the window ends before any thread
    stops. Achieved requests/s counts the answers received in the window; a connection is late
    when it sends after its scheduled time (its previous answer came late), and the slots due in
    the window that were never sent are the requests the server kept the client from offering.

    Returns:
        ``offered_rps``, ``achieved_rps``; ``wrk`` (wrk's histogram, from each request's actual
        send; wrk 4.1 adds its own correction for answers slower than twice the mean interval
        per connection) and ``scheduled`` (from each request's scheduled send time: the
        coordinated-omission-corrected latency) with ``p50_ms``, ``p90_ms``, ``p99_ms`` and
        ``max_ms``; ``from_send`` (the same from the script's own send times, a check on
        ``wrk``); ``send_lag`` (sent minus scheduled, negative when early) and ``client_lag``
        (the part of it after the previous answer was in: the client's own lateness, which the
        scheduled latency includes), the same percentiles; ``due``,
        ``sent``, ``unsent_due``, ``unanswered``; ``errors`` (socket errors, timeouts and
        non-2xx answers) and ``behind`` (the schedule was not kept).

    Raises:
        ValueError: wrk printed no ``paced-run`` line (the script failed; its output is in the
            message).
    """
    run = re.search(r"^paced-run (\S+) (\S+) (\d+) (\S+)$", out, flags=re.MULTILINE)
    if not run:
        raise ValueError(f"wrk printed no paced summary:\n{out}")
    start, lead, connections, period = float(run.group(1)), float(run.group(2)), int(run.group(3)), float(run.group(4))
    end = start + 1000.0 * duration - lead
    wrk_q = [int(x) / 1000.0 for x in re.search(r"^paced-wrk (\d+) (\d+) (\d+) (\d+)$", out, flags=re.MULTILINE).groups()]
    connect, read, write, status, timeout = (int(x) for x in re.search(r"^paced-errors (\d+) (\d+) (\d+) (\d+) (\d+)$", out, flags=re.MULTILINE).groups())
    scheduled, from_send, lag, client_lag = [], [], [], []
    answered = sent = unanswered = bad_status = 0
    previous: dict[str, float] = {}  # connection -> its last answer's time
    # connection i's slots in the window: start + i*T/c + n*T <= end, n = 0 .. due_i - 1
    due = [max(0, math.floor((end - start - i * period / connections) / period) + 1) for i in range(connections)]
    for line in re.findall(r"^paced-req (.+)$", out, flags=re.MULTILINE):
        conn, sched, at, recv, code = line.split()
        sched, at = float(sched), float(at)
        if round((sched - start - int(conn) * period / connections) / period) >= due[int(conn)]:
            continue  # after the window (the slot's index, not its printed time: no rounding at the edge)
        sent += at <= end
        lag.append(at - sched)
        # the part of the lag the server did not cause: the previous answer was in, the client woke late
        client_lag.append(at - max(sched, previous.get(conn, sched)))
        if recv == "-":
            unanswered += 1
            previous.pop(conn, None)
            continue
        recv = float(recv)
        previous[conn] = recv
        answered += recv <= end
        bad_status += not 200 <= int(code) < 300
        # a send up to 1 ms early (wrk's whole-millisecond timers) is timed from the send itself
        scheduled.append(recv - min(sched, at))
        from_send.append(recv - at)
    due = sum(due)
    achieved = 1000.0 * answered / (end - start)
    result = {
        "offered_rps": rate,
        "achieved_rps": achieved,
        "connections": connections,
        "wrk": dict(zip(("p50_ms", "p90_ms", "p99_ms", "max_ms"), wrk_q)),
        "scheduled": _quantiles(scheduled),
        "from_send": _quantiles(from_send),
        "send_lag": _quantiles(lag),
        "client_lag": _quantiles(client_lag),
        "due": due,
        "sent": sent,
        "unsent_due": due - sent,
        "unanswered": unanswered,
        "errors": connect + read + write + timeout + max(status, bad_status),
        "errors_detail": {"connect": connect, "read": read, "write": write, "timeout": timeout, "status": max(status, bad_status)},
    }
    # kept: nearly every due request answered, and at most one owed per connection at the end
    result["behind"] = achieved < 0.97 * rate or due - sent > connections
    return result


def run_paced(
    url: str, script: str, rate: float, connections: int, duration: float, server_pid: int | None = None
) -> dict:
    """One schedule-paced wrk run (one wrk thread per connection, see ``_PACED_LUA``); returns
    :func:`summarise_paced`'s figures with the server's CPU ms per answered request (``cpu_ms``)
    and wrk's own (``client_cpu_ms``)."""
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out, requests, cpu_ms = _wrk(url, script, connections, connections, duration, server_pid)
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = summarise_paced(out, rate, max(1, int(duration)))
    result["wrk_rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    result["cpu_ms"] = cpu_ms
    client = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
    result["client_cpu_ms"] = 1e3 * client / requests if requests else float("nan")
    if result["behind"]:
        log.warning(
            "the server fell behind the schedule: %.0f of %.0f req/s answered, %d of %d due requests never sent, sends up to %.1f ms late",
            result["achieved_rps"], rate, result["unsent_due"], result["due"], result["send_lag"]["max_ms"],
        )
    return result


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
    parser.add_argument("--rate", type=float, default=500, help="requests/s offered by the schedule-paced runs")
    parser.add_argument(
        "--rate-connections", type=int, default=8,
        help="connections sharing the paced load, each on its own send schedule and its own wrk thread",
    )
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
        "answers (0: a random 3-second warm-up only, so many answers are computed, not cached)",
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
                    _warm_caches(url, _lua("recommendations_walk", users, items), args.max_connections, args.cache_warmup, servers[0].pid)
                run_wrk(url, _lua(kind, users, items), args.max_connections, 3)  # warm-up
                pid = servers[1 if kind == "empty" else 0].pid
                peak = run_wrk(url, _lua(kind, users, items), args.max_connections, args.duration, pid)
                paced = run_paced(
                    url, _paced_lua(kind, users, items, args.rate, args.rate_connections), args.rate, args.rate_connections, args.duration, pid
                )
                row = {"workers": workers, "mode": mode, "endpoint": kind, "max": peak, "rate": paced}
                results.append(row)
                log.info(
                    "workers=%d %-9s %-16s max %7.0f req/s p50 %6.2f p99 %6.2f ms (errors %d)",
                    workers, mode, kind, peak["rps"], peak["p50_ms"], peak["p99_ms"], peak["errors"],
                )
                w, c, lag = paced["wrk"], paced["scheduled"], paced["send_lag"]
                log.info(
                    "  paced %.0f req/s on %d connections: achieved %.0f%s | from send p50/p90/p99/max %.2f/%.2f/%.2f/%.2f ms | "
                    "from schedule %.2f/%.2f/%.2f/%.2f ms | sends late p99 %.2f max %.2f ms (client's own p99 %.2f) | errors %d | "
                    "server CPU %.2f, wrk CPU %.2f ms/req",
                    args.rate, args.rate_connections, paced["achieved_rps"], " (BEHIND the schedule)" if paced["behind"] else "",
                    w["p50_ms"], w["p90_ms"], w["p99_ms"], w["max_ms"], c["p50_ms"], c["p90_ms"], c["p99_ms"], c["max_ms"],
                    lag["p99_ms"], lag["max_ms"], paced["client_lag"]["p99_ms"], paced["errors"], paced["cpu_ms"], paced["client_cpu_ms"],
                )
        finally:
            for proc in servers:
                _stop(proc)

    rate = f"{args.rate:g} req/s offered on {args.rate_connections} conn."
    lines = [
        (
            f"| workers | mode | endpoint | max req/s ({args.max_connections} conn.) | p50 ms | p99 ms | vs empty (max req/s) "
            f"| server CPU ms/request (max run) | {rate}: achieved req/s | p50 / p99 ms from send | p50 / p99 ms from schedule "
            "| kept the schedule | errors |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        empty = next(r for r in results if r["workers"] == row["workers"] and r["mode"] == row["mode"] and r["endpoint"] == "empty")
        ratio = row["max"]["rps"] / empty["max"]["rps"]
        paced = row["rate"]
        lines.append(
            f"| {row['workers']} | {row['mode']} | {row['endpoint']} | {row['max']['rps']:,.0f} | {row['max']['p50_ms']:.2f} | {row['max']['p99_ms']:.2f} "
            f"| {ratio:.2f} | {row['max']['cpu_ms']:.3f} | {paced['achieved_rps']:,.0f} | {paced['wrk']['p50_ms']:.2f} / {paced['wrk']['p99_ms']:.2f} "
            f"| {paced['scheduled']['p50_ms']:.2f} / {paced['scheduled']['p99_ms']:.2f} | {'no' if paced['behind'] else 'yes'} "
            f"| {row['max']['errors'] + paced['errors']} |"
        )
    lines.append(f"(load average {os.getloadavg()[0]:.2f} at the end)")
    sys.stdout.write("\n".join(lines) + "\n")
    if any(r["max"]["errors"] or r["rate"]["errors"] for r in results):
        log.warning("some requests failed (non-2xx or socket errors): see the JSON output")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
