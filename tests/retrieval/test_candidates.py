"""RetrievalModel search/exclusion, index recall, bundle round trip and the parquet contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from movierec.artifacts import BundleWriter, load_bundle
from movierec.config import IndexConfig
from movierec.index import build_index, normalize, recall_against_exact
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
