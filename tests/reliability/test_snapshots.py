"""Snapshots of the online state (recommender/snapshots.py) on both backends: a model restored from
a snapshot plus the events after it serves exactly what a full replay serves; a process SIGKILLed
in the middle of writing one leaves the previous snapshot, whole; a snapshot of another bundle or
a damaged one is never used; workers write them on their own; ``movierec state compact`` writes
one on demand and refuses a path that is not a state."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recommender import HybridRecommender, snapshots
from recommender.state import StateStore, open_state
from tests.reliability.conftest import MOVIEREC, REPO, child_env, copy_bundle
from tests.reliability.test_state_store import store  # noqa: F401  (the sqlite/postgresql store fixture)

# a child that writes a snapshot and is SIGKILLed by the database driver's hook right after the
# snapshot's INSERT ran, before its transaction commits: a crash in the middle of a snapshot
KILL_MID_SNAPSHOT = """
import os, signal, sys, time
import sqlalchemy as sa
from recommender import HybridRecommender, snapshots
from recommender.state import open_state
store = open_state(sys.argv[2])
rec = HybridRecommender.load(sys.argv[1])
rec.snapshot_every = 10**12  # no snapshot of its own during the catch-up: the one below is killed
if len(sys.argv) > 3:  # "wait": until a worker wrote a snapshot and events came after it (bounded)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        done = snapshots.listing(store)
        if done and store.last_seq() > done[0].seq:
            break
        time.sleep(0.05)
rec.catch_up(store)

def kill(conn, cursor, statement, *args):
    if statement.lstrip().upper().startswith("INSERT") and "movierec_snapshots" in statement:
        os.kill(os.getpid(), signal.SIGKILL)

sa.event.listen(store.engine, "after_cursor_execute", kill)
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    snapshots.write(rec, store, force=True)
    # not written: a serving worker's snapshot got ahead of this model meanwhile; catch up, again
    time.sleep(0.02)
    rec.catch_up(store)
