"""Rating-order adjacency (ranking/sequence.py) on examples worked out by hand and against the
dense computation."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.sequence import adjacency_matrix, adjacent_scores, padded_rows


def test_adjacency_counts_neighbours_in_time_order_and_normalises() -> None:
    # user 0 rates movies 0, 1, 2 in that order; user 1 rates 2 then 3; movie 4 is never rated
    adj = adjacency_matrix(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 2, 3]), 5, window=2, neighbors=10).toarray()
    # raw weights: 0-1 and 1-2 and 2-3 one place apart (1), 0-2 two places apart (1/2); totals
    # per movie 1.5, 2, 2.5, 1, 0; each weight divided by sqrt(total_a * total_b)
    expected = np.zeros((5, 5))
    for a, b, w in ((0, 1, 1.0), (1, 2, 1.0), (2, 3, 1.0), (0, 2, 0.5)):
        expected[a, b] = expected[b, a] = w
    totals = np.array([1.5, 2.0, 2.5, 1.0, 1.0])
    np.testing.assert_allclose(adj, expected / np.sqrt(np.outer(totals, totals)), rtol=1e-6)
    # pairs never cross users: counting positions 1-3 and 2-4 across the boundary would have
    # added 1/2 to (1, 2) and (2, 3), and position 2-3 (movie 2 twice) is no pair at all
    assert not adjacency_matrix(np.array([0, 1]), np.array([0, 1]), 2, window=3, neighbors=5).toarray().any()
    assert adjacency_matrix(np.array([0, 0]), np.array([0, 1]), 2, window=0, neighbors=5).nnz == 0


def test_rows_keep_their_largest_weights() -> None:
    rng = np.random.default_rng(0)
    users = np.sort(rng.integers(0, 30, 600))
    items = rng.integers(0, 40, 600)
    full = adjacency_matrix(users, items, 40, window=3, neighbors=40).toarray()
    kept = adjacency_matrix(users, items, 40, window=3, neighbors=5).toarray()
    assert (np.count_nonzero(kept, axis=1) <= 5).all()
    for row_full, row_kept in zip(full, kept):
        nz = row_kept != 0
        np.testing.assert_array_equal(row_kept[nz], row_full[nz])  # kept weights are unchanged
        if nz.any():
            assert row_kept[nz].min() >= np.sort(row_full)[-5] - 1e-7  # and they are the largest


@pytest.mark.parametrize("n_users, n_items", [(1, 50), (3, 50), (700, 50), (300, 50_000)])
def test_scores_are_the_candidates_weights_summed_over_the_history(n_users: int, n_items: int) -> None:
    # 50,000 movies: users are scored ~80 per step, so the steps and the reused mask are covered
    rng = np.random.default_rng(n_users)
    users = np.sort(rng.integers(0, 40, 900))
    adj = adjacency_matrix(users, rng.integers(0, n_items, 900), n_items, window=3, neighbors=8)
    dense = adj.toarray() if n_items <= 50 else adj
    # histories and candidates with padding (-1) and movies beyond the matrix (added later)
    hist = rng.integers(-1, n_items + 3, (n_users, 12))
    cand = rng.integers(-1, n_items + 3, (n_users, 9))
    got = adjacent_scores(padded_rows(adj), hist, cand)
    for u in range(n_users):
        h = np.unique(hist[u][(hist[u] >= 0) & (hist[u] < n_items)])
        for j, c in enumerate(cand[u]):
            want = dense[c, h].sum() if 0 <= c < n_items and len(h) else 0.0
            assert got[u, j] == pytest.approx(want, abs=1e-6)
