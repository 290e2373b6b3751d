"""The per-request online-state check with a database that stalls (in process; the real
PostgreSQL version is tests/reliability/test_pg_stall.py): the event loop never waits on it,
uncached requests get 503 with Retry-After within the bound, cached answers are still sent,
and the service answers normally once the database does."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from serving.app import create_app
from serving.freshness import StateCheck
from serving.settings import Settings


class StallingState:
    """Stands in for a PostgreSQL state whose server stops answering while ``stalled`` is set."""

    dialect = "postgresql"

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.stalled = threading.Event()
        self.resumed = threading.Event()

    def last_seq(self) -> int:
        if self.stalled.is_set():
            self.resumed.wait(30)  # bounded: the test sets it
        return self.seq


def test_a_stalled_state_gives_503_within_the_bound_and_cached_answers_and_health_go_on(bundle_path: Path, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(model=bundle_path, state_dir=tmp_path / "state"))) as c:
        user = c.app.state.store.get().recommender.user_ids[7]
        plain = f"/users/{user}/recommendations"
        assert c.get(plain, params={"k": 5}).status_code == 200
        assert c.get(plain, params={"k": 5}).status_code == 200  # now answered from the cache
        fake = StallingState(c.app.state.store.get().recommender.applied_seq)
        c.app.state.check = StateCheck(fake, timeout=0.3, catch_up_timeout=1.0)
        assert c.get(plain, params={"k": 6}).status_code == 200  # the database answers: as before

        fake.stalled.set()
        try:
            t0 = time.monotonic()
            r = c.get(plain, params={"k": 7})
            took = time.monotonic() - t0
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and "did not answer" in r.json()["detail"], r.text
            assert took < 1.0, took
            t0 = time.monotonic()
            assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
            assert c.get(plain, params={"k": 5}).status_code == 200  # cached: still sent
            r = c.get(plain, params={"k": 8})  # within the cool-down: 503 at once
            assert r.status_code == 503
            assert time.monotonic() - t0 < 0.25, "health, ready, a cached answer and a refusal waited on the database"
        finally:
            fake.resumed.set()
        time.sleep(0.35)  # the cool-down passes
        assert c.get(plain, params={"k": 9}).status_code == 200
