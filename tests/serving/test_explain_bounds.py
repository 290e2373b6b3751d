"""The history bound at serve time (``serving.history_limit``): explanations and the ranker's
features read only a user's most recent ratings (every rated movie is still excluded as seen),
and explanations wait for the same per-worker limit as ranked answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import serving.offload as offload
import serving.routes_recommendations as routes
from recommender import HybridRecommender
from serving.app import create_app
from serving.rerank import explain
from serving.settings import Settings


@pytest.fixture
def model(bundle_path: Path) -> HybridRecommender:
    return HybridRecommender.load(bundle_path)


@pytest.fixture
def app_client(bundle_path: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model=bundle_path, state_dir=tmp_path / "state"))) as c:
        yield c


def _long_history_user(model: HybridRecommender) -> int:
    lengths = model.histories.lengths(np.arange(len(model.users)))
    return int(np.argmax(lengths))


def test_the_default_bound_comes_from_the_config(model: HybridRecommender) -> None:
    from movierec.core.config import ServingConfig

    assert model.history_limit == ServingConfig().history_limit >= 1000
    assert model.snapshot_every == ServingConfig().snapshot_every


def test_explanations_name_only_the_most_recent_ratings(model: HybridRecommender) -> None:
    u = _long_history_user(model)
    history, ratings = model.user_history(u)
    assert len(history) > 10
    targets = np.setdiff1d(np.arange(model.n_items), history)[:40]
    model.history_limit = 5
    bounded = explain(model, history, ratings, targets)
    recent = {int(model.item_ids.id_of(int(i))) for i in history[-5:]}
    named = {b["item_id"] for row in bounded for b in row}
    assert named and named <= recent
    assert bounded == explain(model, history[-5:], ratings[-5:] if ratings is not None else None, targets, limit=10**9)
    # without the bound, older ratings are named too (so the bound is what kept them out)
    unbounded = {b["item_id"] for row in explain(model, history, ratings, targets, limit=10**9) for b in row}
    assert unbounded - recent


def test_explanations_through_the_api_read_the_bounded_history(app_client: TestClient) -> None:
    rec = app_client.app.state.store.get().recommender
    u = _long_history_user(rec)
    rec.history_limit = 4
    history, _ = rec.user_history(u)
    recent = {rec.item_ids.id_of(int(i)) for i in history[-4:]}
    r = app_client.get(f"/users/{rec.users.id_of(u)}/recommendations", params={"k": 100, "explain": "true"})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == min(100, rec.n_items - len(history))  # every rated movie still excluded as seen
    assert {b["item_id"] for i in items for b in i["because"]} <= recent
    assert not {i["item_id"] for i in items} & {rec.item_ids.id_of(int(i)) for i in history}


def test_ranker_features_read_only_the_most_recent_ratings(model: HybridRecommender, monkeypatch: pytest.MonkeyPatch) -> None:
    import ranking.runtime as runtime

    assert model.ranker is not None
    widths: list[int] = []
    lengths: list[int] = []
    real_features, real_collab = runtime.compute_features, model.ranker.collab_candidates

    def features(ctx, users, hist, *args, **kwargs):  # type: ignore[no-untyped-def]
        widths.append(hist.items.shape[1])
        return real_features(ctx, users, hist, *args, **kwargs)

    def collab(histories, exclude):  # type: ignore[no-untyped-def]
        lengths.extend(len(h) for h in histories)
        return real_collab(histories, exclude)

    monkeypatch.setattr(runtime, "compute_features", features)
    monkeypatch.setattr(model.ranker, "collab_candidates", collab)
    u = _long_history_user(model)
    history = model.histories.of(u)
    model.history_limit = 3
    recs = model.recommend_user(model.users.id_of(u), 20)
    assert widths and max(widths) <= 3
    assert not lengths or max(lengths) <= 3
    assert not set(recs.item_idx.tolist()) & set(history.tolist())  # exclusion still reads it all
    widths.clear()
    model.history_limit = 10**6
    model.forget()
    model.recommend_user(model.users.id_of(u), 20)
    assert max(widths) == len(history)


def test_explanations_wait_for_the_ranked_answer_limit(app_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight explained requests at once: at most ``RANKING_THREADS`` explanations run together."""
    running = 0
    most = 0
    lock = threading.Lock()
    real = routes.explain

    def slow_explain(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.3)
            return real(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(routes, "explain", slow_explain)
    rec = app_client.app.state.store.get().recommender
    statuses: list[int] = []

    def ask(n: int) -> None:
        r = app_client.get(f"/users/{rec.users.id_of(n)}/recommendations", params={"k": 5, "explain": "true"})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 8
    assert 1 <= most <= offload.RANKING_THREADS
