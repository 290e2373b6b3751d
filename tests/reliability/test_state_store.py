"""One contract suite for the online state, run against every backend: SQLite (always) and a real
PostgreSQL server (``MOVIEREC_TEST_PG_URL``, which ``.ci/run`` starts from Debian's package;
skipped with the reason when it is not there)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recommender import HybridRecommender
from recommender.events import GENERATED_INT_BASE
from recommender.state import AlreadyDone, IdConflict, Idempotency, StateStore
from recommender.state_db import state_url
from recommender.state_fold import fold_state


def _postgres_url() -> str:
    url = os.environ.get("MOVIEREC_TEST_PG_URL")
    if not url:
        pytest.skip("MOVIEREC_TEST_PG_URL is not set (.ci/run installs and starts PostgreSQL and sets it)")
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:  # a fresh state for each test: every table of ours
            for table in sa.inspect(conn).get_table_names():
                if table.startswith("movierec_"):
                    conn.execute(sa.text(f"DROP TABLE IF EXISTS {table} CASCADE"))
        engine.dispose()
    except Exception as e:  # server down, no psycopg, wrong credentials: say which
        pytest.skip(f"PostgreSQL at MOVIEREC_TEST_PG_URL is not reachable: {e.__class__.__name__}: {str(e).splitlines()[0]}")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    url = state_url(tmp_path / "state") if request.param == "sqlite" else _postgres_url()
    s = StateStore(url)
    yield s
    s.close()


def test_sequence_numbers_grow_and_ids_keep_their_type(store: StateStore) -> None:
    assert store.last_seq() == 0
    a = store.append_ratings(42, [(7, 4.0, "Seven"), (8, 5.0, "Eight")])
    b = store.append_ratings("42", [("x", 3.5, None)])
    assert store.last_seq() == b > a >= 2
    events = store.events_after(0)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert [(e.user_id, e.item_id, e.rating, e.title) for e in events] == [
        (42, 7, 4.0, "Seven"), (42, 8, 5.0, "Eight"), ("42", "x", 3.5, None),
    ]
    assert [e.seq for e in store.events_after(events[0].seq, events[1].seq)] == [events[1].seq]
    frame = store.ratings_frame(0, a)
    assert frame["user_id"].tolist() == [42, 42] and frame["item_id"].tolist() == [7, 8]


def test_concurrent_writers_get_distinct_sequence_numbers_and_lose_nothing(store: StateStore) -> None:
    seqs: list[int] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        for j in range(25):
            s = store.append_ratings(w, [(j, 1.0, None)])
            with lock:
                seqs.append(s)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(seqs) == 200 and len(set(seqs)) == 200
    assert store.last_seq() == max(seqs) and len(store.events_after(0)) == 200


def test_generated_ids_never_clash_and_chosen_ids_are_taken_once(store: StateStore) -> None:
    got: list[object] = []
    lock = threading.Lock()
    taken_by_catalogue = {GENERATED_INT_BASE + 2}  # a catalogue that already holds one of the range

    def adder(w: int) -> None:
        for j in range(5):
            item_id, _ = store.add_item({"title": f"m{w}-{j}"}, None, True, lambda i: i in taken_by_catalogue)
            with lock:
                got.append(item_id)

    threads = [threading.Thread(target=adder, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(set(got)) == 20 and all(i > GENERATED_INT_BASE for i in got) and GENERATED_INT_BASE + 2 not in got
    store.add_item({"title": "chosen"}, 77, True, lambda i: False)
    with pytest.raises(IdConflict):
        store.add_item({"title": "again"}, 77, True, lambda i: False)
    with pytest.raises(IdConflict):
        store.add_item({"title": "in the bundle"}, 5, True, lambda i: i == 5)
    text_id, _ = store.add_item({"title": "text"}, None, False, lambda i: False)
    assert isinstance(text_id, str) and text_id.startswith("movierec-")


def test_two_models_on_one_state_agree_after_catching_up(store: StateStore, bundle_path: Path) -> None:
    a, b = HybridRecommender.load(bundle_path), HybridRecommender.load(bundle_path)
    ids = a.items["item_id"].to_numpy()
    titles = a.items["title"].to_numpy()
    new_user = int(a.user_ids.max()) + 1
    store.append_ratings(new_user, [(int(ids[i]), 5.0, str(titles[i])) for i in (3, 4, 5)])
    store.append_ratings(int(a.user_ids[0]), [(int(ids[9]), 1.0, str(titles[9]))])
    item_id, _ = store.add_item({"title": "Shared Movie", "genres": ["Drama"], "description": "a shared story"}, None, True, lambda i: False)
    store.append_ratings(new_user, [(item_id, 4.0, "Shared Movie")])
    assert a.catch_up(store) == 6 and a.catch_up(store) == 0  # 5 ratings and a movie; then nothing new
    for _ in range(2):
        b.catch_up(store)
    for m in (a, b):
        u = m.user_idx(new_user)
        assert m.items["item_id"].to_numpy()[m.histories.of(u)].tolist() == [int(ids[3]), int(ids[4]), int(ids[5]), item_id]
        assert m.histories.ratings_of(u).tolist() == [5.0, 5.0, 5.0, 4.0]
    np.testing.assert_allclose(a.retrieval.user_vectors[: len(a.users)], b.retrieval.user_vectors[: len(b.users)], rtol=1e-5, atol=1e-6)
    assert a.recommend_user(new_user, 5).item_idx.tolist() == b.recommend_user(new_user, 5).item_idx.tolist()


def test_training_folds_everything_up_to_a_point_and_serving_replays_the_rest(store: StateStore, bundle_path: Path) -> None:
    from movierec.core.loaders import load_dataset

    ds = load_dataset(bundle_path.parent / "data")
    item = int(ds.item_ids[0])
    title = str(ds.items.loc[ds.items["item_id"] == item, "title"].iat[0])
    new_user = int(ds.user_ids.max()) + 5
    store.append_ratings(new_user, [(item, 5.0, title)])
    added, _ = store.add_item({"title": "Folded Movie", "genres": ["Drama"], "year": 2020}, None, True, lambda i: False)
    store.append_ratings(new_user, [(added, 4.0, "Folded Movie")])
    folded, record = fold_state(ds, store)
    upto = record["seq"]
    later = store.append_ratings(new_user + 1, [(item, 3.0, title)])  # after the point: serving's part
    assert upto == later - 1
    r = folded.ratings
    assert set(r.loc[r["user_id"] == new_user, "item_id"].tolist()) == {item, added}
    assert added in set(folded.item_ids.tolist()) and new_user + 1 not in set(folded.user_ids.tolist())
    remaining = store.events_after(upto)
    assert [(e.user_id, e.item_id) for e in remaining] == [(new_user + 1, item)]


def _idem(key: str, fingerprint: str = "f1", ttl: float = 3600, scope: str = "POST /items", status: int = 201) -> Idempotency:
    return Idempotency(scope, key, fingerprint, status, ttl, {"note": "draft"})


def test_an_idempotency_key_is_remembered_with_its_write_and_a_reuse_writes_nothing(store: StateStore) -> None:
    item, seq = store.add_item({"title": "Once"}, None, True, lambda i: False, idempotency=_idem("k"))
    first = store.remembered("POST /items", "k", 3600)
    assert first is not None and first.seq == seq and first.status == 201 and first.body is None
    assert first.draft == {"note": "draft", "item_id": item}
    for _ in range(2):
        with pytest.raises(AlreadyDone) as done:
            store.add_item({"title": "Once"}, None, True, lambda i: False, idempotency=_idem("k"))
        assert done.value.remembered.seq == seq
    with pytest.raises(AlreadyDone) as done:  # another body: refused the same way; the caller compares fingerprints
        store.add_item({"title": "Twice"}, None, True, lambda i: False, idempotency=_idem("k", "f2"))
    assert done.value.remembered.fingerprint == "f1"
    assert store.last_seq() == seq and len(store.events_after(0)) == 1
    # the first answer stored wins; a later one gets it back
    assert store.finish_idempotent("POST /items", "k", '{"a":1}') == '{"a":1}'
    assert store.finish_idempotent("POST /items", "k", '{"a":2}') == '{"a":1}'
    # ratings: scoped by what the caller puts in scope (route and user)
    r = _idem("k", scope="POST /users/1/ratings", status=200)
    s1 = store.append_ratings(1, [(7, 4.0, "Seven")], idempotency=r)
    with pytest.raises(AlreadyDone):
        store.append_ratings(1, [(7, 4.0, "Seven")], idempotency=r)
    store.append_ratings(2, [(7, 4.0, "Seven")], idempotency=_idem("k", scope="POST /users/2/ratings", status=200))
    assert store.remembered("POST /users/1/ratings", "k", 3600).seq == s1 and len(store.events_after(0)) == 3


def test_the_key_and_its_events_commit_together(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure between the events and the key's record rolls both back: neither is left alone."""

    def fail(*args: object) -> None:
        raise RuntimeError("crash between the events and the record")

    monkeypatch.setattr(store, "_remember", fail)
    with pytest.raises(RuntimeError):
        store.append_ratings(1, [(7, 4.0, "Seven")], idempotency=_idem("k", scope="r", status=200))
    with pytest.raises(RuntimeError):
        store.add_item({"title": "Lost"}, None, True, lambda i: False, idempotency=_idem("k"))
    assert store.last_seq() == 0 and store.events_after(0) == []
    assert store.remembered("r", "k", 3600) is None and store.remembered("POST /items", "k", 3600) is None
    monkeypatch.undo()
    store.add_item({"title": "Kept"}, None, True, lambda i: False, idempotency=_idem("k"))  # nothing half-written blocks the key
    assert len(store.events_after(0)) == 1


