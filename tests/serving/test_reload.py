"""Hot reload: newest bundle swapped in, in-flight requests finish on the old model, broken
bundles refused while the old one keeps serving, admin key rules."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from serving.store import ModelStore, ReloadError, newest_bundle
from tests.serving.conftest import API_KEY, copy_bundle

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def bundles_dir(tmp_path: Path, bundle_path: Path) -> Path:
    """A serving directory holding one bundle, version v1."""
    root = tmp_path / "bundles"
    root.mkdir()
    copy_bundle(bundle_path, root / "b1", version="v1")
    return root


def _add(root: Path, src: Path, name: str, version: str) -> Path:
    time.sleep(0.01)  # distinct manifest mtimes
    return copy_bundle(src, root / name, version=version)


def test_newest_bundle_skips_hidden_temp_dirs(bundles_dir: Path, bundle_path: Path) -> None:
    _add(bundles_dir, bundle_path, "b2", "v2")
    _add(bundles_dir, bundle_path, ".b3.tmp-abc", "v3")  # a bundle still being written
    assert newest_bundle(bundles_dir).name == "b2"
    with pytest.raises(ReloadError, match="no bundle"):
        newest_bundle(bundles_dir / "b1" / "retrieval")


def test_reload_swaps_in_the_newest_bundle(bundles_dir: Path, bundle_path: Path) -> None:
    with TestClient(create_app(Settings(model=bundles_dir, api_key=API_KEY))) as c:
        assert c.get("/ready").json()["model_version"] == "v1"
        r = c.post("/admin/reload", headers=KEY)
        assert r.status_code == 200 and r.json()["status"] == "unchanged"
        _add(bundles_dir, bundle_path, "b2", "v2")
        r = c.post("/admin/reload", headers=KEY)
        assert r.status_code == 200
        assert r.json().items() >= {"status": "reloaded", "model_version": "v2", "previous_version": "v1", "path": str(bundles_dir / "b2")}.items()  # and the workers serving it
        assert c.get("/ready").json()["model_version"] == "v2"
        assert c.get("/users/1/recommendations").json()["model_version"] == "v2"
        assert 'movierec_model_reloads_total{outcome="reloaded"} 1.0' in c.get("/metrics").text


def test_broken_bundle_is_refused_and_the_old_one_keeps_serving(bundles_dir: Path, bundle_path: Path) -> None:
    with TestClient(create_app(Settings(model=bundles_dir, api_key=API_KEY))) as c:
        bad = _add(bundles_dir, bundle_path, "b2", "v2")
        weights = bad / "retrieval" / "item_vectors.npy"
        weights.write_bytes(weights.read_bytes()[:-16])  # truncated: checksum no longer matches
        r = c.post("/admin/reload", headers=KEY)
        assert r.status_code == 409
        assert "refused" in r.json()["detail"] and "checksum" in r.json()["detail"]
        assert c.get("/ready").json()["model_version"] == "v1"
        assert c.get("/users/1/recommendations").status_code == 200


def test_in_flight_request_finishes_on_the_old_model(bundles_dir: Path, bundle_path: Path) -> None:
    """A request that started before the swap answers from the model it started with."""
    with TestClient(create_app(Settings(model=bundles_dir, api_key=API_KEY))) as c:
        old = c.app.state.store.get()
        entered, release = threading.Event(), threading.Event()
        original = old.recommender.recommend_user

        def slow(*args, **kwargs):
            entered.set()
            assert release.wait(10)
            return original(*args, **kwargs)

        old.recommender.recommend_user = slow  # only the old model is slow
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(r=c.get("/users/1/recommendations")))
        t.start()
        assert entered.wait(10)
        _add(bundles_dir, bundle_path, "b2", "v2")
        assert c.post("/admin/reload", headers=KEY).json()["model_version"] == "v2"
        assert c.get("/users/1/recommendations").json()["model_version"] == "v2"  # new requests: new model
        release.set()
        t.join(10)
        assert result["r"].status_code == 200 and result["r"].json()["model_version"] == "v1"


def test_store_keeps_old_reference_valid_after_swap(bundles_dir: Path, bundle_path: Path) -> None:
    store = ModelStore(bundles_dir)
    store.reload()
    held = store.get()
    _add(bundles_dir, bundle_path, "b2", "v2")
    assert store.reload().status == "reloaded"
    assert store.get().model_version == "v2" and held.model_version == "v1"
    assert len(held.recommender.recommend_user(1, 5).item_idx) == 5


def test_reload_loads_a_bundle_into_an_empty_server(tmp_path: Path, bundle_path: Path) -> None:
    root = tmp_path / "serving"
    root.mkdir()
    with TestClient(create_app(Settings(model=root, api_key=API_KEY))) as c:
        assert c.get("/ready").status_code == 503
        assert c.post("/admin/reload", headers=KEY).status_code == 409  # nothing there yet
        copy_bundle(bundle_path, root / "first", version="v9")
        assert c.post("/admin/reload", headers=KEY).json()["status"] == "reloaded"
        assert c.get("/ready").json() == {"status": "ready", "model_version": "v9"}


def test_admin_routes_need_the_right_key(bundles_dir: Path) -> None:
    with TestClient(create_app(Settings(model=bundles_dir, api_key=API_KEY))) as c:
        missing = c.post("/admin/reload")
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        assert c.post("/admin/reload", headers={"X-API-Key": API_KEY + "x"}).status_code == 401
        assert c.post("/admin/reload", headers={"X-API-Key": ""}).status_code == 401


def test_admin_routes_are_403_without_a_configured_key(bundles_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEREC_API_KEY", "")  # empty means unset, not an empty key
    with TestClient(create_app(Settings(model=bundles_dir))) as c:
        r = c.post("/admin/reload", headers={"X-API-Key": ""})
        assert r.status_code == 403 and "MOVIEREC_API_KEY" in r.json()["detail"]


def test_a_broken_bundle_at_startup_stops_the_app(tmp_path: Path, bundle_path: Path) -> None:
    bad = copy_bundle(bundle_path, tmp_path / "bad")
    (bad / "items.parquet").write_bytes(b"tampered")
    with pytest.raises(ReloadError, match="checksum"):
        with TestClient(create_app(Settings(model=bad))):
            pass
