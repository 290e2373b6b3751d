"""ContentSimilarity: similar items (FAISS and exact), added movies, user profiles, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from content import ContentModel, ContentSimilarity
from movierec.core.artifacts import BundleWriter, load_bundle
from movierec.core.config import ContentConfig, IndexConfig
from movierec.core.sources import CandidateSource


@pytest.fixture
def sim(items: pd.DataFrame, small_config: ContentConfig) -> ContentSimilarity:
    return ContentSimilarity(ContentModel.fit(items, small_config))


def brute_force(vectors: np.ndarray, i: int, k: int) -> np.ndarray:
    s = vectors @ vectors[i]
    s[i] = -np.inf
    return np.lexsort((np.arange(len(s)), -s))[:k]


@pytest.mark.parametrize("exact", [False, True])
def test_similar_excludes_itself_and_is_sorted(sim: ContentSimilarity, exact: bool) -> None:
    ids, scores = sim.similar_items(np.arange(sim.n_items), 5, exact=exact)
    assert ids.shape == scores.shape == (sim.n_items, 5)
    assert not (ids == np.arange(sim.n_items)[:, None]).any()
    assert (np.diff(scores, axis=1) <= 1e-7).all()
    one_ids, one_scores = sim.similar_items(7, 5, exact=exact)
    assert one_ids.shape == (5,) and np.array_equal(one_ids, ids[7])


def test_faiss_path_matches_brute_force_cosine(sim: ContentSimilarity) -> None:
    for i in (0, 13, 42):
        ids, _ = sim.similar_items(i, 8, exact=False)
        assert np.array_equal(ids, brute_force(sim.item_vectors, i, 8))


def test_ties_come_in_item_order() -> None:
    df = pd.DataFrame(
        {
            "item_id": range(8),
            "title": ["Alpha Beta"] + ["Gamma Delta"] * 6 + ["Alpha Beta"],
            "year": [2000] * 8,
            "genres": [["Drama"]] * 8,
        }
    )
    sim = ContentSimilarity(ContentModel.fit(df, ContentConfig(dim=4)))
    for exact in (False, True):
        ids, scores = sim.similar_items(3, 7, exact=exact)
        assert list(ids[:5]) == [1, 2, 4, 5, 6], exact  # five identical twins, lowest item_idx first
        assert len(set(np.round(scores[:5], 6))) == 1
        ids0, _ = sim.similar_items(0, 1, exact=exact)
        assert ids0[0] == 7  # the duplicate title is the nearest neighbour


def test_k_larger_than_catalogue_pads(sim: ContentSimilarity) -> None:
    ids, scores = sim.similar_items(0, sim.n_items + 5, exact=False)
    assert (ids[: sim.n_items - 1] >= 0).all() and (ids[sim.n_items - 1 :] == -1).all()
    assert np.isneginf(scores[sim.n_items - 1 :]).all()
    with pytest.raises(IndexError, match="outside the catalogue"):
        sim.similar_items(sim.n_items, 3)


def test_added_movie_is_found_at_once_without_refit(sim: ContentSimilarity, items: pd.DataFrame) -> None:
    before = sim.model.components.copy()
    twin = items.iloc[[10]].assign(item_id=99_999)
    new_idx = sim.add_items(twin)
    assert list(new_idx) == [len(items)]
    assert np.array_equal(sim.model.components, before)
    for exact in (False, True):
        ids, scores = sim.similar_items(10, 1, exact=exact)
        assert ids[0] == new_idx[0] and scores[0] == pytest.approx(1.0, abs=1e-5)
        back, _ = sim.similar_items(int(new_idx[0]), 1, exact=exact)
        assert back[0] == 10


def test_added_movie_with_no_known_word_gets_an_answer(sim: ContentSimilarity) -> None:
    new = pd.DataFrame({"item_id": [5], "title": ["Xyzzy Plugh"], "year": [None], "genres": [[]]})
    (idx,) = sim.add_items(new)
    for exact in (False, True):
        ids, scores = sim.similar_items(int(idx), 5, exact=exact)
        assert (ids >= 0).all() and np.isfinite(scores).all()


def test_is_a_candidate_source_and_profiles_follow_ratings(item_factory) -> None:
    items = item_factory(40, seed=3)
    model = ContentModel.fit(items, ContentConfig(dim=16))
    sim = ContentSimilarity(model)
    assert isinstance(sim, CandidateSource)
    # user 0 loves item 0 and hates item 1; user 1 the opposite
    ratings = sp.csr_matrix(np.array([[5.0, 1.0] + [0] * 38, [1.0, 5.0] + [0] * 38]))
    sim.fit_users(ratings)
    scores = sim.score_users(np.array([0, 1]))
    assert scores.shape == (2, 40)
    assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]
    ids, _ = sim.recommend(0, 5, exclude=ratings)
    assert 0 not in ids and 1 not in ids and len(ids) == 5
    # flat raters (all the same rating) still get a profile, not zeros
    sim.fit_users(sp.csr_matrix(np.array([[4.0, 4.0] + [0] * 38])))
    assert np.abs(sim.score_users(np.array([0]))).max() > 0


def test_save_load_round_trip_keeps_added_items(tmp_path, sim: ContentSimilarity, items: pd.DataFrame) -> None:
    sim.add_items(items.iloc[[3, 4]].assign(item_id=[-1, -2]))
    before = sim.similar_items(np.arange(sim.n_items), 6)
    with BundleWriter(tmp_path / "b") as w:
        sim.save(w)
    loaded = ContentSimilarity.load(load_bundle(tmp_path / "b"))
    assert loaded.n_items == sim.n_items
    assert np.array_equal(loaded.item_vectors, sim.item_vectors)
    after = loaded.similar_items(np.arange(sim.n_items), 6)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    (idx,) = loaded.add_items(items.iloc[[0]])
    assert idx == sim.n_items and loaded.similar_items(0, 1)[0][0] == idx


def test_hnsw_index_agrees_with_exact_on_most_neighbours(item_factory) -> None:
    items = item_factory(400, seed=1)
    model = ContentModel.fit(items, ContentConfig(dim=16))
    sim = ContentSimilarity(model, IndexConfig(kind="hnsw"), exact=False)
    assert sim.index.kind == "hnsw"
    got, _ = sim.similar_items(np.arange(50), 10)
    truth = np.stack([brute_force(sim.item_vectors, i, 10) for i in range(50)])
    overlap = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(got, truth)])
    assert overlap > 0.9