def test_racing_writers_with_one_key_write_once(store: StateStore) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def writer() -> None:
        try:
            store.add_item({"title": "Race"}, None, True, lambda i: False, idempotency=_idem("race"))
            out = "written"
        except AlreadyDone:
            out = "replayed"
        with lock:
            outcomes.append(out)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(outcomes) == ["replayed"] * 7 + ["written"]
    assert len(store.events_after(0)) == 1


def test_keys_older_than_their_time_to_live_are_purged(store: StateStore) -> None:
    import time

    store.append_ratings(1, [(7, 4.0, None)], idempotency=_idem("old", scope="r", ttl=0.2, status=200))
    assert store.remembered("r", "old", 0.2) is not None
    time.sleep(0.3)
    assert store.remembered("r", "old", 0.2) is None  # expired: no longer honoured
    store.append_ratings(1, [(8, 4.0, None)], idempotency=_idem("new", scope="r", ttl=0.2, status=200))  # a keyed write purges
    with store.engine.connect() as conn:
        keys = [row[0] for row in conn.execute(store.db.sa.select(store.idempotency.c.key))]
    assert keys == ["new"]
    store.append_ratings(1, [(7, 4.0, None)], idempotency=_idem("old", scope="r", ttl=0.2, status=200))  # the key is free again
    assert len(store.events_after(0)) == 3
