"""Live feedback: ``POST /users/{id}/ratings`` commits to the online state, updates the user vector
at once, creates unknown users, refuses bad input before writing; ``train --feedback`` folds the online state in and refuses
anything that is not one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recommender import HybridRecommender
from serving.app import create_app
from serving.settings import Settings
from recommender.state import open_state
from recommender.state_fold import fold_state


@pytest.fixture(scope="module")
def model(bundle_path: Path) -> HybridRecommender:
    """A read-only copy of the bundle as trained (the apps below change their own copies)."""
    return HybridRecommender.load(bundle_path)


@pytest.fixture
def fb_client(bundle_path: Path, tmp_path: Path) -> Iterator[TestClient]:
    """An app with its own in-memory model and a feedback log under ``tmp_path``."""
    with TestClient(create_app(Settings(model=bundle_path, state_dir=tmp_path / "state"))) as c:
        yield c


def _horror(model: HybridRecommender) -> np.ndarray:
    return np.flatnonzero(["Horror" in g for g in model.items["genres"]])


def _horror_count(items: list[dict]) -> int:
    return sum("Horror" in i["genres"] for i in items)


def test_rating_five_horror_films_raises_horror_in_the_next_top_10(fb_client: TestClient, model: HybridRecommender, tmp_path: Path) -> None:
    horror = _horror(model)
    ids = model.items["item_id"].to_numpy()
    before_total = after_total = users = 0
    for u, user in enumerate(model.user_ids[:40].tolist()):
        unseen = [int(ids[i]) for i in horror if i not in set(model.retrieval.histories.of(u).tolist())][:5]
        if len(unseen) < 5:
            continue
        before = fb_client.get(f"/users/{user}/recommendations", params={"k": 10}).json()["items"]
        r = fb_client.post(f"/users/{user}/ratings", json=[{"item_id": i, "rating": 5} for i in unseen])
        assert r.status_code == 200
        assert r.json()["created"] is False and r.json()["recorded"] == 5
        assert r.json()["history_length"] == len(model.retrieval.histories.of(u)) + 5
        after = fb_client.get(f"/users/{user}/recommendations", params={"k": 10}).json()["items"]
        assert len(after) == 10 and not set(unseen) & {i["item_id"] for i in after}  # now seen
        before_total += _horror_count(before)
        after_total += _horror_count(after)
        users += 1
        if users == 20:
            break
    assert users == 20
    # even with five horror films fewer to recommend (they are now rated), horror rises
    assert after_total > before_total
    stored = open_state(tmp_path / "state").ratings_frame()
    assert len(stored) == 100 and (stored["rating"] == 5.0).all()


def test_user_vector_is_the_tower_pooling_of_the_updated_history(fb_client: TestClient, model: HybridRecommender) -> None:
    user, u = int(model.user_ids[2]), 2
    history = model.retrieval.histories.of(u)
    rerated = int(history[0])  # re-rating moves a movie to the recent end instead of duplicating it
    new = [i for i in range(model.n_items) if i not in set(history.tolist())][:3]
    ids = model.items["item_id"].to_numpy()
    body = [{"item_id": int(ids[i]), "rating": 4} for i in [*new, rerated]]
    assert fb_client.post(f"/users/{user}/ratings", json=body).status_code == 200
    served = fb_client.app.state.store.get().recommender
    expected_history = np.concatenate([history[1:], new, [rerated]])
    assert served.retrieval.histories.of(u).tolist() == expected_history.tolist()
    expected = model.retrieval.encode_histories([expected_history], np.array([u]))[0]
    np.testing.assert_allclose(served.retrieval.user_vectors[u], expected, rtol=1e-5, atol=1e-6)
    # other users' rows are untouched by the CSR rewrite
    for other in (0, 1, 3, len(model.user_ids) - 1):
        assert served.retrieval.histories.of(other).tolist() == model.retrieval.histories.of(other).tolist()


def test_unknown_user_is_created_from_their_ratings_alone(fb_client: TestClient, model: HybridRecommender) -> None:
    horror = _horror(model)[:5]
    ids = model.items["item_id"].to_numpy()
    new_user = int(model.user_ids.max()) + 1000
    assert fb_client.get(f"/users/{new_user}/recommendations").status_code == 404
    r = fb_client.post(f"/users/{new_user}/ratings", json=[{"item_id": int(ids[i]), "rating": 5} for i in horror])
    assert r.status_code == 200 and r.json() == {
        "user_id": new_user, "created": True, "recorded": 5, "history_length": 5, "model_version": model.model_version,
    }
    recs = fb_client.get(f"/users/{new_user}/recommendations", params={"k": 10, "explain": "true"}).json()["items"]
    assert len(recs) == 10 and not {int(ids[i]) for i in horror} & {i["item_id"] for i in recs}
    # explanations can only name the five rated movies, with the rating given
    rated = {int(ids[i]) for i in horror}
    assert all(b["item_id"] in rated for item in recs for b in item["because"])
    assert any(" you rated 5" in b["reason"] for item in recs for b in item["because"])
    share = len(_horror(model)) / model.n_items
    assert _horror_count(recs) / 10 > share  # a horror-only history pulls horror up


def test_bad_feedback_is_refused_before_anything_is_logged(fb_client: TestClient, model: HybridRecommender, tmp_path: Path) -> None:
    first = int(model.items["item_id"].iat[0])
    cases = [
        ("/users/1/ratings", [{"item_id": 987654321, "rating": 4}], 404, "unknown item_id"),
        ("/users/1/ratings", [{"item_id": first, "rating": 11}], 422, "outside this model's scale"),
        ("/users/1/ratings", [], 422, "at least 1"),
        ("/users/1/ratings", [{"item_id": first}], 422, "rating"),
        ("/users/not-a-number/ratings", [{"item_id": first, "rating": 3}], 422, "integers"),
        (f"/users/{10**30}/ratings", [{"item_id": first, "rating": 3}], 422, "out of range"),
    ]
    for path, body, status, detail in cases:
        r = fb_client.post(path, json=body)
        assert r.status_code == status and detail in r.json()["detail"], (body, r.text)
    assert open_state(tmp_path / "state").last_seq() == 0  # nothing was written


def test_fold_state_appends_ratings_and_keeps_the_latest(bundle_path: Path, tmp_path: Path) -> None:
    from movierec.core.data import Dataset
    from movierec.core.loaders import load_dataset

    ds: Dataset = load_dataset(bundle_path.parent / "data")
    row = ds.ratings.iloc[0]
    user, item = int(row["user_id"]), int(row["item_id"])
    title = str(ds.items.loc[ds.items["item_id"] == item, "title"].iat[0])
    new_user = int(ds.user_ids.max()) + 1
    state = open_state(tmp_path / "state")
    state.append_ratings(user, [(item, 1.0 if row["rating"] != 1 else 2.0, title)])  # overrides the data (later time)
    state.append_ratings(new_user, [(item, 2.0, title)])
    state.append_ratings(new_user, [(item, 4.0, title)])  # rated twice: the later one wins
    folded, record = fold_state(ds, state)
    r = folded.ratings
    assert len(r) == len(ds.ratings) + 1
    assert r.loc[(r["user_id"] == user) & (r["item_id"] == item), "rating"].tolist() == [1.0 if row["rating"] != 1 else 2.0]
    assert r.loc[r["user_id"] == new_user, "rating"].tolist() == [4.0]
    assert new_user in set(folded.user_ids.tolist()) and folded.n_users == ds.n_users + 1
    assert pd.api.types.is_integer_dtype(r["timestamp"]) and r.loc[r["user_id"] == new_user, "timestamp"].iat[0] > 0
    assert record["seq"] == 3 and record["id"] == state.identity() and record["skipped"] == {"ratings": 0, "movies": 0}


def test_logged_feedback_is_replayed_when_the_service_restarts(bundle_path: Path, model: HybridRecommender, tmp_path: Path) -> None:
    settings = Settings(model=bundle_path, state_dir=tmp_path / "state")
    ids = model.items["item_id"].to_numpy()
    new_user = int(model.user_ids.max()) + 7
    rated = [int(ids[i]) for i in _horror(model)[:3]]
    with TestClient(create_app(settings)) as c:
        assert c.post(f"/users/{new_user}/ratings", json=[{"item_id": i, "rating": 4.5} for i in rated]).status_code == 200
        first = c.get(f"/users/{new_user}/recommendations", params={"k": 5}).json()["items"]
    with TestClient(create_app(settings)) as c:  # a restart: the bundle knows nothing of this user
        r = c.get(f"/users/{new_user}/recommendations", params={"k": 5})
        assert r.status_code == 200 and r.json()["items"] == first
        history, ratings = c.app.state.store.get().user_history(len(model.user_ids))  # the new row
        assert ids[history].tolist() == rated and ratings.tolist() == [4.5, 4.5, 4.5]


def test_train_feedback_refuses_what_is_not_an_online_state(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bundle folder, a stray file, an empty folder, a file that is not a database, a missing
    path: one line, exit 2, and nothing is created (the bug guarded against: a database appeared
    there, or a traceback)."""
    import sys

    from movierec.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "stray.jsonl").write_text('{"user_id": 1, "item_id": 1, "rating": 4}\n')
    (tmp_path / "notes.db").write_text("not a database")
    cases = {
        str(bundle_path): "no state.db in this folder",
        str(tmp_path / "stray.jsonl"): "a file",
        str(tmp_path / "empty"): "no state.db in this folder",
        str(tmp_path / "notes.db"): "not a database",
        str(tmp_path / "none"): "no such state folder",
    }
    before = sorted(p.name for p in bundle_path.iterdir())
    for where, why in cases.items():
        args = ["movierec", "train", "--data", str(bundle_path.parent / "data"), "--out", str(tmp_path / "m"), "--feedback", where]
        monkeypatch.setattr(sys, "argv", args)
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert exc.value.code == 2 and len(lines) == 1 and "is not an online state" in lines[0] and why in lines[0], (where, err)
    assert sorted(p.name for p in bundle_path.iterdir()) == before
    assert not any((tmp_path / "empty").iterdir()) and (tmp_path / "notes.db").read_text() == "not a database"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes.db", "stray.jsonl"]


def test_the_ranker_reads_live_ratings_from_the_layer(bundle_path: Path) -> None:
    """One place for a user's ratings: the ranker's features see a live rating as given."""
    rec = HybridRecommender.load(bundle_path)
    if rec.ranker is None:
        pytest.skip("bundle without a ranker")
    user = int(rec.user_ids[3])
    unseen = next(int(i) for i in rec.items["item_id"] if rec.item_idx(i) not in set(rec.histories.of(3).tolist()))
    rec.record_ratings(user, [unseen], [1.0])
    got = rec.ranker._ratings_of(np.array([3]), [rec.histories.of(3)], rec)[0]
    assert got is not None and len(got) == len(rec.histories.of(3)) and got[-1] == 1.0
