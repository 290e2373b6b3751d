"""RetrievalModel search/exclusion, index recall, bundle round trip and the parquet contract."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest

from movierec.core.artifacts import BundleWriter, load_bundle
from movierec.core.config import IndexConfig
from movierec.core.index import build_index, normalize, recall_against_exact
from retrieval.candidates import RetrievalModel, write_candidates
from retrieval.inputs import Histories


@pytest.fixture(scope="module")
def model(trained, synth_split) -> RetrievalModel:
    train, _ = synth_split
    return RetrievalModel(
        trained.user_tower, trained.item_tower, trained.item_vectors, trained.user_vectors,
        Histories.from_ratings(train.ratings, train.n_users), trained.items.genres, trained.items.content,
        trained.items.has_id, trained.user_features, trained.feature_encoder, {**trained.hparams, "history_len": 30},
    )


def test_search_excludes_seen_and_keeps_k(model):
    users = np.arange(20)
    ids, scores = model.recommend(users, 15)
    assert ids.shape == (20, 15) and (ids >= 0).all()
    for row, u in enumerate(users):
        assert not set(ids[row]) & set(model.histories.of(u))
        assert len(set(ids[row])) == 15
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_search_matches_brute_force(model):
    users = np.arange(10)
    ids, _ = model.recommend(users, 10)
    dense = model.score_users(users)
    for row, u in enumerate(users):
        dense[row, model.histories.of(u)] = -np.inf
    expected = np.argsort(-dense, axis=1, kind="stable")[:, :10]
    assert (ids == expected).mean() > 0.95  # ties in float order may swap neighbours


def test_single_and_batch_agree(model):
    ids_b, s_b = model.recommend(np.array([3, 4]), 7)
    ids_1, s_1 = model.recommend(4, 7)
    assert ids_b[1].tolist() == ids_1.tolist()
    np.testing.assert_allclose(s_b[1], s_1, rtol=1e-5)


def test_k_larger_than_catalogue_pads(model):
    ids, scores = model.recommend(0, model.n_items + 50)
    n_seen = len(model.histories.of(0))
    assert (ids >= 0).sum() == model.n_items - n_seen
    assert np.isneginf(scores[ids < 0]).all()


def test_new_user_from_liked_items_gets_a_unit_vector(model):
    v = model.encode_histories([np.array([1, 2, 3])])
    assert v.shape == (1, model.item_vectors.shape[1])
    assert abs(np.linalg.norm(v) - 1) < 1e-4


def test_added_item_is_searchable(model):
    before = model.n_items
    rows = model.add_items(model.item_genres[:1].copy(), model.item_content[:1].copy())
    assert rows.tolist() == [before] and model.n_items == before + 1
    ids, _ = model.similar_items(0, model.n_items)
    assert before in ids


def test_bundle_round_trip_gives_identical_answers(model, tmp_path):
    with BundleWriter(tmp_path / "b") as w:
        model.save(w)
    loaded = RetrievalModel.load(load_bundle(tmp_path / "b"))
    a, _ = model.recommend(np.arange(5), 10)
    b, _ = loaded.recommend(np.arange(5), 10)
    assert (a == b).all()
    np.testing.assert_allclose(model.encode_histories([np.array([1, 2])]), loaded.encode_histories([np.array([1, 2])]), atol=1e-6)


@pytest.mark.parametrize("kind,floor", [("flat", 1.0), ("hnsw", 0.9), ("ivf", 0.6)])
def test_ann_recall_against_exact(kind, floor):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32))
    vecs = normalize(centers[rng.integers(0, 20, 5000)] + 0.3 * rng.normal(size=(5000, 32)))
    index = build_index(vecs, IndexConfig(kind=kind, nprobe=8))
    assert recall_against_exact(index, vecs, vecs[:200], 10) >= floor


def test_candidates_parquet_contract(model, tmp_path):
    user_ids = np.arange(100, 100 + model.n_users)
    item_ids = np.arange(1000, 1000 + model.n_items)
    out = tmp_path / "cands.parquet"
    summary = write_candidates(lambda u: model.recommend(u, 5), np.arange(model.n_users), user_ids, item_ids, out, chunk_size=64, show_progress=False)
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["user_id", "item_id", "rank", "score"]
    assert summary["rows"] == len(frame) == 5 * model.n_users
    assert frame["user_id"].nunique() == model.n_users
    first = frame[frame["user_id"] == 100]
    assert first["rank"].tolist() == [1, 2, 3, 4, 5]
    assert first["score"].is_monotonic_decreasing
    seen = set(item_ids[model.histories.of(0)])
    assert not seen & set(first["item_id"])
    assert not list(tmp_path.glob(".*tmp"))


def test_candidates_failure_leaves_no_file(model, tmp_path):
    def broken(users):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_candidates(broken, np.arange(5), np.arange(5), np.arange(model.n_items), tmp_path / "c.parquet", show_progress=False)
    assert list(tmp_path.iterdir()) == []


# ---- the large-catalogue batch path (IVF-flat batch index) ----------------------------------------
def _copy(model: RetrievalModel, **batch: object) -> RetrievalModel:
    """A fresh model over the same vectors (the module fixture is changed by other tests)."""
    n = int(model.hparams["n_items"])
    other = RetrievalModel(
        model.user_tower, model.item_tower, model.item_vectors[:n].copy(), model.user_vectors, model.histories,
        model.item_genres[:n], model.item_content[:n], model.item_has_id[:n], model.user_features, model.encoder,
        model.hparams, index_config=IndexConfig(kind="flat"),
    )
    for key, value in batch.items():
        setattr(other, key, value)
    return other


def test_small_catalogues_and_small_batches_keep_the_exact_path(model):
    exact = _copy(model)
    assert exact.n_items < exact.batch_min_items and exact.batch_index() is None
    forced = _copy(model, batch_min_items=0, batch_min_queries=64, batch_nlist=8)
    forced.recommend(np.arange(10), 10)
    assert forced._batch is None  # 10 queries: below batch_min_queries, the bundle's index answered
    forced.recommend(np.arange(64), 10)
    assert forced._batch is not None and forced._batch.kind == "ivf"
    hnsw = _copy(model, batch_min_items=0, batch_min_queries=1)
    hnsw.index = build_index(hnsw.item_vectors, IndexConfig(kind="hnsw"))
    assert hnsw.batch_index() is None  # an approximate bundle index answers batches itself


def test_batch_path_probing_every_list_equals_exact_search(model):
    """Where both apply (a small catalogue forced through the IVF path, nprobe = nlist), the
    large-catalogue path gives the exact path's answers, seen items excluded."""
    users = np.arange(model.n_users)
    exact = _copy(model)
    ivf = _copy(model, batch_min_items=0, batch_min_queries=1, batch_nlist=16, batch_nprobe=16, batch_codes="flat")
    a, sa = exact.recommend(users, 25)
    b, sb = ivf.recommend(users, 25)
    lists = faiss.extract_index_ivf(ivf._batch.index)
    assert lists.nprobe == lists.nlist == 16
    np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-6)
    assert (a == b).mean() > 0.99  # equal scores may come in either order
    for row, u in enumerate(users[:50]):
        assert not set(b[row]) & set(model.histories.of(u))


