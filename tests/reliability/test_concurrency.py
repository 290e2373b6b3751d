"""Concurrency: many threads adding movies (``POST /items``) while others ask for user
recommendations, new-user recommendations and similar movies, all against one app.

Checked: no lost item (every 201 is then found by ``GET /items/{id}`` and ``/similar``), no
torn read (no 5xx; every answer well-formed, every returned id resolvable), a contested id is
created exactly once, and the catalogue stays consistent: rows in the item table == rows in
both FAISS indexes == vectors on both sides.

Requests go through ``TestClient`` from several threads; sync routes run in the app's worker
thread pool, so handlers really do overlap (the ``add_item`` lock and the index's read/write
lock are what is under test).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from tests.reliability.conftest import API_KEY

WRITERS, READERS, ITEMS_PER_WRITER = 4, 4, 12
KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def client(bundle_path: Path) -> Iterator[TestClient]:
    """A fresh app (its model is modified by the test)."""
    with TestClient(create_app(Settings(model=bundle_path, api_key=API_KEY, request_timeout=0))) as c:
        yield c


def _well_formed(kind: str, r: Any, problems: list[str]) -> None:
    if r.status_code >= 500:
        problems.append(f"{kind}: HTTP {r.status_code} {r.text[:200]}")
        return
    if r.status_code != 200:
        problems.append(f"{kind}: unexpected HTTP {r.status_code} {r.text[:200]}")
        return
    body = r.json()
    items = body.get("items")
    if not isinstance(items, list) or not items:
        problems.append(f"{kind}: no items in {str(body)[:200]}")
        return
    for it in items:
        if not {"item_id", "title", "genres", "score"} <= set(it) or not isinstance(it["title"], str):
            problems.append(f"{kind}: torn item {it}")


def test_concurrent_adds_and_reads_lose_nothing_and_stay_consistent(client: TestClient) -> None:
    served = client.app.state.store.get()  # type: ignore[attr-defined]
    rec = served.recommender
    n_before = rec.n_items
    users = [int(u) for u in rec.user_ids[:50]]
    base_items = [int(i) for i in rec.items["item_id"].iloc[:100]]
    genres = rec.genre_vocab

    added: list[Any] = []
    added_lock = threading.Lock()
    problems: list[str] = []
    writers_done = threading.Event()
    start = threading.Barrier(WRITERS + READERS)

    def writer(w: int) -> None:
        rng = random.Random(w)
        start.wait()
        for j in range(ITEMS_PER_WRITER):
            body: dict[str, Any] = {
                "title": f"Concurrent Movie {w}-{j}",
                "genres": rng.sample(genres, 2),
                "description": f"a story about writer {w} and movie {j}",
            }
            if j % 3 == 0:
                # explicit ids on some, assigned (max + 1) on others; negative explicit ids so an
                # assigned id can never take one a writer is about to ask for
                body["item_id"] = -(1 + w * 1000 + j)
            r = client.post("/items", json=body, headers=KEY)
            if r.status_code != 201:
                problems.append(f"POST /items: HTTP {r.status_code} {r.text[:200]}")
                continue
            out = r.json()
            if out["title"] != body["title"] or ("item_id" in body and out["item_id"] != body["item_id"]):
                problems.append(f"POST /items answered another item: {out}")
            with added_lock:
                added.append(out["item_id"])

    def reader(rd: int) -> None:
        rng = random.Random(100 + rd)
        start.wait()
        while not writers_done.is_set():
            roll = rng.random()
            if roll < 0.4:
                _well_formed("user", client.get(f"/users/{rng.choice(users)}/recommendations", params={"k": 20}), problems)
            elif roll < 0.7:
                with added_lock:
                    pool = base_items + added
                item = rng.choice(pool)
                by = rng.choice(["hybrid", "content", "collaborative"])
                _well_formed(f"similar/{by}", client.get(f"/items/{item}/similar", params={"k": 10, "by": by}), problems)
            elif roll < 0.8:  # title search reads the title column while add_item replaces it
                r = client.get("/items", params={"q": "concurrent movie", "limit": 100})
                if r.status_code != 200 or any(not it["title"].startswith("Concurrent") for it in r.json()["items"]):
                    problems.append(f"search: HTTP {r.status_code} {r.text[:200]}")
            else:
                with added_lock:
                    liked = rng.sample(base_items, 2) + added[-1:]
                _well_formed("new_user", client.post("/recommendations", json={"liked_items": liked, "k": 10}), problems)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    threads += [threading.Thread(target=reader, args=(r,)) for r in range(READERS)]
    for t in threads:
        t.start()
    for t in threads[:WRITERS]:
        t.join(timeout=300)
    writers_done.set()
    for t in threads[WRITERS:]:
        t.join(timeout=300)

    assert not problems, "\n".join(problems[:20])
    assert len(added) == WRITERS * ITEMS_PER_WRITER and len(set(added)) == len(added), "ids lost or handed out twice"
    # no lost item: each is found by id and by /similar, and is recommendable to a new user
    for item_id in added:
        r = client.get(f"/items/{item_id}")
        assert r.status_code == 200 and r.json()["title"].startswith("Concurrent Movie"), r.text
        sim = client.get(f"/items/{item_id}/similar", params={"k": 5, "by": "content"})
        assert sim.status_code == 200 and len(sim.json()["items"]) == 5
    # the added movies share text with each other, so content similarity must find siblings
    sibling = client.get(f"/items/{added[0]}/similar", params={"k": 20, "by": "content"}).json()["items"]
    assert any(it["item_id"] in set(added) for it in sibling)
    # consistency: item table, id map, both FAISS indexes and both vector tables agree
    n = n_before + len(added)
    assert rec.n_items == n and len(rec.item_ids) == n
    assert len(rec.retrieval.index) == n and len(rec.retrieval.item_vectors) == n
    assert len(rec.content.index) == n and rec.content.n_items == n


def test_racing_posts_of_the_same_id_create_it_once(client: TestClient) -> None:
    """Eight threads POST the same explicit item_id at once: one 201, seven 409, one row."""
    rec = client.app.state.store.get().recommender  # type: ignore[attr-defined]
    n_before = rec.n_items
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def post(i: int) -> None:
        barrier.wait()
        r = client.post("/items", json={"title": f"Contested {i}", "genres": [], "item_id": 7_777_777}, headers=KEY)
        statuses.append(r.status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(statuses) == [201] + [409] * 7
    assert rec.n_items == n_before + 1 == len(rec.retrieval.index) == len(rec.content.index)
    assert (rec.items["item_id"] == 7_777_777).sum() == 1
