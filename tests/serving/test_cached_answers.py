"""Repeated requests answered from the cached JSON bytes: the same answer as the routed one, and
never an answer older than the last acknowledged write, from this worker or another."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from recommender import HybridRecommender
from recommender.encoder import NewUserEncoder
from serving.app import create_app
from serving.settings import Settings


def _routed(app_client: TestClient, monkeypatch, url: str, **params: object) -> bytes:
    """The body the app's route gives (the cached-bytes path switched off for this call)."""
    rec = app_client.app.state.store.get().recommender  # type: ignore[attr-defined]
    monkeypatch.setattr(rec.cache, "blob_for", lambda alias: None)
    try:
        return app_client.get(url, params=params).content
    finally:
        monkeypatch.undo()


def test_a_repeat_gets_the_same_bytes_and_counts_in_metrics(bundle_path: Path, tmp_path: Path, monkeypatch) -> None:
    with TestClient(create_app(Settings(model=bundle_path, state_dir=tmp_path / "state"))) as c:
        user = c.app.state.store.get().recommender.user_ids[3]
        first = c.get(f"/users/{user}/recommendations", params={"k": 7})
        again = c.get(f"/users/{user}/recommendations", params={"k": 7})
        assert first.status_code == again.status_code == 200
        assert again.content == first.content == _routed(c, monkeypatch, f"/users/{user}/recommendations", k=7)
        assert again.headers["content-type"] == "application/json"
        body = again.json()
        assert body["user_id"] == int(user) and len(body["items"]) == 7 and all("because" not in i for i in body["items"])
        metrics = c.get("/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("movierec_http_requests_total") and "/users/{user_id}/recommendations" in x)
        assert float(line.rsplit(" ", 1)[1]) >= 3  # the cached answers are counted under the route's template


def test_diversified_and_explained_answers_are_not_replayed_as_plain_ones(bundle_path: Path, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(model=bundle_path, state_dir=tmp_path / "state"))) as c:
        user = c.app.state.store.get().recommender.user_ids[4]
        plain = c.get(f"/users/{user}/recommendations", params={"k": 5}).json()
        for _ in range(2):
            explained = c.get(f"/users/{user}/recommendations", params={"k": 5, "explain": "true"}).json()
            assert all("because" in i for i in explained["items"])
            diverse = c.get(f"/users/{user}/recommendations", params={"k": 5, "diversity": 0.9}).json()
            assert len(diverse["items"]) == 5
        assert c.get(f"/users/{user}/recommendations", params={"k": 5}).json() == plain


def test_a_rating_through_this_or_another_worker_is_never_answered_from_the_cache(bundle_path: Path, tmp_path: Path) -> None:
    """Two apps on one online state are two workers: a write through either one changes what a
    repeated request gets from the first, at once."""
    state = tmp_path / "state"
    with TestClient(create_app(Settings(model=bundle_path, state_dir=state))) as a, TestClient(
        create_app(Settings(model=bundle_path, state_dir=state))
    ) as b:
        user = a.app.state.store.get().recommender.user_ids[5]
        url = f"/users/{user}/recommendations"
        for writer in (b, a):
            top = [a.get(url, params={"k": 5}).json()["items"][0]["item_id"] for _ in range(2)][-1]
            assert writer.post(f"/users/{user}/ratings", json=[{"item_id": top, "rating": 5}]).status_code == 200
            after = a.get(url, params={"k": 5}).json()
            assert top not in {i["item_id"] for i in after["items"]}  # now seen, so excluded


def test_the_new_user_encoder_equals_the_user_tower(bundle_path: Path) -> None:
    rec = HybridRecommender.load(bundle_path)
    enc = NewUserEncoder.build(rec.retrieval)
    assert enc is not None
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 300):
        liked = rng.integers(0, rec.n_items, size=n)  # repeats included
        np.testing.assert_allclose(enc(liked), rec.retrieval.encode_histories([liked])[0], rtol=1e-5, atol=1e-6)
    # a movie added at run time counts through its content, as in the tower
    added = rec.add_item("A Film Added Later", list(rec.items["genres"].iloc[0]), description="space")
    i = rec.item_idx(added["item_id"])
    liked = np.array([i, 0, 1])
    np.testing.assert_allclose(enc(liked), rec.retrieval.encode_histories([liked])[0], rtol=1e-5, atol=1e-6)


