"""Writes against real ``movierec serve`` processes: the write key guards both public writes, and
an ``Idempotency-Key`` retry through another worker, another server on the same online state, or
after a restart gets the first answer while the state's event count stays put. Servers listen
on 127.0.0.1 only; every loop is bounded in count."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from recommender import HybridRecommender
from recommender.state import StateStore
from recommender.state_db import state_url
from tests.reliability.test_shared_state import server

WRITE = "write-key-for-idempotency"


@pytest.fixture(scope="module")
def model(bundle_path: Path) -> HybridRecommender:
    return HybridRecommender.load(bundle_path)


def _post(base: str, path: str, body: object, key: str | None) -> httpx.Response:
    headers = {"X-API-Key": WRITE, **({"Idempotency-Key": key} if key else {})}
    with httpx.Client(timeout=60) as c:  # a new connection each time: the kernel picks the worker
        return c.post(f"{base}{path}", json=body, headers=headers)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_retry_through_another_worker_another_server_and_after_a_restart_gets_the_first_answer(
    bundle_path: Path, model: HybridRecommender, tmp_path: Path, backend: str
) -> None:
    state: Path | str = tmp_path / "state"
    env = {"MOVIEREC_WRITE_KEY": WRITE}
    if backend == "postgresql":
        from tests.reliability.test_state_store import _postgres_url

        state = env["MOVIEREC_STATE_URL"] = _postgres_url()  # skips with the reason when there is none

    def events() -> int:
        store = StateStore(state_url(state))  # not open_state's per-process cache: the next test drops the tables
        try:
            return len(store.events_after(0))
        finally:
            store.close()

    user = int(model.user_ids[0])
    ratings = [{"item_id": i, "rating": 4} for i in model.items["item_id"].to_numpy()[:3].tolist()]
    movie = {"title": "Idempotent Island (2026)", "genres": ["Drama"]}
    raced = {"title": "Raced Retry (2026)", "genres": ["Comedy"]}
    state_dir = tmp_path / "state"
    with server(bundle_path, state_dir, workers=2, **env) as (a, _), server(bundle_path, state_dir, **env) as (b, _):
        # one key setting guards both public writes on a real server
        assert httpx.post(f"{a}/items", json=movie, timeout=60).status_code == 401
        assert httpx.post(f"{b}/users/{user}/ratings", json=ratings, timeout=60).status_code == 401
        assert events() == 0
        added = _post(a, "/items", movie, "add-island")
        assert added.status_code == 201, added.text
        rated = _post(a, f"/users/{user}/ratings", ratings, "rate-user")
        assert rated.status_code == 200, rated.text
        count = events()
        assert count == 1 + len(ratings)
        for base in [a] * 6 + [b] * 2:  # fresh connections to both workers of a, and to b
            again = _post(base, "/items", movie, "add-island")
            assert (again.status_code, again.content) == (201, added.content)
            again = _post(base, f"/users/{user}/ratings", ratings, "rate-user")
            assert (again.status_code, again.content) == (200, rated.content)
        assert events() == count
        # first attempts racing on both servers: one movie, every client the same answer
        answers: list[httpx.Response] = []
        lock = threading.Lock()

        def send(base: str) -> None:
            r = _post(base, "/items", raced, "add-raced")
            with lock:
                answers.append(r)

        threads = [threading.Thread(target=send, args=(base,)) for base in [a, b] * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(answers) == 6 and {r.status_code for r in answers} == {201}
        assert len({r.content for r in answers}) == 1
        assert events() == count + 1
        raced_answer = answers[0].content
    with server(bundle_path, state_dir, **env) as (c, _):  # a restart
        assert _post(c, "/items", movie, "add-island").content == added.content
        assert _post(c, f"/users/{user}/ratings", ratings, "rate-user").content == rated.content
        assert _post(c, "/items", raced, "add-raced").content == raced_answer
        reused = _post(c, "/items", raced, "add-island")  # the key again, with another body
        assert reused.status_code == 422 and "Idempotency-Key" in reused.json()["detail"]
        assert events() == count + 1
        found = httpx.get(f"{c}/items", params={"q": "Idempotent Island"}, timeout=60).json()["items"]
        assert [i["item_id"] for i in found] == [added.json()["item_id"]]
