"""``Idempotency-Key`` on the write routes, in process: a retry gets the first answer and writes
nothing, a reused key with another body is refused, bad keys are 422. The same claims across
workers, servers and restarts: ``tests/reliability/test_idempotent_writes.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recommender.events import encode_id

from recommender.state import Idempotency
from serving.app import create_app
from serving.settings import Settings

RATINGS = [{"item_id": 1, "rating": 4}, {"item_id": 2, "rating": 5}]


@pytest.fixture
def c(bundle_path: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model=bundle_path, state_dir=tmp_path / "state"))) as client:
        yield client


def _events(c: TestClient) -> int:
    return len(c.app.state.store.state.events_after(0))


def test_a_retried_post_items_without_an_id_adds_one_movie(c: TestClient) -> None:
    new = {"title": "Retry Mountain", "genres": ["Drama"], "description": "a climb, twice"}
    first = c.post("/items", json=new, headers={"Idempotency-Key": "add-retry-mountain"})
    assert first.status_code == 201, first.text
    for _ in range(3):
        again = c.post("/items", json=new, headers={"Idempotency-Key": "add-retry-mountain"})
        assert again.status_code == 201 and again.content == first.content
        assert again.headers["idempotent-replayed"] == "true"
    assert _events(c) == 1
    assert [i["item_id"] for i in c.get("/items", params={"q": "retry mountain"}).json()["items"]] == [first.json()["item_id"]]
    # without a key, the same body is another movie (that is what the key is for)
    other = c.post("/items", json=new)
    assert other.status_code == 201 and other.json()["item_id"] != first.json()["item_id"] and _events(c) == 2


def test_a_retried_post_items_with_an_id_is_its_first_answer_not_a_conflict(c: TestClient) -> None:
    new = {"title": "Chosen One", "item_id": 424242}
    first = c.post("/items", json=new, headers={"Idempotency-Key": "k-chosen"})
    assert first.status_code == 201
    again = c.post("/items", json=new, headers={"Idempotency-Key": "k-chosen"})
    assert again.status_code == 201 and again.content == first.content and _events(c) == 1
    assert c.post("/items", json=new).status_code == 409  # without the key: the id is taken


def test_a_retried_rating_post_gets_the_first_answer_and_records_nothing(c: TestClient) -> None:
    first = c.post("/users/1/ratings", json=RATINGS, headers={"Idempotency-Key": "rate-1"})
    assert first.status_code == 200 and first.json()["recorded"] == 2
    # another write in between changes the user's history; the retry still gets the first answer
    assert c.post("/users/1/ratings", json=[{"item_id": 3, "rating": 1}]).status_code == 200
    again = c.post("/users/1/ratings", json=RATINGS, headers={"Idempotency-Key": "rate-1"})
    assert again.status_code == 200 and again.content == first.content
    assert _events(c) == 3


def test_keys_are_scoped_by_route_and_user(c: TestClient) -> None:
    assert c.post("/users/1/ratings", json=RATINGS, headers={"Idempotency-Key": "shared"}).status_code == 200
    assert c.post("/users/2/ratings", json=RATINGS, headers={"Idempotency-Key": "shared"}).status_code == 200
    assert c.post("/items", json={"title": "Shared"}, headers={"Idempotency-Key": "shared"}).status_code == 201
    assert _events(c) == 5
    r = c.post("/users/1/ratings", json=RATINGS, headers={"Idempotency-Key": "shared"})
    assert r.status_code == 200 and r.headers.get("idempotent-replayed") == "true" and _events(c) == 5


def test_the_same_key_with_another_body_is_422_naming_the_header(c: TestClient) -> None:
    assert c.post("/users/1/ratings", json=RATINGS, headers={"Idempotency-Key": "k1"}).status_code == 200
    r = c.post("/users/1/ratings", json=[{"item_id": 1, "rating": 1}], headers={"Idempotency-Key": "k1"})
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"]
    assert c.post("/items", json={"title": "A"}, headers={"Idempotency-Key": "k2"}).status_code == 201
    r = c.post("/items", json={"title": "B"}, headers={"Idempotency-Key": "k2"})
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"]
    assert _events(c) == 3


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "caf\u00e9", "bell\x7f"], ids=["empty", "256-chars", "tab", "latin-1", "del"])
def test_a_bad_idempotency_key_is_422_and_writes_nothing(c: TestClient, key: str) -> None:
    headers = {"Idempotency-Key": key.encode("latin-1")}
    for r in (c.post("/users/1/ratings", json=RATINGS, headers=headers), c.post("/items", json={"title": "Bad Key"}, headers=headers)):
        assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"], r.text
    assert _events(c) == 0
    ok = c.post("/items", json={"title": "Long Key"}, headers={"Idempotency-Key": "y" * 255})
    assert ok.status_code == 201


def test_a_refused_write_is_not_remembered(c: TestClient) -> None:
    """Only acknowledged writes are remembered: a 404 wrote nothing, so the key is still free."""
    assert c.post("/users/1/ratings", json=[{"item_id": 99999, "rating": 4}], headers={"Idempotency-Key": "k"}).status_code == 404
    assert c.post("/users/1/ratings", json=RATINGS, headers={"Idempotency-Key": "k"}).status_code == 200


def test_a_write_whose_answer_was_never_stored_is_answered_on_retry_without_writing(c: TestClient) -> None:
    """The worker died after the commit, before it stored and sent the answer: the record and the
    events are there (one transaction), the answer is not. The retry builds it from the state,
    stores it, and every later retry gets those bytes."""
    state = c.app.state.store.state
    payload = [{"item_id": 1, "rating": 4.0}]
    from serving.idempotency import fingerprint

    idem = Idempotency(f"POST /users/{encode_id(1)}/ratings", "orphan", fingerprint(payload), 200, 3600, {"created": False, "recorded": 1})
    rec = c.app.state.store.get().recommender
    state.append_ratings(1, [(1, 4.0, rec.title_of(rec.item_idx(1)))], idempotency=idem)
    assert state.remembered(idem.scope, "orphan", 3600).body is None
    r = c.post("/users/1/ratings", json=payload, headers={"Idempotency-Key": "orphan"})
    assert r.status_code == 200 and r.json()["recorded"] == 1 and r.json()["created"] is False
    assert _events(c) == 1
    assert state.remembered(idem.scope, "orphan", 3600).body == r.text
    assert c.post("/users/1/ratings", json=payload, headers={"Idempotency-Key": "orphan"}).content == r.content
