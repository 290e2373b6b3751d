"""A state and a bundle know each other: a bundle folded from an online state records the state's
identity, its point and that event's time; served beside the same state it replays what came
after, beside any other (a new default folder, a restored copy that diverged, another database)
the whole state, so no committed write is answered 404. ``train --feedback`` folds a rating only
onto the movie it was given for. The state's files are private from the start.

Servers listen on 127.0.0.1 only; every wait is bounded."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
from pathlib import Path

import httpx
import pandas as pd
import pytest

from recommender import HybridRecommender
from recommender.state import StateStore, open_state
from recommender.state_db import STATE_FILE, state_url
from recommender.state_fold import fold_state
from tests.reliability.conftest import MOVIEREC, REPO, TINY_TRAIN, child_env
from tests.reliability.test_shared_state import server
from tests.serving.conftest import copy_bundle


@pytest.fixture(scope="module")
def model(bundle_path: Path) -> HybridRecommender:
    return HybridRecommender.load(bundle_path)


def _titles(model: HybridRecommender) -> dict[int, str]:
    return dict(zip(model.items["item_id"].astype(int).tolist(), model.items["title"].tolist()))


def _fresh_get(url: str, **params: object) -> httpx.Response:
    with httpx.Client(timeout=30) as c:  # a new connection each time: the kernel picks the worker
        return c.get(url, params=params)


def test_the_readme_flow_serves_every_committed_write(bundle_path: Path, data_dir: Path, model: HybridRecommender, tmp_path: Path) -> None:
    """Serve m1, post ratings, ``train --out m2 --feedback m1.state``, serve m2 beside a new
    state (its default ``m2.state``) and post a new user's rating: 200, not 404 "unknown
    user_id" (the bundle's point, event 5, belongs to m1.state's numbering, not to m2.state's).
    Served beside m1.state instead, m2 applies only what came after its point."""
    ids = model.items["item_id"].astype(int).tolist()
    known = int(model.user_ids[0])
    first, later, newest = (int(model.user_ids.max()) + n for n in (1, 2, 3))
    m1_state = tmp_path / "m1.state"
    with server(bundle_path, m1_state) as (base, _):
        assert httpx.post(f"{base}/users/{first}/ratings", json=[{"item_id": i, "rating": 5} for i in ids[:3]], timeout=30).status_code == 200
        assert httpx.post(f"{base}/users/{known}/ratings", json=[{"item_id": i, "rating": 4} for i in ids[3:5]], timeout=30).status_code == 200
    m2 = tmp_path / "m2"
    out = subprocess.run(
        [str(MOVIEREC), "train", "--data", str(data_dir), "--out", str(m2), "--feedback", str(m1_state), *TINY_TRAIN],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "folded the online state up to event 5" in out.stdout

    with server(m2, tmp_path / "m2.state", workers=2) as (base, _):
        r = httpx.post(f"{base}/users/{newest}/ratings", json=[{"item_id": ids[7], "rating": 5}], timeout=30)
        assert r.status_code == 200, r.text
        statuses = [_fresh_get(f"{base}/users/{newest}/recommendations", k=5).status_code for _ in range(10)]
        assert statuses == [200] * 10
        assert _fresh_get(f"{base}/users/{first}/recommendations", k=5).status_code == 200  # folded into m2
    with server(m2, tmp_path / "m2.state") as (base, _):  # a restart too
        got = _fresh_get(f"{base}/users/{newest}/recommendations", k=200)
        assert got.status_code == 200 and ids[7] not in {i["item_id"] for i in got.json()["items"]}

    state = open_state(m1_state)
    record = json.loads((m2 / "manifest.json").read_text())["state"]
    assert record == {"id": state.identity(), "seq": 5, "at": state.event_time(5), "location": state.url, "skipped": {"ratings": 0, "movies": 0}}
    # every file of the bundle has the same mode (the user's umask): the manifest included
    modes = {p.stat().st_mode & 0o777 for p in m2.rglob("*") if p.is_file()}
    assert len(modes) == 1, sorted(oct(m) for m in modes)

    # beside the state it was folded from, m2 starts after its point: a later write is applied
    state.append_ratings(later, [(ids[9], 5.0, _titles(model)[ids[9]])])
    with server(m2, m1_state) as (base, _):
        got = _fresh_get(f"{base}/users/{later}/recommendations", k=200)
        assert got.status_code == 200 and ids[9] not in {i["item_id"] for i in got.json()["items"]}


def _bundle_with_point(bundle_path: Path, dst: Path, record: dict[str, object]) -> HybridRecommender:
    """A copy of the session bundle whose manifest says it was folded from a state up to a point."""
    copy_bundle(bundle_path, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["state"] = record
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return HybridRecommender.load(dst)


def _sqlite_copy(src: StateStore, dst: Path) -> StateStore:
    """A backup of a SQLite state (the online backup API), opened as a state of its own."""
    dst.mkdir()
    with sqlite3.connect(src.url.split(":///", 1)[1]) as a, sqlite3.connect(dst / STATE_FILE) as b:
        a.backup(b)
    return StateStore(state_url(dst))


def test_a_restored_copy_that_diverged_is_replayed_from_its_start(bundle_path: Path, model: HybridRecommender, tmp_path: Path) -> None:
    """A backup restored from before the bundle's point, then written to, reuses the point's
    sequence number for another event: same identity, other time, so it is replayed whole. A
    backup taken after the point continues the state: only what follows is applied."""
    titles = _titles(model)
    ids = sorted(titles)
    users = [int(model.user_ids.max()) + n for n in range(1, 6)]
    state = StateStore(state_url(tmp_path / "state"))
    state.append_ratings(users[0], [(ids[0], 5.0, titles[ids[0]])])
    state.append_ratings(users[1], [(ids[1], 5.0, titles[ids[1]])])
    early = _sqlite_copy(state, tmp_path / "early")  # backed up at event 2
    state.append_ratings(users[2], [(ids[2], 5.0, titles[ids[2]])])
    late = _sqlite_copy(state, tmp_path / "late")  # backed up at event 3
    record = state.point(3)
    assert record["id"] == early.identity() == late.identity()

    early.append_ratings(users[3], [(ids[3], 4.0, titles[ids[3]])])  # event 3 again, another write
    rec = _bundle_with_point(bundle_path, tmp_path / "b1", record)
    assert rec.catch_up(early) == 3 and rec.applied_seq == 3
    assert all(rec.users.get(u) >= 0 for u in (users[0], users[1], users[3]))  # nothing skipped

    late.append_ratings(users[4], [(ids[4], 4.0, titles[ids[4]])])  # event 4 continues the state
    rec = _bundle_with_point(bundle_path, tmp_path / "b2", record)
    assert rec.catch_up(late) == 1 and rec.users.get(users[4]) >= 0
    assert rec.users.get(users[0]) < 0  # events up to the point are the bundle's own


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_bundle_beside_another_state_replays_it_from_its_start(
    bundle_path: Path, model: HybridRecommender, tmp_path: Path, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Folded from one state (SQLite) up to event 3, served beside another (a new SQLite folder
    or a PostgreSQL database) that holds 2 events: both are applied; beside its own state, only
    the events after its point."""
    titles = _titles(model)
    ids = sorted(titles)
    users = [int(model.user_ids.max()) + n for n in range(1, 6)]
    folded = StateStore(state_url(tmp_path / "folded"))
    for n in range(3):
        folded.append_ratings(users[0], [(ids[n], 5.0, titles[ids[n]])])
    record = folded.point(3)
    if backend == "postgresql":
        from tests.reliability.test_state_store import _postgres_url

        other = StateStore(_postgres_url())  # skips with the reason when there is none
    else:
        other = StateStore(state_url(tmp_path / "other"))
    try:
        other.append_ratings(users[1], [(ids[5], 5.0, titles[ids[5]])])
        other.append_ratings(users[2], [(ids[6], 5.0, titles[ids[6]])])
        # its own point, through the manifest's JSON, is recognised on either backend
        assert other.start_for(json.loads(json.dumps(other.point(2)))) == 2 and other.start_for(record) == 0
        rec = _bundle_with_point(bundle_path, tmp_path / "b", record)
        with caplog.at_level("WARNING", logger="recommender.state"):
            assert rec.catch_up(other) == 2
        # the operator is told where the state it was folded from is, and how to continue it
        assert any("not the online state this bundle was folded from" in r.message and str(tmp_path / "folded") in r.message
                   and "MOVIEREC_STATE_DIR" in r.message for r in caplog.records)
        assert rec.users.get(users[1]) >= 0 and rec.users.get(users[2]) >= 0

        folded.append_ratings(users[3], [(ids[7], 5.0, titles[ids[7]])])
        own = _bundle_with_point(bundle_path, tmp_path / "own", record)
        assert own.catch_up(folded) == 1 and own.users.get(users[3]) >= 0 and own.users.get(users[0]) < 0
    finally:
        other.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_identity_is_created_once_by_racing_openers(tmp_path: Path, backend: str) -> None:
    """Eight stores (as eight workers would) ask a fresh state for its identity at once: one
    value, kept across reopening; another state has another."""
    if backend == "postgresql":
        from tests.reliability.test_state_store import _postgres_url

        url = _postgres_url()
    else:
        url = state_url(tmp_path / "state")
    stores = [StateStore(url) for _ in range(8)]
    got: list[str] = []
    barrier = threading.Barrier(len(stores))

    def ask(s: StateStore) -> None:
        barrier.wait(timeout=30)
        got.append(s.identity())

    threads = [threading.Thread(target=ask, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 8 and len(set(got)) == 1
    again = StateStore(url)
    assert again.identity() == got[0]
    assert StateStore(state_url(tmp_path / "another")).identity() != got[0]
    for s in [*stores, again]:
        s.close()


def test_feedback_is_folded_onto_the_movie_it_was_given_for(bundle_path: Path, tmp_path: Path) -> None:
    """Fold onto a data set that numbers movies differently (every title moved to another id):
    a rating is folded only where the new data holds its movie under the same id and title, the
    rest is skipped and counted; an added movie whose id the new data gives to another title is
    not merged onto it, one with a free id joins under its own."""
    from movierec.core.data import Dataset
    from movierec.core.loaders import load_dataset

    ds = load_dataset(bundle_path.parent / "data")
    items = ds.items.copy()
    ids = items["item_id"].tolist()
    keep = ids[0]  # this movie keeps its id; every other title moves one id along
    moved = items["title"].tolist()
    rest = [n for n in range(len(ids)) if ids[n] != keep]
    titles = {n: moved[n] for n in range(len(ids))}
    for a, b in zip(rest, rest[1:] + rest[:1]):
        moved[b] = titles[a]
    items["title"] = moved
    renumbered = Dataset(ds.ratings, items, users=ds.users, name="renumbered")

    state = StateStore(state_url(tmp_path / "state"))
    user = int(ds.user_ids.max()) + 1
    old_title = dict(zip(ds.items["item_id"].tolist(), ds.items["title"].tolist()))
    state.append_ratings(user, [(int(keep), 5.0, old_title[keep]), (int(ids[1]), 4.0, old_title[ids[1]]), (int(ids[2]), 3.0, old_title[ids[2]])])
    clash, _ = state.add_item({"title": "Only Here (2026)", "genres": ["Drama"]}, int(ids[3]) + 100_000, True, lambda i: False)
    state.append_ratings(user, [(clash, 5.0, "Only Here (2026)")])
    # a data set that uses the added movie's id for another title
    other = items.iloc[[3]].assign(item_id=clash, title="Someone Else's Movie")
    renumbered = Dataset(ds.ratings, pd.concat([items, other], ignore_index=True), users=ds.users, name="renumbered")
    free, _ = state.add_item({"title": "Galaxy Rebels (2026)", "genres": ["Sci-Fi"]}, None, True, lambda i: False)
    state.append_ratings(user, [(free, 4.0, "Galaxy Rebels (2026)")])

    folded, record = fold_state(renumbered, state)
    r = folded.ratings
    assert sorted(r.loc[r["user_id"] == user, "item_id"].tolist()) == sorted([keep, free])
    assert record["skipped"] == {"ratings": 3, "movies": 1} and record["seq"] == state.last_seq()
    titles_now = dict(zip(folded.items["item_id"].tolist(), folded.items["title"].tolist()))
    assert titles_now[clash] == "Someone Else's Movie" and titles_now[free] == "Galaxy Rebels (2026)"


def test_the_state_files_are_private_from_the_start(tmp_path: Path) -> None:
    """state.db (every user's ratings), its -wal and -shm, and the folder: owner only, as
    created (with the usual umask 022, which would make them world-readable)."""
    old = os.umask(0o022)
    try:
        store = StateStore(state_url(tmp_path / "m.state"))
        store.append_ratings(1, [(1, 4.0, "One")])
        folder = tmp_path / "m.state"
        files = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
        assert folder.stat().st_mode & 0o777 == 0o700
        assert files == {STATE_FILE: 0o600, f"{STATE_FILE}-wal": 0o600, f"{STATE_FILE}-shm": 0o600}, {k: oct(v) for k, v in files.items()}
        store.close()
    finally:
        os.umask(old)


def test_train_feedback_refuses_a_postgresql_database_without_a_state(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database that holds no online state is refused with one line, and no table is created in it."""
    import sys

    import sqlalchemy as sa

    from movierec.cli import main
    from tests.reliability.test_state_store import _postgres_url

    url = _postgres_url()  # drops the state's tables; skips with the reason when there is none
    monkeypatch.setattr(sys, "argv", ["movierec", "train", "--data", str(data_dir), "--out", str(tmp_path / "m"), "--feedback", url])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "is not an online state" in err and "movierec:***@" in err, err
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        assert not sa.inspect(engine).has_table("movierec_events")
    finally:
        engine.dispose()
    assert not (tmp_path / "m").exists()
