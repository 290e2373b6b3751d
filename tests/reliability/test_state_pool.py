"""PostgreSQL as operators run it, one process at a time: its connections are bounded whatever
the number of threads, and a writer stuck holding the writers' lock makes the next write fail
within the lock timeout instead of hanging. Real PostgreSQL (``MOVIEREC_TEST_PG_URL``); skipped
with the reason when there is none."""

from __future__ import annotations

import threading
import time

import pytest

from recommender.state import StateError, StateStore

from recommender.state_db import StateLimits
from tests.reliability.test_state_store import _postgres_url


def _connections(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        return int(c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0])


def test_one_process_holds_at_most_its_pools_connections_whatever_its_threads() -> None:
    url = _postgres_url()
    idle = _connections(url)
    store = StateStore(url)  # the defaults: at most StateLimits().max_connections
    peak = 0
    errors: list[BaseException] = []
    barrier = threading.Barrier(33)

    def work(n: int) -> None:
        try:
            barrier.wait(30)
            for i in range(15):  # bounded: 32 threads x 15 rounds
                store.last_seq()
                store.changes_after(0, 10**9)
                if i % 5 == 0:
                    store.append_ratings(n, [(i, 4.0, None)])
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    barrier.wait(30)
    deadline = time.monotonic() + 120
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        peak = max(peak, _connections(url) - idle)
        time.sleep(0.02)
    for t in threads:
        t.join(30)
    peak = max(peak, _connections(url) - idle)
    store.close()
    assert not errors, errors[:3]
    assert 0 < peak <= StateLimits().max_connections == 8, f"{peak} connections for 32 threads"


def test_a_writer_stuck_holding_the_lock_makes_the_next_write_fail_within_the_lock_timeout() -> None:
    import psycopg

    url = _postgres_url()
    store = StateStore(url, StateLimits(lock_timeout=1.0))
    store.append_ratings(1, [(1, 4.0, None)])  # tables exist, pools are warm
    holder = psycopg.connect(url)  # a writer that took the writers' lock and then stopped
    holder.execute("SELECT pg_advisory_xact_lock(7316001)")
    outcome: list[object] = []

    def write() -> None:
        t0 = time.monotonic()
        try:
            store.append_ratings(2, [(2, 5.0, None)])
            outcome.append("written")
        except Exception as e:  # the state's error, as the API sees it
            outcome.append(e)
        outcome.append(time.monotonic() - t0)

    t = threading.Thread(target=write)
    t.start()
    t.join(10)
    stuck = t.is_alive()
    holder.rollback()  # release the lock (a hanging writer finishes now)
    holder.close()
    t.join(30)
    store.close()
    assert not stuck, "the write waited more than 10 s for the lock"
    assert isinstance(outcome[0], Exception) and outcome[1] < 5, outcome
    assert "lock" in str(outcome[0]).lower() or isinstance(outcome[0], StateError), outcome