def test_the_exact_scan_returns_the_index_search(bundle_path: Path) -> None:
    """One query over a flat index is scanned in NumPy: the same items in the same order, with
    the history excluded, as the index's own search."""
    rec = HybridRecommender.load(bundle_path)
    assert rec.retrieval.index.kind == "flat" and rec.n_items <= rec.EXACT_SCAN_ITEMS
    for u in range(0, 60, 3):
        history, query = rec.histories.of(u), rec.retrieval.user_vectors[u]
        for k in (1, 10, rec.n_items):
            got = rec._retrieve(query, k, history, None)
            ids, scores = rec.retrieval.search(query[None, :], k, [history])
            keep = ids[0] >= 0
            np.testing.assert_allclose(got.scores, scores[0][keep], rtol=1e-5, atol=1e-6)
            assert set(got.item_idx.tolist()) == set(ids[0][keep].tolist()) and not set(history.tolist()) & set(got.item_idx.tolist())


def test_diversity_and_explanations_never_run_on_the_event_loop(bundle_path: Path, tmp_path: Path, monkeypatch) -> None:
    """MMR and explanations grow with k: they run in the thread pool, cached answer or not."""
    import threading

    import serving.routes_recommendations as routes

    ran: list[int] = []
    real_mmr, real_explain = routes.mmr, routes.explain

    def mmr(*args: object, **kwargs: object) -> object:
        ran.append(threading.get_ident())
        return real_mmr(*args, **kwargs)

    def explain(*args: object, **kwargs: object) -> object:
        ran.append(threading.get_ident())
        return real_explain(*args, **kwargs)

    monkeypatch.setattr(routes, "mmr", mmr)
    monkeypatch.setattr(routes, "explain", explain)
    app = create_app(Settings(model=bundle_path, state_dir=tmp_path / "state"))

    @app.get("/test/loop-thread")
    async def loop_thread() -> dict[str, int]:
        return {"ident": threading.get_ident()}

    with TestClient(app) as c:
        loop = c.get("/test/loop-thread").json()["ident"]
        user = c.app.state.store.get().recommender.user_ids[6]
        for _ in range(2):  # the second time the answer comes from the cache
            for params in ({"k": 200, "diversity": 0.5}, {"k": 200, "explain": "true"}, {"k": 5, "diversity": 0.3, "explain": "true"}):
                assert c.get(f"/users/{user}/recommendations", params=params).status_code == 200
        liked = [int(i) for i in c.app.state.store.get().recommender.items["item_id"].iloc[:3]]
        assert c.post("/recommendations", json={"liked_items": liked, "k": 150, "diversity": 0.5, "explain": True}).status_code == 200
    assert ran and loop not in ran


def test_ranked_answers_queue_for_a_few_threads_while_the_loop_stays_free(bundle_path: Path, tmp_path: Path, monkeypatch) -> None:
    """At most RANKING_THREADS ranked answers are computed at once in one worker; the others wait
    their turn without holding the event loop (health answers meanwhile), and every one is served."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import serving.offload as offload
    import serving.routes_recommendations as routes

    lock, release = threading.Lock(), threading.Event()
    running, most = [0], [0]
    real = routes._ranked_items

    def blocking(*args: object, **kwargs: object) -> object:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            assert release.wait(20)
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(routes, "_ranked_items", blocking)
    with TestClient(create_app(Settings(model=bundle_path, state_dir=tmp_path / "state"))) as c:
        rec = c.app.state.store.get().recommender
        assert rec.ranker is not None  # the heavy path is the ranked one
        items = [int(i) for i in rec.items["item_id"]]
        n = offload.RANKING_THREADS + 3
        with ThreadPoolExecutor(n) as pool:
            try:
                futures = [pool.submit(c.post, "/recommendations", json={"liked_items": items[3 * j:3 * j + 3], "k": 5}) for j in range(n)]
                deadline = time.monotonic() + 20
                while running[0] < offload.RANKING_THREADS and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.2)  # time for any request beyond the limit to (wrongly) start
                assert running[0] == offload.RANKING_THREADS
                assert c.get("/health").status_code == 200  # the event loop is not waiting on them
            finally:
                release.set()  # a failed check above must not leave the requests blocked
            answers = [f.result(timeout=30) for f in futures]
    assert [a.status_code for a in answers] == [200] * n and all(len(a.json()["items"]) == 5 for a in answers)
    assert most[0] == offload.RANKING_THREADS
