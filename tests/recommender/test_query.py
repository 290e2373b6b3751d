"""The one query path: a single request is a batch of one, so single and batch answers agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from movierec.core.popularity import most_popular
from recommender import Filters, HybridRecommender, query
from recommender.query import EXACT_SCAN_ITEMS, Answer, liked_queries, retrieve
from tests.serving.conftest import bundle_path  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def rec(bundle_path: Path) -> HybridRecommender:  # noqa: F811
    return HybridRecommender.load(bundle_path)


def _filter_cases(rec: HybridRecommender) -> list[Filters | None]:
    years = rec.items["year"].dropna().astype(int)
    genre = rec.genre_vocab[0]
    rare_year = int(years.value_counts().idxmin())  # a filter fewer movies pass than k
    return [
        None,
        Filters(genres=[genre]),
        Filters(year_min=int(years.median())),
        Filters(year_max=int(years.median()), genres=[rec.genre_vocab[1]]),
        Filters(year_min=rare_year, year_max=rare_year),
        Filters(exclude_items=list(rec.items["item_id"].iloc[:20])),
        Filters(year_min=3000),  # nothing passes
    ]


def _same(single: list, batch_ids: np.ndarray, batch_scores: np.ndarray) -> None:
    for row, (ids, scores) in enumerate(single):
        keep = batch_ids[row] >= 0
        assert ids.tolist() == batch_ids[row][keep].tolist(), row
        np.testing.assert_allclose(scores, batch_scores[row][keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [True, False])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_known_users_get_the_same_answer_alone_and_in_a_batch(rec: HybridRecommender, rank: bool, exclude_seen: bool) -> None:
    users = np.arange(0, 60, 2)
    k = 10
    for filters in _filter_cases(rec):
        single = []
        for u in users:
            r = rec.recommend_user(rec.user_ids[u], k, exclude_seen, filters, rank=rank)
            single.append((r.item_idx, r.scores))
            assert len(r.item_idx) <= k
            if exclude_seen:
                assert not set(r.item_idx.tolist()) & set(rec.histories.of(int(u)).tolist())
        ids, scores = rec.recommend_batch(users, k, rank=rank, exclude_seen=exclude_seen, filters=filters)
        _same(single, ids, scores)
        allowed = query.allowed_items(rec, filters)
        if allowed is not None:
            assert all(allowed[i] for i in ids[ids >= 0])


@pytest.mark.parametrize("rank", [True, False])
def test_liked_lists_get_the_same_answer_alone_and_in_a_batch(rec: HybridRecommender, rank: bool) -> None:
    rng = np.random.default_rng(0)
    lists = [rng.choice(rec.n_items, size=n, replace=False) for n in (1, 2, 5, 12, 30)]
    item_ids = rec.items["item_id"].to_numpy()
    for filters in _filter_cases(rec):
        single = []
        for liked in lists:
            r = rec.recommend_from_items(list(item_ids[liked]), 10, filters, rank=rank)
            single.append((r.item_idx, r.scores))
            assert not set(r.item_idx.tolist()) & set(liked.tolist())
        batch = query.recommend(rec, liked_queries(rec, lists, filters), 10, rank)
        _same(single, batch.item_idx, batch.scores)


def test_a_query_without_history_gets_popularity_order_alone_and_in_a_batch(rec: HybridRecommender) -> None:
    """A liked list without movies carries nothing personal: the ranker orders its candidates by
    popularity, in a batch as alone."""
    if rec.ranker is None:
        pytest.skip("bundle without a ranker")
    empty = np.zeros(0, np.int64)
    alone = query.recommend(rec, liked_queries(rec, [empty]), 10).row(0)
    batch = query.recommend(rec, liked_queries(rec, [np.array([3, 4]), empty, np.array([7])]), 10)
    assert alone.item_idx.tolist() == batch.row(1).item_idx.tolist()
    counts = rec.ranker.arrays["item_counts"][alone.item_idx]
    assert np.all(np.diff(counts) <= 0)


def test_queries_retrieval_leaves_empty_get_the_most_rated_movies(rec: HybridRecommender, monkeypatch) -> None:
    """When no candidate is left while movies remain, the answer is the most-rated ones that
    pass the filters, alone and in a batch."""
    def nothing(model, vectors, k, exclude, allowed):
        w = min(k, model.n_items)
        return np.full((len(vectors), w), -1, np.int64), np.full((len(vectors), w), -np.inf, np.float32)

    monkeypatch.setattr(query, "retrieve", nothing)
    users = np.arange(5)
    for filters in (None, Filters(genres=[rec.genre_vocab[0]])):
        for rank in (True, False):
            rec.forget()  # answers cached by the other tests
            ids, scores = rec.recommend_batch(users, 10, rank=rank, filters=filters)
            allowed = query.allowed_items(rec, filters)
            for row, u in enumerate(users):
                alone = rec.recommend_user(rec.user_ids[u], 10, filters=filters, rank=rank)
                assert alone.item_idx.tolist() == ids[row][ids[row] >= 0].tolist()
                if not rank:  # ranked, the item-item candidates still come in
                    want, _ = most_popular(rec.item_counts, rec.n_items, 10, rec.histories.of(int(u)), allowed)
                    assert alone.item_idx.tolist() == want.tolist()
    rec.forget()


def test_diversity_and_explanations_apply_to_every_query_of_a_batch(rec: HybridRecommender) -> None:
    users = np.arange(6)
    q = query.user_queries(rec, users)
    batch = query.recommend(rec, q, 5, diversity=0.5, explain=True)
    assert batch.because is not None and len(batch.because) == len(users)
    for row, u in enumerate(users):
        alone = query.recommend(rec, query.user_queries(rec, np.array([u])), 5, diversity=0.5, explain=True)
        assert alone.row(0).item_idx.tolist() == batch.row(row).item_idx.tolist()
        assert alone.because == [batch.because[row]]
        assert len(batch.because[row]) == len(batch.row(row).item_idx)


def test_the_exact_scan_returns_the_index_search(rec: HybridRecommender) -> None:
    """One query over a flat index is scanned in NumPy: the same items in the same order, with
    the history excluded, as the index's own search."""
    assert rec.retrieval.index.kind == "flat" and rec.n_items <= EXACT_SCAN_ITEMS
    for u in range(0, 60, 3):
        history, vector = rec.histories.of(u), rec.retrieval.user_vectors[u]
        for k in (1, 10, rec.n_items):
            got = Answer(*retrieve(rec, vector[None, :], k, [history], None)).row(0)
            ids, scores = rec.retrieval.search(vector[None, :], k, [history])
            keep = ids[0] >= 0
            np.testing.assert_allclose(got.scores, scores[0][keep], rtol=1e-5, atol=1e-6)
            assert set(got.item_idx.tolist()) == set(ids[0][keep].tolist()) and not set(history.tolist()) & set(got.item_idx.tolist())
