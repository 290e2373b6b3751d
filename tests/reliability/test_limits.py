"""Limits that keep one client from taking the service down: a per-request time budget, caps on
``k`` and ``liked_items`` at their exact boundaries, and the admin key compared in constant time.

Body size (413), CORS off by default and ``POST /items`` behind the key are covered in
``tests/serving/test_api.py``; this file adds what that suite does not check.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.schemas import MAX_K, MAX_LIKED
from serving.settings import Settings
from tests.reliability.conftest import API_KEY


@pytest.fixture(scope="module")
def slow_app_client(bundle_path: Path) -> Iterator[TestClient]:
    """An app with a 0.3 s budget and two extra routes that overrun it (one sync, one async)."""
    app = create_app(Settings(model=bundle_path, api_key=API_KEY, request_timeout=0.3))

    @app.get("/test/slow-sync")
    def slow_sync() -> dict[str, str]:
        time.sleep(1.5)
        return {"late": "answer"}

    @app.get("/test/slow-async")
    async def slow_async() -> dict[str, str]:
        import asyncio

        await asyncio.sleep(1.5)
        return {"late": "answer"}

    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("path", ["/test/slow-sync", "/test/slow-async"])
def test_a_request_over_its_budget_gets_503_json_in_time(slow_app_client: TestClient, path: str) -> None:
    t0 = time.perf_counter()
    r = slow_app_client.get(path)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "longer than 0.3 s" in r.json()["detail"]
    assert elapsed < 1.2, f"the client waited {elapsed:.2f}s, past the 0.3 s budget"


def test_a_stuck_recommendation_times_out_and_the_service_keeps_answering(
    slow_app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = slow_app_client.app.state.store.get()  # type: ignore[attr-defined]
    user = served.recommender.user_ids[0]
    real = served.recommender.recommend_user

    def stuck(*args: object, **kwargs: object) -> object:
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(served.recommender, "recommend_user", stuck)
    assert slow_app_client.get(f"/users/{user}/recommendations").status_code == 503
    monkeypatch.undo()
    r = slow_app_client.get(f"/users/{user}/recommendations?k=5")
    assert r.status_code == 200 and len(r.json()["items"]) == 5
    assert slow_app_client.get("/health").status_code == 200


def test_admin_routes_are_exempt_from_the_budget(slow_app_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload takes as long as loading a bundle; cutting it off would leave it half-done."""
    store = slow_app_client.app.state.store  # type: ignore[attr-defined]
    real = store.reload

    def slow_reload(*args: object, **kwargs: object) -> object:
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "reload", slow_reload)
    r = slow_app_client.post("/admin/reload", headers={"X-API-Key": API_KEY})
    assert r.status_code == 200, r.text


def test_zero_budget_means_no_limit(bundle_path: Path) -> None:
    app = create_app(Settings(model=bundle_path, request_timeout=0))

    @app.get("/test/slowish")
    def slowish() -> dict[str, bool]:
        time.sleep(0.2)
        return {"ok": True}

    with TestClient(app) as c:
        assert c.get("/test/slowish").json() == {"ok": True}


def test_k_and_liked_items_caps_hold_at_the_boundary(bundle_path: Path) -> None:
    # the default request budget: 500 liked movies can take longer than 0.3 s on a busy machine
    with TestClient(create_app(Settings(model=bundle_path, api_key=API_KEY))) as c:
        _check_caps(c)


def _check_caps(c: TestClient) -> None:
    rec = c.app.state.store.get().recommender  # type: ignore[attr-defined]
    user, item = rec.user_ids[0], rec.items["item_id"].iloc[0]
    ok = c.get(f"/users/{user}/recommendations", params={"k": MAX_K})
    assert ok.status_code == 200 and 0 < len(ok.json()["items"]) <= rec.n_items
    for url in (f"/users/{user}/recommendations", f"/items/{item}/similar"):
        assert c.get(url, params={"k": MAX_K + 1}).status_code == 422
        assert c.get(url, params={"k": 0}).status_code == 422
    liked = [int(i) for i in rec.items["item_id"].iloc[:5]]
    at_cap = (liked * (MAX_LIKED // len(liked) + 1))[:MAX_LIKED]
    assert c.post("/recommendations", json={"liked_items": at_cap, "k": 5}).status_code == 200
    r = c.post("/recommendations", json={"liked_items": at_cap + [liked[0]], "k": 5})
    assert r.status_code == 422 and "liked_items" in r.json()["detail"]
    assert c.post("/recommendations", json={"liked_items": liked, "k": MAX_K + 1}).status_code == 422


def test_admin_key_is_compared_in_constant_time(slow_app_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every admin check goes through ``hmac.compare_digest`` (a plain ``==`` returns sooner the
    earlier the first wrong byte, which leaks the key byte by byte), including a key that
    shares a long prefix with the real one."""
    import serving.deps as deps

    calls: list[tuple[bytes, bytes]] = []
    real = deps.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    c = slow_app_client
    assert c.post("/admin/reload", headers={"X-API-Key": API_KEY[:-1] + "X"}).status_code == 401
    assert c.post("/items", json={"title": "Near Miss"}, headers={"X-API-Key": API_KEY[:-1]}).status_code == 401
    assert c.post("/admin/reload", headers={"X-API-Key": API_KEY}).status_code == 200
    assert len(calls) == 3 and all(b == API_KEY.encode() for _, b in calls)
