"""Online state shared by real ``movierec serve`` processes: one worker's acknowledged write is
read through another, added movies and ratings survive restarts, and a SIGKILL loses no write
that was acknowledged. Servers listen on 127.0.0.1 only; load loops are bounded in count."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from recommender import HybridRecommender
from recommender.state_db import state_url
from tests.reliability.conftest import KEY, REPO, child_env, copy_bundle, server
from tests.reliability.test_snapshots import KILL_MID_SNAPSHOT


@pytest.fixture(scope="module")
def model(bundle_path: Path) -> HybridRecommender:
    return HybridRecommender.load(bundle_path)


def _new_connection_get(url: str, **params: object) -> httpx.Response:
    with httpx.Client(timeout=30) as c:  # a new connection each time: the kernel picks the worker
        return c.get(url, params=params)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_write_through_one_worker_is_read_through_every_other(bundle_path: Path, model: HybridRecommender, tmp_path: Path, backend: str) -> None:
    """A new user's ratings posted to ``--workers 2``, then reads through new connections, and a
    second server process on the same state (as a second machine would; on PostgreSQL through
    ``MOVIEREC_STATE_URL``)."""
    state = tmp_path / "state"
    env = {}
    if backend == "postgresql":
        from tests.reliability.test_state_store import _postgres_url

        env["MOVIEREC_STATE_URL"] = _postgres_url()  # skips with the reason when there is none
    new_user = int(model.user_ids.max()) + 99_999
    items = model.items["item_id"].to_numpy()[:4].tolist()
    with server(bundle_path, state, workers=2, **env) as (a, _), server(bundle_path, state, **env) as (b, _):
        r = httpx.post(f"{a}/users/{new_user}/ratings", json=[{"item_id": i, "rating": 5} for i in items], timeout=30)
        assert r.status_code == 200 and r.json()["created"] is True, r.text
        statuses = [_new_connection_get(f"{a}/users/{new_user}/recommendations", k=5).status_code for _ in range(20)]
        assert statuses == [200] * 20
        got = _new_connection_get(f"{b}/users/{new_user}/recommendations", k=50).json()
        assert not set(items) & {i["item_id"] for i in got["items"]}  # the other server knows them as seen
        # and the other way round: a rating through b is seen through a's workers at once
        more = model.items["item_id"].to_numpy()[4:6].tolist()
        assert httpx.post(f"{b}/users/{new_user}/ratings", json=[{"item_id": i, "rating": 4} for i in more], timeout=30).status_code == 200
        for _ in range(10):
            seen = {i["item_id"] for i in _new_connection_get(f"{a}/users/{new_user}/recommendations", k=200).json()["items"]}
            assert not set(more) & seen


def test_an_added_movie_and_its_ratings_survive_a_restart(bundle_path: Path, model: HybridRecommender, tmp_path: Path) -> None:
    """POST /items, rate it, restart: the movie and the rating are there."""
    state = tmp_path / "state"
    user = int(model.user_ids[0])
    with server(bundle_path, state) as (base, _):
        r = httpx.post(f"{base}/items", json={"title": "Galaxy Rebels (2026)", "genres": ["Sci-Fi"]}, headers={"X-API-Key": KEY}, timeout=30)
        assert r.status_code == 201, r.text
        new_id = r.json()["item_id"]
        assert new_id not in set(model.items["item_id"].tolist())
        assert httpx.post(f"{base}/users/{user}/ratings", json=[{"item_id": new_id, "rating": 5}], timeout=30).status_code == 200
    with server(bundle_path, state) as (base, _):
        r = httpx.get(f"{base}/items/{new_id}", timeout=30)
        assert r.status_code == 200 and r.json()["title"] == "Galaxy Rebels (2026)"
        recs = httpx.get(f"{base}/users/{user}/recommendations", params={"k": 1000}, timeout=30).json()["items"]
        assert new_id not in {i["item_id"] for i in recs}  # rated, so seen
        # a second movie gets another generated id, never the first one again
        r2 = httpx.post(f"{base}/items", json={"title": "Galaxy Rebels II"}, headers={"X-API-Key": KEY}, timeout=30)
        assert r2.status_code == 201 and r2.json()["item_id"] != new_id
    # the state holds the movie's text, genres and the vectors the serving model gave it
    from recommender.state import open_state

    version, content, item = open_state(state).vectors(new_id)
    assert version == model.model_version and content.shape == (model.content.item_vectors.shape[1],)
    assert item.shape == (model.retrieval.item_vectors.shape[1],) and np.isfinite(item).all()


@pytest.mark.parametrize("snapshots", [False, True], ids=["events", "across-snapshots"])
def test_every_acknowledged_write_survives_a_sigkill(
    bundle_path: Path, model: HybridRecommender, tmp_path: Path, snapshots: bool
) -> None:
    """8 clients post 1,000 random ratings (bounded), the server is SIGKILLed mid-stream, and after
    a restart every rating that got a 200 is in effect. ``across-snapshots``: up to 2,000 ratings;
    the workers write snapshots of the state as they go (every 40 events), another process is
    SIGKILLed in the middle of writing one during the run, and the restart starts from a snapshot."""
    state = tmp_path / "state"
    users = [int(u) for u in model.user_ids[:60]] + [int(model.user_ids.max()) + 500 + n for n in range(20)]
    items = model.items["item_id"].to_numpy().tolist()
    acked: list[tuple[int, int]] = []
    lock = threading.Lock()
    bundle = bundle_path
    per_client = 250 if snapshots else 125  # the stream outlasts the snapshot writer's start-up
    if snapshots:
        bundle = copy_bundle(bundle_path, tmp_path / "model")
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["config"].setdefault("serving", {})["snapshot_every"] = 40
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    with server(bundle, state, workers=2) as (base, proc):
        stop = threading.Event()
        killer = None
        if snapshots:  # loads at once, then waits for a worker's snapshot and is killed writing the next
            killer = subprocess.Popen(
                [sys.executable, "-c", KILL_MID_SNAPSHOT, str(bundle), state_url(state), "wait"], cwd=REPO, env=child_env(),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )

        def client(c: int) -> None:
            rng = random.Random(c)
            with httpx.Client(base_url=base, timeout=30) as http:
                for _ in range(per_client):  # 8 x 125 = 1,000 writes at most (2,000 across snapshots)
                    if stop.is_set():
                        return
                    u, i = rng.choice(users), rng.choice(items)
                    try:
                        r = http.post(f"/users/{u}/ratings", json=[{"item_id": i, "rating": rng.choice([1, 2, 3, 4, 5])}])
                    except httpx.TransportError:
                        return  # the server is gone: this write was never acknowledged
                    if r.status_code == 200:
                        with lock:
                            acked.append((u, i))

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while (len(acked) < 300 or (killer is not None and killer.poll() is None)) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight
        stop.set()
        for t in threads:
            t.join(60)
    assert len(acked) >= 300
    if killer is not None:
        out, err = killer.communicate(timeout=60)
        assert killer.returncode == -signal.SIGKILL, (out + err).decode()[-2000:]  # died inside a snapshot's transaction
        from recommender import snapshots as snaps
        from recommender.state import open_state

        store = open_state(state)
        written = snaps.listing(store)
        assert written and all(s.seq <= store.last_seq() for s in written)
        restarted = HybridRecommender.load(bundle)
        restarted.snapshot_every = 10**12
        replayed = restarted.catch_up(store)
        assert restarted.snapshot_seq == written[0].seq and replayed == store.last_seq() - written[0].seq
    with server(bundle, state) as (base, _):
        by_user: dict[int, set[int]] = {}
        for u, i in acked:
            by_user.setdefault(u, set()).add(i)
        with httpx.Client(base_url=base, timeout=30) as http:
            for u, rated in by_user.items():
                r = http.get(f"/users/{u}/recommendations", params={"k": 1000})
                assert r.status_code == 200, (u, r.text)
                assert not rated & {i["item_id"] for i in r.json()["items"]}, f"user {u}: acknowledged ratings lost"


def test_a_text_id_is_422_and_writes_nothing_in_process(bundle_path: Path, tmp_path: Path) -> None:
    """A text id where ids are integers is 422 and changes nothing; the catalogue answers on."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    with TestClient(create_app(Settings(model=bundle_path, state_dir=tmp_path / "state"))) as c:
        r = c.post("/items", json={"title": "x", "item_id": "abc"})
        assert r.status_code == 422 and "integers" in r.json()["detail"]
        assert c.get("/items/1").status_code == 200
        assert c.post("/users/1/ratings", json=[{"item_id": 1, "rating": 4}]).status_code == 200
        assert c.app.state.store.state.last_seq() == 1  # only the rating was written
        r = c.post("/items", json={"title": "y", "item_id": 8_000_000_000_000_001})
        assert r.status_code == 422 and "generates" in r.json()["detail"]


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``movierec ARGS`` in this process (the refusals come before any heavy work)."""
    import sys

    from movierec.cli import main

    monkeypatch.setattr(sys, "argv", ["movierec", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return int(exc.value.code or 0), capsys.readouterr().err


def test_train_refuses_to_replace_a_folder_that_is_not_a_bundle(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train --out`` over a folder holding a user's file exits 2 with one line; the file stays."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    code, err = _cli(monkeypatch, capsys, "train", "--data", str(data_dir), "--out", str(out))
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "not a movierec bundle" in lines[0] and "Traceback" not in err, err
    assert (out / "thesis.txt").read_text() == "years of work"
    # a file, too
    (tmp_path / "notes.txt").write_text("mine")
    code, err = _cli(monkeypatch, capsys, "train", "--data", str(data_dir), "--out", str(tmp_path / "notes.txt"))
    assert code == 2 and "refusing to replace" in err and (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args", [["--workers", "1"], ["--workers", "2"], ["--parts"]], ids=" ".join)
def test_candidates_refuse_to_replace_what_is_not_theirs(
    bundle_path: Path, tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = "--parts" in args
    out = tmp_path / ("cands" if parts else "cands.parquet")
    if parts:
        out.mkdir()
        (out / "notes.md").write_text("mine")
    else:
        out.write_text("mine")
    code, err = _cli(monkeypatch, capsys, "candidates", "--model", str(bundle_path), "--out", str(out), *args)
    assert code == 2 and "refusing to replace" in err and len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1, err
    assert ((out / "notes.md") if parts else out).read_text() == "mine"


def test_start_up_serves_the_newest_valid_bundle_and_a_rollback_survives_a_restart(bundle_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings
    from tests.serving.conftest import API_KEY, copy_bundle

    root = tmp_path / "bundles"
    root.mkdir()
    for n in (1, 2, 3):
        copy_bundle(bundle_path, root / f"b{n}", version=f"v{n}")
        time.sleep(0.01)
    (root / "b3" / "items.parquet").write_bytes(b"broken")  # the newest is broken
    settings = Settings(model=root, api_key=API_KEY, state_dir=tmp_path / "state")
    with caplog.at_level("ERROR"), TestClient(create_app(settings)) as c:
        assert c.get("/ready").json()["model_version"] == "v2"
        assert any("skipped bundle" in r.message and "b3" in r.message for r in caplog.records)
        assert c.post("/admin/rollback", headers={"X-API-Key": API_KEY}).json()["model_version"] == "v1"
    with TestClient(create_app(settings)) as c:  # restart: still on the rollback's bundle
        assert c.get("/ready").json()["model_version"] == "v1"
        (root / "b3").rename(tmp_path / "b3-broken")
        assert c.post("/admin/reload", headers={"X-API-Key": API_KEY}).json()["model_version"] == "v2"
    with TestClient(create_app(settings)) as c:  # a reload ended the rollback for good
        assert c.get("/ready").json()["model_version"] == "v2"


def test_feedback_never_lands_on_another_movie(bundle_path: Path, model: HybridRecommender, tmp_path: Path) -> None:
    """A rating is stored with the title of its movie; a bundle holding another movie under that
    id does not get it."""
    from recommender.state import open_state

    state = open_state(tmp_path / "state")
    first_id = int(model.items["item_id"].iat[0])
    state.append_ratings(424242, [(first_id, 5.0, "A Different Movie (1999)")])
    fresh = HybridRecommender.load(bundle_path)
    fresh.catch_up(state)
    assert fresh.users.get(424242) < 0  # nothing applied: the only rating was for another movie
    assert fresh.applied_seq == state.last_seq()
    np.testing.assert_array_equal(fresh.histories.of(0), model.histories.of(0))
