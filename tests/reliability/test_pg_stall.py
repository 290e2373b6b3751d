"""A stalled and a vanished PostgreSQL under load: a private server (never the shared one) is
frozen with SIGSTOP while clients send ranked, cached and health requests to ``movierec serve
--workers 2``; ``/health`` never waits for the database (each check far shorter than the stall),
ranked requests get 503 within the stated bound, cached answers are still sent, and after SIGCONT
the service recovers without a restart. Then the server is killed outright and started again: the
same holds.

Skipped when PostgreSQL's binaries are missing or a private server cannot be started."""

from __future__ import annotations

import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from recommender import HybridRecommender
from tests.reliability.conftest import server

PG_BIN = Path(os.environ.get("MOVIEREC_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
# MOVIEREC_STATE_CHECK_TIMEOUT for the server under test: the default, since a shorter bound turns
# a healthy read on a loaded machine into a 503 before the stall
CHECK_TIMEOUT = 1.0
BOUND_S = CHECK_TIMEOUT + 0.5  # a ranked request's answer (503) during a stall, slack for a loaded machine
# a /health that waited for the database would take the stall's 6 s; the bound leaves room for a
# loaded machine's scheduling
HEALTH_S = 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A throw-away PostgreSQL cluster in a temp folder on its own port, in its own process group
    (so a signal to the group reaches the postmaster and every backend, and nothing else)."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").is_file():
            pytest.skip(f"no PostgreSQL binaries in {PG_BIN} (set MOVIEREC_TEST_PG_BIN)")
        self.root = Path(tempfile.mkdtemp(prefix="movierec-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres user to run a private server as")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        r = subprocess.run(
            [*self.prefix, str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "movierec", "--auth=trust", "-E", "UTF8"],
            capture_output=True, timeout=120,
        )
        if r.returncode != 0:
            pytest.skip(f"initdb failed: {r.stderr.decode()[-500:]}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"postgresql://movierec@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.prefix, str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip("the private PostgreSQL server did not start")
                time.sleep(0.1)

    def pids(self) -> list[int]:
        """The postmaster and its children (each backend runs in a session of its own, so the
        process group does not reach them), read from ``/proc``."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == postmaster:
                    children.append(int(entry.name))
        return [postmaster, *children]

    def signal(self, sig: int) -> None:
        """``sig`` to the server's own processes, one by one by pid."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            os.killpg(self.proc.pid, signal.SIGKILL)  # runuser, if it is still there
            self.proc.wait(30)
        # a killed postmaster leaves its pid file and shared memory to its backends: wait for them
        deadline = time.monotonic() + 30
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            try:
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, 0)
            except (ProcessLookupError, ValueError, IndexError):
                break
            time.sleep(0.1)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.cleanup()


@dataclass
class Hit:
    kind: str
    start: float
    seconds: float
    status: int  # 0: no answer (transport error)


def _load(base: str, users: list[int], stop: threading.Event, hits: list[Hit], lock: threading.Lock) -> list[threading.Thread]:
    """Clients until ``stop``: ranked requests (never answered from the cache: diversity), repeats
    of a plain request (answered from the cache) and health checks, each on a new connection."""
    host, port = base.removeprefix("http://").split(":")

    def client(kind: str, pause: float) -> None:
        n = 0
        while not stop.is_set() and n < 5000:
            n += 1
            u = users[n % len(users)]
            path = {
                "ranked": f"/users/{u}/recommendations?k=5&diversity=0.3",
                "cached": f"/users/{users[0]}/recommendations?k=5",
                "health": "/health",
            }[kind]
            t0 = time.monotonic()
            # http.client: a new connection per request at the least cost on the client's side
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except OSError:
                status = 0
            finally:
                conn.close()
            with lock:
                hits.append(Hit(kind, t0, time.monotonic() - t0, status))
            time.sleep(pause)

    threads = [threading.Thread(target=client, args=(k, p)) for k, p in
               (("ranked", 0.02), ("ranked", 0.02), ("cached", 0.02), ("health", 0.02))]
    for t in threads:
        t.start()
    return threads


def _between(hits: list[Hit], kind: str, t0: float, t1: float) -> list[Hit]:
    return [h for h in hits if h.kind == kind and t0 <= h.start < t1]


def _recovers(base: str, users: list[int], within: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        try:
            if all(httpx.get(f"{base}/users/{u}/recommendations", params={"k": 5, "diversity": 0.3}, timeout=10).status_code == 200
                   for u in users[:4]):
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return None


def test_a_stalled_then_vanished_postgres_gives_503_in_time_and_health_and_cached_answers_go_on(
    bundle_path: Path, tmp_path: Path, private_pg: PrivatePostgres
) -> None:
    users = [int(u) for u in HybridRecommender.load(bundle_path).user_ids[:20]]
    env = {"MOVIEREC_STATE_URL": private_pg.url, "MOVIEREC_STATE_CHECK_TIMEOUT": str(CHECK_TIMEOUT)}
    with server(bundle_path, tmp_path / "state", workers=2, **env) as (base, proc):
        for _ in range(6):  # the plain request is cached on both workers (new connections spread)
            with httpx.Client(timeout=30) as c:
                assert c.get(f"{base}/users/{users[0]}/recommendations", params={"k": 5}).status_code == 200
        # ranked requests on both workers before the clock starts: their first read opens the pool
        for _ in range(2):  # 8 requests on new connections reach both workers
            assert _recovers(base, users, within=30) is not None, "ranked requests failed before any stall"
        hits: list[Hit] = []
        lock = threading.Lock()
        stop = threading.Event()
        threads = _load(base, users, stop, hits, lock)
        try:
            time.sleep(2)
            t_stop = time.monotonic()
            private_pg.signal(signal.SIGSTOP)
            time.sleep(6)
            t_cont = time.monotonic()
            private_pg.signal(signal.SIGCONT)
            recovered = _recovers(base, users, within=20)
            t_kill = time.monotonic()
            private_pg.kill()  # vanished: connections refused
            time.sleep(5)
            t_restart = time.monotonic()
            private_pg.start()
            recovered_again = _recovers(base, users, within=30)
            t_end = time.monotonic()
        finally:
            stop.set()
            private_pg.signal(signal.SIGCONT) if private_pg.proc and private_pg.proc.poll() is None else None
            for t in threads:
                t.join(60)
        assert proc.poll() is None, "the server died"

    # answered before the stall began: a request still in flight at SIGSTOP may rightly get its 503
    before = [h for h in _between(hits, "ranked", 0, t_stop) if h.start + h.seconds < t_stop]
    failed = [(round(h.start - t_stop, 2), round(h.seconds, 2), h.status) for h in before if h.status != 200]
    assert before and not failed, f"before the stall (start before it, seconds, status): {failed}"
    health = _between(hits, "health", 0, t_end)
    assert len(health) > 50 and all(h.status == 200 for h in health)
    slowest = max(h.seconds for h in health)
    assert slowest < HEALTH_S, f"/health took {slowest * 1000:.0f} ms"
    for name, t0, t1 in (("stalled", t_stop, t_cont), ("vanished", t_kill, t_restart)):
        # requests sent while the database was away (those already past the check may finish)
        ranked = _between(hits, "ranked", t0 + 0.05, t1 - BOUND_S)
        assert len(ranked) >= 4, (name, len(ranked))
        assert all(h.status == 503 for h in ranked), (name, sorted({h.status for h in ranked}))
        slowest = max(h.seconds for h in ranked)
        assert slowest < BOUND_S, f"{name}: a ranked request took {slowest:.2f}s to get its 503"
        cached = _between(hits, "cached", t0 + 0.05, t1)
        assert cached and all(h.status == 200 for h in cached), (name, sorted({h.status for h in cached}))
    assert recovered is not None, "no recovery within 20 s of SIGCONT"
    assert recovered_again is not None, "no recovery within 30 s of the database's restart"
    print(f"recovered {recovered:.2f}s after SIGCONT, {recovered_again:.2f}s after the restart; "
          f"slowest /health {max(h.seconds for h in health) * 1000:.1f} ms over {len(health)} checks")
