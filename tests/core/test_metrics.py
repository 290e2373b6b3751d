"""Metrics against hand-computed tiny examples, and the full-ranking evaluator's rules."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from movierec.core.data import Dataset
from movierec.core.metrics import evaluate_topn, mae, rmse, top_k, topn_metrics


def _relevant(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [i for i, items in enumerate(rows) for _ in items]
    c = [j for items in rows for j in items]
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), n_items))


def test_rmse_and_mae_match_hand_computation() -> None:
    y, p = [1.0, 2.0, 3.0], [1.0, 2.0, 5.0]
    assert rmse(y, p) == pytest.approx(math.sqrt(4 / 3))
    assert mae(y, p) == pytest.approx(2 / 3)
    assert math.isnan(rmse([], []))


def test_topn_metrics_match_hand_computation() -> None:
    # user 0: relevant {1, 4}, hit at rank 2; user 1: relevant {3}, hit at rank 1;
    # user 2: relevant {9}, no hit; user 3: nothing relevant -> skipped.
    recs = np.array([[0, 1, 2], [3, 4, 5], [0, 1, 2], [6, 7, 8]])
    rel = _relevant([[1, 4], [3], [9], []], n_items=10)
    m = topn_metrics(recs, rel, k=3, n_items=10)
    ndcg_u0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m["recall@3"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["precision@3"] == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)
    assert m["ndcg@3"] == pytest.approx((ndcg_u0 + 1 + 0) / 3)
    assert m["hitrate@3"] == pytest.approx(2 / 3)
    assert m["mrr@3"] == pytest.approx((0.5 + 1 + 0) / 3)
    # coverage counts the rows that are evaluated (user 3 is skipped): items 0..5 of 10.
    assert m["coverage@3"] == pytest.approx(6 / 10)


def test_topn_metrics_cut_at_k_and_ignore_empty_slots() -> None:
    recs = np.array([[5, -1, 2]])
    rel = _relevant([[2]], n_items=6)
    assert topn_metrics(recs, rel, k=2, n_items=6)["recall@2"] == 0.0
    m = topn_metrics(recs, rel, k=3, n_items=6)
    assert m["recall@3"] == 1.0 and m["mrr@3"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(4))


def test_top_k_orders_by_score_and_breaks_ties_by_lower_index() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    assert top_k(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert top_k(scores, 4).tolist() == [[1, 2, 4, 0], [0, 1, 2, 3]]
    # ties at the cut must be resolved by index even when argpartition would pick others
    row = np.array([[1, 0, 1, 0, 1, 0, 1, 0, 1, 1.0]])
    assert top_k(row, 3).tolist() == [[0, 2, 4]]
    assert top_k(scores, 99).shape == (2, 5)
    assert top_k(np.array([[np.nan, 1.0, 0.5]]), 3).tolist() == [[1, 2, 0]]


def test_top_k_agrees_with_a_full_stable_sort() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(300, 40)).astype(float)
    expected = np.array([np.lexsort((np.arange(40), -row))[:7] for row in scores])
    np.testing.assert_array_equal(top_k(scores, 7), expected)


def test_top_k_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        top_k(np.zeros(3), 1)
    with pytest.raises(ValueError):
        top_k(np.zeros((2, 3)), 0)


def _tiny() -> tuple[Dataset, Dataset]:
    items = pd.DataFrame({"item_id": [10, 11, 12, 13, 14], "title": list("abcde")})
    full = Dataset(
        pd.DataFrame({"user_id": [1, 1, 2, 1, 2], "item_id": [10, 11, 12, 12, 13], "rating": [5.0] * 5}),
        items,
    )
    r = full.ratings
    return full.with_ratings(r.iloc[:3]), full.with_ratings(r.iloc[3:])


def test_evaluate_topn_excludes_train_items() -> None:
    train, test = _tiny()
    # item 0 (score 5) and 1 are user 0's train items; user 1 trained on item 2.
    score_fn = lambda u: np.tile(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), (len(u), 1))  # noqa: E731
    res = evaluate_topn(score_fn, train, test, ks=(1, 2, 10))
    # user 0: top-1 after excluding {0, 1} is item 2 = relevant; user 1: top-1 is item 0, miss,
    # top-2 is {0, 1}, miss.
    assert res["users"] == 2
    assert res["recall@1"] == pytest.approx(0.5)
    assert res["recall@2"] == pytest.approx(0.5)
    # k beyond the catalogue: everything not excluded is ranked, so both users hit.
    assert res["recall@10"] == pytest.approx(1.0)


def test_evaluate_topn_restricts_to_candidate_items() -> None:
    train, test = _tiny()
    score_fn = lambda u: np.tile(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), (len(u), 1))  # noqa: E731
    res = evaluate_topn(score_fn, train, test, ks=(1,), candidate_items=np.array([3, 4]))
    # only user 1 has a relevant candidate (item 3), and it outranks item 4.
    assert res["users"] == 1
    assert res["recall@1"] == 1.0
    assert res["coverage@1"] == pytest.approx(1 / 2)


@pytest.mark.mldata
def test_full_ranking_of_all_ml100k_users_takes_seconds(ml100k_path) -> None:
    from movierec.core.loaders import load_dataset
    from movierec.core.splits import holdout_per_user

    train, test = holdout_per_user(load_dataset(ml100k_path))
    rng = np.random.default_rng(0)
    item_scores = rng.random(train.n_items).astype(np.float32)
    user_scores = rng.random((train.n_users, 8)).astype(np.float32) @ rng.random((8, train.n_items)).astype(np.float32)
    t = time.perf_counter()
    res = evaluate_topn(lambda u: user_scores[u] + item_scores, train, test, ks=(10, 50))
    elapsed = time.perf_counter() - t
    assert res["users"] == 943
    assert elapsed < 5.0, f"full-ranking evaluation took {elapsed:.1f}s"
