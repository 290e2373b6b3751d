"""Rollback: ``GET /admin/versions`` lists the serving directory, ``POST /admin/rollback``
returns to the previous bundle as one swap, refuses a broken one, and reloads prune to the newest N."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import API_KEY, copy_bundle

KEY = {"X-API-Key": API_KEY}


def _app(root: Path, tmp_path: Path, keep: int = 3) -> TestClient:
    return TestClient(create_app(Settings(model=root, api_key=API_KEY, state_dir=tmp_path / "state", keep_bundles=keep)))


def test_versions_list_newest_first_with_the_active_one(three_bundles: Path, tmp_path: Path) -> None:
    with _app(three_bundles, tmp_path) as c:
        r = c.get("/admin/versions", headers=KEY)
        assert r.status_code == 200
        versions = r.json()["versions"]
        assert [v["version"] for v in versions] == ["v3", "v2", "v1"]
        assert [v["active"] for v in versions] == [True, False, False]
        assert versions[1]["path"] == str(three_bundles / "b2") and versions[1]["created"]
        assert c.get("/admin/versions").status_code == 401


def test_rollback_steps_back_one_bundle_at_a_time_and_reload_returns(three_bundles: Path, tmp_path: Path) -> None:
    with _app(three_bundles, tmp_path) as c:
        r = c.post("/admin/rollback", headers=KEY)
        assert r.status_code == 200
        assert r.json().items() >= {"status": "rolled_back", "model_version": "v2", "previous_version": "v3", "path": str(three_bundles / "b2")}.items()  # and the workers serving it
        assert c.get("/ready").json()["model_version"] == "v2"
        assert c.get("/users/1/recommendations").json()["model_version"] == "v2"
        served = c.app.state.store.get()
        # model, indexes and catalogue come from one bundle: they were loaded and swapped as one object
        assert served.path == three_bundles / "b2" and served.recommender.bundle.path.resolve() == served.path.resolve()
        assert [v["active"] for v in c.get("/admin/versions", headers=KEY).json()["versions"]] == [False, True, False]
        assert c.post("/admin/rollback", headers=KEY).json()["model_version"] == "v1"
        r = c.post("/admin/rollback", headers=KEY)
        assert r.status_code == 409 and "no bundle older than v1" in r.json()["detail"]
        assert c.get("/ready").json()["model_version"] == "v1"
        r = c.post("/admin/reload", headers=KEY)
        assert r.json()["status"] == "reloaded" and r.json()["model_version"] == "v3"


def test_rollback_to_a_broken_bundle_is_refused_and_nothing_changes(three_bundles: Path, tmp_path: Path) -> None:
    weights = three_bundles / "b2" / "retrieval" / "item_vectors.npy"
    with _app(three_bundles, tmp_path) as c:
        weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)  # checksum no longer matches
        r = c.post("/admin/rollback", headers=KEY)
        assert r.status_code == 409 and "refused" in r.json()["detail"]
        assert c.get("/ready").json()["model_version"] == "v3"
        assert c.get("/users/1/recommendations").status_code == 200


def test_rollback_needs_the_admin_key(three_bundles: Path, tmp_path: Path, bundle_path: Path) -> None:
    with _app(three_bundles, tmp_path) as c:
        assert c.post("/admin/rollback").status_code == 401
        assert c.post("/admin/rollback", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/ready").json()["model_version"] == "v3"
    with TestClient(create_app(Settings(model=bundle_path, state_dir=tmp_path / "s2"))) as c:  # no key configured
        assert c.post("/admin/rollback", headers=KEY).status_code == 403


def test_single_bundle_source_has_nothing_to_roll_back_to(bundle_path: Path, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(model=bundle_path, api_key=API_KEY, state_dir=tmp_path / "state"))) as c:
        assert [v["active"] for v in c.get("/admin/versions", headers=KEY).json()["versions"]] == [True]
        assert c.post("/admin/rollback", headers=KEY).status_code == 409


def test_reload_keeps_only_the_newest_n_bundles_but_never_the_served_one(three_bundles: Path, tmp_path: Path, bundle_path: Path) -> None:
    with _app(three_bundles, tmp_path, keep=2) as c:
        c.post("/admin/rollback", headers=KEY)
        c.post("/admin/rollback", headers=KEY)  # serving v1, the oldest
        copy_bundle(bundle_path, three_bundles / "b4", version="v4")
        assert c.post("/admin/reload", headers=KEY).json()["model_version"] == "v4"
        assert sorted(p.name for p in three_bundles.iterdir()) == ["b3", "b4"]
        copy_bundle(bundle_path, three_bundles / "b5", version="v5")
        time.sleep(0.01)
        # rollback is relative to the served bundle (v4), not to the newest on disk (v5)
        assert c.post("/admin/rollback", headers=KEY).json()["model_version"] == "v3"
        assert [v["version"] for v in c.get("/admin/versions", headers=KEY).json()["versions"]] == ["v5", "v4", "v3"]