def test_batch_path_fills_rows_its_lists_leave_short(model):
    """One probed list of many cannot hold k unseen items: those rows come from the bundle's index,
    so every user still gets k distinct unseen items."""
    users = np.arange(min(200, model.n_users))
    ivf = _copy(model, batch_min_items=0, batch_min_queries=1, batch_nlist=64, batch_nprobe=1)
    k = min(40, model.n_items - max(len(model.histories.of(u)) for u in users))
    ids, scores = ivf.recommend(users, k)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    for row, u in enumerate(users):
        assert len(set(ids[row])) == k and not set(ids[row]) & set(model.histories.of(u))
    exact_ids, _ = _copy(model).recommend(users, k)
    hits = np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(ids, exact_ids)])
    assert hits > 0.3  # approximate, but the probed list is the nearest one


def test_rows_an_approximate_index_leaves_short_are_searched_exactly(model):
    """An approximate index may return fewer hits than asked (HNSW for a user whose history is
    most of what its search found): those rows still get k unseen items, the exact ones."""
    exact = _copy(model)
    approx = _copy(model)
    inner = approx.index

    class ShortIndex:  # the bundle's index, returning only half of what it is asked for
        kind = "hnsw"

        def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            ids, scores = inner.search(q, k)
            ids[:, k // 2 :], scores[:, k // 2 :] = -1, -np.inf
            return ids, scores

    approx.index = ShortIndex()
    users = np.arange(30)
    a, sa = exact.recommend(users, 20)
    b, sb = approx.recommend(users, 20)
    assert (b >= 0).all()
    np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-6)
    assert (a == b).mean() > 0.99  # equal scores may come in either order
    for row, u in enumerate(users):
        assert not set(b[row]) & set(model.histories.of(u))


def test_batch_index_follows_added_items(model):
    ivf = _copy(model, batch_min_items=0, batch_min_queries=1, batch_nlist=8, batch_nprobe=8, batch_codes="flat")
    ivf.recommend(np.arange(5), 5)
    rows = ivf.add_items(ivf.item_genres[:2].copy(), ivf.item_content[:2].copy())
    queries = ivf.item_vectors[rows]
    ids, scores = ivf.search(queries, 10)  # two queries: the batch path
    assert len(ivf._batch) == ivf.n_items
    ivf.batch_min_items = 1 << 62
    exact_ids, exact_scores = ivf.search(queries, 10)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-6)
    assert set(rows) & set(ids.ravel())


def test_build_batch_index_exact_when_every_list_is_probed():
    from movierec.core.index import build_batch_index

    rng = np.random.default_rng(1)
    vecs = normalize(rng.normal(size=(3000, 16)))
    full = build_batch_index(vecs, nlist=12, nprobe=12, codes="flat")
    assert recall_against_exact(full, vecs, vecs[:100], 50) == 1.0
    default = build_batch_index(vecs)
    lists = faiss.extract_index_ivf(default.index)
    assert lists.nlist == 3000 // 128 and lists.nprobe == 8


def test_quantised_batch_index_rescores_its_hits_exactly():
    """sq8 codes choose the hits; the scores returned are the exact inner products, best first,
    and probing every list finds nearly all of the exact top-k."""
    from movierec.core.index import build_batch_index

    rng = np.random.default_rng(2)
    centers = rng.normal(size=(30, 32))
    vecs = normalize(centers[rng.integers(0, 30, 4000)] + 0.4 * rng.normal(size=(4000, 32)))
    queries = vecs[:200]
    sq8 = build_batch_index(vecs, nlist=16, nprobe=16)
    ids, scores = sq8.search(queries, 50)
    np.testing.assert_allclose(scores, np.einsum("nkd,nd->nk", vecs[ids], queries), rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert recall_against_exact(sq8, vecs, queries, 50) >= 0.98
    assert recall_against_exact(build_batch_index(vecs, nlist=16), vecs, queries, 50) >= 0.8