print("not killed")
"""


def kill_mid_snapshot(bundle: Path, url: str) -> None:
    """Run :data:`KILL_MID_SNAPSHOT`; it must die by SIGKILL (so it was inside the snapshot's
    transaction, after its INSERT)."""
    proc = subprocess.run([sys.executable, "-c", KILL_MID_SNAPSHOT, str(bundle), url], cwd=REPO, env=child_env(),
                          capture_output=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:] + proc.stdout.decode()


def _fill(store: StateStore, model: HybridRecommender, posts: int, seed: int, new_item: object | None = None) -> None:
    """``posts`` rating posts of 1-5 ratings: known users and new ones, re-ratings included."""
    rng = np.random.default_rng(seed)
    items = model.items["item_id"].to_numpy()
    known = [int(u) for u in model.user_ids[:40]]
    new = [int(model.user_ids.max()) + 1000 + n for n in range(15)]
    for _ in range(posts):
        user = (known + new)[int(rng.integers(len(known) + len(new)))]
        picks = rng.integers(len(items), size=int(rng.integers(1, 6)))
        rows = [(items[i].item(), float(rng.integers(1, 6)), model.title_of(int(i))) for i in picks]
        if new_item is not None and rng.random() < 0.2:
            rows.append((new_item, 5.0, "Snapshot Movie"))
        store.append_ratings(user, rows)


def _same(a: HybridRecommender, b: HybridRecommender) -> None:
    """Two models serve the same: ids, histories, ratings, query vectors, catalogue, answers."""
    assert a.applied_seq == b.applied_seq
    assert a.users.all().tolist() == b.users.all().tolist()
    assert a.items["item_id"].tolist() == b.items["item_id"].tolist() and a.n_items == b.n_items
    for u in range(len(a.users)):
        assert np.array_equal(a.histories.of(u), b.histories.of(u)), u
        ra, rb = a.histories.ratings_of(u), b.histories.ratings_of(u)
        assert (ra is None) == (rb is None) and (ra is None or np.array_equal(ra, rb, equal_nan=True)), u
    np.testing.assert_allclose(a.user_vectors, b.user_vectors, atol=1e-6)
    np.testing.assert_allclose(a.retrieval.item_vectors, b.retrieval.item_vectors, atol=1e-6)
    for user in a.users.all()[-20:].tolist():
        assert a.recommend_user(user, 10).item_idx.tolist() == b.recommend_user(user, 10).item_idx.tolist()


def test_a_restored_snapshot_serves_what_a_full_replay_serves(store: StateStore, bundle_path: Path) -> None:
    """Start-up from a snapshot replays only the events after it, and the result is the model
    that replayed every event (added movie, new users and re-ratings included)."""
    full = HybridRecommender.load(bundle_path)
    new_item, _ = store.add_item({"title": "Snapshot Movie", "genres": ["Drama"], "description": "", "year": 2020}, None,
                                 full.item_ids.integer, lambda i: full.item_ids.get(i) >= 0)
    _fill(store, full, 60, seed=1, new_item=new_item)
    full.catch_up(store)
    written = snapshots.write(full, store, force=True)
    assert written is not None and written.seq == store.last_seq()
    _fill(store, full, 25, seed=2, new_item=new_item)
    after = store.last_seq() - written.seq
    replayed = full.catch_up(store)  # the reference: every event applied as it came

    fresh = HybridRecommender.load(bundle_path)
    applied = fresh.catch_up(store)
    assert fresh.snapshot_seq == written.seq
    assert applied == after < replayed + written.seq  # only the events after the snapshot
    _same(fresh, full)


def test_a_sigkill_in_the_middle_of_a_snapshot_leaves_the_previous_one(store: StateStore, bundle_path: Path) -> None:
    """The child dies after the INSERT of a newer snapshot and before its commit: the table holds
    the previous snapshot only, whole, and a worker restores it and replays the rest."""
    model = HybridRecommender.load(bundle_path)
    _fill(store, model, 40, seed=3)
    model.catch_up(store)
    first = snapshots.write(model, store, force=True)
    _fill(store, model, 40, seed=4)
    kill_mid_snapshot(bundle_path, store.url)
    assert [s.seq for s in snapshots.listing(store)] == [first.seq]  # no row, or part of one, from the killed writer
    fresh = HybridRecommender.load(bundle_path)
    fresh.catch_up(store)
    assert fresh.snapshot_seq == first.seq
    model.catch_up(store)
    _same(fresh, model)
    # the dead writer's claim does not stop an on-demand snapshot, which is whole
    again = snapshots.write(fresh, store, force=True)
    assert again is not None and again.seq == store.last_seq()
    newest = HybridRecommender.load(bundle_path)
    assert newest.catch_up(store) == 0 or newest.applied_seq == store.last_seq()
    assert newest.snapshot_seq == again.seq
    _same(newest, model)


def test_a_snapshot_of_another_bundle_or_a_damaged_one_is_not_used(store: StateStore, bundle_path: Path, tmp_path: Path) -> None:
    model = HybridRecommender.load(bundle_path)
    _fill(store, model, 30, seed=5)
    model.catch_up(store)
    snapshots.write(model, store, force=True)
    other = HybridRecommender.load(copy_bundle(bundle_path, tmp_path / "other", version="another-version"))
    assert other.catch_up(store) == store.last_seq()  # every event replayed: nothing restored
    assert other.snapshot_seq == 0
    _same(other, model)
    with store.engine.begin() as conn:  # damage the stored snapshot: its checksum no longer holds
        conn.execute(store.snapshots.update().values(data=b"\x00" * 64))
    damaged = HybridRecommender.load(bundle_path)
    assert damaged.catch_up(store) == store.last_seq()
    _same(damaged, model)


def test_a_worker_writes_snapshots_on_its_own(store: StateStore, bundle_path: Path) -> None:
    """After a catch-up past ``serving.snapshot_every`` events since the newest snapshot, one is
    written in the background; the next start-up restores it."""
    model = HybridRecommender.load(bundle_path)
    model.snapshot_every = 50
    _fill(store, model, 20, seed=6)
    model.catch_up(store)  # about 60 events
    model._snapshot_thread.join(60)
    assert [s.seq for s in snapshots.listing(store)] == [model.applied_seq]
    _fill(store, model, 3, seed=7)
    model.catch_up(store)  # a few more: not due yet
    assert model._snapshot_thread.is_alive() is False and len(snapshots.listing(store)) == 1
    for seed in range(8, 20):  # due again and again: the older snapshots are pruned to KEEP
        _fill(store, model, 20, seed=seed)
        model.catch_up(store)
        model._snapshot_thread.join(60)
    kept = snapshots.listing(store)
    assert len(kept) == snapshots.KEEP and kept[0].seq == model.applied_seq
    fresh = HybridRecommender.load(bundle_path)
    fresh.catch_up(store)
    assert fresh.snapshot_seq == kept[0].seq
    _same(fresh, model)


def test_state_compact_writes_a_snapshot_and_refuses_what_is_not_a_state(bundle_path: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    model = HybridRecommender.load(bundle_path)
    store = open_state(state)
    _fill(store, model, 30, seed=21)
    run = subprocess.run([str(MOVIEREC), "state", "compact", "--state", str(state), "--model", str(bundle_path)],
                         cwd=REPO, env=child_env(), capture_output=True, timeout=180)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    out = json.loads(run.stdout)
    assert out["seq"] == store.last_seq() and out["written"]["seq"] == store.last_seq()
    assert [s.seq for s in snapshots.listing(store)] == [store.last_seq()]
    for args, word in (
        (["--state", str(tmp_path / "nowhere"), "--model", str(bundle_path)], "--state"),
        (["--state", str(state), "--model", str(tmp_path / "nobundle")], "--model"),
    ):
        bad = subprocess.run([str(MOVIEREC), "state", "compact", *args], cwd=REPO, env=child_env(), capture_output=True, timeout=180)
        err = bad.stderr.decode().strip()
        assert bad.returncode == 2 and len(err.splitlines()) == 1 and word in err, err
    assert not (tmp_path / "nowhere").exists()
