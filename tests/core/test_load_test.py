"""benchmarks/load_test.py's schedule-paced run: the summary of a wrk run's per-request times
(hand-made runs with known answers), and one real wrk run against a tiny keep-alive server
(skipped without wrk)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
from cli_helpers import load_script

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lt() -> ModuleType:
    return load_script(REPO / "benchmarks" / "load_test.py")


def _wrk_output(start: float, period: float, connections: int, requests: list[tuple[int, float, float, float | None]]) -> str:
    """What the paced script's done() prints: requests are (connection, scheduled, sent, answered)."""
    lines = [f"paced-run {start:.3f} 50.0 {connections} {period:.6f}", "paced-wrk 2000 2000 2000 2000", "paced-errors 0 0 0 0 0"]
    for conn, sched, sent, recv in requests:
        answer = f"{recv:.3f} 200" if recv is not None else "- 0"
        lines.append(f"paced-req {conn} {sched:.3f} {sent:.3f} {answer}")
    return "\n".join(lines) + "\n"


def test_summary_of_a_kept_schedule(lt: ModuleType) -> None:
    # 2 connections at 100 req/s: T = 20 ms, connection 1 sends 10 ms after connection 0
    start, period = 1000.0, 20.0
    reqs = [(c, start + c * 10 + n * period, start + c * 10 + n * period, start + c * 10 + n * period + 2) for c in range(2) for n in range(50)]
    s = lt.summarise_paced(_wrk_output(start, period, 2, reqs), rate=100, duration=1)
    # the window is [1000, 1950]: 48 slots per connection, the last answer (1952) after it
    assert s["due"] == 96 and s["sent"] == 96 and s["unsent_due"] == 0
    assert s["achieved_rps"] == pytest.approx(100.0)
    assert s["scheduled"]["p99_ms"] == pytest.approx(2.0) and s["from_send"]["p99_ms"] == pytest.approx(2.0)
    assert s["send_lag"]["max_ms"] == pytest.approx(0.0)
    assert s["errors"] == 0 and not s["behind"]


def test_a_slow_answer_is_charged_to_the_requests_due_behind_it(lt: ModuleType) -> None:
    # one connection at 100 req/s (T = 10 ms); the first answer takes 200 ms, the rest 2 ms: the
    # next ~24 sends go out late, each 8 ms less late than the one before
    start, period = 1000.0, 10.0
    reqs, t = [], start
    for n in range(100):
        sched = start + n * period
        sent = max(sched, t)
        t = sent + (200 if n == 0 else 2)
        reqs.append((0, sched, sent, t))
    s = lt.summarise_paced(_wrk_output(start, period, 1, reqs), rate=100, duration=1)
    assert s["from_send"]["max_ms"] == pytest.approx(200.0)
    assert s["from_send"]["p90_ms"] == pytest.approx(2.0)  # from the send, only one answer was slow
    assert s["scheduled"]["p90_ms"] > 20.0  # from the schedule, a quarter of them were
    assert s["send_lag"]["max_ms"] == pytest.approx(190.0)  # request 2: due at 1010, sent at 1200
    assert s["client_lag"]["max_ms"] == pytest.approx(0.0)  # every late send waited for its answer
    assert not s["behind"]  # it caught up


def test_a_server_that_stops_answering_is_behind(lt: ModuleType) -> None:
    start, period = 1000.0, 10.0
    reqs = [(0, start + n * period, start + n * period, start + n * period + 1) for n in range(20)]
    reqs.append((0, start + 20 * period, start + 20 * period, None))  # never answered
    s = lt.summarise_paced(_wrk_output(start, period, 1, reqs), rate=100, duration=1)
    assert s["unanswered"] == 1 and s["due"] == 96 and s["unsent_due"] == 75
    assert s["behind"]


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn
    disable_nagle_algorithm = True  # headers and body are two writes: without it each answer waits ~40 ms for an ACK

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    httpd.handle_error = lambda request, address: None  # wrk resets its connections when it stops
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_paced_wrk_run_offers_the_rate_asked(lt: ModuleType, server: str) -> None:
    script = lt._paced_lua("empty", ["1"], ["1"], rate=200, connections=4)
    s = lt.run_paced(server, script, rate=200, connections=4, duration=2)
    assert s["errors"] == 0 and s["unanswered"] == 0
    assert 180 <= s["achieved_rps"] <= 205, s
    assert s["due"] - s["sent"] <= 4, s
    assert abs(s["send_lag"]["p50_ms"]) < 1.5, s  # sends go out on their schedule, not after each answer
    assert s["scheduled"]["p50_ms"] >= s["from_send"]["p50_ms"]
