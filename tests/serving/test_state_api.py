"""Who may write, and the answer cache's bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from pydantic import SecretStr

from recommender.cache import AnswerCache
from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import API_KEY


def test_the_write_key_guards_every_public_write_and_nothing_else(bundle_path: Path, tmp_path: Path) -> None:
    """With ``MOVIEREC_WRITE_KEY`` set, rating posts and added movies both need it (or the admin
    key); it opens no admin route. (The bug guarded against: ``POST /items`` refused the write key.)"""
    settings = Settings(model=bundle_path, api_key=API_KEY, write_key=SecretStr("writer-key"), state_dir=tmp_path / "state")
    body = [{"item_id": 1, "rating": 4}]
    with TestClient(create_app(settings)) as c:
        assert c.post("/users/1/ratings", json=body).status_code == 401
        assert c.post("/users/1/ratings", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
        r = c.post("/items", json={"title": "t"})
        assert r.status_code == 401 and "MOVIEREC_WRITE_KEY" in r.json()["detail"]
        assert c.app.state.store.state.last_seq() == 0  # refused posts write nothing
        assert c.post("/users/1/ratings", json=body, headers={"X-API-Key": "writer-key"}).status_code == 200
        assert c.post("/users/1/ratings", json=body, headers={"X-API-Key": API_KEY}).status_code == 200
        assert c.post("/items", json={"title": "t"}, headers={"X-API-Key": "writer-key"}).status_code == 201
        assert c.post("/items", json={"title": "u"}, headers={"X-API-Key": API_KEY}).status_code == 201
        assert c.get("/users/1/recommendations").status_code == 200  # reads stay open
        # the write key is not an admin key
        assert c.post("/admin/reload", headers={"X-API-Key": "writer-key"}).status_code == 401
        assert c.get("/admin/versions", headers={"X-API-Key": "writer-key"}).status_code == 401


def test_the_write_key_alone_closes_post_items(bundle_path: Path, tmp_path: Path) -> None:
    """No admin key, only ``MOVIEREC_WRITE_KEY``: adding a movie is not open to anyone
    (the bug guarded against: ``POST /items`` answered 201 without a key here)."""
    settings = Settings(model=bundle_path, write_key=SecretStr("writer-key"), state_dir=tmp_path / "state")
    with TestClient(create_app(settings)) as c:
        r = c.post("/items", json={"title": "Gatecrasher", "genres": ["Drama"]})
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        assert c.post("/users/1/ratings", json=[{"item_id": 1, "rating": 4}]).status_code == 401
        assert c.app.state.store.state.last_seq() == 0
        assert c.get("/items", params={"q": "gatecrasher"}).json()["items"] == []
        assert c.post("/items", json={"title": "Gatecrasher"}, headers={"X-API-Key": "writer-key"}).status_code == 201
        assert c.post("/admin/reload", headers={"X-API-Key": "writer-key"}).status_code == 403  # admin stays off


def test_the_admin_key_alone_keeps_post_items_guarded_and_ratings_open(bundle_path: Path, tmp_path: Path) -> None:
    """Backward compatible: with only ``MOVIEREC_API_KEY``, adding a movie needs it and rating posts stay open."""
    with TestClient(create_app(Settings(model=bundle_path, api_key=API_KEY, state_dir=tmp_path / "state"))) as c:
        assert c.post("/items", json={"title": "t"}).status_code == 401
        assert c.post("/users/1/ratings", json=[{"item_id": 1, "rating": 4}]).status_code == 200
        assert c.post("/items", json={"title": "t"}, headers={"X-API-Key": API_KEY}).status_code == 201


def test_rating_posts_are_open_without_a_write_key(bundle_path: Path, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(model=bundle_path, api_key=API_KEY, state_dir=tmp_path / "state"))) as c:
        assert c.post("/users/1/ratings", json=[{"item_id": 1, "rating": 4}]).status_code == 200


def test_the_default_state_folder_sits_beside_the_bundle(bundle_path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MOVIEREC_STATE_DIR", raising=False)
    assert Settings(model=tmp_path / "models").state_location == str((tmp_path / "models.state").resolve())


def test_answer_cache_is_bounded_in_entries_and_bytes() -> None:
    ids, scores = np.arange(100, dtype=np.int64), np.zeros(100, np.float32)
    cache = AnswerCache(max_entries=50, max_bytes=1 << 30)
    for u in range(200):
        cache.put(u, (10,), ids, scores)
    assert len(cache) == 50 and cache.get(0, (10,)) is None and cache.get(199, (10,)) is not None
    small = AnswerCache(max_entries=10_000, max_bytes=20_000)
    for u in range(200):
        small.put(u, (10,), ids, scores)
    assert small.bytes <= 20_000 and 0 < len(small) < 200
    # a key as long as a request excluding hundreds of movies is not cached at all
    small.put(1, (10, tuple(str(i) for i in range(500))), ids, scores)
    assert small.get(1, (10, tuple(str(i) for i in range(500)))) is None
    # an answer computed while its user changed is not stored
    stamp = small.stamp(7)
    small.forget(7)
    small.put(7, (10,), ids, scores, stamp)
    assert small.get(7, (10,)) is None


def test_many_distinct_requests_keep_the_service_cache_bounded(bundle_path: Path, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(model=bundle_path, state_dir=tmp_path / "state", rank=False))) as c:
        rec = c.app.state.store.get().recommender
        rec.cache.max_entries = 30
        for k in range(1, 80):
            assert c.get("/users/1/recommendations", params={"k": k}).status_code == 200
        assert len(rec.cache) == 30


def test_an_unreachable_state_database_is_503_not_500(bundle_path: Path, tmp_path: Path) -> None:
    """Reads and writes that need the online state answer 503 with Retry-After when it is gone."""
    import sqlite3

    with TestClient(create_app(Settings(model=bundle_path, state_dir=tmp_path / "state"))) as c:
        state = c.app.state.store.state

        def broken(*args: object, **kwargs: object) -> int:
            raise sqlite3.OperationalError("disk I/O error")

        state.last_seq = broken  # type: ignore[method-assign]
        state.append_ratings = broken  # type: ignore[method-assign]
        r = c.get("/users/1/recommendations")
        assert r.status_code == 503 and r.headers.get("retry-after") == "1" and "online state" in r.json()["detail"]
        r = c.post("/users/1/ratings", json=[{"item_id": 1, "rating": 4}])
        assert r.status_code == 503
        assert c.get("/health").status_code == 200


def _serve_logs(monkeypatch, caplog, *args: str) -> list[str]:
    """``movierec serve ARGS`` in this process up to the point where uvicorn would start; the
    warnings it logged. Nothing binds: uvicorn.run is replaced."""
    import logging
    import os
    import sys

    import uvicorn

    import serving.launcher
    from movierec.cli import main

    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(a))
    monkeypatch.setattr(serving.launcher, "limit_threads", lambda n: None)
    monkeypatch.setattr(serving.launcher, "limit_malloc_arenas", lambda: None)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # serve() exports settings for its workers
    monkeypatch.setattr(sys, "argv", ["movierec", "serve", *args])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
    assert len(started) == 1
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "MOVIEREC_WRITE_KEY" in r.getMessage()]


def test_serving_beyond_loopback_without_a_write_key_logs_one_warning(bundle_path: Path, monkeypatch, caplog) -> None:
    """``--host 0.0.0.0`` (or ``::``) without ``MOVIEREC_WRITE_KEY``: one warning at start, also
    with several workers; loopback addresses and a set write key: none."""
    for name in ("MOVIEREC_WRITE_KEY", "MOVIEREC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    model = str(bundle_path)
    warned = _serve_logs(monkeypatch, caplog, "--model", model, "--host", "0.0.0.0", "--workers", "2")
    assert len(warned) == 1 and "0.0.0.0" in warned[0] and "add movies" in warned[0]
    assert len(_serve_logs(monkeypatch, caplog, "--model", model, "--host", "::", "--workers", "1")) == 1
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert _serve_logs(monkeypatch, caplog, "--model", model, "--host", host, "--workers", "1") == [], host
    monkeypatch.setenv("MOVIEREC_API_KEY", "admin")  # movies need the admin key then; ratings are still open
    warned = _serve_logs(monkeypatch, caplog, "--model", model, "--host", "0.0.0.0", "--workers", "1")
    assert len(warned) == 1 and "post ratings" in warned[0] and "add movies" not in warned[0]
    monkeypatch.setenv("MOVIEREC_WRITE_KEY", "writer")
    assert _serve_logs(monkeypatch, caplog, "--model", model, "--host", "0.0.0.0", "--workers", "2") == []
